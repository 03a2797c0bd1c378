"""What happened on this host, as events: container create/start/oom/die/stop/
destroy/restart, link, Consul register/deregister, ambassador reroute, drift
repaired. `portlink events` reads them (--since, --until, --filter, JSON lines).

Events are appended to `<state>/events.jsonl` (one JSON object per line, so a
crash loses at most the line being written) and rotated by size, keeping a
bounded number of old files; the newest ones are also kept in memory for
followers. Filtering is a pure function of (event, filters)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from portlink import parse
from portlink.errors import InvalidArgument, InvalidValue

log = logging.getLogger("portlink.events")

TYPES = ("container", "network", "consul", "ambassador", "drift")
FILTER_KEYS = ("type", "event", "container", "name", "network", "service")


@dataclass(frozen=True)
class Event:
    time: float
    type: str                 # one of TYPES
    action: str               # create, start, die, stop, destroy, restart, link, register, ...
    name: str                 # the container, network, Consul service id or drift subject
    id: str = ""
    attrs: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Event":
        return cls(d["time"], d["type"], d["action"], d["name"], d.get("id", ""), d.get("attrs") or {})


def parse_filters(items: Iterable[str]) -> dict[str, set[str]]:
    """`key=value` items (Docker's `--filter`); several values of one key are alternatives."""
    out: dict[str, set[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise InvalidArgument(f"invalid filter {item!r}: expected KEY=VALUE")
        if key not in FILTER_KEYS:
            raise InvalidArgument(f"invalid filter key {key!r}: known are {', '.join(FILTER_KEYS)}")
        out.setdefault(key, set()).add(value)
    return out


def matches(e: Event, filters: dict[str, set[str]]) -> bool:
    for key, values in filters.items():
        if key == "type":
            ok = e.type in values
        elif key == "event":
            ok = e.action in values
        elif key == "container":
            ok = e.type in ("container", "ambassador") and (e.name in values or any(
                e.id.startswith(v) for v in values if len(v) >= 4))
        elif key == "name":
            ok = e.name in values
        elif key == "network":
            ok = e.attrs.get("network") in values or (e.type == "network" and e.name in values)
        else:   # service
            ok = e.attrs.get("service") in values
        if not ok:
            return False
    return True


def parse_time(text: str | None, now: float | None = None) -> float | None:
    """A Unix time, or a duration back from now: 30s, 10m, 2h, 1d, 1h30m (as `docker events --since`)."""
    if text in (None, ""):
        return None
    now = time.time() if now is None else now
    if parse.is_number(text):
        return float(text)
    try:
        return now - parse.duration("time", text)
    except InvalidValue:
        raise InvalidArgument(f"invalid time {text!r}: a Unix time or a duration like 30s, 10m, 2h") from None


class EventLog:
    def __init__(self, path: Path, max_bytes: int = 4 << 20, keep: int = 2, memory: int = 4096) -> None:
        self.path, self.max_bytes, self.keep = path, max_bytes, keep
        self._recent: deque[Event] = deque(maxlen=memory)
        self._lock = threading.Lock()
        self._seq = 0                      # events emitted so far (followers wait on it)

    def emit(self, type: str, action: str, name: str, id: str = "", **attrs) -> Event:
        e = Event(time.time(), type, action, name, id, {k: v for k, v in attrs.items() if v is not None})
        line = json.dumps(e.to_json(), separators=(",", ":")) + "\n"
        # One log line per event too: readable in text, every field a key in JSON logs.
        log.info("%s %s %s%s", type, action, name,
                 "".join(f" {k}={v}" for k, v in sorted(e.attrs.items())),
                 extra={"event": action, "object": type, "object_name": name, "object_id": id, **{f"attr_{k}": v for k, v in e.attrs.items()}})
        with self._lock:
            try:
                self._rotate_if_needed(len(line))
                with open(self.path, "a") as f:
                    f.write(line)
            except OSError as err:   # a full disk must not fail the operation that happened
                log.error("cannot record event %s %s: %s", type, action, err)
            self._recent.append(e)
            self._seq += 1
        return e

    def _rotate_if_needed(self, adding: int) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size + adding <= self.max_bytes:
            return
        for i in range(self.keep, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            newer = self.path.with_name(f"{self.path.name}.{i - 1}") if i > 1 else self.path
            if newer.exists():
                os.replace(newer, older)

    def files(self) -> list[Path]:
        """Oldest first."""
        olds = [self.path.with_name(f"{self.path.name}.{i}") for i in range(self.keep, 0, -1)]
        return [p for p in [*olds, self.path] if p.exists()]

    def read(self, since: float | None = None, until: float | None = None,
             filters: dict[str, set[str]] | None = None) -> Iterator[Event]:
        for p in self.files():
            try:
                lines = p.read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                try:
                    e = Event.from_json(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    continue   # a line cut by a crash
                if (since is None or e.time >= since) and (until is None or e.time <= until) and \
                        matches(e, filters or {}):
                    yield e

    def after(self, seen: int) -> tuple[int, list[Event]]:
        """Events emitted after the first `seen` (for followers): the new count and them."""
        with self._lock:
            new = min(self._seq - seen, len(self._recent))
            return self._seq, list(self._recent)[-new:] if new > 0 else []

    @property
    def seq(self) -> int:
        with self._lock:
            return self._seq
