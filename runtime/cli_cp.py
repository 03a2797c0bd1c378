"""`portlink cp`: files between a container and this machine, with
Docker's rules (docker cp): SRC and DEST as CONTAINER:PATH or a local path, `-`
for a tar on stdin/stdout, `/.` for a directory's contents, -L to follow a
local source link.

What comes out of a container is hostile: the tar the daemon sends is extracted
here with the importer's rules (runtime.image_tar: no `..`, nothing written
through a symlink, no device, no setuid bit), an existing file or link at a
name is replaced, never written through, and a directory is never replaced by
a file. Ownership is this user's (Docker's client does not chown either)."""

from __future__ import annotations

import os
import stat
import sys
import tarfile
import tempfile

from portlink.errors import InvalidArgument
from portlink.runtime.cli_commands import _q
from portlink.runtime.client import CliError, Client


# -- pure: arguments and where things go ---------------------------------------------------

def split_arg(arg: str) -> tuple[str | None, str]:
    """Docker's splitCpArg: 'web:/etc' -> ('web', '/etc'); a path that starts with
    '/' or '.' (or has no ':') is local: './a:b' is a file named 'a:b'."""
    if arg == "-" or arg.startswith(("/", ".")) or ":" not in arg:
        return None, arg
    ctr, _, path = arg.partition(":")
    if not ctr:
        raise CliError(f"invalid argument {arg!r}: expected CONTAINER:PATH or a local path")
    return ctr, path or "/"


def is_contents(path: str) -> bool:
    return path == "." or path.endswith("/.")


def rebase(name: str, top: str | None) -> str | None:
    """A member name of the archive (its top entry first) under a new top name;
    top None: the top entry's contents only (the top entry itself is dropped)."""
    first, sep, rest = name.lstrip("/").partition("/")
    if top is None:
        return rest or None
    return top + sep + rest


def local_target(dest: str, src_kind: str, contents: bool) -> tuple[str, str | None]:
    """Docker's rules for a copy to DEST on this machine -> (directory to extract
    into, new top name or None to keep it; for contents, '' means drop it)."""
    if os.path.isdir(dest):
        return dest, ("" if contents else None)
    if os.path.lexists(dest):
        if src_kind == "dir":
            raise CliError(f"cannot copy a directory to a file: {dest} exists and is not a directory")
        return os.path.dirname(os.path.abspath(dest)), os.path.basename(dest)
    if dest.endswith("/") and src_kind != "dir":
        raise CliError(f"destination directory {dest} must exist (it does not)")
    parent = os.path.dirname(os.path.abspath(dest.rstrip("/")))
    if not os.path.isdir(parent):
        raise CliError(f"no such directory: {parent}")
    return parent, os.path.basename(dest.rstrip("/"))


# -- container -> here ----------------------------------------------------------------------

class _Stream:
    """A file-like over the response's chunks, for tarfile's stream mode."""

    def __init__(self, chunks) -> None:
        self.it, self.buf = iter(chunks), b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self.buf) < n:
            piece = next(self.it, b"")
            if not piece:
                break
            self.buf += piece
        if n < 0:
            out, self.buf = self.buf, b""
        else:
            out, self.buf = self.buf[:n], self.buf[n:]
        return out


class _NoChown(tarfile.TarFile):
    def chown(self, tarinfo, targetpath, numeric_owner):   # Docker's client: NoLchown
        pass


