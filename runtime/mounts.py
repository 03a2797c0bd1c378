"""overlayfs layers for container root filesystems; touches the kernel.

A container's root is a detached mount (fsopen/fsmount): it lies in no mount
namespace until the container's monitor attaches it in its own copy of the
launch namespace (runtime/launch_ns.py), so the daemon's namespace never holds
one mount per container. The daemon reads it through its fd meanwhile."""

from __future__ import annotations

import ctypes
import errno
import os
import threading

from portlink.errors import RuntimeFailure
from portlink.netns.kernel_ns import unmount as _unmount

_libc = ctypes.CDLL(None, use_errno=True)

FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1


def mount_overlay(lower: str, upper: str, work: str, target: str) -> None:
    """Mounted at `target` in this namespace (the offline copy helper's own)."""
    for d in (upper, work, target):
        os.makedirs(d, exist_ok=True)
    if os.path.ismount(target):
        return
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}".encode()
    if _libc.mount(b"overlay", target.encode(), b"overlay", 0, opts) != 0:
        e = ctypes.get_errno()
        raise RuntimeFailure(f"cannot mount the container's overlay at {target}: {os.strerror(e)}")


def _fs_messages(fs: int) -> str:
    """What the filesystem said while being set up (read from its context fd)."""
    said = []
    while True:
        try:
            said.append(os.read(fs, 4096).decode(errors="replace").strip())
        except OSError:
            return "; ".join(m for m in said if m)


class RootMount:
    """A container's overlay root, not attached anywhere yet: `view` is where the
    daemon reads it, `target` where its monitor attaches it. Closing the fd drops
    it unless something attached it meanwhile."""

    def __init__(self, fd: int, target: str) -> None:
        self.fd: int | None = fd
        self.target = target
        self.view = f"/proc/self/fd/{fd}"
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def detached_overlay(lower: str, upper: str, work: str, target: str) -> RootMount:
    for d in (upper, work, target):
        os.makedirs(d, exist_ok=True)
    fs = _libc.fsopen(b"overlay", FSOPEN_CLOEXEC)
    if fs < 0:
        e = ctypes.get_errno()
        raise RuntimeFailure(f"cannot set up the container's overlay: fsopen: {os.strerror(e)}"
                             + (" (Linux >= 5.2 is needed)" if e == errno.ENOSYS else ""))
    try:
        for key, value in (("lowerdir", lower), ("upperdir", upper), ("workdir", work)):
            if _libc.fsconfig(fs, FSCONFIG_SET_STRING, key.encode(), value.encode(), 0) != 0:
                e = ctypes.get_errno()
                raise RuntimeFailure(f"cannot set the overlay's {key} {value}: {os.strerror(e)} {_fs_messages(fs)}".rstrip())
        if _libc.fsconfig(fs, FSCONFIG_CMD_CREATE, None, None, 0) != 0:
            e = ctypes.get_errno()
            raise RuntimeFailure(f"cannot make the container's overlay for {target}: {os.strerror(e)} {_fs_messages(fs)}".rstrip())
        fd = _libc.fsmount(fs, FSMOUNT_CLOEXEC, 0)
        if fd < 0:
            e = ctypes.get_errno()
            raise RuntimeFailure(f"cannot mount the container's overlay for {target}: fsmount: {os.strerror(e)}")
        return RootMount(fd, target)
    finally:
        os.close(fs)


def unmount(target: str) -> None:
    """Lazy unmount; not mounted or missing is fine (netns.kernel_ns.unmount)."""
    _unmount(target)
