"""The image store: named root filesystems on disk, each used as an overlayfs lowerdir.

Layout: ``<root>/<name>/rootfs/`` and ``<root>/<name>/image.json``. An image is
built in ``<root>/.tmp-<name>-<random>/`` (image.json written last, atomically)
and renamed into place in one step, so a crash never leaves a half image under
its real name. Pure filesystem: no networking.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import lzma
import os
import posixpath
import re
import secrets
import shutil
import stat
import struct
import subprocess
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

from portlink.errors import Conflict, InvalidArgument, NotFound, PortlinkError, RuntimeFailure

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
NAME_RULE = "1-128 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit"
DEFAULT_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
BUSYBOX_PATHS = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
PROGRESS_INTERVAL = 0.1  # seconds between progress() calls
# Bounds of one import, so a hostile or broken tar (a gzip bomb, millions of empty
# entries, a gigabyte "long name") fails with a message instead of filling the disk
# or the daemon's memory. A large distribution rootfs has ~200k entries and a few GB.
MAX_IMAGE_BYTES = 32 << 30        # sum of the members' sizes
MAX_MEMBERS = 500_000              # tarfile keeps ~0.5 KB per member in memory
MAX_EXT_HEADER = 1 << 20           # one pax / GNU long-name header (read into memory whole)
DISK_RESERVE = 512 << 20           # left free on the store's filesystem
MAX_CONFIG_FILE = 1 << 20          # an image file the runtime reads on the host (etc/passwd)
_EXT_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
              tarfile.SOLARIS_XHDTYPE)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ImageConfig:
    cmd: list[str]
    env: list[str]
    workdir: str = "/"
    exposed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Image:
    name: str
    rootfs: Path
    config: ImageConfig
    created: float
    size: int
    # Import warnings (e.g. skipped device files); not persisted, not part of equality.
    warnings: tuple[str, ...] = field(default=(), compare=False)


def check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidArgument(f"invalid image name {name!r}: use {NAME_RULE}")


class ImageStore:
    def __init__(self, root: Path, max_bytes: int = MAX_IMAGE_BYTES, max_members: int = MAX_MEMBERS):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.max_members = max_bytes, max_members

    # -- reading -----------------------------------------------------------

    def get(self, name: str) -> Image:
        check_name(name)
        image = self._load(name)
        if image is None:
            raise NotFound(f"image '{name}' not found; import it with `portlink image import <rootfs.tar> {name}`")
        return image

    def list(self) -> list[Image]:
        images = []
        for entry in sorted(os.listdir(self.root)):
            if not NAME_RE.fullmatch(entry):  # skips .tmp-* build dirs
                continue
            try:
                image = self._load(entry)
            except RuntimeFailure as e:  # one damaged image must not hide the others
                log.warning("%s", e)
                continue
            if image is not None:
                images.append(image)
        return images

    def _load(self, name: str) -> Image | None:
        meta = self.root / name / "image.json"
        try:
            data = json.loads(meta.read_text())
            c = data["config"]
            config = ImageConfig(cmd=list(c["cmd"]), env=list(c["env"]), workdir=c["workdir"], exposed=list(c["exposed"]))
            return Image(name, self.root / name / "rootfs", config, float(data["created"]), int(data["size"]))
        except FileNotFoundError:  # no image.json: missing or half-built, never listed
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RuntimeFailure(f"image '{name}' is damaged ({meta}: {e}); remove it and import it again") from e

    # -- writing -----------------------------------------------------------

    def remove(self, name: str) -> None:
        self.get(name)
        trash = self.root / f".tmp-{name}-{secrets.token_hex(4)}"
        try:
            os.rename(self.root / name, trash)  # atomic: the image vanishes at once, then we delete at leisure
        except FileNotFoundError:
            raise NotFound(f"image '{name}' not found") from None
        shutil.rmtree(trash, ignore_errors=True)

    def ensure_busybox(self) -> Image:
        try:
            return self.get("busybox")
        except NotFound:
            pass
        binary = find_busybox()
        try:
            listing = subprocess.run([str(binary), "--list-full"], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            raise RuntimeFailure(f"`{binary} --list-full` failed: {e}; reinstall busybox-static") from e
        config = ImageConfig(cmd=["sh"], env=list(DEFAULT_ENV))
        try:
            return self._build("busybox", config, lambda rootfs: _fill_busybox(rootfs, binary, listing.split()))
        except Conflict:  # built concurrently by someone else: theirs is as good as ours
            return self.get("busybox")

    def import_tar(self, tar_path: Path, name: str, *, cmd: list[str] | None = None,
                   progress: Progress | None = None) -> Image:
        check_name(name)
        cmd = ["sh"] if cmd is None else cmd
        if not isinstance(cmd, list) or not cmd or not all(isinstance(a, str) and a for a in cmd):
            raise InvalidArgument(f"invalid cmd {cmd!r}: give a non-empty list of non-empty strings")
        if (self.root / name / "image.json").exists():
            raise Conflict(f"image '{name}' already exists; remove it first")
        raw = _open_regular(tar_path)
        tar_path = Path(tar_path)
        with raw:
            try:
                # plain, gzip, bzip2, xz; _BoundedInfo refuses oversized extension headers
                archive = tarfile.open(fileobj=raw, mode="r:*", tarinfo=_BoundedInfo)
            except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, RecursionError):
                raise InvalidArgument(f"{tar_path} is not a tar archive") from None
            with archive:
                guard = _MemberGuard(raw, os.fstat(raw.fileno()).st_size, progress,
                                     self._byte_budget(), self.max_members)
                config = ImageConfig(cmd=list(cmd), env=list(DEFAULT_ENV))
                image = self._build(name, config, lambda rootfs: guard.extract(archive, rootfs, tar_path))
        if guard.skipped:
            shown = ", ".join(repr(n) for n in guard.skipped[:5]) + (", ..." if len(guard.skipped) > 5 else "")
            warning = f"skipped {len(guard.skipped)} device/fifo entries ({shown}); the runtime provides /dev"
            log.warning("image %s: %s", name, warning)
            image = dataclasses.replace(image, warnings=(warning,))
        return image

    def _byte_budget(self) -> tuple[int, str]:
        """How many bytes of members one import may extract, and why that many."""
        st = os.statvfs(self.root)
        free = st.f_bavail * st.f_frsize - DISK_RESERVE
        if free < self.max_bytes:
            return max(free, 0), f"the free space in {self.root} less a reserve of {DISK_RESERVE >> 20} MiB"
        return self.max_bytes, "the limit of one image"

    def _build(self, name: str, config: ImageConfig, fill: Callable[[Path], None]) -> Image:
        """Run fill(rootfs) in a private tmp dir, then publish it under `name` with one rename."""
        final = self.root / name
        if final.is_dir() and not (final / "image.json").exists():
            shutil.rmtree(final)  # leftover of an interrupted build or remove
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=self.root))
        try:
            tmp.chmod(0o755)  # mkdtemp makes 0700; the lowerdir path must be traversable
            rootfs = tmp / "rootfs"
            rootfs.mkdir(mode=0o755)
            fill(rootfs)
            created, size = time.time(), _disk_size(rootfs)
            _write_json_atomic(tmp / "image.json", {
                "name": name, "created": created, "size": size, "config": dataclasses.asdict(config)})
            try:
                os.rename(tmp, final)  # fails if a complete image appeared meanwhile (non-empty dir)
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise Conflict(f"image '{name}' already exists; remove it first") from None
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Image(name, final / "rootfs", config, created, size)


def read_image_file(rootfs: Path, rel: str, limit: int = MAX_CONFIG_FILE) -> str:
    """A small text file of an image (etc/passwd), read as the container would see it:
    symlinks resolve inside the rootfs (an absolute target means the image's root, a
    `..` stops at it), never on the host. Missing, not a regular file or a symlink
    loop: ''. Larger than `limit`: InvalidArgument. Images are immutable, so the walk
    does not race with writers."""
    root = os.fspath(rootfs)
    todo = [p for p in rel.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            done = done[:-1]
            continue
        try:
            st = os.lstat(os.path.join(root, *done, part))
        except (FileNotFoundError, NotADirectoryError):
            return ""
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > 40:  # the kernel's own limit
                return ""
            target = os.readlink(os.path.join(root, *done, part))
            done = [] if target.startswith("/") else done
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
            continue
        done.append(part)
    try:
        fd = os.open(os.path.join(root, *done), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return ""
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InvalidArgument(f"the image's /{rel.lstrip('/')} is larger than {limit} bytes; not reading it")
    return data.decode(errors="replace")


# -- safe extraction ---------------------------------------------------------


def _open_regular(tar_path) -> BinaryIO:
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


class _BoundedInfo(tarfile.TarInfo):
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


class _MemberGuard:
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
        self.current = member.name
        self._report(self.raw.tell())
        # Counted before the member's data is read: a bomb stops at its header.
        self.members += 1
        self.bytes += max(member.size, 0)
        if self.members > self.max_members:
            raise InvalidArgument(f"tar member {member.name!r}: the archive has more than {self.max_members} "
                                  "entries; refusing it")
        if self.bytes > self.max_bytes:
            raise InvalidArgument(f"tar member {member.name!r} ({member.size} bytes) brings the image past "
                                  f"{self.max_bytes} bytes, {self.why}; refusing the archive")
        safe = _safe_member(member, dest)
        if safe is None:
            self.skipped.append(member.name)
        return safe

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

_BUSYBOX_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hosts": "",  # the runtime bind-mounts the real hosts, resolv.conf and hostname
    "etc/resolv.conf": "",
    "etc/hostname": "",
}


def find_busybox() -> Path:
    for path in BUSYBOX_PATHS:
        if path.is_file() and os.access(path, os.X_OK) and _is_static_elf(path):
            return path
    raise RuntimeFailure(f"no statically linked busybox at {' or '.join(map(str, BUSYBOX_PATHS))}; "
                         "install the Debian package busybox-static")


def _is_static_elf(path: Path) -> bool:
    """True if the ELF has no PT_INTERP: a dynamic busybox would not run inside the image."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF":
        return False
    end = "<" if data[5] == 1 else ">"
    if data[4] == 2:  # 64-bit
        (phoff,), (phentsize, phnum) = struct.unpack_from(end + "Q", data, 0x20), struct.unpack_from(end + "HH", data, 0x36)
    else:
        (phoff,), (phentsize, phnum) = struct.unpack_from(end + "I", data, 0x1C), struct.unpack_from(end + "HH", data, 0x2A)
    return all(struct.unpack_from(end + "I", data, phoff + i * phentsize)[0] != 3 for i in range(phnum))


def _fill_busybox(rootfs: Path, binary: Path, applets: list[str]) -> None:
    for d in ("bin", "proc", "sys", "dev", "tmp", "etc", "root", "var/www", "run"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)  # mkdir drops the sticky bit and obeys umask
    (rootfs / "root").chmod(0o700)
    shutil.copyfile(binary, rootfs / "bin/busybox")
    (rootfs / "bin/busybox").chmod(0o755)
    for applet in applets:
        rel = applet.strip("/")
        if not rel or rel == "bin/busybox" or ".." in rel.split("/"):
            continue
        link = rootfs / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(link):
            # relative, so the link resolves the same on the host and inside the container
            os.symlink(os.path.relpath("bin/busybox", posixpath.dirname(rel) or "."), link)
    for rel, text in _BUSYBOX_FILES.items():
        (rootfs / rel).write_text(text)


# -- helpers ---------------------------------------------------------------------


def _disk_size(root: Path) -> int:
    seen, total = set(), 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:  # count hard links once
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
