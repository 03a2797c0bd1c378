"""Volumes and mounts as a user asks for them (pure): `-v`, `--mount`, `--tmpfs`
and `--volumes-from` parsed and checked once, the image's declared volumes
merged in, and what the OCI config and `inspect` show of them.

Docker's rules, with two decisions of portlink's own:
- a bind's host path must exist (Docker's `-v` creates a missing one as an empty
  root-owned directory; a typo would then silently mount nothing): refused;
- a tmpfs is 64 MiB unless a size is given (Docker: half the RAM), as /dev/shm."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from portlink import parse
from portlink.errors import InvalidArgument, InvalidValue

VOLUME, BIND, TMPFS = "volume", "bind", "tmpfs"
TYPES = (VOLUME, BIND, TMPFS)
# Docker's rule for local volume names; 128 at most (an anonymous one is 64 hex digits).
VOLUME_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{1,127}$")
VOLUME_NAME_RULE = "2 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit"
TMPFS_DEFAULT_SIZE = 64 << 20
MIN_TMPFS_SIZE = 4096
MAX_MOUNTS = 64                  # per container: a bound on what one request makes
MAX_PATH = 4096
# Paths a mount may not cover: the kernel's views the runtime mounts itself, and
# the files portlink writes for every container.
FORBIDDEN_UNDER = ("/proc", "/sys")
MANAGED_FILES = ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname")
_CONTAINER_REF = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Mount:
    """One mount of a container, as recorded with it. `source`: the volume's name
    (volume), the host path (bind), empty (tmpfs, or a volume not yet named)."""

    type: str
    target: str
    source: str = ""
    readonly: bool = False
    anonymous: bool = False          # a volume made for this container alone: `rm -v` removes it
    nocopy: bool = False             # do not seed a new, empty volume from the image
    tmpfs_size: int = 0              # bytes (tmpfs); 0: TMPFS_DEFAULT_SIZE
    tmpfs_mode: int = 0o1777
    tmpfs_exec: bool = False

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Mount":
        return cls(**data)


@dataclass(frozen=True)
class VolumesFrom:
    container: str
    mode: str = ""                   # "", "ro" or "rw": "" keeps each mount's own


# -- checks ---------------------------------------------------------------------------
def check_volume_name(name: str) -> str:
    if not isinstance(name, str) or not VOLUME_NAME_RE.fullmatch(name):
        raise InvalidArgument(f"invalid volume name {name!r}: use {VOLUME_NAME_RULE} "
                              "(a host directory is given by its absolute path)")
    return name


def check_target(target: str, what: str = "mount") -> str:
    """An absolute path in the container, written plainly: not `/`, no `..`, not over
    /proc or /sys, not one of the files portlink writes. Returns it normalised."""
    if not isinstance(target, str) or not target.startswith("/"):
        raise InvalidArgument(f"invalid {what} target {target!r}: expected an absolute path in the container")
    _plain_path(target, f"{what} target")
    norm = posixpath.normpath(target).replace("//", "/")
    if norm == "/":
        raise InvalidArgument(f"invalid {what} target {target!r}: cannot mount over the container's root")
    for top in FORBIDDEN_UNDER:
        if norm == top or norm.startswith(top + "/"):
            raise InvalidArgument(f"invalid {what} target {target!r}: {top} is the kernel's, mounted by the runtime")
    if norm in MANAGED_FILES:
        raise InvalidArgument(f"invalid {what} target {target!r}: portlink writes that file for every container")
    return norm


def check_source(source: str) -> str:
    """A bind's host path: absolute, plain (existence is checked against the host)."""
    if not isinstance(source, str) or not source.startswith("/"):
        raise InvalidArgument(f"invalid bind source {source!r}: expected an absolute path on the host")
    _plain_path(source, "bind source")
    return posixpath.normpath(source).replace("//", "/")


def _plain_path(path: str, what: str) -> None:
    if len(path) > MAX_PATH or any(ord(ch) < 0x20 or ch == "\x7f" for ch in path):
        raise InvalidArgument(f"invalid {what} {path!r}: at most {MAX_PATH} characters, no control characters")
    if ".." in path.split("/"):
        raise InvalidArgument(f"invalid {what} {path!r}: '..' is not allowed")