def extract_here(fileobj, dest: str, top: str | None) -> int:
    """Extract the daemon's tar into `dest`, renaming the top entry to `top` (None:
    keep; '': its contents only). Returns the entries written."""
    from portlink.runtime import image_tar as rules
    count = 0

    def vet(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        nonlocal count
        name = member.name if top is None else rebase(member.name, top or None)
        if not name:
            return None
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            return None
        name = rules._relative(name, member)
        fixed = rules._neutral_attrs(member, name)
        rules._check_parents(path, name, member)
        target = os.path.join(path, name)
        if os.path.lexists(target):
            is_dir = stat.S_ISDIR(os.lstat(target).st_mode)
            if is_dir and not member.isdir():
                raise InvalidArgument(f"cannot overwrite directory {target} with a non-directory")
            if not is_dir:
                os.unlink(target)     # a file or link there is replaced, never written through
        attrs = {"name": name, "mode": member.mode & 0o1777, **fixed}
        if member.islnk():
            link = rules._relative(member.linkname if top is None else (rebase(member.linkname, top or None) or ""),
                                   member, "hard link target")
            rules._check_parents(path, link, member)
            if not stat.S_ISREG(os.lstat(os.path.join(path, link)).st_mode):
                raise InvalidArgument(f"tar member {member.name!r}: hard link to something not copied before")
            attrs["linkname"] = link
        count += 1
        if count > rules.MAX_MEMBERS:
            raise InvalidArgument(f"more than {rules.MAX_MEMBERS} entries; copy less at a time")
        return member.replace(**attrs, deep=False)

    try:
        with _NoChown.open(fileobj=fileobj, mode="r|") as tar:
            tar.extractall(dest, filter=vet)
    except (tarfile.TarError, InvalidArgument) as e:
        raise CliError(f"cannot copy into {dest}: {e}") from None
    except OSError as e:
        raise CliError(f"cannot copy into {dest}: {e.strerror or e}") from None
    return count


def copy_out(cl: Client, ctr: str, path: str, dest: str) -> None:
    url = f"/containers/{_q(ctr)}/archive"
    st = _stat(cl, url, path)
    if dest == "-":
        resp = cl.request("GET", url, query={"path": path}, stream=True)
        for chunk in resp.chunks():
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        return
    # the daemon's stat follows a last link only for PATH/ and PATH/. (Docker's rule)
    into, top = local_target(dest, st["kind"], is_contents(path))
    resp = cl.request("GET", url, query={"path": path}, stream=True)
    extract_here(_Stream(resp.chunks()), into, top)


# -- here -> container ------------------------------------------------------------------------

def copy_in(cl: Client, src: str, ctr: str, path: str, follow: bool) -> None:
    url = f"/containers/{_q(ctr)}/archive"
    if src == "-":
        cl.upload(url, sys.stdin.buffer, query={"path": path})
        return
    try:
        st = os.stat(src) if follow or src.endswith("/") or is_contents(src) else os.lstat(src)
    except OSError as e:
        raise CliError(f"cannot copy {src}: {e.strerror}") from None
    src_dir = stat.S_ISDIR(st.st_mode)
    try:
        dst = _stat(cl, url, path)
    except CliError as e:
        if "no such file" not in str(e):
            raise
        dst = None
    if dst is not None and (dst["kind"] == "dir" or (dst["kind"] == "symlink" and _is_dir_in(cl, url, path))):
        into, arc = path, ("." if is_contents(src) else os.path.basename(os.path.abspath(src)))
    elif dst is not None:
        if src_dir:
            raise CliError(f"cannot copy a directory to a file: {ctr}:{path} exists and is not a directory")
        into, arc = _parent(path), os.path.basename(path.rstrip("/"))
    else:
        if path.endswith("/") and not src_dir:
            raise CliError(f"destination directory {ctr}:{path} must exist (it does not)")
        into, arc = _parent(path), os.path.basename(path.rstrip("/"))
    with tempfile.TemporaryFile() as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            real = os.path.realpath(src) if follow else src.rstrip("/") if src.rstrip("/") else src
            tar.add(real, arcname=arc, recursive=True)
        f.seek(0)
        cl.upload(url, f, query={"path": into})


def _is_dir_in(cl: Client, url: str, path: str) -> bool:
    try:
        return _stat(cl, url, path.rstrip("/") + "/")["kind"] == "dir"
    except CliError:
        return False


def _stat(cl: Client, url: str, path: str) -> dict:
    return cl.request("GET", url + "/stat", query={"path": path})


def _parent(path: str) -> str:
    full = "/" + path.strip("/")
    return full.rsplit("/", 1)[0] or "/"


def cmd_cp(cl: Client, a) -> int:
    (sc, sp), (dc, dp) = split_arg(a.src), split_arg(a.dest)
    if sc and dc:
        raise CliError("copying between containers is not supported")
    if not sc and not dc:
        raise CliError("must specify at least one container source: CONTAINER:PATH")
    if sc:
        copy_out(cl, sc, sp, dp)
    else:
        copy_in(cl, sp, dc, dp, a.follow_link)
    return 0
