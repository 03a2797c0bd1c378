"""Volumes, binds, tmpfs and --volumes-from with real runc and busybox on a simulated host."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest

from helpers import wait_for

pytestmark = pytest.mark.root


def vol_names(h) -> list[str]:
    return sorted(v["Name"] for v in h.client.get("/volumes"))


def vol_dirs(h) -> list[str]:
    d = h.state_dir / "volumes"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def run(h, *args: str) -> str:
    r = h.cli("run", *args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_named_volume_outlives_its_container_ro_refuses_writes(nft_host):
    h = nft_host
    run(h, "--name", "writer", "-v", "data:/data", "busybox", "sh", "-c", "echo kept > /data/f")
    mounts = h.client.get("/containers/writer")["Mounts"]
    assert [{k: m[k] for k in ("Type", "Name", "Source", "Destination", "RW")} for m in mounts] == [
        {"Type": "volume", "Name": "data", "Source": str(h.state_dir / "volumes" / "plvol-data" / "_data"),
         "Destination": "/data", "RW": True}]
    assert h.cli("rm", "-f", "writer").returncode == 0
    assert vol_names(h) == ["data"]
    assert run(h, "--rm", "-v", "data:/data", "busybox", "cat", "/data/f") == "kept\n"
    r = h.cli("run", "--rm", "-v", "data:/data:ro", "busybox", "sh", "-c",
              "cat /data/f; echo x > /data/g || echo refused; grep ' /data ' /proc/mounts")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == ["kept", "refused"] and "Read-only file system" in r.stderr
    opts = lines[2].split()[3].split(",")
    assert {"ro", "nosuid", "nodev"} <= set(opts)
    # a host directory: must exist, bound as it is
    host_dir = h.workdir / "site"
    host_dir.mkdir()
    (host_dir / "index.html").write_text("hello")
    assert run(h, "--rm", "--mount", f"type=bind,source={host_dir},target=/www,readonly", "busybox",
               "cat", "/www/index.html") == "hello"


def test_volumes_from_shares_and_ro_and_the_backup_pattern(nft_host):
    h = nft_host
    run(h, "-d", "--name", "db", "-v", "dbdata:/var/lib/db", "busybox", "sh", "-c",
        "echo row1 > /var/lib/db/table; exec sleep 600")
    assert wait_for(lambda: h.cli("exec", "db", "cat", "/var/lib/db/table").stdout == "row1\n")
    assert run(h, "--rm", "--volumes-from", "db", "busybox", "sh", "-c",
               "echo row2 >> /var/lib/db/table; cat /var/lib/db/table") == "row1\nrow2\n"
    r = h.cli("run", "--rm", "--volumes-from", "db:ro", "busybox", "sh", "-c", "echo x >> /var/lib/db/table")
    assert r.returncode != 0 and "Read-only file system" in r.stderr
    # the seed's backup: an archive of db's data written into another volume
    run(h, "--rm", "--volumes-from", "db", "-v", "backups:/backup", "busybox",
        "tar", "c", "-f", "/backup/db.tar", "/var/lib/db")
    assert h.client.get("/volumes/backups")["UsedBy"] == []        # --rm: gone, its named volume stays
    listing = run(h, "--rm", "-v", "backups:/backup", "busybox", "sh", "-c",
                  "mkdir /r && tar x -f /backup/db.tar -C /r && cat /r/var/lib/db/table")
    assert listing == "row1\nrow2\n"
    assert sorted(h.client.get("/volumes/dbdata")["UsedBy"]) == ["db"]


def test_tmpfs_is_empty_at_each_start_and_size_limited(nft_host):
    h = nft_host
    run(h, "-d", "--name", "t", "--tmpfs", "/scratch:size=1m", "busybox", "sleep", "600")
    r = h.cli("exec", "t", "sh", "-c", "echo x > /scratch/f && dd if=/dev/zero of=/scratch/big bs=64k count=32")
    assert r.returncode != 0 and "No space left on device" in r.stderr
    assert h.cli("exec", "t", "cat", "/scratch/f").stdout == "x\n"
    opts = h.cli("exec", "t", "grep", " /scratch ", "/proc/mounts").stdout.split()[3].split(",")
    assert {"nosuid", "nodev", "noexec", "size=1024k"} <= set(opts)
    assert h.cli("restart", "-t", "1", "t").returncode == 0
    assert h.cli("exec", "t", "ls", "-A", "/scratch").stdout == ""
    assert [m["Type"] for m in h.client.get("/containers/t")["Mounts"]] == ["tmpfs"]


def test_in_use_prune_rm_v_and_anonymous_volumes(nft_host):
    h = nft_host
    h.cli("volume", "create", "spare", check=True)
    run(h, "--name", "user", "-v", "keep:/k", "-v", "/anon", "busybox", "true")   # exited: still a user
    anon = [m["Name"] for m in h.client.get("/containers/user")["Mounts"] if m["Destination"] == "/anon"][0]
    assert len(anon) == 64
    r = h.cli("volume", "rm", "keep")
    assert r.returncode == 125 and "volume 'keep' is in use by container(s) user" in r.stderr
    # prune: unused anonymous ones (none), then with -a unused named ones; never one in use
    assert h.cli("volume", "prune", "-f").stdout == ""
    assert h.cli("volume", "prune", "-f", "-a").stdout.split() == ["spare"]
    assert vol_names(h) == sorted([anon, "keep"])
    assert h.cli("rm", "-v", "user").returncode == 0                 # its anonymous volume goes, the named stays
    assert vol_names(h) == ["keep"] and vol_dirs(h) == ["plvol-keep"]
    # without -v the anonymous volume is left, dangling: prune finds it
    run(h, "--name", "other", "-v", "/scratch", "busybox", "true")
    assert h.cli("rm", "other").returncode == 0
    dangling = json.loads(h.cli("volume", "ls", "-f", "dangling=true", "--format", "json").stdout)
    assert len(dangling) == 2 and sum(v["Anonymous"] for v in dangling) == 1
    assert len(h.cli("volume", "prune", "-f").stdout.split()) == 1
    assert h.cli("volume", "rm", "keep").returncode == 0
    assert vol_names(h) == [] and vol_dirs(h) == []
    assert h.cli("volume", "rm", "keep").returncode == 125
    assert h.cli("volume", "rm", "-f", "keep").returncode == 0


def _image_with_a_volume(h, name: str) -> None:
    """busybox plus /var/lib/app (owned by 1000, mode 750, a seed file) declared a VOLUME."""
    images = h.state_dir / "images"
    tmp = images / f".tmp-{name}-test"
    shutil.copytree(images / "busybox", tmp, symlinks=True)
    app = tmp / "rootfs" / "var" / "lib" / "app"
    app.mkdir(parents=True)
    (app / "seed.txt").write_text("from the image\n")
    os.chown(app, 1000, 1000)
    app.chmod(0o750)
    meta = json.loads((tmp / "image.json").read_text())
    meta["name"], meta["config"]["volumes"] = name, ["/var/lib/app"]
    (tmp / "image.json").write_text(json.dumps(meta))
    tmp.rename(images / name)


def test_image_volumes_are_anonymous_and_new_volumes_are_seeded(nft_host):
    h = nft_host
    _image_with_a_volume(h, "appimg")
    out = run(h, "--name", "a1", "appimg", "sh", "-c", "cat /var/lib/app/seed.txt; stat -c '%u %a' /var/lib/app")
    assert out == "from the image\n1000 750\n"
    (m,) = h.client.get("/containers/a1")["Mounts"]
    assert m["Type"] == "volume" and len(m["Name"]) == 64 and m["Destination"] == "/var/lib/app"
    assert h.client.get(f"/volumes/{m['Name']}")["Anonymous"] is True
    # a named volume at the image's VOLUME: made, seeded once, then left as the user left it
    run(h, "--rm", "-v", "appdata:/var/lib/app", "appimg", "sh", "-c", "echo mine > /var/lib/app/seed.txt")
    assert run(h, "--rm", "-v", "appdata:/var/lib/app", "appimg", "cat", "/var/lib/app/seed.txt") == "mine\n"
    assert run(h, "--rm", "--mount", "type=volume,source=bare,target=/var/lib/app,volume-nocopy", "appimg",
               "ls", "-A", "/var/lib/app") == ""
    # --rm removed the anonymous volumes of those runs; a1's stays until rm -v
    assert sorted(vol_names(h)) == sorted(["appdata", "bare", m["Name"]])
    assert h.cli("rm", "-v", "a1").returncode == 0
    assert sorted(vol_names(h)) == ["appdata", "bare"]


@pytest.mark.parametrize("args, message", [
    (["-v", "new1:/proc/x"], "/proc is the kernel's"),
    (["-v", "new1:/data/../etc"], "'..' is not allowed"),
    (["-v", "new1:data"], "must be an absolute path"),
    (["--mount", "type=volume,source=new1,target=/d,bogus=1"], "unknown key 'bogus'"),
    (["-v", "new1:/d", "--tmpfs", "/t:size=huge"], "expected a size like"),
    (["-v", "new1:/d", "-v", "/no/such/dir:/x"], "bind source '/no/such/dir' does not exist on the host"),
    (["-v", "new1:/d", "--volumes-from", "ghost"], "--volumes-from 'ghost': no such container"),
])
def test_bad_input_leaves_nothing(nft_host, args, message):
    h = nft_host
    r = h.cli("run", "--name", "bad", *args, "busybox", "true")
    assert r.returncode == 125 and message in r.stderr, r.stderr
    assert vol_names(h) == [] and vol_dirs(h) == []
    assert h.client.get("/containers", all="1") == []
    r = h.cli("volume", "inspect", "nope")
    assert r.returncode == 125 and "volume 'nope' not found" in r.stderr


def test_a_symlink_planted_in_a_shared_volume_redirects_no_mount(nft_host):
    h = nft_host
    # a tenant plants links in a volume another container will mount
    run(h, "--rm", "-v", "shared:/srv", "busybox", "sh", "-c", "ln -s /etc /srv/logs; ln -s /proc/sys /srv/k")
    before = vol_names(h)
    for target, link in (("/srv/logs", "/srv/logs"), ("/srv/k/x", "/srv/k")):
        r = h.cli("run", "--name", "victim", "-v", "shared:/srv", "-v", f"logsvol:{target}", "busybox", "true")
        assert r.returncode == 125, r.stderr
        assert f"passes through {link}, a symbolic link in volume 'shared'" in r.stderr
        assert vol_names(h) == before and h.client.get("/containers", all="1") == []   # nothing left: no logsvol
    # in its own rootfs a link is followed inside it, and may not land on the kernel's paths: a
    # container that swapped its mount's parent for a link to /proc/sys is refused its next start
    run(h, "--name", "self", "-v", "sv:/a/b", "busybox", "sh", "-c", "mv /a /a.old && ln -s /proc/sys /a")
    r = h.cli("start", "self")
    assert r.returncode == 125
    assert "mount target '/a/b' resolves through a symbolic link in the container to '/proc/sys/b'" in r.stderr
    assert h.client.get("/containers/self")["status"] == "exited"
    h.cli("rm", "-v", "self", check=True)
    # the host is untouched: /etc on the host did not get a mount
    assert "/etc " not in "".join(l.split()[4] + " " for l in open("/proc/self/mountinfo"))


def test_daemon_restart_keeps_volumes_and_their_users(nft_host):
    h = nft_host
    run(h, "-d", "--name", "svc", "-v", "state:/state", "busybox", "sh", "-c", "echo 1 > /state/n; exec sleep 600")
    assert wait_for(lambda: h.cli("exec", "svc", "cat", "/state/n").stdout == "1\n")
    h.stop_daemon(signal.SIGKILL)
    h.start_daemon()
    assert h.client.get("/containers/svc")["status"] == "running"
    assert h.client.get("/volumes/state")["UsedBy"] == ["svc"]
    r = h.cli("volume", "rm", "state")
    assert r.returncode == 125 and "in use by container(s) svc" in r.stderr
    assert h.cli("exec", "svc", "cat", "/state/n").stdout == "1\n"
    assert h.cli("rm", "-f", "svc").returncode == 0
    assert run(h, "--rm", "-v", "state:/state", "busybox", "cat", "/state/n") == "1\n"


@pytest.mark.parametrize("point", ["run.volumes", "start.files"])
def test_a_run_killed_after_making_volumes_takes_them_back(nft_host, point):
    h = nft_host
    h.cli("volume", "create", "old", check=True)
    h.stop_daemon()
    h.env["PORTLINK_FAULT"] = point
    h.start_daemon()
    r = h.cli("run", "-d", "--name", "v", "-v", "fresh:/d", "-v", "old:/o", "-v", "/anon", "busybox", "sleep", "600")
    assert r.returncode != 0 and h.proc.wait(10) == -signal.SIGKILL, "the fault point was not reached"
    h.proc = None
    assert len(vol_dirs(h)) == 3                       # it died with them made
    h.env.clear()
    h.start_daemon()
    assert h.client.get("/containers", all="1") == []
    assert vol_names(h) == ["old"] and vol_dirs(h) == ["plvol-old"]   # what it made is gone, the rest kept