def _bool(what: str, value: str) -> bool:
    v = value.lower()
    if v in ("", "1", "true", "yes"):
        return True
    if v in ("0", "false", "no"):
        return False
    raise InvalidArgument(f"invalid {what} value {value!r}: expected true or false")


def _tmpfs_size(what: str, value: str) -> int:
    try:
        n = parse.size(what, value)
    except InvalidValue as e:
        raise InvalidArgument(str(e)) from None
    if not MIN_TMPFS_SIZE <= n <= 1 << 50:
        raise InvalidArgument(f"invalid {what} {value!r}: expected 4k to 1p")
    return n


def _tmpfs_mode(what: str, value: str) -> int:
    if not re.fullmatch(r"[0-7]{1,4}", value):
        raise InvalidArgument(f"invalid {what} {value!r}: expected an octal mode like 1777 or 700")
    return int(value, 8)


# -- the flags ------------------------------------------------------------------------------
def parse_volume_flag(text: str) -> Mount:
    """`-v [SOURCE:]TARGET[:OPTIONS]`: a named volume, a host path (absolute) or,
    with the target alone, an anonymous volume. OPTIONS: ro, rw, nocopy."""
    if not isinstance(text, str) or not text:
        raise InvalidArgument(f"invalid -v {text!r}: expected [NAME:|HOST-PATH:]TARGET[:ro]")
    parts = text.split(":")
    if len(parts) > 3:
        raise InvalidArgument(f"invalid -v {text!r}: expected [NAME:|HOST-PATH:]TARGET[:OPTIONS] "
                              "(use --mount for paths with ':')")
    opts = ""
    if len(parts) == 3:
        source, target, opts = parts
    elif len(parts) == 2 and parts[1].startswith("/"):
        source, target = parts
    elif len(parts) == 2 and parts[0].startswith("/"):
        source, (target, opts) = "", parts      # /path:ro, an anonymous volume
    elif len(parts) == 2:
        raise InvalidArgument(f"invalid -v {text!r}: the target {parts[1]!r} must be an absolute path "
                              "in the container")
    else:
        source, target = "", parts[0]
    if any(p == "" for p in parts):
        raise InvalidArgument(f"invalid -v {text!r}: an empty part")
    readonly, nocopy = False, False
    for o in opts.split(",") if opts else ():
        if o in ("ro", "rw"):
            readonly = o == "ro"
        elif o == "nocopy":
            nocopy = True
        else:
            raise InvalidArgument(f"invalid -v {text!r}: unknown option {o!r} (ro, rw, nocopy)")
    target = check_target(target, "-v")
    if source.startswith("/"):
        if nocopy:
            raise InvalidArgument(f"invalid -v {text!r}: nocopy applies to volumes, not host paths")
        return Mount(BIND, target, check_source(source), readonly)
    if source:
        check_volume_name(source)
    return Mount(VOLUME, target, source, readonly, anonymous=not source, nocopy=nocopy)


_MOUNT_KEYS = {"type", "source", "src", "target", "destination", "dst", "readonly", "ro",
               "volume-nocopy", "tmpfs-size", "tmpfs-mode", "bind-propagation"}


