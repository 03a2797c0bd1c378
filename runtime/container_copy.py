"""`cp` on a container's filesystem: stat a path, archive it (a tar out),
extract a tar into a directory (in).

Everything in the container is hostile input. A running container's root is
opened as /proc/PID/root (its own mount namespace: volumes and binds are where the
container sees them, so a copy to /data lands in the volume mounted there, and
a read-only mount stays read-only). Every path is resolved from that root with
openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS): symlinks, absolute or `..`,
stay inside the container, and /proc's magic links (the one way out) are
refused. Below the resolved directory nothing is followed: each entry is opened
relative to its parent's fd with O_NOFOLLOW, a symlink is archived as a link
and replaced (never written through) on the way in.

A stopped container's root is put together by runtime.copy_offline, then
treated the same way.

A tar coming in is first extracted into a private staging directory with the
importer's hostile-tar rules (runtime.image_tar: no `..`, nothing through a
symlink, no devices, no setuid, bounded), then placed entry by entry as
above. A bad archive is refused before the container is touched."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from portlink.errors import Conflict, InvalidArgument, NotFound, PortlinkError, RuntimeFailure
from portlink.runtime import openat2
from portlink.runtime.image_tar import MAX_IMAGE_BYTES, MAX_MEMBERS, BoundedInfo, MemberGuard
from portlink.runtime.procstart import is_same

MAX_DEPTH = 256                  # directories below the copied one (each holds an fd while walked)
SKIP_BELOW = ("proc", "sys")     # the kernel's files: their names are archived, not their contents
CHUNK = 1 << 20
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class CopyPath:
    """A path in the container as `cp` names it: relative paths start at `/`; a
    trailing `/` or `/.` follows the last symlink, `/.` copies a directory's contents."""

    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text or "\0" in self.text or len(self.text) > 4096:
            raise InvalidArgument(f"invalid container path {self.text!r}: give a path like /etc/hosts")

    @property
    def full(self) -> str:
        return "/" + self.text.lstrip("/")

    @property
    def follows(self) -> bool:
        """The last component is resolved like the others (trailing /, /., ., ..)."""
        return self.text.endswith("/") or self.base in ("", ".", "..")

    @property
    def contents(self) -> bool:
        return self.text.endswith("/.") or self.text == "."

    @property
    def parent(self) -> str:
        return self.full.rstrip("/").rsplit("/", 1)[0] or "/"

    @property
    def base(self) -> str:
        return self.full.rstrip("/").rsplit("/", 1)[-1]

    @property
    def arcname(self) -> str:
        """The archive's top entry: the path's last name ('.' for the root)."""
        parts = [p for p in self.full.split("/") if p not in ("", ".")]
        return parts[-1] if parts and parts[-1] != ".." else "."


