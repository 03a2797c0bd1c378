"""Network namespaces held by path (touches the kernel).

Namespaces are made by unshare(2) in the calling thread and bind-mounted onto a
file, then the thread returns to where it was: no fork, about 1 ms. setns(2) is
per thread, so each entry is paired with a restore in a finally block."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 0x2

_libc = ctypes.CDLL(None, use_errno=True)
_lock = threading.Lock()


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _setns(fd: int) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET), "setns")


def current_netns_fd() -> int:
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


@contextlib.contextmanager
def entered(path: str):
    """Run the block with this thread inside the namespace at `path`.

    Sockets opened inside stay bound to that namespace after the block ends."""
    back = current_netns_fd()
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(back)
    finally:
        os.close(target)
        os.close(back)


def create_netns(path: str) -> None:
    """Create a new, empty network namespace held by a bind mount at `path`."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    back = current_netns_fd()
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        try:
            src = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
            _check(_libc.mount(src, path.encode(), b"none", MS_BIND, None), f"bind mount {path}")
        finally:
            _setns(back)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    finally:
        os.close(back)


def mount_points() -> list[str]:
    """This mount namespace's mount points (/proc/self/mountinfo)."""
    with open("/proc/self/mountinfo") as f:
        return [unescape_mount_field(line.split(" ", 5)[4]) for line in f]


def unescape_mount_field(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo."""
    return field.encode().decode("unicode_escape").encode("latin-1").decode(errors="surrogateescape")


def _mount_state(path: str) -> tuple[bool, bool]:
    """(`path` is a mount point, something is mounted below it), from the mount
    table: os.path.ismount misses a bind mount on the same filesystem."""
    points = mount_points()
    return path in points, any(p.startswith(path + "/") for p in points)


def own_mount(path: str) -> bool:
    """Make directory `path` a mount of its own (bound onto itself), as iproute2
    does for /run/netns: the namespace files bind-mounted in it are then its
    children, not children of the filesystem holding it, whose every child each
    overlay mount walks (the kernel's clone_private_mount: O(namespaces) per
    container start, issue 18). Idempotent. A directory already holding mounts
    (files of an older portlink) is left as it is: a mount over it would hide
    them. True: made now."""
    os.makedirs(path, exist_ok=True)
    path = os.path.realpath(path)
    if any(_mount_state(path)):
        return False
    _check(_libc.mount(path.encode(), path.encode(), b"none", MS_BIND, None), f"bind mount {path} onto itself")
    return True


def drop_own_mount(path: str) -> bool:
    """Undo own_mount once nothing is mounted in `path`. True: unmounted."""
    path = os.path.realpath(path)
    if _mount_state(path) != (True, False):
        return False
    unmount(path)
    return True


def unmount(path: str) -> None:
    """Lazy unmount (MNT_DETACH); not mounted or missing is fine, anything else is OSError."""
    if _libc.umount2(path.encode(), MNT_DETACH) != 0:
        e = ctypes.get_errno()
        if e not in (errno.EINVAL, errno.ENOENT):
            raise OSError(e, f"umount {path}: {os.strerror(e)}")


def delete_netns(path: str) -> None:
    """Unmount and remove `path`; a namespace already gone is not an error."""
    unmount(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def write_sysctl(name: str, value: str) -> None:
    """Set a sysctl of the calling thread's network namespace (net.* only)."""
    with open("/proc/sys/" + name.replace(".", "/"), "w") as f:
        f.write(value)
