"""The kernel data path of plaintext links (portlinkd --link-datapath kernel), in a
3-host lab with real nftables and conntrack: frontdb runs on host1 (later host3),
web on host2 links to it, and host2's ambassador forwards by nftables DNAT inside
its own namespace rather than in its forwarder process.

What differs from the forwarder, and is tested here as it is: a connection is
DNATed to one backend when it opens; there is no failover inside that attempt
(a refusing backend is the client's refusal, the next connection rotates on).
`close` deletes the old backend's conntrack entries: the flow's next segment is
answered with a reset, so a stream stops at once; a client that sends nothing
learns it only when it next sends."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from helpers import wait_for
from test_crosshost import Lab as CrossHostLab
from portlink.lab import lab as labmod
from portlink.lab.consul_agent import http_get

pytestmark = pytest.mark.root

SERVE = "echo db-on-$0 > /tmp/index.html; exec httpd -f -p 80 -h /tmp"
TICKER = ("printf '#!/bin/sh\\nwhile true; do echo tick-$0; sleep 0.2; done\\n' | sed \"s/\\$0/$0/\" > /tick; "
          "chmod +x /tick; exec nc -ll -p 80 -e /tick")


class Lab(CrossHostLab):
    """test_crosshost's lab driver, with the kernel path's views."""

    def in_ns(self, pid: int, *argv: str) -> str:
        """A command in the network namespace of process `pid` (an ambassador's)."""
        p = subprocess.run(["nsenter", "-t", str(pid), "-n", *argv], capture_output=True, text=True, timeout=30)
        return p.stdout + p.stderr

    def kernel(self, host: str, name: str) -> dict:
        return self.client(host).get(f"/containers/{name}")["ambassador"]["kernel"]

    def deregister(self, host: str, service: str) -> None:
        h = self.made.host(host)
        services = http_get(f"http://{h.ip}:8500/v1/agent/services", netns=h.netns_path)[2]
        sids = [s for s, v in services.items() if v["Service"] == service]
        assert sids
        for sid in sids:
            assert http_get(f"http://{h.ip}:8500/v1/agent/service/deregister/{sid}", netns=h.netns_path,
                            method="PUT")[0] == 200


@pytest.fixture
def three(tmp_path, monkeypatch):
    monkeypatch.setattr(labmod, "LAB_ROOT", tmp_path / "labs")
    made = labmod.up(3, f"k{os.getpid() % 10000}", progress=lambda *_: None, secure_links=False,
                     link_datapath="kernel")
    try:
        yield Lab(made)
    finally:
        errors = labmod.down(made.name, progress=lambda *_: None)
    assert not errors, errors


def test_a_link_goes_through_the_kernel_follows_a_move_and_leaves_nothing(three):
    L = three
    L.cli("host1", "run", "-d", "--name", "frontdb", "-p", "5432:80", "busybox", "sh", "-c", SERVE, "host1")
    assert wait_for(lambda: L.client("host2").get("/system/consul")["services_seen"] >= 2, 10)
    L.cli("host2", "run", "-d", "--name", "web", "--link", "frontdb:sql", "busybox", "sleep", "600")
    amb = L.client("host2").get("/containers/amb-frontdb-bridge")
    pid = amb["pid"]
    assert wait_for(lambda: L.kernel("host2", "amb-frontdb-bridge").get("backends") == {"80": ["10.99.0.1:5432"]}, 10)
    table = L.in_ns(pid, "nft", "list", "table", "ip", "portlink_link")
    assert "dnat ip to numgen inc mod 1 map { 0 : 10.99.0.1 . 5432 }" in table, table
    assert L.in_ns(pid, "cat", "/proc/sys/net/ipv4/ip_forward").strip() == "1"

    for _ in range(3):
        assert L.fetch("host2", "web", "http://sql/") == "db-on-host1"
    k = L.kernel("host2", "amb-frontdb-bridge")
    assert k["connections_total"]["80"] >= 3, k
    assert k["bytes_to_backend_total"]["80"] > 0 and k["bytes_to_client_total"]["80"] > 3 * len("db-on-host1"), k
    # The bytes went through the kernel: the forwarder behind the rules saw none of them.
    live = L.client("host2").get("/containers/amb-frontdb-bridge")["ambassador"]
    assert live["metrics"]["connections_total"]["total"] == 0, live

    # frontdb moves to host3: the backend map is replaced, new connections land there.
    L.cli("host3", "run", "-d", "--name", "frontdb", "-p", "5432:80", "busybox", "sh", "-c", SERVE, "host3")
    L.cli("host1", "rm", "-f", "frontdb")
    assert wait_for(lambda: L.kernel("host2", "amb-frontdb-bridge").get("backends") == {"80": ["10.99.0.3:5432"]}, 15)
    assert [L.fetch("host2", "web", "http://sql/") for _ in range(3)] == ["db-on-host3"] * 3

    # A restarted daemon adopts the table it finds: the counters go on from where they were.
    seen = L.kernel("host2", "amb-frontdb-bridge")["connections_total"]["80"]
    labmod.daemon_restart(L.made.name, "host2")
    assert wait_for(lambda: L.kernel("host2", "amb-frontdb-bridge").get("applied"), 10)
    assert L.fetch("host2", "web", "http://sql/") == "db-on-host3"
    assert L.kernel("host2", "amb-frontdb-bridge")["connections_total"]["80"] == seen + 1
    assert L.client("host2").get("/containers/amb-frontdb-bridge")["pid"] == pid

    # A bad address from Consul (an instance registered by someone else) is refused
    # with the reason; the rules stay as they were.
    h1 = L.made.host("host1")
    assert http_get(f"http://{h1.ip}:8500/v1/agent/service/register", netns=h1.netns_path, method="PUT",
                    body={"ID": "bogus-frontdb", "Name": "frontdb", "Address": "not-an-ip", "Port": 5432})[0] == 200
    assert wait_for(lambda: "not an IPv4" in L.kernel("host2", "amb-frontdb-bridge").get("refused", ""), 15)
    assert L.kernel("host2", "amb-frontdb-bridge")["backends"] == {"80": ["10.99.0.3:5432"]}
    assert "10.99.0.3 . 5432" in L.in_ns(pid, "nft", "list", "table", "ip", "portlink_link")
    assert L.fetch("host2", "web", "http://sql/") == "db-on-host3"

    # Removing the linker removes the ambassador, its namespace and so its rules.
    nspath = f"/proc/{pid}/ns/net"
    L.cli("host2", "rm", "-f", "web")
    assert wait_for(lambda: not os.path.exists(nspath), 10)
    names = [c["name"] for c in L.client("host2").get("/containers?all=1")]
    assert "amb-frontdb-bridge" not in names, names
    h2 = L.made.host("host2")
    netns_dir = os.path.join(h2.workdir, "state", "netns")
    assert not os.listdir(netns_dir) if os.path.isdir(netns_dir) else True
    # The host's own namespace never had the table.
    host_tables = subprocess.run(["nsenter", f"--net={h2.netns_path}", "nft", "list", "tables"],
                                 capture_output=True, text=True).stdout
    assert "portlink_link" not in host_tables, host_tables


def test_close_cuts_open_flows_to_a_removed_backend(three):
    L = three
    L.cli("host1", "run", "-d", "--name", "frontdb", "-p", "5432:80", "busybox", "sh", "-c", TICKER, "host1")
    assert wait_for(lambda: L.client("host2").get("/system/consul")["services_seen"] >= 2, 10)
    L.cli("host2", "run", "-d", "--name", "dbamb", "--ambassador", "frontdb", "--ambassador-policy", "close")
    pid = L.client("host2").get("/containers/dbamb")["pid"]
    assert wait_for(lambda: L.kernel("host2", "dbamb").get("backends") == {"80": ["10.99.0.1:5432"]}, 10)
    L.cli("host2", "run", "-d", "--name", "app", "busybox", "sleep", "600")
    L.cli("host2", "exec", "app", "sh", "-c", "timeout 40 nc dbamb 80 > /tmp/ticks 2>&1 & sleep 0.5")
    count = lambda: int(L.cli("host2", "exec", "app", "sh", "-c", "wc -l < /tmp/ticks") or 0)
    assert wait_for(lambda: count() > 2, 5)
    assert "10.99.0.1" in L.in_ns(pid, "conntrack", "-L", "-p", "tcp", "--mark", "80")

    # A planned move: host3 serves, host1's instance leaves Consul but keeps running.
    L.cli("host3", "run", "-d", "--name", "frontdb", "-p", "5432:80", "busybox", "sh", "-c", TICKER, "host3")
    L.deregister("host1", "frontdb")
    assert wait_for(lambda: L.kernel("host2", "dbamb").get("backends") == {"80": ["10.99.0.3:5432"]}, 15)
    assert wait_for(lambda: "tick-host3" in L.cli("host2", "exec", "app", "sh", "-c",
                                                  "timeout 1 nc dbamb 80 | head -1", check=False), 5)
    # The old stream is cut: no conntrack entry to host1 is left, and its ticks stop.
    assert wait_for(lambda: "10.99.0.1" not in L.in_ns(pid, "conntrack", "-L", "-p", "tcp", "--mark", "80"), 5)
    settled = count()
    time.sleep(1.5)
    assert count() == settled, "the stream to the removed backend went on after close"
    assert "tick-host3" not in L.cli("host2", "exec", "app", "cat", "/tmp/ticks")


def test_a_daemon_back_on_the_proxy_path_removes_the_kernel_rules(three):
    L = three
    L.cli("host1", "run", "-d", "--name", "frontdb", "-p", "5432:80", "busybox", "sh", "-c", SERVE, "host1")
    assert wait_for(lambda: L.client("host2").get("/system/consul")["services_seen"] >= 2, 10)
    L.cli("host2", "run", "-d", "--name", "web", "--link", "frontdb:sql", "busybox", "sleep", "600")
    pid = L.client("host2").get("/containers/amb-frontdb-bridge")["pid"]
    assert wait_for(lambda: "numgen" in L.in_ns(pid, "nft", "list", "table", "ip", "portlink_link"), 10)

    lab = labmod.Lab.load(L.made.name)
    lab.link_datapath = "proxy"
    lab.save()
    labmod.daemon_restart(L.made.name, "host2")
    assert wait_for(lambda: "portlink_link" not in L.in_ns(pid, "nft", "list", "tables"), 10)
    assert L.in_ns(pid, "cat", "/proc/sys/net/ipv4/ip_forward").strip() == "0"
    # The same ambassador, its forwarder carrying the link now.
    assert L.fetch("host2", "web", "http://sql/") == "db-on-host1"
    live = L.client("host2").get("/containers/amb-frontdb-bridge")
    assert live["pid"] == pid and "kernel" not in live["ambassador"]
    assert live["ambassador"]["metrics"]["connections_total"]["total"] >= 1
