"""Applying an image's layers, in order, onto one root filesystem (hostile input).

Each layer is a tar stream checked member by member with the importer's rules
(image_tar: no `..`, nothing written through a symlink, hard links only to
regular files already in the root, no devices, no setuid bits, bounded members
and bytes), plus what layers add:

- A layer's paths are relative: an absolute member name is refused.
- An entry replaces what lower layers left at its path (a directory merges
  into a directory); within one layer an entry may not replace another, as in a
  plain rootfs tarball (so "symlink, then a file through it" stays refused).
- `.wh.NAME` deletes NAME left by lower layers; `.wh..wh..opq` empties its
  directory of what lower layers left there (OCI image spec, "Whiteouts").
  Neither touches what the same layer brings, whatever the order of entries.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile

from portlink.errors import InvalidArgument
from portlink.runtime.image_tar import MemberGuard, _check_parents, _relative, _safe_member

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


def whiteout_of(name: str) -> tuple[str, str] | None:
    """What a (relative, normalised) member name asks for: ("opaque", DIR),
    ("delete", PATH), ("ignore", NAME) for other AUFS metadata (.wh..wh.plnk),
    or None for an ordinary entry. DIR is "" for the root."""
    parent, base = posixpath.split(name)
    if not base.startswith(WHITEOUT):
        return None
    if base == OPAQUE:
        return "opaque", parent
    if base.startswith(WHITEOUT + WHITEOUT):
        return "ignore", name
    target = base[len(WHITEOUT):]
    if target in ("", ".", ".."):
        raise InvalidArgument(f"tar member {name!r} is a whiteout of {target!r}; refusing the layer")
    return "delete", posixpath.join(parent, target)


def _remove(path: str) -> None:
    """Remove a file, symlink or a real directory tree (never what a symlink points to)."""
    if stat.S_ISDIR(os.lstat(path).st_mode):
        shutil.rmtree(path)   # fd-based on Linux: does not follow symlinks inside
    else:
        os.unlink(path)


class LayerGuard(MemberGuard):
    """The tarfile filter for one layer after another (call begin_layer between
    them); counts members and bytes over the whole image."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.created: set[str] = set()
        self.whiteouts = 0

    def begin_layer(self) -> None:
        self.created = set()

    def __call__(self, member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        self.count(member)
        if member.name.startswith("/"):
            raise InvalidArgument(f"tar member {member.name!r} has an absolute path; a layer's paths are "
                                  "relative; refusing the layer")
        name = _relative(member.name, member)
        wh = whiteout_of(name) if name != "." else None
        if wh is not None:
            self._whiteout(wh, member, dest)
            return None
        target = os.path.join(dest, name)
        if name not in self.created and name != ".":
            _check_parents(dest, name, member)
            if os.path.lexists(target) and not (member.isdir() and stat.S_ISDIR(os.lstat(target).st_mode)):
                _remove(target)   # a lower layer's entry: this one replaces it
        safe = _safe_member(member, dest)
        if safe is None:
            self.skipped.append(member.name)
        else:
            self.created.add(name)
        return safe

    def _whiteout(self, wh: tuple[str, str], member: tarfile.TarInfo, dest: str) -> None:
        kind, rel = wh
        if kind == "ignore":
            return
        self.whiteouts += 1
        _check_parents(dest, posixpath.join(rel, "x") if kind == "opaque" else rel, member)
        path = os.path.join(dest, rel) if rel else dest
        if kind == "delete":
            if rel not in self.created and os.path.lexists(path):
                _remove(path)
            return
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return
        except FileNotFoundError:
            return
        for child in os.listdir(path):
            if posixpath.join(rel, child) not in self.created:
                _remove(os.path.join(path, child))
