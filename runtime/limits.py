"""A container's resource limits (pure, but for `host_bounds`, which reads the
daemon's own rlimits and CPUs): --pids-limit, --memory, --memory-swap, --cpus and
--ulimit, parsed and checked once into `Limits`, rendered into the OCI config
(linux.resources, process.rlimits), and the cgroup's OOM kill count parsed.

Docker's rules throughout, with Podman's default pids limit (2048): a container
with no flags still cannot take the host's pids (a fork bomb stops at 2048)."""

from __future__ import annotations

import os
import resource
from dataclasses import asdict, dataclass

from portlink import parse
from portlink.errors import InvalidArgument

DEFAULT_PIDS = 2048              # Podman's default
MAX_PIDS = 4194304               # PID_MAX_LIMIT: the most pids.max can mean
MIN_MEMORY = 6 << 20             # Docker's minimum --memory
MAX_MEMORY = 1 << 62             # v1 reads anything this large as no limit (stats.UNLIMITED)
CPU_PERIOD = 100000              # microseconds, as Docker's --cpus
MIN_CPU_QUOTA = 1000             # the kernel's minimum cfs quota (1 ms): --cpus 0.01
OOM_SCORE_ADJ = 0                # containers: killed before the daemon (-500)
RLIM_INFINITY = (1 << 64) - 1    # OCI rlimits are uint64; -1 and "unlimited" mean this

# --ulimit names (Docker's) -> Linux's resource numbers (Python's resource module
# lacks some, RLIMIT_LOCKS among them); the OCI type is RLIMIT_<NAME>.
RLIMIT_NUMBERS = {"cpu": 0, "fsize": 1, "data": 2, "stack": 3, "core": 4, "rss": 5, "nproc": 6, "nofile": 7,
                  "memlock": 8, "as": 9, "locks": 10, "sigpending": 11, "msgqueue": 12, "nice": 13,
                  "rtprio": 14, "rttime": 15}
ULIMITS = {name: f"RLIMIT_{name.upper()}" for name in sorted(RLIMIT_NUMBERS)}


@dataclass(frozen=True)
class Ulimit:
    name: str                    # as --ulimit names it: nofile, nproc, core, ...
    soft: int                    # RLIM_INFINITY: unlimited
    hard: int

    @property
    def oci(self) -> dict:
        return {"type": ULIMITS[self.name], "hard": self.hard, "soft": self.soft}


def _show(n: int) -> str:
    return "unlimited" if n == RLIM_INFINITY else str(n)


@dataclass(frozen=True)
class HostBounds:
    """What a limit may not exceed on this host: the daemon's hard rlimits (it may
    not raise them: no CAP_SYS_RESOURCE) by --ulimit name, and its CPUs."""

    hard: dict[str, int]
    cpus: int


def host_bounds() -> HostBounds:
    """The daemon's own bounds (reads its rlimits and CPU count, nothing else)."""
    hard = {}
    for name, number in RLIMIT_NUMBERS.items():
        h = resource.getrlimit(number)[1]
        hard[name] = RLIM_INFINITY if h == resource.RLIM_INFINITY else h
    return HostBounds(hard, len(os.sched_getaffinity(0)) or 1)


@dataclass(frozen=True)
class Limits:
    pids: int | None = DEFAULT_PIDS        # None: unlimited
    memory: int | None = None              # bytes; None: no limit
    memory_swap: int | None = None         # memory + swap, bytes; -1: unlimited swap; None: no memory limit
    cpus: float | None = None              # None: no CPU quota
    ulimits: tuple[Ulimit, ...] = ()       # over the default nofile

    @property
    def cpu_quota(self) -> int | None:
        return None if self.cpus is None else round(self.cpus * CPU_PERIOD)

    def resources(self) -> dict:
        """The OCI linux.resources entries (devices aside)."""
        out: dict = {"pids": {"limit": -1 if self.pids is None else self.pids}}
        if self.memory is not None:
            out["memory"] = {"limit": self.memory, "swap": self.memory_swap}
        if self.cpus is not None:
            out["cpu"] = {"quota": self.cpu_quota, "period": CPU_PERIOD}
        return out

    def rlimits(self, nofile: int) -> list[dict]:
        """The OCI process.rlimits: the default `nofile` (soft and hard) unless
        --ulimit says otherwise, then the --ulimit entries by name."""
        given = {u.name for u in self.ulimits}
        default = [] if "nofile" in given else [Ulimit("nofile", nofile, nofile)]
        return [u.oci for u in (*default, *sorted(self.ulimits, key=lambda u: u.name))]

    def view(self) -> dict:
        """What `inspect` shows (bytes, None: no limit)."""
        return {"pids_limit": self.pids, "memory": self.memory, "memory_swap": self.memory_swap,
                "cpus": self.cpus, "cpu_quota": self.cpu_quota,
                "cpu_period": CPU_PERIOD if self.cpus is not None else None,
                "ulimits": [asdict(u) for u in self.ulimits], "oom_score_adj": OOM_SCORE_ADJ}


# parsing: every message names the flag ------------------------------------------------
def parse_pids(value: int | None) -> int | None:
    """--pids-limit: None is the default (2048); 0 or -1 unlimited (as Docker)."""
    if value is None:
        return DEFAULT_PIDS
    if type(value) is not int or not -1 <= value <= MAX_PIDS:
        raise InvalidArgument(f"invalid --pids-limit {value!r}: expected a number of processes from 1 to "
                              f"{MAX_PIDS}, or 0 or -1 for unlimited")
    return None if value in (0, -1) else value


