"""host-id and image trees reach the disk before a rename is relied on: the
file (or tree) is flushed, then the directory that names it."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from portlink.runtime import durable
from portlink.runtime.host import _host_id
from portlink.runtime.images import ImageStore


@pytest.fixture
def synced(monkeypatch):
    """Every path fsynced (and tree syncfs'd), in order."""
    seen: list[str] = []
    real_fsync, real_tree = os.fsync, durable.sync_tree

    def fsync(fd):
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    def tree(path):
        seen.append(f"tree {path}")
        return real_tree(path)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(durable, "sync_tree", tree)
    return seen


def test_write_file_flushes_file_then_directory(tmp_path, synced):
    p = tmp_path / "f"
    p.write_text("old")
    durable.write_file(p, b"new\n")
    assert p.read_bytes() == b"new\n" and sorted(os.listdir(tmp_path)) == ["f"]
    assert synced == [str(tmp_path / ".f.tmp"), str(tmp_path)]


def test_host_id_is_durable_and_kept(tmp_path, synced):
    hid = _host_id(tmp_path)
    assert (tmp_path / "host-id").read_text() == hid + "\n"
    assert synced == [str(tmp_path / ".host-id.tmp"), str(tmp_path)]
    assert _host_id(tmp_path) == hid and len(synced) == 2   # read back: nothing written




def test_image_tree_and_its_rename_are_flushed(tmp_path, synced):
    tar = tmp_path / "img.tar"
    with tarfile.open(tar, "w") as tf:
        info = tarfile.TarInfo("bin/app")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    store = ImageStore(tmp_path / "images")
    store.import_tar(tar, "app", cmd=["/bin/app"])
    root = str(tmp_path / "images")
    trees = [s for s in synced if s.startswith("tree ")]
    assert len(trees) == 1 and Path(trees[0][5:]).parent == Path(root)   # the tmp tree, before the rename
    assert synced[-1] == root                                             # the rename, after it
    meta = [s for s in synced if s.endswith("image.json.tmp")]
    assert meta and synced.index(meta[0]) < synced.index(trees[0])
    assert (tmp_path / "images" / "app" / "rootfs" / "bin" / "app").read_bytes() == b"abc"
