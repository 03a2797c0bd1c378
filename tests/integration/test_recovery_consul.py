"""Recovery where Consul is involved: an ambassador's process killed is
restarted (same address, its linkers' next connections work); a daemon killed
half-way through a cross-host `run` leaves no ambassador; a Consul entry
removed behind portlink's back comes back; a daemon killed around the start
of a published container leaves Consul matching what runs."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from helpers import Outside, wait_for
from portlink.lab.sandbox import SimHost
from test_consul import consul, host_id, ours, sid  # noqa: F401  (the fixture is used by name)

pytestmark = pytest.mark.root

HTTPD = "mkdir -p /srv && echo hello-$0 > /srv/index.html && exec httpd -f -p 80 -h /srv"


def register_external(s, name: str = "ext", port: int = 9000, sid: str = "") -> None:
    """Someone else's service in Consul: the Outside namespace's peer-address server."""
    body = {"ID": sid or f"other-{name}", "Name": name, "Address": Outside.IP, "Port": port,
            "Meta": {"portlink-port": "80/tcp"}}
    code, _, text = s.agent.put("/v1/agent/service/register", body)
    assert code == 200, text
    assert wait_for(lambda: s.agent.get(f"/v1/health/service/{name}?passing")[2])


def through_link(h: SimHost, ctr: str, alias: str) -> str:
    r = h.cli("exec", ctr, "sh", "-c", f"timeout 5 wget -q -O- http://{alias}/; exit $?")
    return r.stdout.strip()


def linked_web(s) -> dict:
    """web on this host, linked to the external service: an ambassador carries it."""
    s.out.serve_peer_address(9000)
    register_external(s)
    r = wait_for(lambda: (lambda p: p if p.returncode == 0 else None)(
        s.h.cli("run", "-d", "--name", "web", "--link", "ext:sql", "busybox", "sleep", "3600")), timeout=15)
    assert r is not None, "cross-host link to a service in Consul failed"
    return s.h.client.get("/containers/amb-ext-bridge")


def test_killed_ambassador_is_restarted_and_keeps_its_address(consul):
    h = consul.h
    amb = linked_web(consul)
    assert through_link(h, "web", "sql") == Outside.HOST_IP   # masqueraded out of the host
    os.kill(amb["pid"], signal.SIGKILL)   # the forwarder, started by our daemon for our test

    def restarted():
        now = h.client.get("/containers/amb-ext-bridge")
        return now if now["status"] == "running" and now["pid"] != amb["pid"] else None
    now = wait_for(restarted, timeout=20)
    assert now, "the killed ambassador was not restarted"
    assert now["network"]["ip"] == amb["network"]["ip"], "web's env vars name the old address"
    assert wait_for(lambda: through_link(h, "web", "sql") == Outside.HOST_IP, timeout=15)
    assert "ambassador amb-ext-bridge exited: restarting" in h.daemon_log()
    assert [(e["action"], e["attrs"].get("service")) for e in events(h, "--filter", "container=amb-ext-bridge")
            if e["action"] in ("die", "restart")] == [("die", "ext"), ("restart", "ext")]

    # Stopped on purpose: it stays stopped.
    h.cli("stop", "-t", "1", "amb-ext-bridge", check=True)
    time.sleep(1.5)   # longer than the first restart delay
    assert h.client.get("/containers/amb-ext-bridge")["status"] == "exited"


def events(h: SimHost, *args: str) -> list[dict]:
    r = h.cli("events", "--until", "0s", "--format", "json", *args)
    assert r.returncode == 0, r.stderr
    return [json.loads(l) for l in r.stdout.splitlines()]


def test_a_catalog_change_is_a_reroute_event(consul):
    h = consul.h
    linked_web(consul)
    register_external(consul, port=9001, sid="other-ext-2")
    def reroutes():
        return [e["attrs"] for e in events(h, "--filter", "event=reroute")]
    got = wait_for(reroutes, timeout=10)
    assert got and got[-1]["backends"] == [f"{Outside.IP}:9000", f"{Outside.IP}:9001"]
    assert got[-1]["previous"] == [f"{Outside.IP}:9000"] and got[-1]["service"] == "ext"


def test_removing_the_last_linker_removes_its_ambassador(consul):
    h = consul.h
    linked_web(consul)
    h.cli("run", "-d", "--name", "web2", "--link", "ext:db", "busybox", "sleep", "3600", check=True)
    h.cli("rm", "-f", "web", check=True)
    assert "amb-ext-bridge" in [c["name"] for c in h.client.get("/containers", all="1")], \
        "web2 still links to the ambassador"
    h.cli("rm", "-f", "web2", check=True)
    assert [c["name"] for c in h.client.get("/containers", all="1")] == []


def test_daemon_killed_after_starting_the_ambassador_leaves_none(consul):
    h = consul.h
    consul.out.serve_peer_address(9000)
    register_external(consul)
    h.stop_daemon()
    h.env["PORTLINK_FAULT"] = "run.ambassador"
    h.start_daemon()
    # The daemon learns of the service from a blocking query: retry while it has not yet.
    for _ in range(50):
        r = h.cli("run", "-d", "--name", "web", "--link", "ext:sql", "busybox", "sleep", "3600")
        if h.proc.poll() is not None or "no such container" not in r.stderr:
            break
        time.sleep(0.2)
    assert r.returncode != 0
    assert h.proc.wait(10) == -signal.SIGKILL, "the daemon did not die at run.ambassador"
    h.proc = None
    h.env.clear()
    h.start_daemon()
    assert h.client.get("/containers", all="1") == [], "the ambassador of an interrupted run was left behind"
    assert "ambassador amb-ext-bridge (no container links to it)" in h.daemon_log()


def test_consul_entry_removed_behind_our_back_is_restored(consul):
    h, agent = consul.h, consul.agent
    h.cli("run", "-d", "--name", "web", "-p", "8080:80", "busybox", "sh", "-c", HTTPD, "web", check=True)
    hid = host_id(h)
    entry = sid(hid, h, "web", 80)
    assert wait_for(lambda: ours(agent, hid) == {entry})
    code, _, text = agent.put(f"/v1/agent/service/deregister/{entry}")
    assert code == 200, text
    assert ours(agent, hid) == set()
    r = h.cli("system", "check", "--format", "json")
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)["findings"]
    assert [(f["subject"], f["repaired"]) for f in found] == [(f"consul {entry}", True)]
    assert ours(agent, hid) == {entry}
    assert [(e["type"], e["action"], e["name"], e["attrs"].get("service")) for e in events(h)
            if e["type"] in ("consul", "drift")] == [
        ("consul", "register", entry, "web"),
        ("consul", "register", entry, "web"), ("drift", "repaired", f"consul {entry}", None)]


@pytest.mark.parametrize("point,present", [("start.runc", False), ("run.running", True)])
def test_daemon_killed_while_starting_a_published_container(consul, point, present):
    h, agent = consul.h, consul.agent
    hid = host_id(h)
    h.stop_daemon()
    h.env["PORTLINK_FAULT"] = point
    h.start_daemon()
    assert h.cli("run", "-d", "--name", "web", "-p", "8080:80", "busybox", "sh", "-c", HTTPD, "web").returncode
    assert h.proc.wait(10) == -signal.SIGKILL
    h.proc = None
    h.env.clear()
    h.start_daemon()
    names = [c["name"] for c in h.client.get("/containers", all="1")]
    assert names == (["web"] if present else [])
    want = {sid(hid, h, "web", 80)} if present else set()
    assert wait_for(lambda: ours(agent, hid) == want, timeout=15), f"Consul has {ours(agent, hid)}"