def parse_memory(value: str | int) -> int | None:
    """--memory: a size (512m, 1g, bytes); '' or 0: no limit."""
    if not isinstance(value, bool) and value in ("", 0):
        return None
    n = _size("--memory", value)
    if n < MIN_MEMORY:
        raise InvalidArgument(f"invalid --memory {value!r}: the minimum is 6m (6 MiB), as Docker's")
    return n


def parse_memory_swap(value: str | int, memory: int | None) -> int | None:
    """--memory-swap (memory plus swap, Docker's): -1 unlimited swap; unset or 0:
    twice --memory; otherwise at least --memory, and only with --memory."""
    if isinstance(value, bool):
        raise InvalidArgument(f"invalid --memory-swap {value!r}: expected a size like 1g, or -1")
    if value in ("", 0, "0"):
        return None if memory is None else min(2 * memory, MAX_MEMORY)
    if value in (-1, "-1"):
        return None if memory is None else -1
    if memory is None:
        raise InvalidArgument(f"invalid --memory-swap {value!r}: --memory-swap needs --memory "
                              "(it is memory plus swap)")
    n = _size("--memory-swap", value)
    if n < memory:
        raise InvalidArgument(f"invalid --memory-swap {value!r}: it is memory plus swap, so at least --memory "
                              f"({memory} bytes); -1 for unlimited swap")
    return n


def _size(flag: str, value: str | int) -> int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidArgument(f"invalid {flag} {value!r}: expected a size like 512m or 1g")
    n = parse.size(flag, value)
    if n > MAX_MEMORY:
        raise InvalidArgument(f"invalid {flag} {value!r}: at most 4 EiB")
    return n


def parse_cpus(value: float | int | str, host_cpus: int) -> float | None:
    """--cpus: a number of CPUs (0.5: half of one); 0: no limit. From 0.01 to the host's CPUs."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or not parse.is_number(str(value)):
        raise InvalidArgument(f"invalid --cpus {value!r}: expected a number of CPUs like 0.5 or 2")
    cpus = float(value)
    if cpus == 0:
        return None
    if not 0 < cpus <= host_cpus or round(cpus * CPU_PERIOD) < MIN_CPU_QUOTA:   # in this order: 1e308
        raise InvalidArgument(f"invalid --cpus {value!r}: expected 0.01 to {host_cpus} (the CPUs of this "
                              "host), or 0 for no limit")
    return cpus


def parse_ulimit(text: str, hard_limits: dict[str, int] | None = None) -> Ulimit:
    """--ulimit name=soft[:hard] (hard defaults to soft; -1 or 'unlimited': no limit),
    at or below the daemon's own hard limit when `hard_limits` are given."""
    if not isinstance(text, str):
        raise InvalidArgument(f"invalid --ulimit {text!r}: expected NAME=SOFT[:HARD], like nofile=1024:2048")
    name, eq, values = text.partition("=")
    if not eq or not values:
        raise InvalidArgument(f"invalid --ulimit {text!r}: expected NAME=SOFT[:HARD], like nofile=1024:2048")
    if name not in ULIMITS:
        raise InvalidArgument(f"invalid --ulimit {text!r}: unknown limit {name!r}; known are "
                              f"{', '.join(sorted(ULIMITS))}")
    soft_text, colon, hard_text = values.partition(":")
    soft = _rlimit_value(text, soft_text)
    hard = _rlimit_value(text, hard_text) if colon else soft
    if soft > hard:
        raise InvalidArgument(f"invalid --ulimit {text!r}: the soft limit is above the hard limit")
    ceiling = (hard_limits or {}).get(name)
    if ceiling is not None and hard > ceiling:
        raise InvalidArgument(f"invalid --ulimit {text!r}: above the daemon's own hard limit of {name} "
                              f"({_show(ceiling)}), which it may not raise")
    return Ulimit(name, soft, hard)


def _rlimit_value(text: str, value: str) -> int:
    v = value.strip()
    if v in ("-1", "unlimited"):
        return RLIM_INFINITY
    if not (v.isascii() and v.isdigit()) or len(v) > 20 or int(v) >= RLIM_INFINITY:
        raise InvalidArgument(f"invalid --ulimit {text!r}: {value!r} is not a number (or -1, unlimited)")
    return int(v)


def parse_limits(pids_limit: int | None = None, memory: str | int = "", memory_swap: str | int = "",
                 cpus: float | int | str = 0, ulimits: list[str] = (), bounds: HostBounds | None = None) -> Limits:
    """The limits of a spec; `bounds` None: a stored spec, checked when it was stored."""
    if not isinstance(ulimits, (list, tuple)):
        raise InvalidArgument("invalid --ulimit: field 'ulimits' must be a list of NAME=SOFT[:HARD] strings")
    mem = parse_memory(memory)
    parsed = [parse_ulimit(u, bounds.hard if bounds else None) for u in ulimits]
    seen: set[str] = set()
    for u in parsed:
        if u.name in seen:
            raise InvalidArgument(f"invalid --ulimit: {u.name} is given twice")
        seen.add(u.name)
    return Limits(pids=parse_pids(pids_limit), memory=mem, memory_swap=parse_memory_swap(memory_swap, mem),
                  cpus=parse_cpus(cpus, bounds.cpus if bounds else 1 << 16), ulimits=tuple(parsed))


# the OOM killer ------------------------------------------------------------------------
def oom_kills_v1(oom_control: str) -> int | None:
    """memory.oom_control's oom_kill line (kernels from 4.13); None without it."""
    return _key(oom_control, "oom_kill")


def oom_kills_v2(memory_events: str) -> int | None:
    """memory.events' oom_kill line."""
    return _key(memory_events, "oom_kill")


def _key(text: str, key: str) -> int | None:
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if k == key and v.strip().isdigit():
            return int(v)
    return None