class ContainerRoot:
    """The container's `/` as an fd, for one copy. The pid is checked again after
    the open: a process that ended and whose pid was reused is not the container."""

    def __init__(self, name: str, pid: int, pid_start: int | None) -> None:
        self.name = name
        try:
            self.fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            raise Conflict(f"container {name!r} is not running") from None
        if not is_same(pid, pid_start):
            os.close(self.fd)
            raise Conflict(f"container {name!r} is not running")

    def __enter__(self) -> "ContainerRoot":
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)

    def open(self, path: str, flags: int) -> int:
        try:
            return openat2.openat2(self.fd, path, flags)
        except FileNotFoundError:
            raise NotFound(f"no such file or directory in container {self.name!r}: {path}") from None
        except NotADirectoryError:
            raise InvalidArgument(f"{path} in container {self.name!r}: a component of it is not a directory") from None
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EXDEV):   # RESOLVE_NO_MAGICLINKS says ELOOP
                raise InvalidArgument(f"{path} in container {self.name!r} goes through a /proc magic link (a way "
                                      "out of the container) or too many symbolic links; refusing to follow it") from None
            raise InvalidArgument(f"cannot open {path} in container {self.name!r}: {e.strerror}") from None

    def lstat(self, p: CopyPath) -> tuple[os.stat_result, str]:
        """The path's stat (its last component not followed unless p.follows) and link target."""
        if p.follows:
            fd = self.open(p.full, os.O_PATH)
            try:
                return os.fstat(fd), ""
            finally:
                os.close(fd)
        pfd = self.open(p.parent, os.O_PATH | os.O_DIRECTORY)
        try:
            try:
                st = os.stat(p.base, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                raise NotFound(f"no such file or directory in container {self.name!r}: {p.full}") from None
            return st, os.readlink(p.base, dir_fd=pfd) if stat.S_ISLNK(st.st_mode) else ""
        finally:
            os.close(pfd)


def stat_json(root: ContainerRoot, p: CopyPath) -> dict:
    """Docker's container path stat: name, size, mode, mtime, linkTarget (and a kind)."""
    st, link = root.lstat(p)
    kind = "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else \
        "file" if stat.S_ISREG(st.st_mode) else "other"
    return {"name": p.arcname, "size": st.st_size, "mode": st.st_mode, "mtime": st.st_mtime,
            "linkTarget": link, "kind": kind}


# -- out: a tar of a path ---------------------------------------------------------------

class _Exact:
    """Exactly `size` bytes of an open file: fewer if it shrank meanwhile (zeros
    fill the rest), never more if it grew (the header said `size`)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.left = fd, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = os.read(self.fd, n) if n else b""
        if len(data) < n:
            data += b"\0" * (n - len(data))
        self.left -= len(data)
        return data


class _Budget:
    def __init__(self, max_bytes: int, max_members: int) -> None:
        self.bytes = self.members = 0
        self.max_bytes, self.max_members = max_bytes, max_members

    def take(self, size: int, name: str) -> None:
        self.members += 1
        self.bytes += size
        if self.members > self.max_members or self.bytes > self.max_bytes:
            raise InvalidArgument(f"{name}: the copy is larger than {self.max_bytes} bytes or "
                                  f"{self.max_members} entries; copy less at a time")


def _info(arc: str, st: os.stat_result, kind: bytes, size: int = 0, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(arc)
    ti.type, ti.size, ti.linkname = kind, size, link
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.uid, ti.gid, ti.mtime = st.st_uid, st.st_gid, int(max(st.st_mtime, 0))
    return ti


def archive(root: ContainerRoot, p: CopyPath, out, max_bytes: int = MAX_IMAGE_BYTES,
            max_members: int = MAX_MEMBERS) -> None:
    """Write a tar of `p` to the binary file `out`: its top entry named p.arcname."""
    budget = _Budget(max_bytes, max_members)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        if p.follows:
            fd = root.open(p.full, os.O_PATH)
            try:
                # a directory (or file) reached through the links: re-opened for reading by fd
                st = os.fstat(fd)
                if stat.S_ISDIR(st.st_mode):
                    dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
                    _tree(tar, dfd, st, p.arcname, _cpath(p.full), budget)
                elif stat.S_ISREG(st.st_mode):
                    rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)   # reopen the same inode
                    _file(tar, rfd, p.arcname, budget)
            finally:
                os.close(fd)
            return
        pfd = root.open(p.parent, os.O_PATH | os.O_DIRECTORY)
        try:
            _entry(tar, pfd, p.base, p.arcname, _cpath(p.full), budget, root.name, p.full)
        finally:
            os.close(pfd)


def _cpath(full: str) -> list[str]:
    return [x for x in full.split("/") if x not in ("", ".")]


def _entry(tar, pfd: int, name: str, arc: str, cpath: list[str], budget: _Budget, cname: str, shown: str) -> None:
    try:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        raise NotFound(f"no such file or directory in container {cname!r}: {shown}") from None
    if stat.S_ISLNK(st.st_mode):
        budget.take(0, arc)
        tar.addfile(_info(arc, st, tarfile.SYMTYPE, link=os.readlink(name, dir_fd=pfd)))
    elif stat.S_ISDIR(st.st_mode):
        dfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=pfd)
        _tree(tar, dfd, os.fstat(dfd), arc, cpath, budget)
    elif stat.S_ISREG(st.st_mode):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW, dir_fd=pfd)
        except OSError:
            return     # replaced meanwhile by a link or a FIFO: not copied
        _file(tar, fd, arc, budget)
    # devices, FIFOs, sockets: not copied (the importer would skip them too)


def _file(tar, fd: int, arc: str, budget: _Budget) -> None:
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return
        budget.take(st.st_size, arc)
        tar.addfile(_info(arc, st, tarfile.REGTYPE, size=st.st_size), _Exact(fd, st.st_size))
    finally:
        os.close(fd)


def _tree(tar, top_fd: int, top_st: os.stat_result, top_arc: str, top_cpath: list[str], budget: _Budget) -> None:
    """A directory and everything below it, walked by fds (no recursion: a hostile
    tree may be deep), at most MAX_DEPTH levels."""
    stack = [(top_fd, top_st, top_arc, top_cpath)]
    try:
        while stack:
            dfd, st, arc, cpath = stack.pop()
            try:
                budget.take(0, arc)
                tar.addfile(_info(arc, st, tarfile.DIRTYPE))
                if len(cpath) == 1 and cpath[0] in SKIP_BELOW:
                    continue
                if len(cpath) - len(top_cpath) >= MAX_DEPTH:
                    raise InvalidArgument(f"{arc}: directories nested deeper than {MAX_DEPTH}; copy a part of it")
                subdirs = []
                for name in sorted(os.listdir(dfd)):
                    child = f"{arc}/{name}"
                    try:
                        cst = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISDIR(cst.st_mode):
                        try:
                            cfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=dfd)
                        except OSError:
                            continue    # replaced meanwhile
                        subdirs.append((cfd, os.fstat(cfd), child, [*cpath, name]))
                    else:
                        _entry(tar, dfd, name, child, [*cpath, name], budget, "", child)
                stack += reversed(subdirs)
            finally:
                os.close(dfd)
    finally:
        for dfd, *_ in stack:
            os.close(dfd)


# -- in: a tar into a directory -------------------------------------------------------------

def extract(root: ContainerRoot, dest: CopyPath, tar_path: Path, staging_parent: Path,
            max_bytes: int = MAX_IMAGE_BYTES) -> int:
    """Extract the tar at `tar_path` into the directory `dest` of the container.
    Returns the number of entries placed. Nothing is placed if the archive is
    refused or an entry would replace a directory with something else."""
    dfd = root.open(dest.full, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _not_pseudo(dfd, dest.full, root.name)
        if not os.access(".", os.W_OK, dir_fd=dfd):
            raise Conflict(f"cannot copy into {dest.full} in container {root.name!r}: it is read-only "
                           "(a read-only mount or file system)")
        staging = Path(tempfile.mkdtemp(prefix=".cp-in-", dir=staging_parent))
        try:
            _stage(tar_path, staging, max_bytes)
            _check_conflicts(dfd, staging, dest.full)
            return _place(dfd, staging, dest.full)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        os.close(dfd)


def _stage(tar_path: Path, staging: Path, max_bytes: int) -> None:
    """The importer's rules: the same MemberGuard that vets an image's tar."""
    with open(tar_path, "rb") as raw:
        total = os.fstat(raw.fileno()).st_size
        guard = MemberGuard(raw, total, None, (max_bytes, "the limit of one copy"))
        try:
            with tarfile.open(fileobj=raw, mode="r:*", tarinfo=BoundedInfo) as archive:
                guard.extract(archive, staging, Path("the archive"))
        except tarfile.TarError as e:
            raise InvalidArgument(f"cannot read the archive: {e}") from None
        except PortlinkError as e:
            raise type(e)(str(e).replace("cannot import", "cannot copy")) from None


def _walk(staging: Path):
    """(relative path parts, lstat) of every staged entry, parents first."""
    stack = [()]
    while stack:
        rel = stack.pop()
        d = staging.joinpath(*rel)
        for name in sorted(os.listdir(d)):
            st = os.lstat(d / name)
            yield (*rel, name), st
            if stat.S_ISDIR(st.st_mode):
                stack.append((*rel, name))


def _open_dir(pfd: int, name: str) -> int | None:
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=pfd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:      # a symlink: never entered
            return None
        raise


def _not_pseudo(fd: int, shown: str, name: str) -> None:
    kind = openat2.pseudo_fs(fd)
    if kind is not None:
        where = f" in container {name!r}" if name else ""
        raise Conflict(f"cannot copy into {shown}{where}: it is on {kind}, the kernel's files "
                       "(a link there may have been planted)")


def _check_conflicts(dfd: int, staging: Path, shown: str) -> None:
    """Docker's rule, before anything is written: a directory in the container is
    never replaced by a file or link."""
    fds = {(): dfd}
    try:
        for rel, st in _walk(staging):
            pfd = fds.get(rel[:-1])
            if pfd is None:
                continue      # its parent is new in the container: nothing below it exists
            try:
                cst = os.stat(rel[-1], dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(cst.st_mode) and not stat.S_ISDIR(st.st_mode):
                raise Conflict(f"cannot overwrite directory {os.path.join(shown, *rel)!r} with a non-directory")
            if stat.S_ISDIR(st.st_mode) and stat.S_ISDIR(cst.st_mode):
                fd = _open_dir(pfd, rel[-1])
                if fd is not None:
                    fds[rel] = fd
                    _not_pseudo(fd, os.path.join(shown, *rel), "")
    finally:
        for k, fd in fds.items():
            if k:
                os.close(fd)


def _clear(pfd: int, name: str) -> bool:
    """Remove a non-directory at `name` (a planted link is removed, not followed).
    False: it cannot go (a bind-mounted file): the caller writes into it instead."""
    try:
        os.unlink(name, dir_fd=pfd)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno == errno.EBUSY:
            return False
        raise
    return True


def _place(dfd: int, staging: Path, shown: str) -> int:
    """Each staged entry into the container, relative to its parent's fd; owned by
    the container's root (Docker's cp without -a)."""
    fds = {(): dfd}
    placed = 0
    try:
        for rel, st in _walk(staging):
            pfd, name = fds[rel[:-1]], rel[-1]
            src = staging.joinpath(*rel)
            mode = stat.S_IMODE(st.st_mode)
            try:
                if stat.S_ISDIR(st.st_mode):
                    fd = _open_dir(pfd, name)
                    if fd is None:
                        _clear(pfd, name)
                        os.mkdir(name, 0o700, dir_fd=pfd)
                        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=pfd)
                    fds[rel] = fd
                    _not_pseudo(fd, os.path.join(shown, *rel), "")
                    os.fchown(fd, 0, 0)
                    os.fchmod(fd, mode)
                elif stat.S_ISLNK(st.st_mode):
                    _clear(pfd, name)
                    os.symlink(os.readlink(src), name, dir_fd=pfd)
                    os.chown(name, 0, 0, dir_fd=pfd, follow_symlinks=False)
                elif stat.S_ISREG(st.st_mode):
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
                    if not _clear(pfd, name):
                        flags = os.O_WRONLY | os.O_TRUNC | _NOFOLLOW | os.O_NONBLOCK
                    fd = os.open(name, flags, 0o600, dir_fd=pfd)
                    try:
                        if not stat.S_ISREG(os.fstat(fd).st_mode):
                            raise Conflict(f"cannot copy onto {os.path.join(shown, *rel)!r}: not a regular file")
                        with open(src, "rb") as f:
                            while chunk := f.read(CHUNK):
                                os.write(fd, chunk)
                        os.fchown(fd, 0, 0)
                        os.fchmod(fd, mode)
                        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
                    finally:
                        os.close(fd)
                else:
                    continue
            except PortlinkError:
                raise
            except OSError as e:
                cls = RuntimeFailure if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO) else Conflict
                raise cls(f"cannot copy {os.path.join(shown, *rel)}: {e.strerror}") from None
            placed += 1
        # directories' times last: writing into them changed them
        for rel, fd in fds.items():
            if rel:
                st = os.lstat(staging.joinpath(*rel))
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        for k, fd in fds.items():
            if k:
                os.close(fd)
    return placed
