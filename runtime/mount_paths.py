"""Where each mount of a container lands, resolved before runc sees it (reads the
filesystem, changes nothing).

runc already keeps a mount's destination inside the rootfs (securejoin: a
symlink is followed as if the rootfs were `/`). Two things are left to us:
- a symlink in the container's own rootfs (the image's /var/run -> /run, or one
  the container planted in an earlier run) is followed the same way, inside
  the rootfs, and the result is checked again: it may not land on /proc, /sys,
  `/` or a file portlink writes;
- a target below another mount (`-v data:/srv -v logs:/srv/logs`) walks through
  that mount's source: a volume or host directory other containers may write.
  A symlink there is refused, never followed, so one container cannot redirect
  another's mount by planting a link in a shared volume.
The resolved paths are what the OCI config names, parents first."""

from __future__ import annotations

import os
import stat

from portlink.errors import InvalidArgument
from portlink.runtime import volspec
from portlink.runtime.volspec import Mount

MAX_HOPS = 40   # the kernel's limit on symlinks in one lookup


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def resolve_targets(rootfs: str, mounts: list[tuple[Mount, str | None]]) -> dict[str, str]:
    """`mounts`: each mount with its host source dir (None: a tmpfs), parents first.
    Returns target -> resolved destination; InvalidArgument names what is wrong."""
    placed: list[tuple[list[str], str | None, Mount]] = []   # resolved target parts, host dir, mount
    out: dict[str, str] = {}
    for m, source in mounts:
        dest = _resolve(rootfs, m.target, placed)
        path = "/" + "/".join(dest)
        try:
            volspec.check_target(path, "mount")
        except InvalidArgument as e:
            raise InvalidArgument(f"mount target {m.target!r} resolves through a symbolic link in the "
                                  f"container to {path!r}: {str(e).split(': ', 1)[-1]}") from None
        out[m.target] = path
        placed.append((dest, source, m))
    return out


def resolve_in_image(rootfs: str, target: str) -> list[str]:
    """`target` in an image's rootfs, its symlinks followed inside it (what seeds a volume)."""
    return _resolve(rootfs, target, [])


def _inside(parts: list[str], placed) -> tuple[str | None, list[str], Mount | None]:
    """The host directory `parts` lies in: the deepest mount placed above it (its
    source, the rest of the path) or the rootfs (None)."""
    best = None
    for dest, source, m in placed:
        if parts[:len(dest)] == dest and (best is None or len(dest) >= len(best[0])):
            best = (dest, source, m)
    if best is None:
        return None, parts, None
    return best[1], parts[len(best[0]):], best[2]


def _resolve(rootfs: str, target: str, placed) -> list[str]:
    todo, done, hops = _parts(target), [], 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            done = done[:-1]
            continue
        cand = done + [part]
        base, rest, m = _inside(cand, placed)
        if m is not None and not rest:
            done = cand          # a mount point itself: the source's root, a directory
            continue
        if m is not None and base is None:
            done = cand          # in a tmpfs mounted above: empty at start, runc makes the path
            continue
        host = os.path.join(base if m is not None else rootfs, *rest)
        try:
            st = os.lstat(host)
        except (FileNotFoundError, NotADirectoryError):
            done = cand          # missing: runc creates it (and everything below) as directories
            continue
        if not stat.S_ISLNK(st.st_mode):
            done = cand
            continue
        if m is not None:
            what = f"volume {m.source!r}" if m.type == volspec.VOLUME else f"host directory {m.source!r}"
            raise InvalidArgument(
                f"mount target {target!r} passes through /{'/'.join(cand)}, a symbolic link in {what} "
                f"(mounted at {m.target}): refusing to follow it, another container may have planted it; "
                "remove the link or mount elsewhere")
        hops += 1
        if hops > MAX_HOPS:
            raise InvalidArgument(f"mount target {target!r}: too many symbolic links in the container's rootfs")
        link = os.readlink(host)
        done = [] if link.startswith("/") else done
        todo = _parts(link) + todo
    return done
