"""Health checks for real: `runc exec` in busybox containers, Docker's states in
inspect, ps and events, a hanging check killed at its timeout, and Consul (a dev
agent) dropping an unhealthy instance from ?passing and from portlink's DNS."""

from __future__ import annotations

import json

import pytest

from helpers import dig, wait_for
from test_consul import Outside, consul, entries  # noqa: F401  (the fixture)

pytestmark = pytest.mark.root

HTTPD = "mkdir -p /srv && echo up > /srv/index.html && exec httpd -f -p 80 -h /srv"


def health(h, name: str) -> dict | None:
    return h.client.get(f"/containers/{name}")["State"]["Health"]


def status(h, name: str) -> str | None:
    got = health(h, name)
    return got and got["Status"]


def test_starting_unhealthy_healthy_in_inspect_ps_and_events(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "web", "--health-cmd", "test -f /tmp/ok", "--health-interval", "1s",
          "--health-retries", "1", "busybox", "sleep", "600", check=True)
    h.cli("run", "-d", "--name", "plain", "busybox", "sleep", "600", check=True)
    assert status(h, "web") == "starting"
    assert health(h, "plain") is None
    assert wait_for(lambda: status(h, "web") == "unhealthy", 10), health(h, "web")
    got = health(h, "web")
    assert got["FailingStreak"] >= 1 and got["Log"][-1]["ExitCode"] == 1
    assert "(unhealthy)" in h.cli("ps", check=True).stdout
    h.cli("exec", "web", "touch", "/tmp/ok", check=True)
    assert wait_for(lambda: status(h, "web") == "healthy", 10), health(h, "web")
    got = health(h, "web")
    assert got["FailingStreak"] == 0 and got["Log"][-1]["ExitCode"] == 0
    assert 1 <= len(got["Log"]) <= 5 and got["Log"][-1]["End"] >= got["Log"][-1]["Start"]
    line = next(l for l in h.cli("ps", check=True).stdout.splitlines() if l.endswith(" web"))
    assert "(healthy)" in line
    evs = [json.loads(l) for l in h.cli("events", "--until", "0s", "--format", "json", check=True).stdout.splitlines()]
    assert [e["action"] for e in evs if e["action"].startswith("health_status")] == \
        ["health_status: unhealthy", "health_status: healthy"]
    # A restarted container starts over.
    h.cli("restart", "-t", "1", "web", check=True)
    assert status(h, "web") == "starting"
    assert health(h, "web")["Log"] == []


def test_a_hanging_check_is_killed_at_its_timeout(nft_host):
    h = nft_host
    # `; true` keeps sh as the exec'd process: its child must be killed too.
    h.cli("run", "-d", "--name", "slow", "--health-cmd", "sleep 31; true", "--health-interval", "1s",
          "--health-timeout", "1s", "--health-retries", "2", "busybox", "sleep", "600", check=True)
    assert wait_for(lambda: status(h, "slow") == "unhealthy", 15), health(h, "slow")
    log = health(h, "slow")["Log"]
    assert len(log) >= 2 and {e["ExitCode"] for e in log} == {-1}
    assert all("exceeded timeout (1s)" in e["Output"] for e in log)
    # Two checks ran to their timeout; at most the one in flight is left in the container.
    ps = h.cli("exec", "slow", "ps", "-o", "args", check=True).stdout
    assert ps.count("sleep 31") <= 1, ps


def test_no_healthcheck_and_bad_flags(nft_host):
    h = nft_host
    r = h.cli("run", "-d", "--health-interval", "soon", "busybox", "sleep", "1")
    assert r.returncode != 0 and "--health-interval" in r.stderr, r.stderr
    r = h.cli("run", "-d", "--no-healthcheck", "--health-cmd", "true", "busybox", "sleep", "1")
    assert r.returncode != 0 and "--no-healthcheck" in r.stderr, r.stderr
    assert h.client.get("/containers", all="1") == []


def srv_ports(h, name: str) -> list[int]:
    return sorted(int(a.split()[2]) for a in dig(h, "cli", "_web._tcp.service.consul", "SRV")
                  if len(a.split()) == 4)


def passing_ports(agent) -> list[int]:
    code, _, body = agent.get("/v1/health/service/web?passing=true")
    assert code == 200, body
    return sorted(e["Service"]["Port"] for e in body)


def test_unhealthy_instance_leaves_consul_and_dns_and_comes_back(consul):
    h, agent = consul.h, consul.agent
    for name, port in (("web1", "8081"), ("web2", "8082")):
        h.cli("run", "-d", "--name", name, "-p", f"{port}:80", "--label", "portlink.service=web",
              "--health-cmd", "test ! -f /tmp/bad", "--health-interval", "1s", "--health-retries", "1",
              "busybox", "sh", "-c", HTTPD, check=True)
    h.cli("run", "-d", "--name", "cli", "busybox", "sleep", "600", check=True)
    assert wait_for(lambda: passing_ports(agent) == [8081, 8082], 15), entries(agent, "web")
    assert wait_for(lambda: srv_ports(h, "cli") == [8081, 8082], 10)
    [reg] = h.client.get("/containers/web2")["consul"]
    assert reg["health"] == "passing"
    check = next(c for c in entries(agent, "web") if c["Service"]["Port"] == 8082)["Checks"]
    assert {c["Type"] for c in check if c["ServiceID"]} == {"tcp", "ttl"}

    h.cli("exec", "web2", "touch", "/tmp/bad", check=True)
    assert wait_for(lambda: passing_ports(agent) == [8081], 10), entries(agent, "web")
    assert wait_for(lambda: srv_ports(h, "cli") == [8081], 10)
    assert h.client.get("/containers/web2")["consul"][0]["health"] == "critical"
    # Still registered (critical), only not served.
    assert sorted(e["Service"]["Port"] for e in entries(agent, "web")) == [8081, 8082]

    h.cli("exec", "web2", "rm", "/tmp/bad", check=True)
    assert wait_for(lambda: passing_ports(agent) == [8081, 8082], 10), entries(agent, "web")
    assert wait_for(lambda: srv_ports(h, "cli") == [8081, 8082], 10)
