"""Resource figures of containers (pure): parsing the kernel's cgroup files
(v1, v2 and the hybrid of both), /proc/<pid>/io and interface counters into one
sample per container, and two samples into the row `portlink stats` shows.

A sample holds raw cumulative counters and the moment they were read; rates
(CPU %) need two samples, so the client computes rows, the daemon only reads.
The reading side is runtime/cgroups.py (files) and netns/kernel_stats.py (netlink)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# v1 reports "no limit" as PAGE_COUNTER_MAX * page size (9223372036854771712 with
# 4 KiB pages); anything this large is no limit at all.
UNLIMITED = 1 << 62


@dataclass(frozen=True)
class Memory:
    usage: int            # the cgroup's charge: RSS + page cache + kernel memory
    rss: int              # anonymous memory (v1 total_rss, v2 anon)
    cache: int            # page cache, tmpfs and shm included (v1 total_cache, v2 file)
    limit: int | None     # None: no limit of its own


@dataclass(frozen=True)
class BlockIO:
    read: int
    write: int


# /proc/<pid>/cgroup and /proc/<pid>/mountinfo ------------------------------------
def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Controller -> path from /proc/<pid>/cgroup. v1 lines name their controllers
    ("4:memory:/portlink/id", "2:cpu,cpuacct:/x"); the v2 line is "0::/path" and
    is returned under the key ""."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            out[""] = path
            continue
        for c in controllers.split(","):
            out[c] = path
    return out


@dataclass(frozen=True)
class CgroupMount:
    root: str          # the part of the hierarchy this mount shows ("/" normally)
    mountpoint: str


def parse_cgroup_mounts(mountinfo: str) -> dict[str, CgroupMount]:
    """Controller -> mount of its hierarchy, from /proc/self/mountinfo ("" for cgroup2).
    Fields: id parent major:minor root mountpoint options [optional...] - fstype source super-options."""
    out: dict[str, CgroupMount] = {}
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        mount = CgroupMount(_unescape(fields[3]), _unescape(fields[4]))
        if tail[0] == "cgroup2":
            out.setdefault("", mount)
        elif tail[0] == "cgroup":
            for opt in tail[2].split(","):
                # super options: the controllers, named hierarchies (name=systemd) and flags
                if opt.startswith("name=") or (opt not in ("rw", "ro") and "=" not in opt):
                    out.setdefault(opt, mount)
    return out


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return field.encode().decode("unicode_escape") if "\\" in field else field


def cgroup_dirs(proc_cgroup: str, mountinfo: str) -> tuple[dict[str, str], str | None]:
    """The directories of a process's cgroups: ({v1 controller: dir}, v2 dir or None).
    A path outside a mount's root (another cgroup namespace) is left out."""
    paths, mounts = parse_proc_cgroup(proc_cgroup), parse_cgroup_mounts(mountinfo)

    def join(key: str) -> str | None:
        m, path = mounts.get(key), paths.get(key)
        if m is None or path is None:
            return None
        root = m.root.rstrip("/")
        if root and not (path == root or path.startswith(root + "/")):
            return None
        rel = path[len(root):].strip("/")
        return f"{m.mountpoint.rstrip('/')}/{rel}" if rel else m.mountpoint

    v1 = {c: d for c in paths if c and (d := join(c)) is not None}
    return v1, join("")


