"""Safe extraction of a root filesystem tarball (hostile input).

The tarball is a regular file opened without blocking; every member is checked
before it is written: no `..`, nothing through or over a symlink, no hard link
outside, no device or FIFO (skipped), no setuid bits, bounded header, member
count and bytes (so a gzip bomb stops at its first header)."""

from __future__ import annotations

import errno
import lzma
import os
import posixpath
import stat
import tarfile
import time
import zlib
from pathlib import Path
from typing import BinaryIO, Callable

from portlink.errors import InvalidArgument, PortlinkError, RuntimeFailure

PROGRESS_INTERVAL = 0.1  # seconds between progress() calls
# Bounds of one import, so a hostile or broken tar (a gzip bomb, millions of empty
# entries, a gigabyte "long name") fails with a message instead of filling the disk
# or the daemon's memory. A large distribution rootfs has ~200k entries and a few GB.
MAX_IMAGE_BYTES = 32 << 30        # sum of the members' sizes
MAX_MEMBERS = 500_000              # tarfile keeps ~0.5 KB per member in memory
MAX_EXT_HEADER = 1 << 20           # one pax / GNU long-name header (read into memory whole)
_EXT_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
              tarfile.SOLARIS_XHDTYPE)

Progress = Callable[[int, int], None]


def open_regular(tar_path) -> BinaryIO:
    """Open the tarball for reading; only a regular file (a FIFO would block the
    daemon forever, /dev/zero would never end)."""
    if not isinstance(tar_path, (str, os.PathLike)):
        raise InvalidArgument(f"invalid tar path {tar_path!r}: give the absolute path of a tar file")
    path = os.fspath(tar_path)
    if not isinstance(path, str) or "\0" in path or not os.path.isabs(path):
        raise InvalidArgument(f"invalid tar path {path!r}: give the absolute path of a tar file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # NONBLOCK: a FIFO opens at once
    except OSError as e:
        raise InvalidArgument(f"cannot read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidArgument(f"cannot read {path}: not a regular file")
    return os.fdopen(fd, "rb")


class BoundedInfo(tarfile.TarInfo):
    """tarfile reads a pax or GNU long-name header into memory whole, before any
    filter sees a member: refuse one that declares more than MAX_EXT_HEADER bytes."""

    def _proc_member(self, tarfile_):
        if self.type in _EXT_TYPES and self.size > MAX_EXT_HEADER:
            raise InvalidArgument(f"tar header at offset {self.offset} is an extended header of "
                                  f"{self.size} bytes (limit {MAX_EXT_HEADER}); refusing the archive")
        return super()._proc_member(tarfile_)


def _neutral_attrs(member: tarfile.TarInfo, name: str) -> dict:
    """Ownership and times a hostile header could make os.chown/os.utime choke on:
    NUL in names is refused; an impossible uid/gid is refused; an absurd mtime becomes 0."""
    for what, value in (("name", member.name), ("link target", member.linkname)):
        if "\0" in value:
            raise InvalidArgument(f"tar member {member.name!r}: {what} contains a NUL byte; refusing the archive")
    for what in ("uid", "gid"):
        value = getattr(member, what)
        if not isinstance(value, int) or not 0 <= value < 0xFFFFFFFF:  # (uid_t)-1 means "unchanged"
            raise InvalidArgument(f"tar member {name!r}: {what} {value!r} is out of range; refusing the archive")
    mtime = member.mtime
    if not isinstance(mtime, (int, float)) or not -(1 << 40) < mtime < (1 << 40):  # NaN fails both
        return {"mtime": 0}
    return {}


def _relative(path: str, member: tarfile.TarInfo, what: str = "path") -> str:
    """Make an archive path relative to the rootfs; refuse `..` instead of guessing what it meant."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"tar member {member.name!r}: {what} {path!r} contains '..'; refusing the archive")
    return "/".join(parts) or "."


def _check_parents(dest: str, rel: str, member: tarfile.TarInfo) -> None:
    """Every existing parent of rel must be a real directory: never write through a symlink."""
    path = dest
    for part in rel.split("/")[:-1]:
        path = os.path.join(path, part)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return  # tarfile creates the rest as plain directories
        if not stat.S_ISDIR(mode):
            kind = "a symlink" if stat.S_ISLNK(mode) else "not a directory"
            raise InvalidArgument(f"tar member {member.name!r} would be written under "
                                  f"{os.path.relpath(path, dest)!r}, which is {kind}; refusing the archive")


def _safe_member(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """Filter for a hostile rootfs tar. Unlike tarfile.data_filter it keeps absolute
    symlink targets (they resolve inside the container), directory modes such as
    /tmp's 1777, and numeric ownership; it drops setuid/setgid and device files."""
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        return None  # devices, fifos: the runtime provides /dev
    name = _relative(member.name, member)
    fixed = _neutral_attrs(member, name)
    _check_parents(dest, name, member)
    target = os.path.join(dest, name)
    if os.path.lexists(target) and not (member.isdir() and stat.S_ISDIR(os.lstat(target).st_mode)):
        # tarfile would open an existing symlink and write through it
        raise InvalidArgument(f"tar member {member.name!r} replaces an earlier entry; refusing the archive")
    attrs: dict = {"name": name, "mode": member.mode & 0o1777, **fixed}  # no setuid/setgid, no high bits
    if member.issym() and not member.linkname.startswith("/"):
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
        if resolved == ".." or resolved.startswith("../"):
            raise InvalidArgument(f"tar member {member.name!r} is a symlink to {member.linkname!r}, "
                                  "which escapes the image root; refusing the archive")
    if member.islnk():
        # Hard link targets are archive paths, relative to the rootfs like member names.
        link = _relative(member.linkname, member, "hard link target")
        _check_parents(dest, link, member)
        try:
            is_file = stat.S_ISREG(os.lstat(os.path.join(dest, link)).st_mode)
        except FileNotFoundError:
            is_file = False
        if not is_file:  # also keeps tarfile from its copy-the-unfiltered-member fallback
            raise InvalidArgument(f"tar member {member.name!r} is a hard link to {member.linkname!r}, "
                                  "which is not a regular file earlier in the archive; refusing the archive")
        attrs["linkname"] = link
    try:
        # Second opinion from tarfile itself (realpath check that the target stays inside).
        checked = tarfile.tar_filter(member.replace(**attrs, deep=False), dest)
    except tarfile.FilterError as e:
        raise InvalidArgument(f"tar member {member.name!r}: {e}; refusing the archive") from None
    return checked.replace(mode=attrs["mode"], deep=False)  # tar_filter masks 0o755, which loses /tmp's 1777


class MemberGuard:
    """tarfile filter: vets each member just before it is extracted and reports progress."""

    def __init__(self, raw, total: int, progress: Progress | None, budget: tuple[int, str] = (MAX_IMAGE_BYTES, ""),
                 max_members: int = MAX_MEMBERS):
        self.raw, self.total, self.progress = raw, total, progress
        self.max_bytes, self.why = budget
        self.max_members = max_members
        self.current: str | None = None
        self.skipped: list[str] = []
        self.members = self.bytes = 0
        self._last = 0.0

    def __call__(self, member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        self.count(member)
        safe = _safe_member(member, dest)
        if safe is None:
            self.skipped.append(member.name)
        return safe

    def count(self, member: tarfile.TarInfo) -> None:
        """Counted before the member's data is read: a bomb stops at its header."""
        self.current = member.name
        self._report(self.raw.tell())
        self.members += 1
        self.bytes += max(member.size, 0)
        if self.members > self.max_members:
            raise InvalidArgument(f"tar member {member.name!r}: the archive has more than {self.max_members} "
                                  "entries; refusing it")
        if self.bytes > self.max_bytes:
            raise InvalidArgument(f"tar member {member.name!r} ({member.size} bytes) brings the image past "
                                  f"{self.max_bytes} bytes, {self.why}; refusing the archive")

    def _report(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if self.progress and (final or now - self._last >= PROGRESS_INTERVAL):
            self._last = now
            self.progress(min(done, self.total), self.total)

    def extract(self, archive: tarfile.TarFile, rootfs: Path, tar_path: Path) -> None:
        try:
            archive.extractall(rootfs, filter=self, numeric_owner=True)
        except PortlinkError:
            raise
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as e:
            raise InvalidArgument(f"cannot import {self._where(tar_path)}: {e}") from None
        except RecursionError:  # tarfile recurses once per chained extension header
            raise InvalidArgument(f"cannot import {self._where(tar_path)}: too many chained extended "
                                  "headers") from None
        except OSError as e:
            cls = RuntimeFailure if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO) else InvalidArgument
            raise cls(f"cannot import {self._where(tar_path)}: {e.strerror or e}") from None
        self._report(self.total, final=True)

    def _where(self, tar_path: Path) -> str:
        return f"{tar_path}, member {self.current!r}" if self.current else str(tar_path)


# -- the built-in busybox image ------------------------------------------------
