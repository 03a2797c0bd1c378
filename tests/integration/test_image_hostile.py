"""Hostile image tarballs through the real CLI and daemon: each import fails with
one line naming the entry, exit code 125, `image ls` unchanged, no half image in
the store, nothing written outside it. A real rootfs with absolute symlinks and
device entries still imports and runs."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from portlink.runtime.images import find_busybox

pytestmark = pytest.mark.root


def entry(name: str, type_=tarfile.REGTYPE, data: bytes = b"", linkname: str = "", mode: int = 0o644, **kw):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.size = type_, linkname, mode, len(data)
    for k, v in kw.items():
        setattr(info, k, v)
    return info, data


def write_tar(path: Path, entries, compression: str = "") -> Path:
    with tarfile.open(path, "w:" + compression) as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the daemon's state with a sentinel a hostile tar aims at."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "sentinel").write_bytes(b"untouched\n")
    return d


def hostile(outside: Path) -> dict[str, tuple[list, str]]:
    s = str(outside / "sentinel")
    return {
        "dotdot": ([entry("ok"), entry("../../../../../../.." + s, data=b"pwned")], "../../"),
        "symlink-dir": ([entry("etc", tarfile.SYMTYPE, linkname=str(outside)),
                         entry("etc/sentinel", data=b"pwned")], "etc/sentinel"),
        "symlink-to-etc": ([entry("a", tarfile.SYMTYPE, linkname="/etc"), entry("a/passwd", data=b"x")], "a/passwd"),
        "dir-then-symlink": ([entry("d", tarfile.DIRTYPE, mode=0o755),
                              entry("d", tarfile.SYMTYPE, linkname=str(outside))], "'d'"),
        "file-over-symlink": ([entry("f", tarfile.SYMTYPE, linkname=s), entry("f", data=b"pwned")], "'f'"),
        "hardlink-outside": ([entry("h", tarfile.LNKTYPE, linkname=s)], "'h'"),
        "relative-escape": ([entry("x/up", tarfile.SYMTYPE, linkname="../../..")], "x/up"),
    }


def test_hostile_tars_are_refused_by_the_cli(nft_host, tmp_path, outside):
    h = nft_host
    images = h.state_dir / "images"
    before_ls = h.cli("image", "ls", check=True).stdout
    before_dirs = sorted(os.listdir(images))
    cases = hostile(outside)
    for i, (case, (entries, needle)) in enumerate(cases.items()):
        tar = write_tar(tmp_path / f"{case}.tar{'.gz' if i % 2 else ''}", entries, "gz" if i % 2 else "")
        r = h.cli("image", "import", str(tar), "evil")
        assert r.returncode == 125, (case, r.returncode, r.stdout, r.stderr)
        assert needle in r.stderr and "refusing" in r.stderr, (case, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        assert h.cli("image", "ls", check=True).stdout == before_ls, case
        assert sorted(os.listdir(images)) == before_dirs, case        # no half image, no .tmp-*
        assert sorted(os.listdir(outside)) == ["sentinel"], case
        assert (outside / "sentinel").read_bytes() == b"untouched\n", case
        assert os.stat(outside / "sentinel").st_nlink == 1, case
    assert "Traceback" not in h.daemon_log()


def test_bombs_and_non_files_are_refused(nft_host, tmp_path):
    h = nft_host
    images = h.state_dir / "images"
    before = sorted(os.listdir(images))
    # a long-name header announcing 64 MiB: refused before tarfile reads it into memory
    head = tarfile.TarInfo("././@LongLink")
    head.type, head.size = tarfile.GNUTYPE_LONGNAME, 64 << 20
    longname = tmp_path / "longname.tar"
    longname.write_bytes(head.tobuf(tarfile.GNU_FORMAT) + bytes(8192))
    fifo = tmp_path / "fifo.tar"
    os.mkfifo(fifo)
    for path, needle in [(longname, "extended header of 67108864 bytes"),
                         (fifo, "not a regular file"),
                         (Path("/dev/zero"), "not a regular file"),
                         (tmp_path / "missing.tar", "No such file")]:
        r = h.cli("image", "import", str(path), "bomb", timeout=60)
        assert r.returncode == 125 and needle in r.stderr, (path, r.stderr)
        assert sorted(os.listdir(images)) == before
    assert "Traceback" not in h.daemon_log()


def test_real_rootfs_with_absolute_symlinks_and_devices_imports_and_runs(nft_host, tmp_path, outside):
    """What a distribution tarball holds: /bin/sh -> /bin/busybox (absolute), an
    alternatives chain, /dev entries (skipped: the runtime provides /dev), setuid
    bits (dropped), a link that points at a host path (harmless: it resolves inside)."""
    h = nft_host
    busybox = find_busybox().read_bytes()
    tar = write_tar(tmp_path / "distro.tar.gz", [
        entry("bin", tarfile.DIRTYPE, mode=0o755),
        entry("bin/busybox", data=busybox, mode=0o4755),
        entry("bin/sh", tarfile.SYMTYPE, linkname="/bin/busybox"),
        entry("bin/cat", tarfile.SYMTYPE, linkname="/etc/alternatives/cat"),
        entry("etc/alternatives/cat", tarfile.SYMTYPE, linkname="/bin/busybox"),
        entry("bin/ls", tarfile.LNKTYPE, linkname="bin/busybox", mode=0o755),   # a hard link sets the inode's mode
        entry("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
        entry("dev/sda", tarfile.BLKTYPE, mode=0o660, devmajor=8, devminor=0),
        entry("etc/greeting", data=b"hello from the image\n"),
        entry("etc/hostfile", tarfile.SYMTYPE, linkname=str(outside / "sentinel")),
        entry("tmp", tarfile.DIRTYPE, mode=0o1777),
    ], "gz")
    r = h.cli("image", "import", str(tar), "distro")
    assert r.returncode == 0 and r.stdout.strip() == "distro", r.stderr
    assert "distro" in h.cli("image", "ls", check=True).stdout
    r = h.cli("run", "--rm", "distro", "sh", "-c",
              "cat /etc/greeting; ls -l /dev/null | cut -c1; cat /etc/hostfile 2>&1 || echo no-host-file")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "hello from the image"
    assert lines[1] == "c"                              # the runtime's /dev/null, not the tar's
    assert lines[-1] == "no-host-file"                  # the absolute link resolved inside the container
    rootfs = h.state_dir / "images/distro/rootfs"
    assert not os.path.lexists(rootfs / "dev/sda")
    assert oct(os.stat(rootfs / "bin/busybox").st_mode & 0o7777) == oct(0o755)
    assert (outside / "sentinel").read_bytes() == b"untouched\n"
    assert h.cli("image", "rm", "distro").returncode == 0


def test_user_lookup_reads_the_images_passwd_never_the_hosts(nft_host, tmp_path, outside):
    """An image whose etc/passwd is a symlink to a host path: `run -u NAME` must
    resolve it inside the image (nothing there), not read the host's file."""
    h = nft_host
    (outside / "passwd").write_text("hostonly:x:4242:4242::/:/bin/sh\n")
    busybox = find_busybox().read_bytes()
    tar = write_tar(tmp_path / "sly.tar", [
        entry("bin/busybox", data=busybox, mode=0o755),
        entry("bin/sh", tarfile.SYMTYPE, linkname="/bin/busybox"),
        entry("etc/passwd", tarfile.SYMTYPE, linkname=str(outside / "passwd")),
    ])
    assert h.cli("image", "import", str(tar), "sly").returncode == 0
    r = h.cli("run", "--rm", "-u", "hostonly", "sly", "sh", "-c", "id -u")
    assert r.returncode == 125 and "hostonly" in r.stderr, (r.stdout, r.stderr)
    assert h.cli("run", "--rm", "-u", "4242", "sly", "sh", "-c", "id -u").stdout.strip() == "4242"
    assert h.cli("image", "rm", "sly").returncode == 0