# the figures --------------------------------------------------------------------
def _int(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else None


def _kv(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if v.strip().isdigit():
            out[k] = int(v)
    return out


def cpu_v1(cpuacct_usage: str) -> int | None:
    """cpuacct.usage: CPU time of the cgroup in nanoseconds."""
    return _int(cpuacct_usage)


def cpu_v2(cpu_stat: str) -> int | None:
    """cpu.stat usage_usec, in nanoseconds."""
    usec = _kv(cpu_stat).get("usage_usec")
    return None if usec is None else usec * 1000


def _limit(value: int | None) -> int | None:
    return None if value is None or value >= UNLIMITED else value


def memory_v1(stat: str, usage: str, limit: str) -> Memory | None:
    """memory.stat (hierarchical total_* preferred), memory.usage_in_bytes, memory.limit_in_bytes."""
    kv, used = _kv(stat), _int(usage)
    if used is None:
        return None
    rss = kv.get("total_rss", kv.get("rss", 0))
    cache = kv.get("total_cache", kv.get("cache", 0))
    return Memory(used, rss, cache, _limit(_int(limit)))


def memory_v2(stat: str, current: str, maximum: str) -> Memory | None:
    """memory.stat (anon, file), memory.current, memory.max ("max": none)."""
    kv, used = _kv(stat), _int(current)
    if used is None:
        return None
    return Memory(used, kv.get("anon", 0), kv.get("file", 0), _limit(_int(maximum)))


def blkio_v1(io_service_bytes: str) -> BlockIO | None:
    """blkio.throttle.io_service_bytes (or blkio.io_service_bytes): per-device lines
    "8:0 Read 4096", summed over devices. None when no device has a line: the
    kernel keeps no counters for this cgroup (see cgroups.read_sample)."""
    read = write = 0
    seen = False
    for line in io_service_bytes.splitlines():
        parts = line.split()
        if len(parts) != 3 or ":" not in parts[0] or not parts[2].isdigit():
            continue
        seen = True
        if parts[1] == "Read":
            read += int(parts[2])
        elif parts[1] == "Write":
            write += int(parts[2])
    return BlockIO(read, write) if seen else None


def io_v2(io_stat: str) -> BlockIO:
    """io.stat: "8:0 rbytes=1 wbytes=2 rios=.. wios=.. dbytes=.. dios=..", summed over devices."""
    read = write = 0
    for line in io_stat.splitlines():
        for field in line.split()[1:]:
            k, _, v = field.partition("=")
            if v.isdigit():
                if k == "rbytes":
                    read += int(v)
                elif k == "wbytes":
                    write += int(v)
    return BlockIO(read, write)


def task_io(proc_io: str) -> BlockIO:
    """/proc/<pid>/io: bytes this process and its reaped children made the storage
    layer read and write (writes counted when the page is dirtied, so a write still
    in the page cache counts; cancelled_write_bytes were truncated before writeback)."""
    kv = _kv(proc_io.replace(": ", " "))
    return BlockIO(kv.get("read_bytes", 0), max(0, kv.get("write_bytes", 0) - kv.get("cancelled_write_bytes", 0)))


def meminfo_total(meminfo: str) -> int | None:
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            return int(parts[1]) * (1024 if parts[-1] == "kB" else 1)
    return None


# files -> figures ----------------------------------------------------------------
V1_FILES = {"cpuacct": ["cpuacct.usage"],
            "memory": ["memory.stat", "memory.usage_in_bytes", "memory.limit_in_bytes"],
            "blkio": ["blkio.throttle.io_service_bytes", "blkio.io_service_bytes", "blkio.bfq.io_service_bytes"],
            "pids": ["pids.current", "pids.max"]}
V2_FILES = ["cpu.stat", "memory.stat", "memory.current", "memory.max", "io.stat", "pids.current", "pids.max"]


def figures(v1: dict[str, str], v2: dict[str, str]) -> dict:
    """The figures from the files read: v1 as {controller/file: text} (e.g.
    "memory/memory.stat"), v2 as {file: text}. On a hybrid host each controller
    lives in one hierarchy only: its v1 files win where both exist."""
    cpu = cpu_v1(v1["cpuacct/cpuacct.usage"]) if "cpuacct/cpuacct.usage" in v1 else None
    if cpu is None and "cpu.stat" in v2:
        cpu = cpu_v2(v2["cpu.stat"])
    mem = None
    if "memory/memory.usage_in_bytes" in v1:
        mem = memory_v1(v1.get("memory/memory.stat", ""), v1["memory/memory.usage_in_bytes"],
                        v1.get("memory/memory.limit_in_bytes", ""))
    elif "memory.current" in v2:
        mem = memory_v2(v2.get("memory.stat", ""), v2["memory.current"], v2.get("memory.max", "max"))
    blk = None
    for f in V1_FILES["blkio"]:
        if blk is None and f"blkio/{f}" in v1:
            blk = blkio_v1(v1[f"blkio/{f}"])
    if blk is None and "io.stat" in v2:
        blk = io_v2(v2["io.stat"])
    pids = _int(v1["pids/pids.current"]) if "pids/pids.current" in v1 else _int(v2.get("pids.current"))
    pids_max = v1.get("pids/pids.max") if "pids/pids.current" in v1 else v2.get("pids.max")   # "max": no limit
    version = "v1" if v1 and not v2 else "v2" if v2 and not v1 else "hybrid" if v1 else None
    return {"cgroup": version, "cpu_ns": cpu, "memory": asdict(mem) if mem else None,
            "blkio": asdict(blk) if blk else None, "pids": pids, "pids_limit": _int(pids_max)}


def container_net(veth: dict | None) -> dict | None:
    """The container's traffic from its host-side veth's counters: what the veth
    sends the container receives, so rx and tx swap."""
    if veth is None:
        return None
    return {"rx_bytes": veth["tx_bytes"], "tx_bytes": veth["rx_bytes"],
            "rx_packets": veth["tx_packets"], "tx_packets": veth["rx_packets"],
            "rx_dropped": veth.get("tx_dropped", 0), "tx_dropped": veth.get("rx_dropped", 0)}


def ambassador_conns(stats: dict) -> dict:
    """Connections open and in total from an ambassador's /stats JSON (or its error):
    {"policy", "listeners", "metrics": {"connections_open": {"total": n, ...}, ...}}."""
    if "error" in stats:
        return {"error": stats["error"]}
    try:
        m = stats["metrics"]
        return {"open": int(m["connections_open"]["total"]), "total": int(m["connections_total"]["total"])}
    except (KeyError, TypeError, ValueError):
        return {"error": "the ambassador's /stats has no connection counts"}


def sample(info: dict, files: dict | None, task: BlockIO | None, net: dict | None,
           host_memory: int | None, read_ns: int, read_time: float) -> dict:
    """One sample of a container: `info` is its inspect dict, `files` the output of
    figures() (None: not running, or its cgroup vanished)."""
    f = files or {"cgroup": None, "cpu_ns": None, "memory": None, "blkio": None, "pids": None, "pids_limit": None}
    mem = f["memory"]
    if mem is not None and host_memory:
        # No limit of its own: the host's memory is the limit, as docker shows it.
        mem = {**mem, "limit": min(mem["limit"] or host_memory, host_memory)}
    return {"id": info["id"], "name": info["name"], "status": info["status"], "pid": info.get("pid"),
            "ambassador": bool(info.get("config", {}).get("ambassador")),
            "read_ns": read_ns, "time": read_time, **f, "memory": mem,
            "task_io": asdict(task) if task else None, "net": net if files else None}


# two samples -> a row -----------------------------------------------------------
def cpu_percent(prev: dict | None, cur: dict) -> float | None:
    """CPU time used over wall time elapsed, per core (two busy cores: 200%), as
    docker stats does. None without a comparable earlier sample (first sample, or
    the container restarted in between: its counter started over)."""
    if not prev or prev.get("pid") != cur.get("pid") or prev.get("cpu_ns") is None or cur.get("cpu_ns") is None:
        return None
    dt, dcpu = cur["read_ns"] - prev["read_ns"], cur["cpu_ns"] - prev["cpu_ns"]
    if dt <= 0 or dcpu < 0:
        return None
    return dcpu / dt * 100.0


def row(prev: dict | None, cur: dict) -> dict:
    """What `portlink stats` shows of a container (and prints with --format json)."""
    mem, net, blk = cur.get("memory"), cur.get("net"), cur.get("blkio")
    source = "cgroup" if blk else "tasks" if cur.get("task_io") else None
    blk = blk or cur.get("task_io")
    out = {
        "id": cur["id"], "name": cur["name"], "status": cur["status"], "time": cur["time"],
        "cpu_percent": _round(cpu_percent(prev, cur)),
        "mem_usage": mem["usage"] if mem else None, "mem_limit": mem["limit"] if mem else None,
        "mem_rss": mem["rss"] if mem else None, "mem_cache": mem["cache"] if mem else None,
        "mem_percent": _round(mem["usage"] / mem["limit"] * 100) if mem and mem["limit"] else None,
        "net_rx_bytes": net["rx_bytes"] if net else None, "net_tx_bytes": net["tx_bytes"] if net else None,
        "net_rx_packets": net["rx_packets"] if net else None, "net_tx_packets": net["tx_packets"] if net else None,
        "block_read": blk["read"] if blk else None, "block_write": blk["write"] if blk else None,
        "block_source": source, "pids": cur.get("pids"), "pids_limit": cur.get("pids_limit"),
    }
    if cur.get("ambassador"):
        conns = cur.get("conns") or {}
        out.update(conns_open=conns.get("open"), conns_total=conns.get("total"))
        if "error" in conns:
            out["conns_error"] = conns["error"]
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


# the table ------------------------------------------------------------------------
def binary_size(n: int | None) -> str:
    """Memory, as docker shows it: 1024-based (KiB, MiB, GiB)."""
    return _size(n, 1024.0, ["B", "KiB", "MiB", "GiB", "TiB"])


def decimal_size(n: int | None) -> str:
    """Transferred bytes, as docker shows them: 1000-based (kB, MB, GB)."""
    return _size(n, 1000.0, ["B", "kB", "MB", "GB", "TB"])


def _size(n: int | None, base: float, units: list[str]) -> str:
    if n is None:
        return "--"
    x, i = float(n), 0
    while x >= base and i < len(units) - 1:
        x /= base
        i += 1
    return f"{int(x)}{units[i]}" if i == 0 else f"{x:.3g}{units[i]}"


HEADER = ["NAME", "CONTAINER ID", "CPU %", "MEM USAGE / LIMIT", "RSS + CACHE", "MEM %", "NET I/O",
          "NET PACKETS", "BLOCK I/O", "PIDS", "CONNS"]


def table_cells(r: dict) -> list[str]:
    pct = lambda x: "--" if x is None else f"{x:.2f}%"
    pair = lambda a, b, fmt: "--" if a is None and b is None else f"{fmt(a)} / {fmt(b)}"
    num = lambda n: "--" if n is None else str(n)
    return [r["name"], r["id"][:12], pct(r["cpu_percent"]),
            pair(r["mem_usage"], r["mem_limit"], binary_size),
            "--" if r["mem_rss"] is None else f"{binary_size(r['mem_rss'])} + {binary_size(r['mem_cache'])}",
            pct(r["mem_percent"]),
            pair(r["net_rx_bytes"], r["net_tx_bytes"], decimal_size),
            pair(r["net_rx_packets"], r["net_tx_packets"], num),
            pair(r["block_read"], r["block_write"], decimal_size),
            num(r["pids"]),
            pair(r.get("conns_open"), r.get("conns_total"), num) if "conns_open" in r else ""]
