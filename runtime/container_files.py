"""The files portlink writes for a container (hosts, resolv.conf, hostname).

They are bind-mounted writable into the container, so whatever is found there
later is hostile input: any bytes, any size, and (should the container dir ever
be reachable) a symlink, a directory or a FIFO in place of the file. So a file
is opened without following a link and without blocking, must be a regular
file, is read no further than the text it should hold (size compared first),
and is rewritten in place: the bind mount pins the inode, a rename would go
unseen inside the container."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from portlink.errors import RuntimeFailure

_OPEN = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC   # NONBLOCK: a FIFO opens at once


class ContainerFileError(RuntimeFailure):
    """A container's file is not a regular file (or cannot be opened as one)."""


def matches(size: int, prefix: bytes, want: bytes) -> bool:
    """The file holds exactly `want`: its size first, so only a file of the right
    size is ever read, and then at most len(want) bytes of it."""
    return size == len(want) and prefix == want


def read_prefix(fd: int, limit: int) -> bytes:
    """At most `limit` bytes from the start of `fd` (a short read ends it)."""
    out = bytearray()
    while len(out) < limit:
        chunk = os.pread(fd, limit - len(out), len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _write_all(fd: int, data: bytes) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], done)


def _open_regular(path: Path, flags: int) -> int:
    try:
        fd = os.open(path, flags | _OPEN)
    except FileNotFoundError:
        raise
    except OSError as e:   # ELOOP: a symlink; EISDIR: a directory; ENXIO: a FIFO without a reader
        raise ContainerFileError(f"{path.name} is not a regular file ({os.strerror(e.errno)})") from e
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ContainerFileError(f"{path.name} is not a regular file (mode {stat.filemode(mode)})")
    return fd


def rewrite_in_place(path: Path, text: str) -> bool:
    """Make a running container's file hold `text`, keeping its inode. Returns
    whether it was written. FileNotFoundError: gone (the container is being
    removed); ContainerFileError: not a regular file, left as it is."""
    want = text.encode()
    fd = _open_regular(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if matches(size, read_prefix(fd, len(want)) if size == len(want) else b"", want):
            return False
        _write_all(fd, want)
        os.ftruncate(fd, len(want))
        return True
    finally:
        os.close(fd)


def write_fresh(path: Path, text: str) -> None:
    """Write a file before the container starts (nothing is bind-mounted yet):
    whatever is at `path` (an old file of any size, a symlink, a directory, a
    FIFO) is replaced by a new regular file; a symlink's target is never touched."""
    tmp = path.with_name(f".{path.name}.new")
    _remove(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN, 0o644)
    try:
        _write_all(fd, text.encode())
    finally:
        os.close(fd)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)   # a rename cannot replace a directory
    os.replace(tmp, path)     # replaces a symlink or FIFO itself, never what a link points to


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
