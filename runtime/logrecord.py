"""The CRI log record, as the shim writes it and the daemon sends it: parse,
format, render as `docker logs` prints it. Kept light (no dataclasses, no
pathlib) because the `portlink` command imports it to print logs; the rest of
the log handling (options, rotation-aware reading) is in logfmt.

A record is `<RFC3339Nano UTC> <stdout|stderr> <F|P> <text>` (Kubernetes' CRI
format, as conmon's k8s-file driver writes it). P is a fragment that the next
records of the same stream continue; F ends the line."""

from __future__ import annotations

import time
from collections import namedtuple


class Record(namedtuple("Record", "time_ns stream partial text")):
    # a tuple: logs of 30 MiB are hundreds of thousands of these
    """One record, or (after join) one whole line: `partial` then means the
    stream ended, so far, without a newline."""

    __slots__ = ()
    time_ns: int
    stream: str
    partial: bool
    text: bytes


def parse_log_opt_args(entries: list[str]) -> dict[str, str]:
    """The CLI's `--log-opt KEY=VALUE` list as a dict (values are checked by the daemon).
    Raises ValueError (the CLI runs without portlink's error classes in its output)."""
    out = {}
    for e in entries:
        key, eq, value = e.partition("=")
        if not eq or not key:
            raise ValueError(f"invalid --log-opt {e!r}: expected KEY=VALUE, like max-size=10m")
        out[key] = value
    return out


# -- records ---------------------------------------------------------------------------
_epoch_cache: dict[bytes, int] = {}


def parse_time(ts: bytes) -> int:
    """`2024-05-01T12:00:00.123456789Z` -> nanoseconds since the epoch."""
    if len(ts) < 20 or ts[-1:] != b"Z" or ts[10:11] != b"T":
        raise ValueError(f"not an RFC 3339 UTC time: {ts!r}")
    secs = _epoch_cache.get(ts[:19])
    if secs is None:
        from datetime import datetime, timezone     # here: the CLI imports this module, mostly without needing it
        dt = datetime.strptime(ts[:19].decode("ascii"), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
        secs = _epoch_cache[ts[:19]] = int(dt.timestamp())
        if len(_epoch_cache) > 4096:
            _epoch_cache.clear()
    frac = ts[19:-1]
    if not frac:
        return secs * 1_000_000_000
    if frac[:1] != b"." or not frac[1:].isdigit():
        raise ValueError(f"bad fraction in {ts!r}")
    return secs * 1_000_000_000 + int(frac[1:10].ljust(9, b"0"))


def format_time(ns: int) -> str:
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def parse_record(line: bytes) -> Record | None:
    """One line of a log file (without its newline); None if it is not a record
    (a line cut short by a crash, say): readers skip it."""
    parts = line.split(b" ", 3)
    if len(parts) < 3:
        return None
    ts, stream, tag = parts[0], parts[1], parts[2]
    if tag not in (b"F", b"P") or stream not in (b"stdout", b"stderr"):
        return None
    try:
        t = parse_time(ts)
    except ValueError:
        return None
    return Record(t, stream.decode(), tag == b"P", parts[3] if len(parts) == 4 else b"")


def format_record(r: Record) -> bytes:
    return f"{format_time(r.time_ns)} {r.stream} {'P' if r.partial else 'F'} ".encode() + r.text + b"\n"


def render_text(r: Record, timestamps: bool = False, at_line_start: bool = True) -> bytes:
    """A line (or fragment) as `docker logs` prints it; with timestamps, the
    time starts each line (not a fragment that continues one)."""
    head = (format_time(r.time_ns) + " ").encode() if timestamps and at_line_start else b""
    return head + r.text + (b"" if r.partial else b"\n")
