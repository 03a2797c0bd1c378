"""Mount targets resolved in a rootfs (runtime.mount_paths): symlinks followed inside
the container's own root, refused inside a volume, never onto /proc or /sys."""

from __future__ import annotations

import os

import pytest

from portlink.errors import InvalidArgument
from portlink.runtime.mount_paths import resolve_in_image, resolve_targets
from portlink.runtime.volspec import TMPFS, VOLUME, Mount


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "rootfs"
    (r / "run").mkdir(parents=True)
    (r / "var").mkdir()
    os.symlink("/run", r / "var" / "run")           # the usual image symlink
    os.symlink("../../proc/sys", r / "var" / "evil")  # planted by a container's earlier run
    os.symlink("/", r / "toroot")
    return r


def test_plain_and_missing_targets_stay(root):
    got = resolve_targets(str(root), [(Mount(VOLUME, "/data", "v"), "/vol/v"),
                                      (Mount(TMPFS, "/a/b/c"), None)])
    assert got == {"/data": "/data", "/a/b/c": "/a/b/c"}


def test_symlink_in_the_rootfs_is_followed_inside_it(root):
    assert resolve_targets(str(root), [(Mount(VOLUME, "/var/run/app", "v"), "/x")]) == {"/var/run/app": "/run/app"}


@pytest.mark.parametrize("target, lands", [("/var/evil/x", "/proc/sys/x"), ("/toroot", "/")])
def test_symlink_onto_the_kernels_paths_or_the_root_is_refused(root, target, lands):
    with pytest.raises(InvalidArgument, match=f"resolves through a symbolic link in the container to '{lands}'"):
        resolve_targets(str(root), [(Mount(VOLUME, target, "v"), "/x")])


def test_symlink_inside_a_volume_is_refused_for_a_nested_target(root, tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    os.symlink("/etc", vol / "logs")                # planted by another container sharing the volume
    (vol / "cache").mkdir()
    outer = (Mount(VOLUME, "/srv", "shared"), str(vol))
    ok = resolve_targets(str(root), [outer, (Mount(TMPFS, "/srv/cache/t"), None)])
    assert ok["/srv/cache/t"] == "/srv/cache/t"
    with pytest.raises(InvalidArgument, match=r"passes through /srv/logs, a symbolic link in volume 'shared'"):
        resolve_targets(str(root), [outer, (Mount(VOLUME, "/srv/logs", "logs"), "/y")])


def test_a_rootfs_symlink_into_a_volume_walks_the_volume(root, tmp_path):
    vol = tmp_path / "vol"
    (vol / "real").mkdir(parents=True)
    os.symlink("/etc", vol / "bad")
    os.symlink("/srv/bad", root / "viasrv")
    with pytest.raises(InvalidArgument, match="symbolic link in volume 'shared'"):
        resolve_targets(str(root), [(Mount(VOLUME, "/srv", "shared"), str(vol)),
                                    (Mount(VOLUME, "/viasrv/x", "x"), "/y")])


def test_under_a_tmpfs_nothing_exists_yet(root):
    got = resolve_targets(str(root), [(Mount(TMPFS, "/var/run"), None), (Mount(VOLUME, "/var/run/x", "v"), "/y")])
    assert got == {"/var/run": "/run", "/var/run/x": "/run/x"}


def test_symlink_loop_is_an_error(root):
    os.symlink("/loop", root / "loop")
    with pytest.raises(InvalidArgument, match="too many symbolic links"):
        resolve_targets(str(root), [(Mount(VOLUME, "/loop/x", "v"), "/y")])


def test_resolve_in_image(root):
    assert resolve_in_image(str(root), "/var/run/db") == ["run", "db"]
    assert resolve_in_image(str(root), "/var/evil") == ["proc", "sys"]   # stays inside the image's root
