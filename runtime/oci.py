"""The OCI runtime config (config.json) for runc, as a pure function."""

from __future__ import annotations

import resource
from dataclasses import dataclass, field

from portlink.runtime.limits import OOM_SCORE_ADJ, Limits

MASKED = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
          "/sys/firmware", "/sys/devices/virtual/powercap"]
READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


@dataclass(frozen=True)
class ProcessSpec:
    args: list[str]
    env: list[str]
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    hostname: str = ""
    files: dict[str, str] = field(default_factory=dict)   # container path -> host file (hosts, resolv.conf)
    ro_binds: dict[str, str] = field(default_factory=dict)  # container path -> host dir, read-only
    # Extra files handed to the process, read-only (an ambassador's Consul token under
    # /run/secrets): container path -> host file, readable by uid/gid.
    ro_files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Confinement:
    """What confines the process (computed by the plan from runtime.security)."""

    caps: list[str]                                       # bounding = effective = permitted
    seccomp: dict | None                                  # OCI linux.seccomp; None: unconfined
    sysctl: dict[str, str] = field(default_factory=dict)  # namespaced sysctls (ping_group_range)
    readonly_root: bool = False
    # /sys and /dev/mqueue. Each mount of either walks every superblock of its kind on
    # the machine (one per namespace: sget_fc), so a process that reads neither (a
    # hosted ambassador's pause) goes without them (issue 18).
    system_fs: bool = True


# Recursively read-only (mount_setattr, runc >= 1.1 on Linux >= 5.12): a plain "ro"
# bind leaves every mount below the source writable. nosuid and nodev recursively too.
RO_BIND = ["rbind", "ro", "rro", "rnosuid", "rnodev", "rprivate"]


def nofile_limit() -> int:
    # The daemon may not raise RLIMIT_NOFILE past its hard limit (no CAP_SYS_RESOURCE
    # here), and runc fails if asked to: stay at or below it.
    return min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1048576)


def build_config(proc: ProcessSpec, rootfs: str, netns_path: str, cgroups_path: str,
                 confine: Confinement, limits: Limits = Limits(), user_mounts: list[dict] = ()) -> dict:
    """`user_mounts`: volumes, binds and tmpfs (runtime.volspec.oci_mount), parents
    first; mounted before the files portlink writes, so a volume at /etc keeps them."""
    nofile = nofile_limit()
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    ]
    if confine.system_fs:
        mounts += [
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
        ]
    mounts += [dict(m) for m in user_mounts]
    for dest, src in sorted({**proc.ro_binds, **proc.ro_files}.items()):
        mounts.append({"destination": dest, "type": "bind", "source": src, "options": list(RO_BIND)})
    for dest, src in sorted(proc.files.items()):
        mounts.append({"destination": dest, "type": "bind", "source": src,
                       "options": ["rbind", "rprivate"]})
    config = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": proc.uid, "gid": proc.gid},
            "args": proc.args,
            "env": proc.env,
            "cwd": proc.cwd,
            "capabilities": {k: list(confine.caps) for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": confine.readonly_root},
        "hostname": proc.hostname,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "network", "path": netns_path},
            ],
            "maskedPaths": MASKED,
            "readonlyPaths": READONLY,
        },
    }
    # confinement
    if confine.seccomp is not None:
        config["linux"]["seccomp"] = confine.seccomp
    if confine.sysctl:
        config["linux"]["sysctl"] = dict(confine.sysctl)
    return _with_limits(config, limits)


def mount_options(config: dict) -> set[str]:
    """The options of a config's bind mounts, to check against `runc features` (the
    other mounts' options include filesystem data such as size=, which it does not list)."""
    return {o for m in config.get("mounts", []) if m.get("type") == "bind" for o in m.get("options", [])}


def bind_destinations(config: dict) -> list[str]:
    return [m["destination"] for m in config.get("mounts", []) if m.get("type") == "bind"]


def _with_limits(config: dict, limits: Limits) -> dict:
    """linux.resources (pids, memory, cpu), process.rlimits (the default nofile and
    --ulimit, replacing the entry above), and oomScoreAdj 0: runc would otherwise
    leave the container at the daemon's -500, and the OOM killer must take a
    container before the daemon."""
    config["linux"]["resources"].update(limits.resources())
    config["process"]["rlimits"] = limits.rlimits(nofile_limit())
    config["process"]["oomScoreAdj"] = OOM_SCORE_ADJ
    return config
