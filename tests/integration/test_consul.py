"""Consul, for real: a dev agent (or a 3-server cluster) in namespaces the test
made, portlinkd registering published ports into it and answering Consul
names from its catalog cache; crash, reboot and agent-restart resyncs."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass

import pytest

from helpers import Outside, dig, in_container_ns, wait_for
from portlink.lab.consul_agent import Agent, AgentSpec, start_agent, wait_ready
from portlink.lab.sandbox import Namespace, SimHost, Switch

pytestmark = pytest.mark.root

HTTPD = "mkdir -p /srv && echo hello-from-$0 > /srv/index.html && exec httpd -f -p 80 -h /srv"


@dataclass
class Setup:
    h: SimHost
    out: Outside
    agent: Agent
    tmp: object

    def restart_agent(self) -> None:
        """A new dev agent at the same address: it starts with an empty catalog."""
        self.agent.stop()
        self.agent = start_agent(AgentSpec("out", Outside.IP, self.tmp / "consul2"), self.out.ns.path)
        wait_ready(self.agent)


def consul_args(consul: str, advertise: str) -> list[str]:
    return ["--consul", consul, "--advertise", advertise, "--consul-check-interval", "1",
            "--consul-resync", "3"]


@pytest.fixture
def consul(tmp_path):
    h = SimHost.start("host", extra_args=consul_args(f"{Outside.IP}:8500", Outside.HOST_IP))
    out = Outside(h)
    s = Setup(h, out, start_agent(AgentSpec("out", Outside.IP, tmp_path / "consul"), out.ns.path), tmp_path)
    try:
        wait_ready(s.agent)
        yield s
    finally:
        errors = h.destroy()      # prune deregisters while the agent still runs
        s.agent.stop()
        out.delete()
    assert not errors, f"teardown reported: {errors}"


def entries(agent: Agent, service: str) -> list[dict]:
    code, _, body = agent.get(f"/v1/health/service/{service}")
    assert code == 200, body
    return body


def ours(agent: Agent, host_id: str) -> set[str]:
    code, _, body = agent.get("/v1/agent/services")
    assert code == 200, body
    return {sid for sid, svc in body.items() if svc.get("Meta", {}).get("portlink-host") == host_id}


def host_id(h: SimHost) -> str:
    return h.client.get("/system/consul")["host_id"]


def cid(h: SimHost, name: str) -> str:
    return h.client.get(f"/containers/{name}")["id"]


def sid(hid: str, h: SimHost, name: str, port: int, proto: str = "tcp") -> str:
    return f"portlink-{hid}-{cid(h, name)[:12]}-{port}-{proto}"


def wget(h: SimHost, ctr: str, url: str) -> str:
    r = h.cli("exec", ctr, "sh", "-c", f"timeout 5 wget -q -O- {url}; exit $?")
    return r.stdout.strip() or f"failed ({r.returncode}): {r.stderr.strip()}"


def test_published_ports_are_registered_resolved_and_removed(consul):
    h, agent = consul.h, consul.agent
    h.cli("run", "-d", "--name", "web", "-p", "8080:80", "--label", "portlink.tags=v1,http",
          "--label", "portlink.meta.team=core", "busybox", "sh", "-c", HTTPD, "web", check=True)
    h.cli("run", "-d", "--name", "multi", "-p", "9001:9001", "-p", "5353:53/udp",
          "--label", "portlink.service=api", "--label", "portlink.service.53/udp=dnsish",
          "busybox", "sleep", "600", check=True)
    h.cli("run", "-d", "--name", "lo-only", "-p", "127.0.0.1:9002:80", "busybox", "sleep", "600", check=True)
    h.cli("run", "-d", "--name", "quiet", "-p", "9003:80", "--label", "portlink.register=false",
          "busybox", "sleep", "600", check=True)
    h.cli("run", "-d", "--name", "cli", "busybox", "sleep", "600", check=True)
    hid = host_id(h)
    want = {sid(hid, h, "web", 80), sid(hid, h, "multi", 9001), sid(hid, h, "multi", 53, "udp")}
    assert wait_for(lambda: ours(agent, hid) == want, 10), ours(agent, hid)

    [e] = entries(agent, "web")
    svc = e["Service"]
    assert (svc["Address"], svc["Port"], svc["Tags"]) == (Outside.HOST_IP, 8080, ["v1", "http"])
    assert svc["Meta"]["team"] == "core" and svc["Meta"]["portlink-port"] == "80/tcp"
    assert svc["Meta"]["portlink-container"] == "web"
    check = next(c for c in e["Checks"] if c["ServiceID"] == svc["ID"])
    assert check["Type"] == "tcp" and check["Status"] == "passing"
    [api] = entries(agent, "api")
    assert api["Service"]["Port"] == 9001
    [udp] = entries(agent, "dnsish")
    assert udp["Service"]["Port"] == 5353 and [c for c in udp["Checks"] if c["ServiceID"]] == []
    assert entries(agent, "lo-only") == [] and entries(agent, "quiet") == []
    # The TCP check really runs against the published port and stays passing.
    wait_for(lambda: "Output" in str(entries(agent, "web")) and "Success" in str(entries(agent, "web")), 5)
    assert "passing" == next(c for c in entries(agent, "web")[0]["Checks"] if c["ServiceID"])["Status"]

    info = h.client.get("/containers/web")["consul"]
    assert [(r["service"], r["port"], r["check"]) for r in info] == [("web", 8080, "tcp")]

    # Containers resolve it through portlink's DNS and reach it through the host's published port.
    assert wait_for(lambda: dig(h, "cli", "web.service.consul") == [Outside.HOST_IP], 5)
    assert dig(h, "cli", "WEB.service") == [Outside.HOST_IP]
    assert dig(h, "cli", "v1.web.service.consul") == [Outside.HOST_IP]
    assert dig(h, "cli", "v2.web.service.consul", status=True) == "NXDOMAIN"
    assert dig(h, "cli", "_web._tcp.service.consul", "SRV") == ["1 1 8080 c6336401.addr.consul."]
    assert dig(h, "cli", "web.service.consul", "AAAA", status=True) == "NOERROR"
    assert dig(h, "cli", "nosuch.service.consul", status=True) == "NXDOMAIN"
    assert wget(h, "cli", "http://web.service.consul:8080/") == "hello-from-web"

    h.cli("stop", "-t", "1", "web", check=True)
    assert wait_for(lambda: entries(agent, "web") == [], 5), "stop did not deregister"
    assert wait_for(lambda: dig(h, "cli", "web.service.consul", status=True) == "NXDOMAIN", 5)
    h.cli("start", "web", check=True)
    assert wait_for(lambda: len(entries(agent, "web")) == 1, 5), "start did not register again"
    assert wait_for(lambda: dig(h, "cli", "web.service.consul") == [Outside.HOST_IP], 5)
    os.kill(_pid(h, "multi"), signal.SIGKILL)          # death, with the daemon watching
    assert wait_for(lambda: ours(agent, hid) == {sid(hid, h, "web", 80)}, 5), ours(agent, hid)
    h.cli("rm", "-f", "web", check=True)
    assert wait_for(lambda: ours(agent, hid) == set(), 5), ours(agent, hid)


@pytest.mark.parametrize("label, complaint", [
    ("portlink.service=Bad_Name", "service name"),
    ("portlink.tags=ok,not ok", "invalid tag"),
    ("portlink.meta.consul-x=1", "meta key"),
    ("portlink.meta.k=" + "x" * 600, "512"),
    ("portlink.bogus=1", "unknown portlink label"),
    ("portlink.service.99999=x", "portlink.service.PORT"),
    ("portlink.register=maybe", "true or false"),
])
def test_bad_labels_are_rejected_and_leave_nothing(consul, label, complaint):
    from conftest import snapshot
    h = consul.h
    before = snapshot(h)
    r = h.cli("run", "-d", "--name", "bad", "-p", "8080:80", "--label", label, "busybox", "sleep", "60")
    assert r.returncode != 0 and complaint in r.stderr, r.stderr
    assert snapshot(h) == before
    assert ours(consul.agent, host_id(h)) == set()


def _pid(h: SimHost, name: str) -> int:
    return h.client.get(f"/containers/{name}")["pid"]


def test_daemon_crash_then_resync_removes_stale_entries(consul):
    h, agent = consul.h, consul.agent
    for name, port in (("a", "8081"), ("b", "8082")):
        h.cli("run", "-d", "--name", name, "-p", f"{port}:80", "busybox", "sleep", "600", check=True)
    hid = host_id(h)
    assert wait_for(lambda: len(ours(agent, hid)) == 2, 10)
    # Leftovers a crash could leave: an entry of ours for a container that no longer
    # exists; and someone else's service, which must never be touched.
    stale = f"portlink-{hid}-0123456789ab-80-tcp"
    assert agent.put("/v1/agent/service/register", {"ID": stale, "Name": "ghost", "Address": Outside.HOST_IP,
                                                    "Port": 1, "Meta": {"portlink-host": hid}})[0] == 200
    assert agent.put("/v1/agent/service/register", {"ID": "other", "Name": "other", "Port": 2})[0] == 200
    pid_b = _pid(h, "b")
    h.stop_daemon(signal.SIGKILL)
    os.kill(pid_b, signal.SIGKILL)        # b dies while no daemon watches
    h.start_daemon()
    assert wait_for(lambda: ours(agent, hid) == {sid(hid, h, "a", 80)}, 10), ours(agent, hid)
    assert len(entries(agent, "other")) == 1
    assert h.client.get("/containers/b")["status"] == "exited"


def test_host_reboot_leaves_no_stale_entries(consul):
    h, agent = consul.h, consul.agent
    for name, port in (("a", "8081"), ("b", "8082")):
        h.cli("run", "-d", "--name", name, "-p", f"{port}:80", "busybox", "sleep", "600", check=True)
    hid = host_id(h)
    assert wait_for(lambda: len(ours(agent, hid)) == 2, 10)
    pids = [_pid(h, "a"), _pid(h, "b")]
    h.stop_daemon(signal.SIGKILL)          # the power goes: daemon and every container at once
    for p in pids:
        os.kill(p, signal.SIGKILL)
    h.start_daemon()
    assert wait_for(lambda: ours(agent, hid) == set(), 10), ours(agent, hid)
    assert {c["status"] for c in h.client.get("/containers", all="1")} == {"exited"}
    h.cli("start", "a", check=True)
    assert wait_for(lambda: ours(agent, hid) == {sid(hid, h, "a", 80)}, 10)


def test_agent_restart_reregisters_and_dns_serves_last_known_meanwhile(consul):
    h = consul.h
    h.cli("run", "-d", "--name", "web", "-p", "8080:80", "busybox", "sh", "-c", HTTPD, "web", check=True)
    h.cli("run", "-d", "--name", "cli", "busybox", "sleep", "600", check=True)
    hid = host_id(h)
    assert consul.agent.put("/v1/agent/service/register",
                            {"ID": "ext-1", "Name": "ext", "Address": Outside.IP, "Port": 9000})[0] == 200
    assert wait_for(lambda: dig(h, "cli", "ext.service.consul") == [Outside.IP], 5)
    assert wait_for(lambda: dig(h, "cli", "web.service.consul") == [Outside.HOST_IP], 5)
    # The daemon started before the agent: let that first outage be reported over.
    assert wait_for(lambda: "reachable again" in h.daemon_log(), 5)
    log_before = len(h.daemon_log())

    consul.agent.stop()
    # Consul is gone: the last known answers stay, and the loss is logged once.
    assert wait_for(lambda: "unreachable" in h.daemon_log()[log_before:], 5)
    for _ in range(5):
        assert dig(h, "cli", "ext.service.consul") == [Outside.IP]
        assert dig(h, "cli", "web.service.consul") == [Outside.HOST_IP]
    assert wget(h, "cli", "http://web.service.consul:8080/") == "hello-from-web"
    assert h.client.get("/system/consul")["reachable"] is False
    assert h.cli("run", "-d", "--name", "late", "-p", "8090:80", "busybox", "sh", "-c", HTTPD, "late").returncode == 0

    consul.restart_agent()                 # a dev agent restarts empty
    assert wait_for(lambda: ours(consul.agent, hid) == {sid(hid, h, "web", 80), sid(hid, h, "late", 80)}, 10), \
        ours(consul.agent, hid)
    assert wait_for(lambda: dig(h, "cli", "ext.service.consul", status=True) == "NXDOMAIN", 5)
    assert wait_for(lambda: dig(h, "cli", "late.service.consul") == [Outside.HOST_IP], 5)
    assert wait_for(lambda: "reachable again" in h.daemon_log()[log_before:], 5)
    log = h.daemon_log()[log_before:]
    assert log.count("is unreachable") == 1 and log.count("reachable again") == 1, log


def test_dns_follows_catalog_changes_and_health(consul):
    h, agent = consul.h, consul.agent
    h.cli("run", "-d", "--name", "cli", "busybox", "sleep", "600", check=True)

    def reg(i: str, addr: str, **extra) -> None:
        assert agent.put("/v1/agent/service/register",
                         {"ID": i, "Name": "ext", "Address": addr, "Port": 9000, **extra})[0] == 200

    def answers() -> list[str]:
        return sorted(dig(h, "cli", "ext.service.consul"))

    reg("ext-1", "192.0.2.10")
    assert wait_for(lambda: answers() == ["192.0.2.10"], 5), answers()
    reg("ext-1", "192.0.2.11")                       # moved
    assert wait_for(lambda: answers() == ["192.0.2.11"], 5), answers()
    reg("ext-2", "192.0.2.12")                       # scaled out
    assert wait_for(lambda: answers() == ["192.0.2.11", "192.0.2.12"], 5), answers()
    reg("ext-3", "192.0.2.13", Check={"CheckID": "ext-3-ttl", "TTL": "60s", "Status": "critical"})
    assert wait_for(lambda: answers() == ["192.0.2.11", "192.0.2.12"], 2)   # unhealthy: never answered
    assert agent.put("/v1/agent/check/pass/ext-3-ttl")[0] == 200
    assert wait_for(lambda: answers() == ["192.0.2.11", "192.0.2.12", "192.0.2.13"], 5), answers()
    for i in ("ext-1", "ext-2", "ext-3"):
        assert agent.put(f"/v1/agent/service/deregister/{i}")[0] == 200
    assert wait_for(lambda: dig(h, "cli", "ext.service.consul", status=True) == "NXDOMAIN", 5)


def test_no_consul_configured_means_consul_names_are_not_ours(nft_host):
    """Without --consul the daemon works alone and .consul is just another name."""
    h = nft_host
    assert h.client.get("/system/consul") == {"enabled": False}
    h.cli("run", "-d", "--name", "web", "-p", "8080:80", "busybox", "sleep", "600", check=True)
    h.cli("run", "-d", "--name", "cli", "busybox", "sleep", "600", check=True)
    assert "consul" not in h.client.get("/containers/web")
    # No upstream configured: forwarded names fail with SERVFAIL, ours would be NXDOMAIN.
    assert dig(h, "cli", "web.service.consul", status=True) == "SERVFAIL"
    r = h.cli("system", "consul", "--sync")
    assert r.returncode != 0 and "not configured" in r.stderr


def test_three_server_cluster_links_two_hosts(tmp_path):
    """Two hosts registering through different servers of one cluster: a
    container on B finds and reaches a published port on A by its Consul name."""
    sw = Switch.create("sw")
    servers: list[tuple[Namespace, Agent]] = []
    hosts: list[SimHost] = []
    addrs = [f"10.99.0.{11 + i}" for i in range(3)]
    try:
        for i, ip in enumerate(addrs):
            ns = Namespace.create(f"srv{i}")
            sw.attach(ns, ip)
            servers.append((ns, start_agent(AgentSpec(f"srv{i}", ip, tmp_path / f"srv{i}", mode="server",
                                                      bootstrap_expect=3, join=addrs), ns.path)))
        for i in range(2):
            h = SimHost.start(f"h{i}", extra_args=consul_args(f"{addrs[i]}:8500", f"10.99.0.{i + 1}"))
            hosts.append(h)
            sw.attach(h.ns, f"10.99.0.{i + 1}")
        for _, agent in servers:
            wait_ready(agent)
        a, b = hosts
        a.cli("run", "-d", "--name", "web", "-p", "8080:80", "busybox", "sh", "-c", HTTPD, "web-on-a", check=True)
        b.cli("run", "-d", "--name", "cli", "busybox", "sleep", "600", check=True)
        # Registered through server 0, read by B through server 1.
        assert wait_for(lambda: dig(b, "cli", "web.service.consul") == ["10.99.0.1"], 15), \
            dig(b, "cli", "web.service.consul")
        assert wget(b, "cli", "http://web.service.consul:8080/") == "hello-from-web-on-a"
        [e] = entries(servers[2][1], "web")
        assert e["Service"]["Meta"]["portlink-host"] == host_id(a)
        a.cli("stop", "-t", "1", "web", check=True)
        assert wait_for(lambda: dig(b, "cli", "web.service.consul", status=True) == "NXDOMAIN", 5)
    finally:
        errors = []
        for h in hosts:
            errors += h.destroy()
        for ns, agent in servers:
            agent.stop()
            ns.delete()
        sw.delete()
    assert not errors, errors
