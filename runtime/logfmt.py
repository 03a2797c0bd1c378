"""Container logs: the CRI log format the shim writes, rotation-aware reading,
--tail / --since, and the log options. Pure: files are read, nothing else.

A record is `<RFC3339Nano UTC> <stdout|stderr> <F|P> <text>` (Kubernetes' CRI
format, as conmon's k8s-file driver writes it). P is a fragment that the next
records of the same stream continue; F ends the line. The files are PATH and,
older, PATH.1 … PATH.(N-1) (see shim/logshim.c)."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

from portlink import parse
from portlink.errors import InvalidArgument, InvalidValue
# The record format itself lives in logrecord (light: the CLI prints records too).
from portlink.runtime.logrecord import (Record, format_record, format_time,  # noqa: F401
                                        parse_log_opt_args, parse_record, parse_time, render_text)

MIN_MAX_SIZE = 32 * 1024      # the shim's minimum: a file must hold a whole 16 KiB record
MAX_FILES = 100               # the shim's maximum


@dataclass(frozen=True)
class LogLimits:
    """Rotation: at most `max_files` files of at most `max_size` bytes each."""

    max_size: int = 10 * 1024 * 1024    # Docker json-file's usual max-size=10m
    max_files: int = 3                  # and max-file=3


# -- options ---------------------------------------------------------------------------
def parse_size(what: str, text: str) -> int:
    """Docker's sizes: 10m, 512k, 1g, 1.5m, 65536 (binary units, as docker's: portlink.parse)."""
    size = parse.size(what, str(text))
    if not MIN_MAX_SIZE <= size <= 1 << 40:
        raise InvalidArgument(f"invalid {what} {text!r}: expected 32k to 1t (a file must hold a whole "
                              "16 KiB line)")
    return size


def parse_files(what: str, text: str | int) -> int:
    s = str(text).strip()
    if not (s.isascii() and s.isdigit()) or not 1 <= int(s) <= MAX_FILES:
        raise InvalidArgument(f"invalid {what} {text!r}: expected a number of files from 1 to {MAX_FILES}")
    return int(s)


def parse_log_opts(opts: dict, defaults: LogLimits = LogLimits()) -> LogLimits:
    """`--log-opt` entries (Docker's names) over the daemon's defaults."""
    if not isinstance(opts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in opts.items()):
        raise InvalidArgument("field 'log_opts' must map strings to strings (--log-opt max-size=10m)")
    unknown = sorted(set(opts) - {"max-size", "max-file"})
    if unknown:
        raise InvalidArgument(f"unknown --log-opt {', '.join(unknown)}: portlink's logs know max-size and max-file")
    size, files = defaults.max_size, defaults.max_files
    if "max-size" in opts:
        size = parse_size("--log-opt max-size", opts["max-size"])
    if "max-file" in opts:
        files = parse_files("--log-opt max-file", opts["max-file"])
    return LogLimits(size, files)


def parse_tail(text: str | None) -> int | None:
    """--tail N: the last N lines; None or 'all': everything."""
    if text in (None, "", "all"):
        return None
    if not (text.isascii() and text.isdigit()):
        raise InvalidArgument(f"invalid --tail {text!r}: expected a number or 'all'")
    return int(text)


def parse_since(text: str | None, now: float | None = None) -> int | None:
    """--since as nanoseconds since the epoch: a Unix time (1700000000.5), a
    duration back from now (10m, 1h30m, 45s: Go's spelling, plus d), or an
    RFC 3339 time (2024-05-01T12:00:00Z), as `docker logs --since` takes."""
    if text in (None, ""):
        return None
    now = time.time() if now is None else now
    t = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return int(Decimal(t) * 1_000_000_000)   # exact: a float would lose the nanoseconds
    if not parse.is_number(t):           # a duration back from now: 10m, 1h30m
        try:
            return int((now - parse.duration("--since", t)) * 1e9)
        except InvalidValue:
            pass
    try:
        dt = datetime.fromisoformat(t.replace("z", "Z"))
    except ValueError:
        raise InvalidArgument(f"invalid --since {text!r}: expected a Unix time, a duration like 10m or 1h30m, "
                              "or an RFC 3339 time like 2024-05-01T12:00:00Z") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


# -- records ---------------------------------------------------------------------------
def parse_records(data: bytes) -> list[Record]:
    """The records of whole lines in `data` (a trailing piece without a newline is ignored)."""
    lines = data.split(b"\n")
    lines.pop()   # after the last newline: empty, or a record still being written
    return [r for r in map(parse_record, lines) if r is not None]


class Joiner:
    """Joins each stream's fragments back into lines, across reads and files."""

    def __init__(self) -> None:
        self.pending: dict[str, list[Record]] = {}

    def feed(self, records: list[Record]) -> list[Record]:
        out = []
        for r in records:
            if r.partial:
                self.pending.setdefault(r.stream, []).append(r)
                continue
            parts = self.pending.pop(r.stream, [])
            if parts:
                r = Record(parts[0].time_ns, r.stream, False, b"".join(p.text for p in parts) + r.text)
            out.append(r)
        return out

    def rest(self) -> list[Record]:
        """Lines still open (no newline yet), oldest first, as partial lines."""
        out = [Record(ps[0].time_ns, s, True, b"".join(p.text for p in ps)) for s, ps in self.pending.items()]
        self.pending.clear()
        return sorted(out, key=lambda r: r.time_ns)


def join(records: list[Record]) -> list[Record]:
    """Whole lines; a line still open at the end comes last, marked partial."""
    j = Joiner()
    return j.feed(records) + j.rest()


def select(lines: list[Record], tail: int | None = None, since_ns: int | None = None) -> list[Record]:
    """--since (by a line's first timestamp), then --tail (the last N lines)."""
    if since_ns is not None:
        lines = [l for l in lines if l.time_ns >= since_ns]
    if tail is not None:
        lines = lines[-tail:] if tail else []
    return lines


# -- files -----------------------------------------------------------------------------
def rotated(path: Path) -> list[Path]:
    """PATH's older files, oldest first: PATH.(N-1), …, PATH.1."""
    found = []
    for p in path.parent.glob(path.name + ".*"):
        suffix = p.name[len(path.name) + 1:]
        if suffix.isdigit():
            found.append((int(suffix), p))
    return [p for _, p in sorted(found, reverse=True)]


def all_files(path: Path) -> list[Path]:
    """Every file of the log, oldest first; the current one last."""
    return rotated(path) + [path]


class Reader:
    """Reads a container's log: first what is there (read_existing), then, to
    follow, what is added (read_new), across rotations.

    Following holds the current file open: when the shim renames it to PATH.1,
    the rest of it is still read through the open file before the new PATH is
    opened. A follower more than one rotation behind skips the files between."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f = None
        self.buf = b""

    def _open(self):
        try:
            return open(self.path, "rb")
        except FileNotFoundError:
            return None

    def read_existing(self, tail: int | None = None, since_ns: int | None = None) -> list[Record]:
        """The selected lines of what is logged now; leaves the reader at the end."""
        self.f = self._open()
        cur = os.fstat(self.f.fileno()).st_ino if self.f else None
        older = rotated(self.path)
        per_file = [self._parse(self.f.read()) if self.f else []]   # newest first
        lines = sum(not r.partial for r in per_file[0])
        for p in reversed(older):
            if tail is not None and since_ns is None and lines > tail:
                break   # enough for --tail (one more line: a line split across files is whole)
            try:
                with open(p, "rb") as g:
                    if os.fstat(g.fileno()).st_ino == cur:
                        continue   # rotated while we were listing: read above as the current file
                    data = g.read()
            except FileNotFoundError:
                continue           # rotated away meanwhile
            per_file.append(parse_records(data))
            lines += sum(not r.partial for r in per_file[-1])
        return select(join([r for recs in reversed(per_file) for r in recs]), tail, since_ns)

    def read_new(self) -> list[Record]:
        """The records added since the last read, in order (fragments as they come)."""
        out: list[Record] = []
        for _ in range(3):   # at most a couple of rotations are followed per call
            if self.f is None:
                self.f = self._open()
                if self.f is None:
                    return out
            size = os.fstat(self.f.fileno()).st_size
            if size < self.f.tell():   # truncated (the shim undoing a failed write): go on from its end
                self.f.seek(size)
                self.buf = b""
            out += self._parse(self.f.read())
            try:
                moved = os.stat(self.path).st_ino != os.fstat(self.f.fileno()).st_ino
            except FileNotFoundError:
                return out   # between the rename and the new file: next time
            if not moved:
                return out
            out += self._parse(self.f.read())   # the shim closed it before renaming: this is all of it
            self.f.close()
            self.f, self.buf = None, b""
        return out

    def _parse(self, data: bytes) -> list[Record]:
        data = self.buf + data
        cut = data.rfind(b"\n") + 1
        self.buf = data[cut:]
        return parse_records(data[:cut])

    def close(self) -> None:
        if self.f:
            self.f.close()
            self.f = None
