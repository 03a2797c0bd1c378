"""`top`: the host's `ps` output kept to a container's processes, as Docker's
daemon does it (moby daemon/top_unix.go), pure."""

from __future__ import annotations

import re

from portlink.errors import InvalidArgument

DEFAULT_ARGS = "-ef"
_PID_KEY = re.compile(r"\s+([^\s]*)=\s*(PID[^\s]*)")


def check_ps_args(ps_args: str) -> list[str]:
    """The arguments `ps` is run with (split at spaces, as Docker does; never a
    shell). Docker's rule: a column may be renamed to PID only as pid=PID."""
    if not isinstance(ps_args, str) or "\0" in ps_args or len(ps_args) > 4096:
        raise InvalidArgument(f"invalid ps options {ps_args!r}")
    for key, value in _PID_KEY.findall(ps_args):
        if key != "pid":
            raise InvalidArgument(f'specifying "{key}={value}" is not allowed')
    return [a for a in ps_args.split(" ") if a]


def _fields(line: str) -> list[str]:
    return line.split()    # ASCII whitespace, as Docker's fieldsASCII (str.split also splits Unicode spaces)


def parse_ps(output: str, pids: set[int]) -> dict:
    """Docker's answer {"Titles": [...], "Processes": [[...], ...]}: the rows whose
    PID is one of `pids`; the last column keeps its spaces (the command line)."""
    lines = output.split("\n")
    titles = _fields(lines[0]) if lines else []
    if "PID" not in titles:
        raise InvalidArgument("couldn't find the PID field in the ps output: keep PID among the columns")
    at = titles.index("PID")
    procs: list[list[str]] = []
    last = None
    for line in lines[1:]:
        if not line.strip():
            continue
        f = _fields(line)
        if len(f) <= at:
            continue
        if f[at] == "-":          # a thread line (ps -L): the process above
            p = last
        else:
            try:
                p = int(f[at])
            except ValueError:
                raise InvalidArgument(f"unexpected pid {f[at]!r} in the ps output") from None
        last = p
        if p in pids:
            n = len(titles)
            procs.append([*f[:n - 1], " ".join(f[n - 1:])] if len(f) >= n else f)
    return {"Titles": titles, "Processes": procs}
