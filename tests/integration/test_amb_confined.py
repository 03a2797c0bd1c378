"""An ambassador runs unprivileged, for real: a host with a dev Consul agent,
a web container registered in it, and an ambassador for it listening on port
80. Seen from the host: the forwarder's uid/gid, no capabilities in any set,
no-new-privileges, a seccomp filter; in its mount namespace, root itself
cannot write under the host's /usr (nor a mount nested below it), the
checkout or its own root. And the link still forwards."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from helpers import Outside, wait_for
from portlink.lab.consul_agent import AgentSpec, start_agent, wait_ready
from portlink.lab.sandbox import SimHost
from portlink.runtime import ambassadors, security

pytestmark = pytest.mark.root

HTTPD = "mkdir -p /srv && echo hello-from-$0 > /srv/index.html && exec httpd -f -p 80 -h /srv"


@pytest.fixture
def consul_host(tmp_path):
    h = SimHost.start("host", extra_args=["--consul", f"{Outside.IP}:8500", "--advertise", Outside.HOST_IP,
                                          "--consul-check-interval", "1", "--consul-resync", "3"])
    out = Outside(h)
    agent = start_agent(AgentSpec("out", Outside.IP, tmp_path / "consul"), out.ns.path)
    try:
        wait_ready(agent)
        yield h
    finally:
        errors = h.destroy()
        agent.stop()
        out.delete()
    assert not errors, f"teardown reported: {errors}"


@pytest.fixture
def nested_mount():
    """A writable tmpfs mounted below the host's /usr before the ambassador starts
    (an rbind takes it along): rro must make it read-only too."""
    d = Path(f"/usr/local/share/plt-rro-{os.getpid()}")
    d.mkdir(parents=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=1777", "plt-rro", str(d)], check=True)
        try:
            (d / "host-can-write").write_text("yes\n")     # the control: writable where it is mounted
            yield d
        finally:
            subprocess.run(["umount", str(d)], check=False)
    finally:
        d.rmdir()


def status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if ":\t" in line)


def write_in_mount_ns(pid: int, path: str) -> subprocess.CompletedProcess:
    """As root with every capability, in the ambassador's mount namespace (the
    container's busybox does the write)."""
    return subprocess.run(["nsenter", f"--target={pid}", "--mount", "--", "/bin/busybox", "touch", path],
                          capture_output=True, text=True, timeout=10)


def test_ambassador_is_unprivileged_read_only_and_still_forwards(consul_host, nested_mount):
    h = consul_host
    h.cli("run", "-d", "--name", "web", "-p", "8080:80", "busybox", "sh", "-c", HTTPD, "web", check=True)
    assert wait_for(lambda: h.client.get("/system/consul")["services_seen"] >= 2, 15)
    h.cli("run", "-d", "--name", "amb", "--ambassador", "web", check=True)
    h.cli("run", "-d", "--name", "app", "busybox", "sleep", "600", check=True)

    # The positive control: port 80 (below 1024) served by an unprivileged forwarder.
    def fetch() -> str:
        r = h.cli("exec", "app", "sh", "-c", "timeout 5 wget -qO- http://amb:80/; exit $?")
        return r.stdout.strip()
    assert wait_for(lambda: fetch() == "hello-from-web", 15), fetch()

    info = h.client.get("/containers/amb")
    pid = info["pid"]
    assert "portlink.ambassador" in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert info["security"]["capabilities"] == [] and info["security"]["user"] == "65536:65536"
    st = status(pid)
    uid = str(security.AMBASSADOR_UID)
    assert st["Uid"].split() == [uid] * 4 and st["Gid"].split() == [str(security.AMBASSADOR_GID)] * 4
    assert st["Groups"].strip() == ""                      # no supplementary group (root's 0 least of all)
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(st[cap], 16) == 0, (cap, st[cap])
    assert st["NoNewPrivs"].strip() == "1"
    assert st["Seccomp"].strip() == "2"                    # a filter
    unpriv = subprocess.run(["nsenter", f"--target={pid}", "--net", "--", "cat",
                             "/proc/sys/net/ipv4/ip_unprivileged_port_start"], capture_output=True, text=True)
    assert unpriv.stdout.strip() == "0"                    # in its own network namespace only

    # Root, in its mount namespace: the host's /usr, a mount nested below it, the
    # checkout and the container's own root are read-only; its /dev/shm is not
    # (the control: the writer could write).
    assert write_in_mount_ns(pid, "/dev/shm/plt-probe").returncode == 0
    for path in ("/usr/plt-probe", f"{nested_mount}/plt-probe", f"{ambassadors.REPO}/plt-probe", "/plt-probe"):
        r = write_in_mount_ns(pid, path)
        assert r.returncode != 0 and "Read-only file system" in r.stderr, (path, r.stderr)
    assert not (nested_mount / "plt-probe").exists() and (nested_mount / "host-can-write").exists()