def parse_mount_flag(text: str) -> Mount:
    """`--mount type=volume|bind|tmpfs,source=..,target=..,readonly,...` (Docker's keys)."""
    if not isinstance(text, str) or not text:
        raise InvalidArgument(f"invalid --mount {text!r}: expected type=...,target=...")
    kv: dict[str, str] = {}
    for field in text.split(","):
        key, sep, value = field.partition("=")
        key = key.strip().lower()
        if key not in _MOUNT_KEYS:
            raise InvalidArgument(f"invalid --mount {text!r}: unknown key {key!r} "
                                  f"(known: {', '.join(sorted(_MOUNT_KEYS))})")
        if key in ("src",):
            key = "source"
        if key in ("destination", "dst"):
            key = "target"
        if key == "ro":
            key = "readonly"
        if key in kv:
            raise InvalidArgument(f"invalid --mount {text!r}: {key} given twice")
        if not sep and key not in ("readonly", "volume-nocopy"):
            raise InvalidArgument(f"invalid --mount {text!r}: {key} needs a value ({key}=...)")
        kv[key] = value
    kind = kv.pop("type", VOLUME)
    if kind not in TYPES:
        raise InvalidArgument(f"invalid --mount {text!r}: type {kind!r} is not one of {', '.join(TYPES)}")
    if "target" not in kv:
        raise InvalidArgument(f"invalid --mount {text!r}: no target")
    target = check_target(kv.pop("target"), "--mount")
    readonly = _bool("--mount readonly", kv.pop("readonly")) if "readonly" in kv else False
    source = kv.pop("source", "")
    if "bind-propagation" in kv:
        if kind != BIND or kv.pop("bind-propagation") not in ("rprivate", "private"):
            raise InvalidArgument(f"invalid --mount {text!r}: only bind-propagation=rprivate (the default) "
                                  "is supported: mounts never propagate between host and container")
    own = {VOLUME: {"volume-nocopy"}, BIND: set(), TMPFS: {"tmpfs-size", "tmpfs-mode"}}[kind]
    stray = sorted(set(kv) - own)
    if stray:
        raise InvalidArgument(f"invalid --mount {text!r}: {', '.join(stray)} does not apply to type={kind}")
    if kind == BIND:
        if not source:
            raise InvalidArgument(f"invalid --mount {text!r}: a bind needs source=HOST-PATH")
        return Mount(BIND, target, check_source(source), readonly)
    if kind == TMPFS:
        if source:
            raise InvalidArgument(f"invalid --mount {text!r}: a tmpfs has no source")
        size = _tmpfs_size("--mount tmpfs-size", kv["tmpfs-size"]) if "tmpfs-size" in kv else 0
        mode = _tmpfs_mode("--mount tmpfs-mode", kv["tmpfs-mode"]) if "tmpfs-mode" in kv else 0o1777
        return Mount(TMPFS, target, readonly=readonly, tmpfs_size=size, tmpfs_mode=mode)
    if source:
        check_volume_name(source)
    nocopy = _bool("--mount volume-nocopy", kv["volume-nocopy"]) if "volume-nocopy" in kv else False
    return Mount(VOLUME, target, source, readonly, anonymous=not source, nocopy=nocopy)


def parse_tmpfs_flag(text: str) -> Mount:
    """`--tmpfs TARGET[:OPTIONS]`: OPTIONS ro, rw, exec, noexec, nosuid, nodev,
    size=64m, mode=1777. nosuid and nodev are always on (suid, dev refused)."""
    if not isinstance(text, str) or not text:
        raise InvalidArgument(f"invalid --tmpfs {text!r}: expected TARGET[:OPTIONS]")
    target, _, opts = text.partition(":")
    target = check_target(target, "--tmpfs")
    readonly, exe, size, mode = False, False, 0, 0o1777
    for o in opts.split(",") if opts else ():
        key, _, value = o.partition("=")
        if o in ("ro", "rw"):
            readonly = o == "ro"
        elif o in ("exec", "noexec"):
            exe = o == "exec"
        elif o in ("nosuid", "nodev"):
            pass
        elif key == "size":
            size = _tmpfs_size("--tmpfs size", value)
        elif key == "mode":
            mode = _tmpfs_mode("--tmpfs mode", value)
        elif o in ("suid", "dev"):
            raise InvalidArgument(f"invalid --tmpfs {text!r}: {o} is not allowed (tmpfs mounts are nosuid, nodev)")
        else:
            raise InvalidArgument(f"invalid --tmpfs {text!r}: unknown option {o!r} "
                                  "(ro, rw, exec, noexec, size=, mode=)")
    return Mount(TMPFS, target, readonly=readonly, tmpfs_size=size, tmpfs_mode=mode, tmpfs_exec=exe)


def parse_volumes_from(text: str) -> VolumesFrom:
    """`--volumes-from CONTAINER[:ro|:rw]`."""
    if not isinstance(text, str):
        raise InvalidArgument(f"invalid --volumes-from {text!r}: expected CONTAINER[:ro|:rw]")
    ref, _, mode = text.partition(":")
    if not _CONTAINER_REF.fullmatch(ref):
        raise InvalidArgument(f"invalid --volumes-from {text!r}: expected a container's name or id")
    if mode not in ("", "ro", "rw"):
        raise InvalidArgument(f"invalid --volumes-from {text!r}: the mode is ro or rw")
    return VolumesFrom(ref, mode)


