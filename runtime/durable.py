"""Writes that survive a power cut: a file's data and the directory entry that
names it both reach the disk before anything relies on them (a rename alone
may come back after a crash as an empty or missing file)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from portlink.errors import RuntimeFailure

_libc = ctypes.CDLL(None, use_errno=True)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a create, rename or unlink in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data`: a temporary file, fsynced, renamed over it,
    then the directory fsynced. A crash leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def sync_tree(path: Path) -> None:
    """Flush everything written under `path` (a whole extracted image tree):
    syncfs of its filesystem, one call rather than an fsync per file."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            e = ctypes.get_errno()
            raise RuntimeFailure(f"cannot flush {path} to disk: {os.strerror(e)}")
    finally:
        os.close(fd)
