"""A container's hosts, resolv.conf and hostname read back as hostile input:
compared by size then a bounded prefix, rewritten in place, never followed."""

from __future__ import annotations

import logging
import os

import pytest

from portlink.runtime import container_files as cf
from portlink.runtime.container_files import ContainerFileError, matches, read_prefix, rewrite_in_place, write_fresh
from portlink.runtime.file_watch import FileWatch
from portlink.runtime.plan import Layout
from portlink.runtime.refresh import Refresher

WANT = "127.0.0.1\tlocalhost\n10.0.0.2\tdb\n"


@pytest.mark.parametrize("size,prefix,want,expected", [
    (3, b"abc", b"abc", True),
    (4, b"abc", b"abc", False),        # longer file: the size says so, nothing compared
    (3, b"ab\xff", b"abc", False),     # junk bytes: no decoding at all
    (0, b"", b"", True),
    (2**40, b"", b"abc", False),       # huge: never read
])
def test_matches(size, prefix, want, expected):
    assert matches(size, prefix, want) is expected


def test_read_prefix_is_bounded(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x" * 10000)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert read_prefix(fd, 7) == b"xxxxxxx"
        assert read_prefix(fd, 20000) == b"x" * 10000
    finally:
        os.close(fd)


def test_rewrite_junk_keeps_inode(tmp_path):
    p = tmp_path / "hosts"
    p.write_bytes(b"\xff\xfe junk \x00" * 1000)
    ino = p.stat().st_ino
    assert rewrite_in_place(p, WANT) is True
    assert p.read_text() == WANT and p.stat().st_ino == ino
    assert rewrite_in_place(p, WANT) is False     # already right: not written


def test_rewrite_huge_file_reads_nothing(tmp_path, monkeypatch):
    p = tmp_path / "hosts"
    with open(p, "wb") as f:
        f.truncate(1 << 30)                       # sparse 1 GiB: no disk used
    reads = []
    monkeypatch.setattr(cf, "read_prefix", lambda fd, n: reads.append(n) or b"")
    assert rewrite_in_place(p, WANT) is True
    assert reads == [] and p.read_text() == WANT


def test_rewrite_same_size_different_bytes(tmp_path):
    p = tmp_path / "hosts"
    p.write_bytes(b"\xff" * len(WANT.encode()))
    assert rewrite_in_place(p, WANT) is True and p.read_text() == WANT


@pytest.mark.parametrize("kind", ["symlink", "dir", "fifo"])
def test_rewrite_refuses_non_regular(tmp_path, kind):
    secret = tmp_path / "shadow"
    secret.write_text("root:secret\n")
    p = tmp_path / "hosts"
    if kind == "symlink":
        p.symlink_to(secret)
    elif kind == "dir":
        p.mkdir()
    else:
        os.mkfifo(p)
    with pytest.raises(ContainerFileError, match="hosts is not a regular file"):
        rewrite_in_place(p, WANT)
    assert secret.read_text() == "root:secret\n"


def test_rewrite_missing_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        rewrite_in_place(tmp_path / "hosts", WANT)


@pytest.mark.parametrize("kind", ["none", "junk", "symlink", "dangling", "dir", "fifo"])
def test_write_fresh_replaces_anything(tmp_path, kind):
    secret = tmp_path / "shadow"
    secret.write_text("root:secret\n")
    p = tmp_path / "hosts"
    if kind == "junk":
        p.write_bytes(b"\xff" * 5000)
    elif kind == "symlink":
        p.symlink_to(secret)
    elif kind == "dangling":
        p.symlink_to(tmp_path / "nowhere")
    elif kind == "dir":
        p.mkdir()
        (p / "x").symlink_to(secret)
    elif kind == "fifo":
        os.mkfifo(p)
    write_fresh(p, WANT)
    assert p.is_file() and not p.is_symlink() and p.read_text() == WANT
    assert secret.read_text() == "root:secret\n" and not (tmp_path / "nowhere").exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["hosts", "shadow"]


def _refresher(tmp_path) -> Refresher:
    r = Refresher.__new__(Refresher)   # only write_hosts: no store, DNS or firewall needed
    r.layout = Layout(tmp_path)
    r._bad_hosts = set()
    r._hosts_stamps = {}
    r._hosts_watch = FileWatch()
    return r


def test_refresher_logs_a_bad_hosts_once_naming_the_container(tmp_path, caplog):
    r = _refresher(tmp_path)
    cdir = r.layout.cdir("a" * 64)
    cdir.mkdir(parents=True)
    (cdir / "hosts").mkdir()
    with caplog.at_level(logging.ERROR, "portlink.host"):
        assert r.write_hosts("a" * 64, WANT, "evil") is False
        assert r.write_hosts("a" * 64, WANT, "evil") is False
    assert [m.getMessage() for m in caplog.records] == [
        "cannot update /etc/hosts of container evil: hosts is not a regular file (Is a directory)"]
    (cdir / "hosts").rmdir()
    (cdir / "hosts").write_bytes(b"\xff")
    assert r.write_hosts("a" * 64, WANT, "evil") is True and (cdir / "hosts").read_text() == WANT
    assert r._bad_hosts == set()
    assert r.write_hosts("b" * 64, WANT, "gone") is False   # removed meanwhile: quiet


def test_refresher_finds_the_hosts_files_their_containers_wrote(tmp_path):
    """A change that does not touch a linker still puts back its scribbled file:
    the refresh asks _scribbled which files moved since they held our text."""
    r = _refresher(tmp_path)
    ids = ["a" * 64, "b" * 64, "c" * 64]
    for cid in ids:
        r.layout.cdir(cid).mkdir(parents=True)
        (r.layout.cdir(cid) / "hosts").write_text("old\n")
        assert r.write_hosts(cid, WANT) is True
    assert r._scribbled(ids) == set()
    hosts_a = r.layout.cdir(ids[0]) / "hosts"
    with open(hosts_a, "ab") as f:                 # the container appends: same inode
        f.write(b"\xff")
    assert r._scribbled(ids) == {ids[0]}
    assert r.write_hosts(ids[0], WANT) is True and hosts_a.read_text() == WANT
    assert r._scribbled(ids) == set()
    os.chmod(r.layout.cdir(ids[1]) / "hosts", 0o600)   # a change of its own kind: still seen
    assert r._scribbled(ids) == {ids[1]}
    assert r.write_hosts(ids[1], WANT) is True
    (r.layout.cdir(ids[2]) / "hosts").unlink()      # removed meanwhile: nothing to put back
    assert r._scribbled(ids) == {ids[2]}            # a stamp that no longer matches
    assert r.write_hosts(ids[2], WANT) is False
    assert r._scribbled(ids) == {ids[2]}            # its watch went with it: looked at each time
    assert r._scribbled(ids[:2]) == set()           # only the linkers asked about


def test_refresher_stats_only_the_hosts_files_inotify_saw_move(tmp_path, monkeypatch):
    r = _refresher(tmp_path)
    ids = [c * 64 for c in "abcdef"]
    for cid in ids:
        r.layout.cdir(cid).mkdir(parents=True)
        (r.layout.cdir(cid) / "hosts").write_text("old\n")
        assert r.write_hosts(cid, WANT) is True
    assert r._hosts_watch.keys() == set(ids)
    stated = []
    real = Refresher._hosts_stamp
    monkeypatch.setattr(Refresher, "_hosts_stamp", staticmethod(lambda d, cid: stated.append(cid) or real(d, cid)))
    r._scribbled(ids)
    stated.clear()
    assert r._scribbled(ids) == set() and stated == []          # nothing moved: not one stat
    (r.layout.cdir(ids[3]) / "hosts").write_text("mine\n")
    assert r._scribbled(ids) == {ids[3]} and stated == [ids[3]]
    # A file whose watch went (removed and made again) is stat-ed until it is watched again.
    hosts_4 = r.layout.cdir(ids[4]) / "hosts"
    hosts_4.unlink()
    hosts_4.write_text(WANT)
    stated.clear()
    assert r._scribbled(ids) == {ids[4]} and stated == [ids[4]]   # another inode: not our text's stamp
    stated.clear()
    assert r._scribbled(ids) == {ids[4]} and stated == [ids[4]]   # nothing moved, but it is not watched
    assert r.write_hosts(ids[4], WANT) is True
    stated.clear()
    assert r._scribbled(ids) == set() and stated == []
    r._hosts_watch.forget([ids[5]])                  # its container went: never looked at again
    (r.layout.cdir(ids[5]) / "hosts").write_text("mine\n")
    assert r._scribbled(ids) == set() and stated == []
