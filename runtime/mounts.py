"""overlayfs layers for container root filesystems; touches the kernel."""

from __future__ import annotations

import ctypes
import os

from portlink.errors import RuntimeFailure
from portlink.netns.kernel_ns import unmount as _unmount

_libc = ctypes.CDLL(None, use_errno=True)


def mount_overlay(lower: str, upper: str, work: str, target: str) -> None:
    for d in (upper, work, target):
        os.makedirs(d, exist_ok=True)
    if os.path.ismount(target):
        return
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}".encode()
    if _libc.mount(b"overlay", target.encode(), b"overlay", 0, opts) != 0:
        e = ctypes.get_errno()
        raise RuntimeFailure(f"cannot mount the container's overlay at {target}: {os.strerror(e)}")


def unmount(target: str) -> None:
    """Lazy unmount; not mounted or missing is fine (netns.kernel_ns.unmount)."""
    _unmount(target)
