"""Reads containers' resource counters from the kernel (read only): their cgroup
files, /proc/<pid>/io of their processes and /proc/meminfo; interface counters
come from netns/kernel_stats.py. The parsing is runtime/stats.py (pure).

A container's cgroups are found from its init process, /proc/<pid>/cgroup, joined
with the cgroup mounts of /proc/self/mountinfo: that works on v1, v2 and the
hybrid of both (this machine's), whatever cgroupsPath runc was given.

The daemon runs in a host's network namespace only (nsenter --net), so /proc and
/sys/fs/cgroup are the machine's: the files read here are the containers' own."""

from __future__ import annotations

import time

from portlink.netns import kernel_stats, names
from portlink.runtime import limits, stats


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None


def read_cgroup_files(pid: int, mountinfo: str) -> tuple[dict[str, str], dict[str, str], str | None] | None:
    """The stat files of the cgroups of process `pid`: ({"controller/file": text},
    {v2 file: text}, the directory whose cgroup.procs lists its processes).
    None if the process is gone."""
    proc_cgroup = _read(f"/proc/{pid}/cgroup")
    if proc_cgroup is None:
        return None
    v1_dirs, v2_dir = stats.cgroup_dirs(proc_cgroup, mountinfo)
    v1: dict[str, str] = {}
    for controller, files in stats.V1_FILES.items():
        d = v1_dirs.get(controller)
        for name in files if d else ():
            text = _read(f"{d}/{name}")
            if text is not None:
                v1[f"{controller}/{name}"] = text
    v2: dict[str, str] = {}
    for name in stats.V2_FILES if v2_dir else ():
        text = _read(f"{v2_dir}/{name}")
        if text is not None:
            v2[name] = text
    procs_dir = next((v1_dirs[c] for c in ("pids", "memory", "cpuacct") if c in v1_dirs), v2_dir)
    return v1, v2, procs_dir


def oom_kills(cgroups_path: str) -> int | None:
    """How many processes the OOM killer took in the memory cgroup runc made at
    `cgroups_path` (v1 memory.oom_control, else v2 memory.events). Read before
    `runc delete`, which removes the cgroup; None: no such cgroup, or no count."""
    try:
        mountinfo = _read("/proc/self/mountinfo") or ""
        # The cgroup is found by its path as a process in it would list it in /proc/<pid>/cgroup.
        v1_dirs, v2_dir = stats.cgroup_dirs(f"1:memory:{cgroups_path}\n0::{cgroups_path}\n", mountinfo)
        text = _read(f"{v1_dirs['memory']}/memory.oom_control") if "memory" in v1_dirs else None
        if text is not None:
            return limits.oom_kills_v1(text)
        text = _read(f"{v2_dir}/memory.events") if v2_dir else None
        return limits.oom_kills_v2(text) if text is not None else None
    except OSError:
        return None   # unknown: the cleanup of the exit must go on


def read_task_io(procs_dir: str | None) -> stats.BlockIO | None:
    """Storage bytes read and written by the cgroup's processes (and the children
    they reaped), from /proc/<pid>/io: the fallback when the cgroup's own block
    counters are empty. A process that is not the child of one in the container
    (a `portlink exec`) takes its share with it when it ends."""
    text = _read(f"{procs_dir}/cgroup.procs") if procs_dir else None
    if text is None:
        return None
    read = write = 0
    for p in text.split():
        io = _read(f"/proc/{p}/io")
        if io is not None:
            t = stats.task_io(io)
            read, write = read + t.read, write + t.write
    return stats.BlockIO(read, write)


def read_sample(info: dict, veths: dict[str, dict], mountinfo: str, host_memory: int | None) -> dict:
    """One sample of a container (its inspect dict); figures are None when it does
    not run or its process ended while being read."""
    read_ns, read_time = time.monotonic_ns(), time.time()
    files = task = None
    if info["status"] == "running" and info.get("pid"):
        got = read_cgroup_files(info["pid"], mountinfo)
        if got is not None:
            v1, v2, procs_dir = got
            files = stats.figures(v1, v2)
            if files["blkio"] is None:
                # The cgroup keeps no block counters (cgroup v1 on recent kernels
                # counts only once throttling is configured on the device).
                task = read_task_io(procs_dir)
    veth = info["network"].get("veth")
    net = stats.container_net(veths.get(veth)) if veth else None
    return stats.sample(info, files, task, net, host_memory, read_ns, read_time)


def read_samples(infos: list[dict]) -> list[dict]:
    """A sample of each container; one netlink dump serves them all."""
    if not infos:
        return []
    mountinfo = _read("/proc/self/mountinfo") or ""
    host_memory = stats.meminfo_total(_read("/proc/meminfo") or "")
    running = any(i["status"] == "running" and i["network"].get("veth") for i in infos)
    veths = kernel_stats.link_counters(names.VETH_PREFIX) if running else {}
    return [read_sample(i, veths, mountinfo, host_memory) for i in infos]
