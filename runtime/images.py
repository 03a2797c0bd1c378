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
from typing import Callable

from portlink.errors import Conflict, InvalidArgument, NotFound, RuntimeFailure

from portlink.runtime import durable
from portlink.runtime.image_tar import MAX_IMAGE_BYTES, MAX_MEMBERS, BoundedInfo, MemberGuard, Progress, open_regular

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
NAME_RULE = "1-128 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit"
DEFAULT_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
BUSYBOX_PATHS = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
DISK_RESERVE = 512 << 20           # left free on the store's filesystem
MAX_CONFIG_FILE = 1 << 20          # an image file the runtime reads on the host (etc/passwd)


@dataclass(frozen=True)
class ImageConfig:
    cmd: list[str]
    env: list[str]
    workdir: str = "/"
    exposed: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)   # the image's VOLUMEs: anonymous volumes at run


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
            config = ImageConfig(cmd=list(c["cmd"]), env=list(c["env"]), workdir=c["workdir"], exposed=list(c["exposed"]),
                                 volumes=list(c.get("volumes") or []))
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
        raw = open_regular(tar_path)
        tar_path = Path(tar_path)
        with raw:
            try:
                # plain, gzip, bzip2, xz; BoundedInfo refuses oversized extension headers
                archive = tarfile.open(fileobj=raw, mode="r:*", tarinfo=BoundedInfo)
            except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, RecursionError):
                raise InvalidArgument(f"{tar_path} is not a tar archive") from None
            with archive:
                guard = MemberGuard(raw, os.fstat(raw.fileno()).st_size, progress,
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
            durable.sync_tree(tmp)   # the tree on disk before the rename publishes it
            try:
                os.rename(tmp, final)  # fails if a complete image appeared meanwhile (non-empty dir)
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise Conflict(f"image '{name}' already exists; remove it first") from None
                raise
            durable.fsync_dir(self.root)   # the rename itself
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
    durable.fsync_dir(path.parent)
