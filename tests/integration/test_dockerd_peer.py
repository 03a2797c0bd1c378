"""bench/dockerd_peer: the sandboxed dockerd the benchmarks compare against keeps
everything it makes (bridge, iptables rules, sysctls, mounts, cgroups, files) in
its sandbox, runs portlink's busybox without a registry, and leaves nothing."""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path

import pytest


def _load_peer():
    """bench/dockerd_peer.py by its path: bench/ on sys.path would shadow dnspython's
    `dns` with bench/dns.py for every test collected after this one."""
    path = Path(__file__).resolve().parents[2] / "bench" / "dockerd_peer.py"
    spec = importlib.util.spec_from_file_location("dockerd_peer", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["dockerd_peer"] = mod      # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


peer_mod = _load_peer()

pytestmark = pytest.mark.skipif(peer_mod.available() is not None, reason=str(peer_mod.available()))


def _mounts_with(text: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [l for l in f if text in l]


def test_docker_peer_runs_sealed_and_leaves_nothing(nft_host):
    host = nft_host
    rules_before = peer_mod.RootRules.read()
    archive = host.workdir / "busybox-docker.tar"
    host.cli("save", "-o", str(archive), "busybox", check=True)
    d = peer_mod.DockerPeer.start("testdkr")
    closed = False
    try:
        d.load(str(archive), "plt-test/busybox")
        assert d.docker("run", "--rm", "--pull", "never", "plt-test/busybox", "echo", "hi").stdout == "hi\n"
        d.docker("network", "create", "plt-test-net")
        d.docker("run", "-d", "--pull", "never", "--network", "plt-test-net", "--name", "web",
                 "plt-test/busybox", "sleep", "600")
        cid = d.docker("inspect", "-f", "{{.Id}}", "web").stdout.strip()
        # the bridge and the rules are in the sandbox namespace, not the root one
        assert "docker0" in d.ns.run("ip", "-o", "link").stdout
        assert "DOCKER-ISOLATION-STAGE-1" in d.ns.run("iptables-save").stdout
        assert d.ns.run("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
        assert peer_mod.RootRules.read() == rules_before
        assert not os.path.exists("/sys/class/net/docker0")
        # the container's cgroup is under the sandbox's parent
        assert (peer_mod.CGROUP_ROOT / "memory" / d.ns.name / cid).is_dir()
        # its mounts live in the private mount namespace only
        assert not _mounts_with(str(d.workdir))
        # the embedded DNS answers a container name on the user network
        client = d.docker("run", "--rm", "--pull", "never", "--network", "plt-test-net", "plt-test/busybox",
                          "nslookup", "web").stdout
        assert d.container_ip("web", "plt-test-net") in client
        holder = d.holder.pid
        errors = d.close()
        closed = True
        assert errors == []
        assert not os.path.exists(f"/proc/{holder}")
        assert not Path(d.ns.path).exists()
        assert not d.workdir.exists()
        assert not (peer_mod.CGROUP_ROOT / "memory" / d.ns.name).exists()
        assert peer_mod.RootRules.read().changes() == [] and rules_before.changes() == []
    finally:
        if not closed:
            d.close()


def test_docker_peer_bad_storage_driver_fails_clearly_and_leaves_nothing():
    netns = lambda: {n for n in os.listdir("/run/netns") if n.startswith("plt-testdkr-")}
    before, ns_before = set(os.listdir("/tmp")), netns()
    with pytest.raises(peer_mod.DockerPeerError, match="dockerd exited"):
        peer_mod.DockerPeer.start("testdkr", storage_driver="plt-no-such-driver")
    assert {n for n in set(os.listdir("/tmp")) - before if n.startswith("plt-testdkr-")} == set()
    assert netns() == ns_before


def test_docker_peer_close_after_its_daemons_were_killed_leaves_nothing(nft_host):
    """dockerd and containerd killed while a container runs (as a crash would): close()
    still ends the shim and the container's processes (found by mount namespace and
    cgroup), says so, and removes the cgroups, the namespace and the dir."""
    archive = nft_host.workdir / "busybox-docker.tar"
    nft_host.cli("save", "-o", str(archive), "busybox", check=True)
    d = peer_mod.DockerPeer.start("testdkr")
    try:
        d.load(str(archive), "plt-test/busybox")
        d.docker("run", "-d", "--pull", "never", "--name", "orphan", "plt-test/busybox", "sleep", "600")
        init = d.container_pid("orphan")
        for proc in (d.dockerd, d.containerd):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        assert os.path.exists(f"/proc/{init}")        # the container outlives its daemons
    finally:
        errors = d.close()
    assert any(f"pid {init} " in e for e in errors), errors
    assert all(e.startswith("left in the sandbox") for e in errors), errors
    assert not os.path.exists(f"/proc/{init}") or open(f"/proc/{init}/stat").read().split(") ")[1][0] == "Z"
    assert not (peer_mod.CGROUP_ROOT / "memory" / d.ns.name).exists()
    assert not Path(d.ns.path).exists() and not d.workdir.exists()
