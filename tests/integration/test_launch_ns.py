"""Containers start from the launch namespace (runtime/launch_ns.py): each root is
attached only in its monitor's copy of it, never in the daemon's namespace, and
the namespace runc copies does not grow with the containers on the host."""

from __future__ import annotations

import glob
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.root


def _mountinfo(pid: int) -> list[tuple[str, str]]:
    """(mount point, fs type) of each mount in pid's namespace."""
    out = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            head, _, tail = line.partition(" - ")
            out.append((head.split()[4], tail.split()[0]))
    return out


def _monitor_pid(h, cid: str) -> int:
    return int((h.state_dir / "containers" / cid / "logshim.pid").read_text())


def _anywhere(path: str) -> list[str]:
    """Every process whose mount namespace has a mount at `path`."""
    seen = []
    for f in glob.glob("/proc/[0-9]*/mountinfo"):
        try:
            text = Path(f).read_text()
        except OSError:
            continue
        if f" {path} " in text:
            seen.append(f)
    return seen


def test_roots_live_in_their_monitors_namespace_only_and_it_does_not_grow(nft_host):
    h = nft_host
    state = str(h.state_dir)
    ids = [h.cli("run", "-d", "--name", f"c{i}", "busybox", "sh", "-c",
                 f"echo {i} > /mine; exec sleep 600", check=True).stdout.strip() for i in range(4)]
    daemon = h.proc.pid
    ours = [(p, t) for p, t in _mountinfo(daemon) if p.startswith(state + "/")]
    # The daemon holds the netns files (one per container, in a mount of their own:
    # kernel_ns.own_mount) and no root.
    netns_dir = f"{state}/netns"
    assert sorted(t for p, t in ours if p != netns_dir) == ["nsfs"] * 4, ours
    assert [p for p, _ in ours].count(netns_dir) == 1, ours
    counts = []
    for i, cid in enumerate(ids):
        rootfs = f"{state}/containers/{cid}/rootfs"
        mon = _mountinfo(_monitor_pid(h, cid))
        below = [(p, t) for p, t in mon if p.startswith(state + "/")]
        assert below == [(rootfs, "overlay")], below          # its own root, nothing of the others'
        counts.append(len(mon))
        assert h.cli("exec", f"c{i}", "cat", "/mine", check=True).stdout.strip() == str(i)
        # What the container wrote is in its own layer, where `cp` and a restart find it.
        assert (h.state_dir / "containers" / cid / "upper" / "mine").read_text().strip() == str(i)
    assert len(set(counts)) == 1, counts                      # the 4th started from what the 1st did
    # Stopped and removed: the root is gone from every namespace on the machine.
    gone = f"{state}/containers/{ids[0]}/rootfs"
    assert h.cli("rm", "-f", "c0").returncode == 0
    assert _anywhere(gone) == []
    assert h.cli("cp", "c1:/mine", str(h.state_dir / "out"), check=True).returncode == 0
    assert (h.state_dir / "out").read_text().strip() == "1"


def test_a_restarted_daemon_makes_the_launch_namespace_again(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "before", "busybox", "sleep", "600", check=True)
    h.stop_daemon()
    h.start_daemon()
    h.cli("run", "-d", "--name", "after", "busybox", "sleep", "600", check=True)
    before, after = (h.client.get(f"/containers/{n}")["id"] for n in ("before", "after"))
    assert h.client.get("/containers/before")["status"] == "running"
    for cid in (before, after):
        below = [p for p, _ in _mountinfo(_monitor_pid(h, cid)) if p.startswith(str(h.state_dir) + "/")]
        assert below == [f"{h.state_dir}/containers/{cid}/rootfs"], below
    assert h.cli("rm", "-f", "before", "after").returncode == 0
    assert [p for p, _ in _mountinfo(os.getpid()) if p.startswith(str(h.state_dir) + "/")] == []


def test_a_root_the_monitor_cannot_attach_is_named_and_runc_never_runs(tmp_path):
    """The monitor fails before runc: the daemon's error says why, nothing is left."""
    from portlink.errors import RuntimeFailure
    from portlink.runtime import launch_ns, mounts
    from portlink.runtime.runc import Runc

    for d in ("lower", "upper", "work", "c/bundle"):
        (tmp_path / d).mkdir(parents=True)
    launch = launch_ns.LaunchNamespace(str(tmp_path))
    runc = Runc(tmp_path / "runc", launch=launch)
    target = str(tmp_path / "c" / "rootfs")
    root = mounts.detached_overlay(str(tmp_path / "lower"), str(tmp_path / "upper"), str(tmp_path / "work"), target)
    os.rmdir(target)     # nowhere to attach it
    try:
        with pytest.raises(RuntimeFailure, match=r"monitor ended before runc did: cannot attach the "
                                                 r"container's root at .*/c/rootfs: move_mount: No such file"):
            runc.run_detached("plt-launchns-bad", tmp_path / "c" / "bundle", tmp_path / "c" / "container.log", root=root)
        assert runc.list_ids() == [] and not (tmp_path / "runc" / "plt-launchns-bad").exists()
    finally:
        root.close()
        launch.close()
    assert [p for p, _ in _mountinfo(os.getpid()) if p.startswith(str(tmp_path))] == []


def test_a_bind_source_mounted_after_the_daemon_started_is_seen(nft_host, tmp_path):
    """The launch namespace is a copy made at start: a host mount made since is
    found missing there and the namespace is made again before the container runs."""
    h = nft_host
    src = tmp_path / "late"
    src.mkdir()
    (src / "under").write_text("the directory below the mount\n")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "plt-launchns-late", str(src)], check=True)
    try:
        (src / "data").write_text("on the late mount\n")
        r = h.cli("run", "--rm", "-v", f"{src}:/data", "busybox", "sh", "-c", "cat /data/data; ls /data")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split("\n")[0] == "on the late mount" and "under" not in r.stdout
        assert "launch namespace is made again" in h.daemon_log()
        # Made again once: the next container finds it as it is.
        before = h.daemon_log().count("made again")
        h.cli("run", "--rm", "-v", f"{src}:/data", "busybox", "true", check=True)
        assert h.daemon_log().count("made again") == before
    finally:
        subprocess.run(["umount", "-l", str(src)], check=True)
