"""A daemon-run ambassador is fed its service's instances by portlinkd (its
catalog cache: one Consul watch per service per host) and holds no Consul
watch of its own, yet follows a move. A 3-host lab with plaintext links: the
client side then needs no Consul at all, so its namespace has no connection
to the agent (a secure one keeps its CA roots and leaf watches)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from helpers import wait_for
from portlink.lab import lab as labmod
from test_crosshost import Lab

pytestmark = pytest.mark.root

AGENT_PORT = 8500


@pytest.fixture
def plain(tmp_path, monkeypatch):
    monkeypatch.setattr(labmod, "LAB_ROOT", tmp_path / "labs")
    made = labmod.up(3, f"f{os.getpid() % 10000}", progress=lambda *_: None, secure_links=False)
    try:
        yield Lab(made)
    finally:
        errors = labmod.down(made.name, progress=lambda *_: None)
    assert not errors, errors


def agent_connections(netns: str) -> list[str]:
    """Established TCP connections to a Consul agent's HTTP port in that namespace."""
    out = subprocess.run(["nsenter", f"--net={netns}", "ss", "-Htn", "state", "established",
                          "dport", f"= :{AGENT_PORT}"], capture_output=True, text=True, timeout=10, check=True)
    return [line for line in out.stdout.splitlines() if line.strip()]


def test_a_link_ambassador_is_fed_by_the_daemon_and_follows_a_move_without_a_watch_of_its_own(plain):
    L = plain
    L.frontdb("host1")
    assert wait_for(lambda: L.client("host2").get("/system/consul")["services_seen"] >= 2, 30)
    L.cli("host2", "run", "-d", "--name", "web", "--link", "frontdb:sql", "busybox", "sleep", "600")
    assert L.fetch("host2", "web", "http://sql/") == "db-on-host1"      # the first connection works
    amb = L.client("host2").get("/containers/amb-frontdb-bridge")
    assert "--instances-file" in amb["config"]["cmd"], amb["config"]["cmd"]
    stats = lambda: json.loads(L.cli("host2", "exec", "amb-frontdb-bridge", "wget", "-qO-",
                                     "http://127.0.0.1:9102/stats"))
    s = stats()
    assert s["consul"]["instances"] == "file" and s["consul"]["reachable"] is True, s
    fed = json.loads(L.cli("host2", "exec", "amb-frontdb-bridge", "cat", "/run/secrets/linkers/instances.json"))
    h1, h3 = L.made.host("host1").ip, L.made.host("host3").ip
    assert fed["service"] == "frontdb" and [i["address"] for i in fed["instances"]] == [h1], fed

    # The ambassador's namespace holds no connection to the agent; portlinkd's does
    # (its catalog watches: the check sees such connections where they are).
    amb_ns = f"/proc/{amb['pid']}/ns/net"
    assert agent_connections(amb_ns) == []
    assert agent_connections(L.made.host("host2").netns_path), "portlinkd's watches are not seen"

    # frontdb moves to host3: the daemon's catalog sees it, the ambassador follows.
    L.cli("host1", "rm", "-f", "frontdb")
    L.frontdb("host3")
    assert wait_for(lambda: L.fetch("host2", "web", "http://sql/") == "db-on-host3", 30)
    assert [b.split(":")[0] for b in stats()["listeners"]["80"]["backends"]] == [h3]
    assert L.client("host2").get("/containers/amb-frontdb-bridge")["pid"] == amb["pid"]   # not restarted
    assert agent_connections(amb_ns) == []
    events = L.cli("host2", "events", "--until", "0s", "--format", "json", "--filter", "name=amb-frontdb-bridge")
    assert "reroute" in events, events
