"""A container's confinement, as pure functions: --cap-add/--cap-drop names and
the capability set they give, and --security-opt (seccomp=unconfined|PATH,
no-new-privileges). The seccomp profile itself is resolved by runtime.seccomp."""

from __future__ import annotations

from dataclasses import dataclass

from portlink.errors import InvalidArgument
from portlink.runtime.seccomp import DEFAULT_PROFILE

# Every capability Linux knows, in bit order (CAP_CHOWN is 0, CAP_CHECKPOINT_RESTORE 40).
ALL_CAPS = tuple(f"CAP_{c}" for c in (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE"))

# Docker's default set without CAP_NET_RAW, as Podman does: no raw sockets (no forged
# addresses on the bridge); ping works through ICMP datagram sockets (PING_SYSCTL).
DEFAULT_CAPS = tuple(f"CAP_{c}" for c in (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"))

# Unprivileged ICMP echo sockets for every group, so ping needs no CAP_NET_RAW.
PING_SYSCTL = {"net.ipv4.ping_group_range": "0 2147483647"}

# Ambassadors (portlink's own forwarder, runtime.ambassadors) are confined further,
# whatever the request says: a user of their own, no capabilities at all, a
# read-only root. Not 65534 (nobody): that id is shared by NFS squashing, unmapped
# user-namespace ids and host daemons, while a file handed to ambassadors (a
# Consul token, owned by this id, mode 0400) must be readable by them and by
# nothing else on the host. 65536: past the 16-bit ids, below the subordinate
# ranges useradd hands out (/etc/subuid starts at 100000).
AMBASSADOR_UID = AMBASSADOR_GID = 65536
# Its ports (80, 443, 5432, ...) in its own network namespace, without
# CAP_NET_BIND_SERVICE: what Docker >= 20.10 sets for every container.
AMBASSADOR_SYSCTL = {"net.ipv4.ip_unprivileged_port_start": "0"}

UNCONFINED = "unconfined"
_SECURITY_OPTS_HELP = ("use seccomp=unconfined, seccomp=PATH (a profile file on the daemon's host) "
                       "or no-new-privileges")


def cap_name(flag: str, value: str) -> str:
    """'net_raw', 'CAP_NET_RAW', 'all' -> 'CAP_NET_RAW', 'ALL'."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{flag} takes capability names, not {value!r}")
    up = value.strip().upper()
    if up == "ALL":
        return "ALL"
    name = up if up.startswith("CAP_") else "CAP_" + up
    if name not in ALL_CAPS:
        raise InvalidArgument(f"{flag} {value!r}: unknown capability; give a name such as "
                              "NET_RAW or CAP_SYS_ADMIN, or ALL")
    return name


def check_caps(cap_add: list[str], cap_drop: list[str]) -> None:
    add = {cap_name("--cap-add", c) for c in cap_add}
    drop = {cap_name("--cap-drop", c) for c in cap_drop}
    both = sorted((add & drop) - {"ALL"})
    if both:
        raise InvalidArgument(f"{', '.join(both)} in both --cap-add and --cap-drop: keep one")


def capabilities(cap_add: list[str], cap_drop: list[str]) -> list[str]:
    """The container's capabilities, in bit order: the default set, or all with
    --cap-add ALL; minus the drops (all with --cap-drop ALL); plus the adds."""
    add = {cap_name("--cap-add", c) for c in cap_add}
    drop = {cap_name("--cap-drop", c) for c in cap_drop}
    have = set(ALL_CAPS) if "ALL" in add else set(DEFAULT_CAPS)
    have = set() if "ALL" in drop else have - drop
    have |= add - {"ALL"}
    return [c for c in ALL_CAPS if c in have]


@dataclass(frozen=True)
class SecurityOpts:
    seccomp: str = DEFAULT_PROFILE      # a profile file, or UNCONFINED

    @property
    def unconfined(self) -> bool:
        return self.seccomp == UNCONFINED


def parse_security_opts(opts: list[str]) -> SecurityOpts:
    """--security-opt values; no-new-privileges is accepted because it is always on."""
    seccomp = None
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep:
            key, sep, value = opt.partition(":")   # Docker's older spelling
        if key == "no-new-privileges" and value in ("", "true"):
            continue
        if key == "no-new-privileges":
            raise InvalidArgument(f"--security-opt {opt!r}: no-new-privileges is always on in portlink")
        if key != "seccomp":
            raise InvalidArgument(f"--security-opt {opt!r} is not supported: {_SECURITY_OPTS_HELP}")
        if seccomp is not None:
            raise InvalidArgument(f"--security-opt {opt!r}: seccomp is given twice; keep one")
        if value != UNCONFINED and not value.startswith("/"):
            raise InvalidArgument(f"--security-opt {opt!r}: seccomp takes 'unconfined' or the "
                                  "absolute path of a profile file on the daemon's host")
        seccomp = value
    return SecurityOpts(seccomp) if seccomp else SecurityOpts()


def effective(security_opt: list[str], cap_add: list[str], cap_drop: list[str],
              ambassador: bool = False) -> dict:
    """What `inspect` shows: the confinement a start applies."""
    if ambassador:
        return {"seccomp": DEFAULT_PROFILE, "capabilities": [], "no_new_privileges": True,
                "sysctl": dict(AMBASSADOR_SYSCTL), "user": f"{AMBASSADOR_UID}:{AMBASSADOR_GID}",
                "readonly_rootfs": True}
    return {"seccomp": parse_security_opts(security_opt).seccomp,
            "capabilities": capabilities(cap_add, cap_drop),
            "no_new_privileges": True, "sysctl": dict(PING_SYSCTL)}
