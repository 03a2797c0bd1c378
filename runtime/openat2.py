"""openat2(2) with RESOLVE_IN_ROOT, through ctypes (Python has no binding).

A container's filesystem is hostile input: any component of a path in it may be
a symlink planted to lead out (`/etc -> /proc/self/root/etc` or `../../..`).
RESOLVE_IN_ROOT makes the kernel resolve the whole path as if `dirfd` were `/`
(absolute links and `..` stay inside), atomically, so nothing can be swapped
between a check and the use; RESOLVE_NO_MAGICLINKS refuses /proc's magic links
(a way out of any root)."""

from __future__ import annotations

import ctypes
import errno
import os
import platform

SYS_OPENAT2 = 437                   # the same number on x86_64 and aarch64 (Linux >= 5.6)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
IN_ROOT = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
RETRIES = 100                       # EAGAIN / EINTR retries of one lookup


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = IN_ROOT) -> int:
    """The fd of `path` resolved under `dirfd` (OSError as open(2) raises it)."""
    if platform.machine() not in ("x86_64", "aarch64"):
        raise OSError(errno.ENOSYS, f"openat2 is wired for x86_64 and aarch64, not {platform.machine()}")
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    raw = os.fsencode(path)
    for _ in range(RETRIES):
        fd = _libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(raw),
                           ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.EINTR):   # EAGAIN: a rename raced the lookup; the kernel says retry
            break
    raise OSError(err, f"{os.strerror(err)}: {path}")


# File systems of the kernel's own files: a copy never writes into them.
PSEUDO_FS = {0x9fa0: "proc", 0x62656572: "sysfs", 0x27e0eb: "cgroup", 0x63677270: "cgroup2",
             0x1cd1: "devpts", 0x73636673: "securityfs", 0x64626720: "debugfs", 0x74726163: "tracefs",
             0xcafe4a11: "bpf", 0x19800202: "mqueue", 0xf97cff8c: "selinuxfs", 0x6e736673: "nsfs"}


def fs_type(fd: int) -> int:
    """fstatfs(2)'s f_type of the file system `fd` is on."""
    buf = ctypes.create_string_buffer(256)          # struct statfs is 120 bytes on 64-bit Linux
    if _libc.fstatfs(ctypes.c_int(fd), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def pseudo_fs(fd: int) -> str | None:
    """The name of the kernel file system `fd` is on (proc, sysfs, ...); None: a real one."""
    return PSEUDO_FS.get(fs_type(fd))
