"""Which process a pid is: the pid and its start time (field 22 of
/proc/<pid>/stat, clock ticks since boot). After a reboot, or enough forks, a
recorded pid names some other process; the start time tells them apart."""

from __future__ import annotations


def parse_start(stat: str) -> int | None:
    """Field 22 (starttime) of a /proc/<pid>/stat line. The command (field 2)
    may hold spaces and ')': fields are counted after its last ')'."""
    try:
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def process_start(pid: int) -> int | None:
    """The start time of `pid` now; None: no such process (or unreadable)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return parse_start(f.read(4096).decode(errors="replace"))
    except OSError:
        return None


def same_process(recorded: int | None, now: int | None) -> bool:
    """Is the process seen now (start time `now`, None: gone) the one recorded?
    A row from before start times were recorded (None) trusts the pid alone."""
    if now is None:
        return False
    return recorded is None or recorded == now


def is_same(pid: int, recorded: int | None) -> bool:
    return same_process(recorded, process_start(pid))
