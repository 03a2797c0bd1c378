"""Cross-host links through ambassadors, in a 3-host lab: the seed's scenario.
frontdb runs on host1; web on host2 links to it as `sql` and gets the env,
/etc/hosts line and DNS answer of a local link, pointing at an ambassador that
forwards to wherever frontdb runs now."""

from __future__ import annotations

import os
import re
import signal

import pytest

from helpers import dig, wait_for
from portlink.lab import lab as labmod

pytestmark = pytest.mark.root

SERVE = "echo db-on-$0 > /tmp/index.html; exec httpd -f -p 80 -h /tmp"


class Lab:
    def __init__(self, made: labmod.Lab):
        self.made = made

    def cli(self, host: str, *args: str, check: bool = True) -> str:
        import subprocess
        cmd, env = labmod.exec_argv(self.made.name, host, ["portlink", *args])
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise AssertionError(f"{host}: portlink {' '.join(args)}: {p.stderr}")
        if args[:1] == ("logs",):   # the container's stderr (the ambassador's log) comes back on stderr
            return (p.stdout + p.stderr).strip() if p.returncode == 0 else p.stderr.strip()
        return p.stdout.strip() if p.returncode == 0 else p.stderr.strip()

    def client(self, host: str):
        from portlink.runtime.client import Client
        return Client(self.made.host(host).socket)

    def fetch(self, host: str, ctr: str, url: str) -> str:
        return self.cli(host, "exec", ctr, "sh", "-c", f"timeout 5 wget -qO- {url}; exit $?", check=False)

    def frontdb(self, host: str) -> None:
        self.cli(host, "run", "-d", "--name", "frontdb", "-p", "5432:80", "busybox", "sh", "-c", SERVE, host)


@pytest.fixture
def three(tmp_path, monkeypatch):
    monkeypatch.setattr(labmod, "LAB_ROOT", tmp_path / "labs")
    made = labmod.up(3, f"x{os.getpid() % 10000}", progress=lambda *_: None)
    try:
        yield Lab(made)
    finally:
        errors = labmod.down(made.name, progress=lambda *_: None)
    assert not errors, errors


def test_cross_host_link_looks_local_and_follows_a_move(three):
    L = three
    L.frontdb("host1")
    assert wait_for(lambda: L.client("host2").get("/system/consul")["services_seen"] >= 2, 10)
    L.cli("host2", "run", "-d", "--name", "web", "--link", "frontdb:sql", "busybox", "sleep", "600")
    amb = L.client("host2").get("/containers/amb-frontdb-bridge")
    assert amb["status"] == "running" and amb["config"]["labels"]["portlink.ambassador"] == "frontdb"
    amb_ip = amb["network"]["ip"]

    env = L.cli("host2", "exec", "web", "env").splitlines()
    assert sorted(e for e in env if e.startswith("SQL_")) == sorted([
        "SQL_NAME=/web/sql", f"SQL_PORT=tcp://{amb_ip}:80", f"SQL_PORT_80_TCP=tcp://{amb_ip}:80",
        f"SQL_PORT_80_TCP_ADDR={amb_ip}", "SQL_PORT_80_TCP_PORT=80", "SQL_PORT_80_TCP_PROTO=tcp"])
    hosts = L.cli("host2", "exec", "web", "cat", "/etc/hosts")
    assert re.search(rf"^{re.escape(amb_ip)}\tsql ", hosts, re.M), hosts

    class H:   # what helpers.dig needs of a host
        def __init__(self, c):
            self.client = c
    assert dig(H(L.client("host2")), "web", "sql") == [amb_ip]
    assert wait_for(lambda: L.fetch("host2", "web", "http://sql/") == "db-on-host1", 10)
    web_pid = L.client("host2").get("/containers/web")["pid"]

    # A second linking container reuses the same ambassador.
    L.cli("host2", "run", "-d", "--name", "web2", "--link", "frontdb", "busybox", "sleep", "600")
    assert [c["name"] for c in L.client("host2").get("/containers")].count("amb-frontdb-bridge") == 1
    assert L.fetch("host2", "web2", "http://frontdb/") == "db-on-host1"

    # frontdb moves to host3: the next request lands there; web is not touched.
    L.cli("host1", "rm", "-f", "frontdb")
    L.frontdb("host3")
    assert wait_for(lambda: L.fetch("host2", "web", "http://sql/") == "db-on-host3", 10)
    assert L.client("host2").get("/containers/web")["pid"] == web_pid
    stats = L.cli("host2", "exec", "amb-frontdb-bridge", "wget", "-qO-", "http://127.0.0.1:9102/metrics")
    # The lab runs --secure-links: the backends are the server sides' ports on each host.
    assert "portlink_ambassador" in stats and re.search(r"10\.99\.0\.3:\d+", stats), stats
    live = L.client("host2").get("/containers/amb-frontdb-bridge")["ambassador"]
    assert "error" not in live, live
    assert "10.99.0.3:" in str(live) and "10.99.0.1:" in str(live)


def test_failover_when_a_backend_dies_and_forwarding_without_consul(three):
    L = three
    L.frontdb("host1")
    L.frontdb("host3")
    L.cli("host2", "run", "-d", "--name", "web", "--link", "frontdb:sql", "busybox", "sleep", "600")
    seen: set[str] = set()
    assert wait_for(lambda: seen.add(L.fetch("host2", "web", "http://sql/")) or
                    seen == {"db-on-host1", "db-on-host3"}, 15), seen
    # host1's frontdb dies: every next request still succeeds, on host3.
    os.kill(L.client("host1").get("/containers/frontdb")["pid"], signal.SIGKILL)
    results = [L.fetch("host2", "web", "http://sql/") for _ in range(6)]
    assert results == ["db-on-host3"] * 6, results
    # Consul goes away entirely: the ambassador keeps forwarding to what it knew.
    for h in L.made.hosts:
        os.kill(h.consul_pid, signal.SIGKILL)     # the lab's own agents, by pid
    results = [L.fetch("host2", "web", "http://sql/") for _ in range(4)]
    assert results == ["db-on-host3"] * 4, results