def parse_all(volumes: list[str], mounts: list[str], tmpfs: list[str]) -> list[Mount]:
    """All the explicit mounts of a request; one target at most once."""
    out = ([parse_volume_flag(v) for v in volumes] + [parse_mount_flag(m) for m in mounts]
           + [parse_tmpfs_flag(t) for t in tmpfs])
    if len(out) > MAX_MOUNTS:
        raise InvalidArgument(f"too many mounts ({len(out)}): at most {MAX_MOUNTS} per container")
    seen: set[str] = set()
    for m in out:
        if m.target in seen:
            raise InvalidArgument(f"duplicate mount point {m.target!r}")
        seen.add(m.target)
    return out


# -- resolution (at create) ------------------------------------------------------------------
def shared(m: Mount, mode: str) -> Mount:
    """A mount of another container as --volumes-from gives it: no tmpfs (its
    content is that container's), never seeded, the mode forced when given."""
    return replace(m, readonly=m.readonly if not mode else mode == "ro", nocopy=True, anonymous=False)


def resolve(explicit: list[Mount], from_others: list[Mount], image_volumes: list[str],
            new_name: Callable[[], str]) -> tuple[Mount, ...]:
    """Docker's precedence: explicit mounts, then --volumes-from, then the image's
    VOLUMEs as anonymous volumes, one mount per target. Anonymous volumes get
    their names here. Sorted parents first, the order they are mounted in."""
    by_target: dict[str, Mount] = {}
    for m in explicit:
        by_target[m.target] = replace(m, source=new_name()) if m.type == VOLUME and not m.source else m
    for m in from_others:
        by_target.setdefault(m.target, m)
    for v in image_volumes:
        t = check_target(v, "image VOLUME")
        if t not in by_target:
            by_target[t] = Mount(VOLUME, t, new_name(), anonymous=True)
    if len(by_target) > MAX_MOUNTS:
        raise InvalidArgument(f"too many mounts ({len(by_target)}): at most {MAX_MOUNTS} per container")
    return tuple(sorted(by_target.values(), key=lambda m: (m.target.count("/"), m.target)))


def volume_names(mounts: tuple[Mount, ...] | list[Mount]) -> list[str]:
    return [m.source for m in mounts if m.type == VOLUME]


# -- what the runtime and `inspect` see ----------------------------------------------------
# nosuid and nodev on every volume and bind, recursively (runc >= 1.1: mount_setattr).
BIND_OPTIONS = ["rbind", "rprivate", "nosuid", "nodev", "rnosuid", "rnodev"]
RO_OPTIONS = ["ro", "rro"]


def oci_mount(m: Mount, source: str, destination: str) -> dict:
    """The OCI config entry: `source` on the host (a volume's data dir, a bind's
    path), `destination` resolved inside the rootfs (runtime.mount_paths)."""
    if m.type == TMPFS:
        opts = ["nosuid", "nodev", "exec" if m.tmpfs_exec else "noexec",
                f"mode={m.tmpfs_mode:o}", f"size={m.tmpfs_size or TMPFS_DEFAULT_SIZE}"]
        return {"destination": destination, "type": "tmpfs", "source": "tmpfs",
                "options": opts + (["ro"] if m.readonly else [])}
    return {"destination": destination, "type": "bind", "source": source,
            "options": BIND_OPTIONS + (RO_OPTIONS if m.readonly else [])}


def docker_view(m: Mount, source: str) -> dict:
    """One entry of `inspect`'s Mounts, with Docker's keys."""
    return {"Type": m.type, "Name": m.source if m.type == VOLUME else "", "Source": source,
            "Destination": m.target, "Driver": "local" if m.type == VOLUME else "",
            "Mode": "ro" if m.readonly else "rw",
            "RW": not m.readonly, "Propagation": "rprivate" if m.type == BIND else ""}
