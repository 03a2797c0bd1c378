"""Image store: the built-in busybox image, tar import round trips, hostile tars.

Decision under test: an absolute member *name* (`/abs/path`) is made relative to
the rootfs (like GNU tar does), not rejected; a `..` component is rejected.
Absolute *symlink targets* are kept as-is (they resolve inside the container),
but nothing is ever written through a symlink.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from portlink.runtime import images as images_mod
from portlink.errors import Conflict, InvalidArgument, NotFound, RuntimeFailure
from portlink.runtime.images import ImageStore



@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


def reg(name: str, data: bytes = b"x", mode: int = 0o644, **kw):
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    for k, v in kw.items():
        setattr(info, k, v)
    return info, data


def special(name: str, type_: bytes, linkname: str = "", mode: int = 0o755, **kw):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = type_, linkname, mode
    for k, v in kw.items():
        setattr(info, k, v)
    return info, None


def sym(name, target):
    return special(name, tarfile.SYMTYPE, target, 0o777)


def hardlink(name, target):
    return special(name, tarfile.LNKTYPE, target, 0o644)


def directory(name, mode=0o755):
    return special(name, tarfile.DIRTYPE, mode=mode)


def make_tar(path: Path, entries, compression: str = "") -> Path:
    with tarfile.open(path, "w:" + compression) as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def outside_files(tmp_path: Path) -> set[str]:
    """Everything under tmp_path that is not the image store or a test tar."""
    return {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
            if p.parts[len(tmp_path.parts)] != "images" and not p.name.endswith(".tar")}


def assert_rejected(store: ImageStore, tmp_path: Path, entries, member: str) -> InvalidArgument:
    before = outside_files(tmp_path)
    tar = make_tar(tmp_path / "hostile.tar", entries)
    with pytest.raises(InvalidArgument) as exc:
        store.import_tar(tar, "evil")
    assert repr(member) in str(exc.value), str(exc.value)
    assert outside_files(tmp_path) == before  # nothing escaped
    assert os.listdir(store.root) == []  # no half image, no tmp dir
    assert store.list() == []
    return exc.value


# -- busybox -------------------------------------------------------------------


def test_busybox_image_layout(store):
    img = store.ensure_busybox()
    root = img.rootfs
    assert img.name == "busybox" and root == store.root / "busybox" / "rootfs"
    assert (root / "bin/busybox").is_file() and not (root / "bin/busybox").is_symlink()
    assert os.access(root / "bin/busybox", os.X_OK)
    listing = subprocess.run(["busybox", "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    for applet in ("sh", "httpd", "wget", "nc", "ip"):
        path = next(p for p in listing if p.rsplit("/", 1)[-1] == applet)
        link = root / path
        assert link.is_symlink(), path
        target = os.readlink(link)
        assert not target.startswith("/")  # relative: same meaning on host and in the container
        assert link.resolve() == (root / "bin/busybox").resolve()
    for d in ("proc", "sys", "dev", "etc", "root", "var/www", "run"):
        assert (root / d).is_dir(), d
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    assert (root / "etc/passwd").read_text().splitlines() == [
        "root:x:0:0:root:/root:/bin/sh", "nobody:x:65534:65534:nobody:/nonexistent:/bin/false"]
    assert (root / "etc/group").read_text().splitlines() == ["root:x:0:", "nogroup:x:65534:"]
    for f in ("hosts", "resolv.conf", "hostname"):
        assert (root / "etc" / f).read_text() == ""
    assert img.config.cmd == ["sh"] and img.config.workdir == "/" and img.config.exposed == []
    assert img.config.env[0].startswith("PATH=") and "/bin" in img.config.env[0]
    assert img.size >= (root / "bin/busybox").stat().st_size
    assert json.loads((store.root / "busybox/image.json").read_text())["config"]["cmd"] == ["sh"]


@pytest.mark.root   # chroot needs root (make test runs as root)
def test_busybox_image_runs_in_chroot(store):
    root = store.ensure_busybox().rootfs
    out = subprocess.run(["chroot", str(root), "/bin/sh", "-c", "echo hi; wget --help 2>&1 | head -1"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and out.stdout.startswith("hi\n")
    assert "BusyBox" in out.stdout


def test_ensure_busybox_is_idempotent_and_fast(store, monkeypatch):
    first = store.ensure_busybox()
    json_before = (store.root / "busybox/image.json").read_text()

    def boom(*a, **k):
        raise AssertionError("second call must not rebuild")

    monkeypatch.setattr(images_mod.subprocess, "run", boom)
    t0 = time.monotonic()
    second = store.ensure_busybox()
    assert time.monotonic() - t0 < 0.1
    assert second == first
    assert (store.root / "busybox/image.json").read_text() == json_before
    assert [i.name for i in store.list()] == ["busybox"]


def test_busybox_missing_names_the_package(store, monkeypatch, tmp_path):
    monkeypatch.setattr(images_mod, "BUSYBOX_PATHS", (tmp_path / "nope/busybox",))
    with pytest.raises(RuntimeFailure, match="busybox-static"):
        store.ensure_busybox()
    assert os.listdir(store.root) == []


def test_dynamic_busybox_is_refused(store, monkeypatch):
    monkeypatch.setattr(images_mod, "BUSYBOX_PATHS", (Path("/usr/bin/env"),))  # dynamically linked
    with pytest.raises(RuntimeFailure, match="busybox-static"):
        store.ensure_busybox()


# -- import round trip -------------------------------------------------------


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_import_round_trip(store, tmp_path, compression):
    tar = make_tar(tmp_path / "rootfs.tar", [
        directory("."),
        directory("bin"),
        reg("bin/tool", b"#!/bin/sh\necho hi\n", 0o755),
        sym("bin/sh", "/bin/tool"),              # absolute target: resolves inside the container
        sym("lib", "usr/lib"),
        directory("tmp", 0o1777),
        reg("etc/motd", b"hello\n"),
        hardlink("etc/motd2", "/etc/motd"),     # archive path, made relative like names
        reg("/abs/path", b"abs"),                # absolute name: made relative
    ], compression)
    calls = []
    img = store.import_tar(tar, "mini", cmd=["/bin/tool"], progress=lambda d, t: calls.append((d, t)))
    root = img.rootfs
    assert root == store.root / "mini/rootfs"
    assert (root / "bin/tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.readlink(root / "bin/sh") == "/bin/tool"
    assert os.readlink(root / "lib") == "usr/lib"
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE((root / "bin/tool").stat().st_mode) == 0o755
    assert os.stat(root / "etc/motd").st_ino == os.stat(root / "etc/motd2").st_ino
    assert (root / "abs/path").read_bytes() == b"abs"
    assert img.config.cmd == ["/bin/tool"] and img.config.env[0].startswith("PATH=")
    assert img.size == len(b"#!/bin/sh\necho hi\n") + len(b"hello\n") + len(b"abs")
    assert img.warnings == ()
    assert calls and calls[-1][0] == calls[-1][1] == tar.stat().st_size
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert store.get("mini") == img
    assert [i.name for i in store.list()] == ["mini"]
    assert not any(n.startswith(".tmp-") for n in os.listdir(store.root))


def test_import_default_cmd_and_list_sorted(store, tmp_path):
    tar = make_tar(tmp_path / "a.tar", [reg("f")])
    for name in ("zeta", "alpha", "mid.1"):
        store.import_tar(tar, name)
    assert [i.name for i in store.list()] == ["alpha", "mid.1", "zeta"]
    assert store.get("alpha").config.cmd == ["sh"]


@pytest.mark.root   # chown needs root (make test runs as root)
def test_import_keeps_numeric_ownership(store, tmp_path):
    tar = make_tar(tmp_path / "own.tar", [reg("mine", uid=1234, gid=4321, uname="nosuchuser"), reg("root")])
    root = store.import_tar(tar, "own").rootfs
    st = os.lstat(root / "mine")
    assert (st.st_uid, st.st_gid) == (1234, 4321)
    assert os.lstat(root / "root").st_uid == 0


def test_single_top_level_directory_is_imported_as_is(store, tmp_path):
    tar = make_tar(tmp_path / "wrapped.tar", [directory("rootfs"), reg("rootfs/bin/x")])
    root = store.import_tar(tar, "wrapped").rootfs
    assert (root / "rootfs/bin/x").is_file() and not (root / "bin").exists()


def test_progress_is_throttled(store, tmp_path):
    tar = make_tar(tmp_path / "many.tar", [reg(f"f{i}") for i in range(2000)])
    calls = []
    t0 = time.monotonic()
    store.import_tar(tar, "many", progress=lambda d, t: calls.append(d))
    elapsed = time.monotonic() - t0
    assert len(calls) <= elapsed * 10 + 2
    assert calls[-1] == tar.stat().st_size


# -- hostile tars ---------------------------------------------------------------


def test_dotdot_is_rejected(store, tmp_path):
    assert_rejected(store, tmp_path, [reg("ok"), reg("../../../evil")], "../../../evil")
    assert not (tmp_path / "evil").exists()


def test_dotdot_in_the_middle_is_rejected(store, tmp_path):
    assert_rejected(store, tmp_path, [reg("a/../../../../evil")], "a/../../../../evil")


def test_absolute_name_is_made_relative(store, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    tar = make_tar(tmp_path / "abs.tar", [reg(f"{victim}/pwned", b"abs")])
    root = store.import_tar(tar, "abs").rootfs
    assert not (victim / "pwned").exists()
    assert (root / str(victim).lstrip("/") / "pwned").read_bytes() == b"abs"


def test_file_through_absolute_symlink_is_rejected(store, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    assert_rejected(store, tmp_path, [sym("a", str(victim)), reg("a/pwned", b"owned")], "a/pwned")
    assert list(victim.iterdir()) == []


def test_file_through_symlink_to_etc_is_rejected(store, tmp_path):
    before = Path("/etc/passwd").read_bytes()
    assert_rejected(store, tmp_path, [sym("a", "/etc"), reg("a/passwd", b"pwned::0:0::/:/bin/sh\n")], "a/passwd")
    assert Path("/etc/passwd").read_bytes() == before


def test_directory_through_symlink_is_rejected(store, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    assert_rejected(store, tmp_path, [sym("a", str(victim)), directory("a/sub")], "a/sub")
    assert list(victim.iterdir()) == []


def test_file_over_symlink_is_rejected(store, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    assert_rejected(store, tmp_path, [sym("f", str(victim / "target")), reg("f", b"owned")], "f")
    assert list(victim.iterdir()) == []


def test_relative_symlink_escaping_root_is_rejected(store, tmp_path):
    err = assert_rejected(store, tmp_path, [reg("x"), sym("sub/up", "../../..")], "sub/up")
    assert "escapes" in str(err)


def test_hardlink_to_host_etc_passwd_is_rejected(store, tmp_path):
    nlink = os.stat("/etc/passwd").st_nlink
    assert_rejected(store, tmp_path, [hardlink("pw", "/etc/passwd")], "pw")
    assert os.stat("/etc/passwd").st_nlink == nlink


def test_hardlink_with_dotdot_is_rejected(store, tmp_path):
    nlink = os.stat("/etc/passwd").st_nlink
    assert_rejected(store, tmp_path, [hardlink("pw", "../../../../../../../../etc/passwd")], "pw")
    assert os.stat("/etc/passwd").st_nlink == nlink


def test_hardlink_through_symlink_is_rejected(store, tmp_path):
    nlink = os.stat("/etc/passwd").st_nlink
    assert_rejected(store, tmp_path, [sym("s", "/etc/passwd"), hardlink("pw", "s")], "pw")
    assert_rejected(store, tmp_path, [sym("e", "/etc"), hardlink("pw", "e/passwd")], "pw")
    assert os.stat("/etc/passwd").st_nlink == nlink


def test_absolute_hardlink_points_inside_the_image(store, tmp_path):
    host = os.stat("/etc/passwd")
    tar = make_tar(tmp_path / "hl.tar", [reg("etc/passwd", b"root:x:0:0::/:/bin/sh\n"), hardlink("pw", "/etc/passwd")])
    root = store.import_tar(tar, "hl").rootfs
    st = os.stat(root / "pw")
    assert st.st_ino == os.stat(root / "etc/passwd").st_ino
    assert (st.st_dev, st.st_ino) != (host.st_dev, host.st_ino)


def test_device_and_fifo_entries_are_skipped_with_a_warning(store, tmp_path):
    tar = make_tar(tmp_path / "dev.tar", [
        special("dev/mem", tarfile.CHRTYPE, devmajor=1, devminor=1),
        special("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0),
        special("fifo", tarfile.FIFOTYPE),
        reg("ok"),
    ])
    img = store.import_tar(tar, "dev")
    assert (img.rootfs / "ok").is_file()
    assert not (img.rootfs / "dev/mem").exists() and not (img.rootfs / "dev/sda").exists()
    assert not os.path.lexists(img.rootfs / "fifo")
    assert len(img.warnings) == 1 and "skipped 3" in img.warnings[0] and "'dev/mem'" in img.warnings[0]


def test_setuid_and_setgid_bits_are_dropped(store, tmp_path):
    tar = make_tar(tmp_path / "suid.tar", [reg("bin/su", b"\x7fELF", 0o4755), directory("shared", 0o2775)])
    root = store.import_tar(tar, "suid").rootfs
    assert stat.S_IMODE((root / "bin/su").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "shared").stat().st_mode) == 0o775


def test_failed_import_leaves_nothing_behind(store, tmp_path):
    entries = [directory("bin"), reg("bin/a", b"a" * 10000), reg("bin/b"), reg("../late-evil")]
    assert_rejected(store, tmp_path, entries, "../late-evil")
    with pytest.raises(NotFound):
        store.get("evil")


# -- names, conflicts, bad input ------------------------------------------------


@pytest.mark.parametrize("name", ["", "Bad", "a//b", "/a", "a/", "a:", "a/b/c/d/e/f/g", "../x", ".hidden", "-x", "x" * 129, "sp ace", "app\n", None, 5])
def test_bad_image_name(store, tmp_path, name):
    tar = make_tar(tmp_path / "ok.tar", [reg("f")])
    with pytest.raises(InvalidArgument) as exc:
        store.import_tar(tar, name)
    assert repr(name) in str(exc.value) and "a-z" in str(exc.value)
    assert os.listdir(store.root) == []


def test_duplicate_import_conflicts(store, tmp_path):
    first = store.import_tar(make_tar(tmp_path / "one.tar", [reg("one", b"1")]), "app")
    with pytest.raises(Conflict, match="image 'app' already exists; remove it first"):
        store.import_tar(make_tar(tmp_path / "two.tar", [reg("two", b"2")]), "app")
    assert (first.rootfs / "one").read_bytes() == b"1" and not (first.rootfs / "two").exists()
    assert sorted(os.listdir(store.root)) == ["app"]


def test_get_unknown_names_the_import_command(store):
    with pytest.raises(NotFound) as exc:
        store.get("nginx")
    assert str(exc.value).startswith("image 'nginx' not found; load it with `portlink load -i <archive>`")
    assert "`portlink image import <rootfs.tar> nginx`" in str(exc.value)


def test_remove(store, tmp_path):
    store.import_tar(make_tar(tmp_path / "a.tar", [reg("f")]), "gone")
    store.remove("gone")
    assert store.list() == [] and os.listdir(store.root) == []
    with pytest.raises(NotFound):
        store.remove("gone")


def test_half_image_is_ignored_and_cleaned_by_next_import(store, tmp_path):
    half = store.root / "app/rootfs"
    half.mkdir(parents=True)
    (half / "stale").write_text("old")
    assert store.list() == []
    with pytest.raises(NotFound):
        store.get("app")
    img = store.import_tar(make_tar(tmp_path / "a.tar", [reg("fresh")]), "app")
    assert (img.rootfs / "fresh").exists() and not (img.rootfs / "stale").exists()


def test_missing_tar_names_the_path(store, tmp_path):
    missing = tmp_path / "nope.tar"
    with pytest.raises(InvalidArgument, match=str(missing)):
        store.import_tar(missing, "x")
    with pytest.raises(InvalidArgument, match=str(tmp_path)):
        store.import_tar(tmp_path, "x")  # a directory
    assert os.listdir(store.root) == []


@pytest.mark.parametrize("content", [b"", b"hello, not a tar at all\n" * 100, b"\x1f\x8b\x08garbage"])
def test_not_a_tar(store, tmp_path, content):
    bogus = tmp_path / "bogus.tar"
    bogus.write_bytes(content)
    with pytest.raises(InvalidArgument, match=f"{bogus} is not a tar archive"):
        store.import_tar(bogus, "x")
    assert os.listdir(store.root) == []


def test_truncated_gzip_names_the_tar(store, tmp_path):
    tar = make_tar(tmp_path / "big.tar", [reg(f"f{i}", os.urandom(4096)) for i in range(20)], "gz")
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(InvalidArgument, match="big.tar"):
        store.import_tar(tar, "trunc")
    assert os.listdir(store.root) == []


def test_bad_cmd(store, tmp_path):
    with pytest.raises(InvalidArgument, match="cmd"):
        store.import_tar(make_tar(tmp_path / "a.tar", [reg("f")]), "x", cmd=[])


def test_hardlink_over_existing_entry_is_rejected(store, tmp_path):
    # tarfile would fall back to copying the *unfiltered* target member, setuid bit included
    err = assert_rejected(store, tmp_path, [reg("a", b"a", 0o4755), reg("b"), hardlink("b", "a")], "b")
    assert "earlier entry" in str(err)


# -- hostile tars: nothing written outside, no partial image (issue 6) -----------


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    """A file outside the image store that a hostile tar tries to reach."""
    d = tmp_path / "outside"
    d.mkdir()
    f = d / "sentinel"
    f.write_bytes(b"untouched\n")
    os.chmod(f, 0o644)
    return f


def assert_sentinel_untouched(sentinel: Path) -> None:
    assert sentinel.read_bytes() == b"untouched\n"
    assert stat.S_IMODE(os.lstat(sentinel).st_mode) == 0o644 and os.lstat(sentinel).st_nlink == 1
    assert sorted(os.listdir(sentinel.parent)) == ["sentinel"]


def hostile_cases(s: Path):
    d = str(s.parent)
    return {
        "dotdot": ([reg("../../outside/sentinel", b"pwned")], "../../outside/sentinel"),
        "symlink-dir-then-file": ([sym("a", d), reg("a/sentinel", b"pwned")], "a/sentinel"),
        "symlink-dir-then-new-file": ([sym("a", d), reg("a/new", b"pwned")], "a/new"),
        "symlink-chain": ([sym("b", d), sym("a", "b"), reg("a/sentinel", b"pwned")], "a/sentinel"),
        "symlink-then-dir-under-it": ([sym("a", d), directory("a/sub")], "a/sub"),
        "file-over-symlink": ([sym("f", str(s)), reg("f", b"pwned")], "f"),
        "dir-replaced-by-symlink": ([directory("etc"), sym("etc", d), reg("etc/sentinel", b"pwned")], "etc"),
        "file-replaced-by-symlink": ([reg("f"), sym("f", str(s))], "f"),
        "hardlink-absolute-outside": ([hardlink("h", str(s))], "h"),
        "hardlink-dotdot": ([hardlink("h", "../../outside/sentinel")], "h"),
        "hardlink-through-symlink": ([sym("a", d), hardlink("h", "a/sentinel")], "h"),
        "hardlink-to-symlink": ([sym("a", str(s)), hardlink("h", "a")], "h"),
        "hardlink-then-write": ([sym("a", str(s)), hardlink("h", "a"), reg("h", b"pwned")], "h"),
        "relative-symlink-escape": ([sym("up", "../outside")], "up"),
        "nul-in-name": ([reg("ok", pax_headers={"path": "a\0b"})], "a\0b"),
        "nul-in-link": ([special("l", tarfile.SYMTYPE, "x", pax_headers={"linkpath": "/x\0y"})], "l"),
        "uid-out-of-range": ([reg("f", pax_headers={"uid": str(1 << 40)})], "f"),
        "gid-negative": ([reg("f", pax_headers={"gid": "-5"})], "f"),
        "root-replaced-by-symlink": ([sym(".", d)], "."),
    }


HOSTILE = list(hostile_cases(Path("/x/y")))


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_tar_is_rejected_without_side_effects(store, tmp_path, sentinel, case):
    entries, member = hostile_cases(sentinel)[case]
    err = assert_rejected(store, tmp_path, entries, member)
    assert "refusing" in str(err)
    assert_sentinel_untouched(sentinel)
    assert not any(p.name.startswith(".tmp-") for p in store.root.iterdir())


def test_rejected_entry_late_in_a_compressed_tar_leaves_no_partial_image(store, tmp_path, sentinel):
    entries = [directory("usr"), *(reg(f"usr/f{i}", os.urandom(1000)) for i in range(300)),
               sym("lnk", str(sentinel.parent)), reg("lnk/sentinel", b"pwned")]
    tar = make_tar(tmp_path / "late.tar.gz", entries, "gz")
    with pytest.raises(InvalidArgument, match="'lnk/sentinel'"):
        store.import_tar(tar, "late")
    assert os.listdir(store.root) == [] and store.list() == []
    assert_sentinel_untouched(sentinel)


def test_real_rootfs_absolute_symlinks_still_import(store, tmp_path, sentinel):
    """/bin/sh -> busybox, Debian's alternatives chain, dangling and absolute links: fine,
    they resolve inside the container; nothing is written through them."""
    tar = make_tar(tmp_path / "rootfs.tar", [
        directory("bin"), reg("bin/busybox", b"\x7fELF", 0o755), sym("bin/sh", "/bin/busybox"),
        directory("usr/bin"), reg("usr/bin/vim.tiny", b"vim", 0o755),
        sym("usr/bin/editor", "/etc/alternatives/editor"),
        sym("etc/alternatives/editor", "/usr/bin/vim.tiny"),
        sym("etc/mtab", "/proc/self/mounts"),                    # dangling on the host
        sym("var/run", "/run"), directory("run"),
        sym("outside-link", str(sentinel)),                      # absolute: the container's path
        sym("lib", "usr/lib"), directory("usr/lib"), reg("usr/lib/libc.so", b"libc"),
    ])
    root = store.import_tar(tar, "distro").rootfs
    assert os.readlink(root / "bin/sh") == "/bin/busybox"
    assert os.readlink(root / "usr/bin/editor") == "/etc/alternatives/editor"
    assert os.readlink(root / "etc/alternatives/editor") == "/usr/bin/vim.tiny"
    assert os.readlink(root / "etc/mtab") == "/proc/self/mounts"
    assert os.readlink(root / "outside-link") == str(sentinel)
    assert (root / "usr/lib/libc.so").read_bytes() == b"libc"
    assert_sentinel_untouched(sentinel)


def test_absurd_mtime_is_neutralised(store, tmp_path):
    tar = make_tar(tmp_path / "t.tar", [reg("big", pax_headers={"mtime": "1e300"}),
                                         reg("nan", pax_headers={"mtime": "nan"}),
                                         reg("fine", mtime=1_700_000_000)])
    root = store.import_tar(tar, "times").rootfs
    assert os.lstat(root / "big").st_mtime == 0 and os.lstat(root / "nan").st_mtime == 0
    assert os.lstat(root / "fine").st_mtime == 1_700_000_000


def test_mode_high_bits_are_dropped(store, tmp_path):
    tar = make_tar(tmp_path / "m.tar", [reg("f", mode=0o7777777), directory("tmp", 0o1777)])
    root = store.import_tar(tar, "modes").rootfs
    assert stat.S_IMODE(os.lstat(root / "f").st_mode) == 0o1777 & 0o7777777
    assert stat.S_IMODE(os.lstat(root / "tmp").st_mode) == 0o1777


# -- hostile tars: bounds --------------------------------------------------------


def test_gzip_bomb_stops_at_the_member_header(tmp_path):
    store = ImageStore(tmp_path / "images", max_bytes=1 << 20)
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tf:
        info = tarfile.TarInfo("zeros")
        info.size = 256 << 20
        tf.addfile(info, io.BufferedReader(io.BytesIO(bytes(info.size))))
    assert bomb.stat().st_size < 1 << 20          # a 256 MiB member in well under 1 MiB
    with pytest.raises(InvalidArgument) as exc:
        store.import_tar(bomb, "bomb")
    assert "'zeros'" in str(exc.value) and str(1 << 20) in str(exc.value)
    assert os.listdir(store.root) == []


def test_size_limit_counts_all_members(tmp_path):
    store = ImageStore(tmp_path / "images", max_bytes=10_000)
    tar = make_tar(tmp_path / "many.tar", [reg(f"f{i}", b"x" * 1000) for i in range(11)])
    with pytest.raises(InvalidArgument, match="'f10'.*10000 bytes"):
        store.import_tar(tar, "many")
    assert os.listdir(store.root) == []
    ok = make_tar(tmp_path / "ten.tar", [reg(f"f{i}", b"x" * 1000) for i in range(10)])
    assert store.import_tar(ok, "ten").size == 10_000


def test_member_count_limit(tmp_path):
    store = ImageStore(tmp_path / "images", max_members=100)
    tar = make_tar(tmp_path / "count.tar", [reg(f"f{i}", b"") for i in range(101)])
    with pytest.raises(InvalidArgument, match="'f100'.*more than 100 entries"):
        store.import_tar(tar, "count")
    assert os.listdir(store.root) == []


def test_free_disk_space_bounds_an_import(store, tmp_path, monkeypatch):
    monkeypatch.setattr(images_mod, "DISK_RESERVE", 1 << 62)   # as if the disk were full
    tar = make_tar(tmp_path / "a.tar", [reg("f", b"data")])
    with pytest.raises(InvalidArgument, match="'f'.*free space"):
        store.import_tar(tar, "full")
    assert os.listdir(store.root) == []


def long_header(type_: bytes, size: int, payload: bytes = b"") -> bytes:
    h = tarfile.TarInfo("././@LongLink")
    h.type, h.size = type_, size
    return h.tobuf(tarfile.GNU_FORMAT) + payload


@pytest.mark.parametrize("type_", [tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE, tarfile.XGLTYPE])
def test_huge_extended_header_is_refused_before_it_is_read(store, tmp_path, type_):
    first = make_tar(tmp_path / "first.tar", [reg("ok")]).read_bytes()[:1024]   # header + data of 'ok'
    # 64 MiB announced, 4 KiB present: refused on the announcement, never read into memory
    bad = tmp_path / "ext.tar"
    bad.write_bytes(first + long_header(type_, 64 << 20, b"0" * 4096))
    with pytest.raises(InvalidArgument, match=f"extended header of {64 << 20} bytes"):
        store.import_tar(bad, "ext")
    assert os.listdir(store.root) == []


@pytest.mark.parametrize("lead", [b"", b"with-first-member"])
def test_chained_long_name_headers_are_refused(store, tmp_path, lead):
    raw = make_tar(tmp_path / "first.tar", [reg("ok")]).read_bytes()[:1024] if lead else b""
    raw += b"".join(long_header(tarfile.GNUTYPE_LONGNAME, 10, b"x" * 10 + bytes(502)) for _ in range(5000))
    raw += tarfile.TarInfo("f").tobuf(tarfile.GNU_FORMAT) + bytes(1024)
    bad = tmp_path / "chain.tar"
    bad.write_bytes(raw)
    with pytest.raises(InvalidArgument, match="chain.tar"):
        store.import_tar(bad, "chain")
    assert os.listdir(store.root) == []


# -- the tarball path ---------------------------------------------------------------


def test_fifo_is_refused_without_blocking(store, tmp_path):
    fifo = tmp_path / "pipe.tar"
    os.mkfifo(fifo)
    with pytest.raises(InvalidArgument, match="pipe.tar: not a regular file"):
        store.import_tar(fifo, "pipe")
    assert os.listdir(store.root) == []


@pytest.mark.parametrize("path, msg", [
    ("/dev/zero", "/dev/zero: not a regular file"),
    ("relative/rootfs.tar", "invalid tar path 'relative/rootfs.tar'"),
    ("/tmp/a\0b.tar", "invalid tar path"),
    (5, "invalid tar path 5"),
    (None, "invalid tar path None"),
])
def test_bad_tar_paths(store, path, msg):
    with pytest.raises(InvalidArgument) as exc:
        store.import_tar(path, "x")
    assert msg in str(exc.value)
    assert os.listdir(store.root) == []


# -- reading an image's files on the host ----------------------------------------------


def test_read_image_file_resolves_symlinks_inside_the_rootfs(tmp_path, sentinel):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/real").write_text("image data\n")
    (root / "etc/passwd").symlink_to(str(sentinel))          # absolute: the image's own path
    (root / "etc/group").symlink_to("../../../../../../../../etc/real")   # `..` stops at the root
    (root / "etc/shadow").symlink_to("/etc/real")
    (root / str(sentinel.parent).lstrip("/")).mkdir(parents=True)
    (root / str(sentinel).lstrip("/")).write_text("inside copy\n")
    assert images_mod.read_image_file(root, "etc/passwd") == "inside copy\n"
    assert images_mod.read_image_file(root, "etc/group") == "image data\n"
    assert images_mod.read_image_file(root, "/etc/shadow") == "image data\n"


def test_read_image_file_never_follows_to_the_host(tmp_path):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").symlink_to("/etc/passwd")           # would be the host's if followed
    (root / "etc/loop").symlink_to("loop")
    (root / "etc/dir").symlink_to("/")
    os.mkfifo(root / "etc/fifo")
    (root / "dev").symlink_to("/dev")
    (root / "etc/zero").symlink_to("/dev/zero")
    for rel in ("etc/passwd", "etc/loop", "etc/dir", "etc/fifo", "etc/zero", "dev/zero", "missing", "etc/passwd/x"):
        assert images_mod.read_image_file(root, rel) == "", rel


def test_read_image_file_is_bounded(tmp_path):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_bytes(b"x" * 101)
    with pytest.raises(InvalidArgument, match="/etc/passwd is larger than 100 bytes"):
        images_mod.read_image_file(root, "etc/passwd", limit=100)
    assert images_mod.read_image_file(root, "etc/passwd", limit=101) == "x" * 101