def test_unknown_remote_name_is_a_clear_error(three):
    L = three
    out = L.cli("host2", "run", "-d", "--name", "web", "--link", "nosuch:sql", "busybox", "sleep", "60", check=False)
    assert "nosuch" in out and "Consul" in out, out
    assert L.client("host2").get("/containers", all="1") == []
    out = L.cli("host2", "run", "-d", "--ambassador", "nosuch", check=False)
    assert "unknown remote service 'nosuch'" in out, out
    assert L.client("host2").get("/containers", all="1") == []


def test_ambassador_by_hand_as_a_sidecar(three):
    L = three
    L.frontdb("host1")
    assert wait_for(lambda: L.client("host2").get("/system/consul")["services_seen"] >= 2, 10)
    L.cli("host2", "run", "-d", "--name", "dbamb", "--ambassador", "frontdb", "--ambassador-policy", "close")
    amb = L.client("host2").get("/containers/dbamb")
    host_id = L.client("host2").get("/system/consul")["host_id"]
    assert amb["config"]["ambassador"] == {"service": "frontdb", "ports": [], "policy": "close",
                                           "drain_deadline": 10.0, "identity": f"dbamb-{host_id}"}
    assert amb["exposed"] == ["80/tcp"]          # from the catalog: frontdb's container port
    L.cli("host2", "run", "-d", "--name", "app", "busybox", "sleep", "600")
    assert wait_for(lambda: L.fetch("host2", "app", "http://dbamb/") == "db-on-host1", 10)
    # The ambassador itself is not registered in Consul as a service.
    assert L.client("host2").get("/containers/dbamb")["consul"] == []


TICKER = ("printf '#!/bin/sh\\nwhile true; do echo tick-$0; sleep 0.2; done\\n' | sed \"s/\\$0/$0/\" > /tick; "
          "chmod +x /tick; exec nc -ll -p 80 -e /tick")


def test_drain_keeps_an_established_stream_until_the_deadline(three):
    """A planned move (the old instance leaves Consul but still runs): the open
    stream through the ambassador goes on, then ends at the drain deadline (10 s
    for a link's ambassador); new connections go to the new instance."""
    import time
    L = three
    L.cli("host1", "run", "-d", "--name", "frontdb", "-p", "5432:80", "busybox", "sh", "-c", TICKER, "host1")
    assert wait_for(lambda: L.client("host2").get("/system/consul")["services_seen"] >= 2, 10)
    L.cli("host2", "run", "-d", "--name", "web", "--link", "frontdb:sql", "busybox", "sleep", "600")
    L.cli("host2", "exec", "web", "sh", "-c", "timeout 40 nc sql 80 > /tmp/ticks 2>&1 & sleep 0.5")
    count = lambda: int(L.cli("host2", "exec", "web", "sh", "-c", "wc -l < /tmp/ticks") or 0)
    assert wait_for(lambda: count() > 0, 5)
    assert "tick-host1" in L.cli("host2", "exec", "web", "cat", "/tmp/ticks")

    L.cli("host3", "run", "-d", "--name", "frontdb", "-p", "5432:80", "busybox", "sh", "-c", TICKER, "host3")
    h1 = L.made.host("host1")
    from portlink.lab.consul_agent import http_get
    services = http_get(f"http://{h1.ip}:8500/v1/agent/services", netns=h1.netns_path)[2]
    # Every instance host1 has of frontdb: the -p one and (secure links) the Connect-native one.
    sids = [s for s, v in services.items() if v["Service"] == "frontdb"]
    assert sids
    for sid in sids:
        assert http_get(f"http://{h1.ip}:8500/v1/agent/service/deregister/{sid}", netns=h1.netns_path,
                        method="PUT")[0] == 200
    t0 = time.monotonic()
    # New connections land on host3 at once.
    assert wait_for(lambda: "tick-host3" in L.cli("host2", "exec", "web", "sh", "-c",
                                                  "timeout 1 nc sql 80 | head -1", check=False), 5)
    before = count()
    time.sleep(max(0.0, 5 - (time.monotonic() - t0)))
    assert count() > before, "the established stream stopped before the drain deadline"
    assert wait_for(lambda: time.monotonic() - t0 > 11 and count() == count(), 15)
    settled = count()
    time.sleep(1.0)
    assert count() == settled, "the stream to the removed instance outlived the drain deadline"
    assert "draining" in L.cli("host2", "logs", "amb-frontdb-bridge")


def test_a_new_cross_host_link_works_on_its_first_connection(three):
    # The seeds' job pattern (`run --rm --link mysql:db mysqlbackup ...`): the
    # linking process connects at once, so its ambassador must already forward.
    # Each round removes the ambassador first: every round is a new link.
    L = three
    L.frontdb("host1")
    assert wait_for(lambda: L.client("host2").get("/system/consul")["services_seen"] >= 2, 10)
    outcomes = []
    for _ in range(20):
        L.cli("host2", "rm", "-f", "amb-frontdb-bridge", check=False)
        outcomes.append(L.cli("host2", "run", "--rm", "--link", "frontdb:sql", "busybox",
                              "sh", "-c", "timeout 5 wget -qO- http://sql/; exit $?", check=False))
    assert outcomes == ["db-on-host1"] * 20, outcomes
