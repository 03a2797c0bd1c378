"""Faults survived, in a 3-host lab (every host a Consul server):

- one Consul server lost: the cluster keeps quorum, registrations still spread;
  then all of them: DNS and the ambassadors keep serving the last known state,
  the daemon says so once; the servers come back (same data dirs): a move is
  followed again by the ambassador and by DNS, and the daemon says so once;
- a backend killed mid-stream: the stream through the ambassador ends (it does
  not hang) and the next connection goes to the other instance."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from helpers import dig, wait_for
from portlink.lab import lab as labmod
from test_crosshost import TICKER, three  # noqa: F401  (the 3-host lab fixture)

pytestmark = pytest.mark.root

UNREACHABLE = "is unreachable ("       # catalog/watch.py Reachability's two log lines
BACK = "is reachable again"


class On:
    """What helpers.dig needs of a host: its daemon's client."""

    def __init__(self, lab, host: str):
        self.client = lab.client(host)


def kill_agents(L, *hosts: str) -> None:
    """SIGKILL the Consul agents of `hosts`, by the pids the lab recorded (only those)."""
    made = labmod.Lab.load(L.made.name)
    for name in hosts:
        h = made.host(name)
        assert made.alive(h.consul_pid), f"{name}'s agent is not running"
        os.kill(h.consul_pid, signal.SIGKILL)
        assert wait_for(lambda: not made.alive(h.consul_pid), 10), f"{name}'s agent outlived SIGKILL"


def lab_cli(name: str, *args: str, check: bool = True) -> str:
    """`portlink lab ... --name NAME` as a user runs it, on the fixture's lab dir."""
    import subprocess
    from portlink.lab.sandbox import VENV_BIN
    argv = [str(VENV_BIN / "portlink"), "lab", args[0], "--name", name, *args[1:]]
    p = subprocess.run(argv, env={**os.environ, "PORTLINK_LAB_DIR": str(labmod.LAB_ROOT)},
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if check:
        assert p.returncode == 0, f"portlink lab {' '.join(args)}: {p.stderr}"
        return p.stdout
    return p.stdout + p.stderr


def daemon_log(L, host: str) -> str:
    return (Path(L.made.host(host).workdir) / "portlinkd.log").read_text(errors="replace")


def amb_stats(L, host: str, amb: str) -> dict:
    out = L.cli(host, "exec", amb, "wget", "-qO-", "http://127.0.0.1:9102/stats", check=False)
    try:
        return json.loads(out)
    except ValueError:
        return {}


def settled(L) -> bool:
    """Host2's daemon and ambassador reach Consul, and every outage they logged
    has had its return logged too (none pending)."""
    d, a = daemon_log(L, "host2"), L.cli("host2", "logs", "amb-frontdb-bridge")
    return (L.client("host2").get("/system/consul")["reachable"] is True
            and amb_stats(L, "host2", "amb-frontdb-bridge").get("consul", {}).get("reachable") is True
            and d.count(UNREACHABLE) == d.count(BACK) and a.count(UNREACHABLE) == a.count(BACK))


def hosts_of(backends: list[str]) -> list[str]:
    """Backends by host: under the lab's --secure-links a backend is a server
    side's port (picked by its host), not frontdb's published 5432."""
    return [b.rsplit(":", 1)[0] for b in backends]


def by_host(counts: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for backend, n in counts.items():
        out[backend.rsplit(":", 1)[0]] = out.get(backend.rsplit(":", 1)[0], 0) + n
    return out


def test_consul_servers_lost_one_then_all_then_back(three):
    L = three
    made = L.made
    web_dns = lambda q: dig(On(L, "host2"), "web", q)

    # frontdb on host1, web on host2 linked to it through an ambassador.
    L.frontdb("host1")
    assert wait_for(lambda: L.client("host2").get("/system/consul")["services_seen"] >= 2, 30)
    L.cli("host2", "run", "-d", "--name", "web", "--link", "frontdb:sql", "busybox", "sleep", "900")
    assert L.client("host2").get("/containers/amb-frontdb-bridge")["status"] == "running"
    assert wait_for(lambda: web_dns("frontdb.service.consul") == [made.host("host1").ip], 30)
    assert wait_for(lambda: L.fetch("host2", "web", "http://sql/") == "db-on-host1", 30)

    # One server of three lost (host3's agent): quorum holds. A new registration
    # (on host1: host3's own agent is gone) reaches host2's DNS; web -> sql works.
    kill_agents(L, "host3")
    L.cli("host1", "run", "-d", "--name", "extra", "-p", "8080:80", "busybox", "httpd", "-f", "-p", "80")
    assert wait_for(lambda: web_dns("extra.service.consul") == [made.host("host1").ip], 60), \
        web_dns("extra.service.consul")
    assert L.fetch("host2", "web", "http://sql/") == "db-on-host1"
    # Losing a server may cost a leader election, which the daemon and the
    # ambassador may see as a short outage: let that settle (its "reachable
    # again" written) before counting the lines of the real one.
    assert wait_for(lambda: settled(L), 30, interval=0.5)
    log_mark = len(daemon_log(L, "host2"))
    amb_mark = len(L.cli("host2", "logs", "amb-frontdb-bridge"))

    # Every server lost: host2's DNS keeps answering with the last known
    # addresses, web -> sql keeps working, the ambassador keeps its backend.
    kill_agents(L, "host1", "host2")
    assert wait_for(lambda: UNREACHABLE in daemon_log(L, "host2")[log_mark:], 30), daemon_log(L, "host2")[-2000:]
    for _ in range(4):
        assert web_dns("frontdb.service.consul") == [made.host("host1").ip]
        assert web_dns("extra.service.consul") == [made.host("host1").ip]
        assert L.fetch("host2", "web", "http://sql/") == "db-on-host1"
        time.sleep(1)
    assert wait_for(lambda: amb_stats(L, "host2", "amb-frontdb-bridge").get("consul", {}).get("reachable") is False,
                    30)
    stats = amb_stats(L, "host2", "amb-frontdb-bridge")
    assert hosts_of(stats["listeners"]["80"]["backends"]) == [made.host("host1").ip], stats
    assert daemon_log(L, "host2")[log_mark:].count(UNREACHABLE) == 1
    assert L.cli("host2", "logs", "amb-frontdb-bridge")[amb_mark:].count(UNREACHABLE) == 1

    # The servers come back with their data: a leader is elected, the daemon
    # says so once, and a move is followed again.
    lab_cli(made.name, "consul", "start", "host1", "host2", "host3")    # waits for a leader (60 s at most)
    assert wait_for(lambda: BACK in daemon_log(L, "host2")[log_mark:], 30), daemon_log(L, "host2")[-2000:]
    assert wait_for(lambda: amb_stats(L, "host2", "amb-frontdb-bridge").get("consul", {}).get("reachable") is True,
                    30)
    L.cli("host1", "rm", "-f", "frontdb")
    L.frontdb("host3")
    assert wait_for(lambda: L.fetch("host2", "web", "http://sql/") == "db-on-host3", 60)
    assert wait_for(lambda: web_dns("frontdb.service.consul") == [made.host("host3").ip], 30), \
        web_dns("frontdb.service.consul")
    stats = amb_stats(L, "host2", "amb-frontdb-bridge")
    assert hosts_of(stats["listeners"]["80"]["backends"]) == [made.host("host3").ip], stats
    since = daemon_log(L, "host2")[log_mark:]
    assert since.count(UNREACHABLE) == 1 and since.count(BACK) == 1, since
    assert wait_for(lambda: BACK in L.cli("host2", "logs", "amb-frontdb-bridge")[amb_mark:], 30)
    # The restarted agents are the lab's: recorded, and ended by `lab down` (the fixture checks).
    now = labmod.Lab.load(made.name)
    assert [h.name for h in now.hosts if now.alive(h.consul_pid)] == ["host1", "host2", "host3"], \
        [(h.name, h.consul_pid, now.pids) for h in now.hosts]
    # `lab consul stop` ends only that agent; starting a running one is refused.
    lab_cli(made.name, "consul", "stop", "host3")
    assert [r["consul_agent"] for r in json.loads(lab_cli(made.name, "ls", "--format", "json"))] == \
        ["up", "up", "down"]
    lab_cli(made.name, "consul", "start", "host3")
    out = lab_cli(made.name, "consul", "start", "host3", check=False)
    assert "is running" in out and "consul stop host3" in out, out
    assert [r["consul_agent"] for r in json.loads(lab_cli(made.name, "ls", "--format", "json"))] == ["up"] * 3


def test_backend_killed_mid_stream_ends_the_stream_and_the_next_goes_elsewhere(three):
    """An ambassador that keeps streams to a removed instance (policy keep): only
    the forwarder itself can end the stream when its backend dies, so a stream
    that survives the kill is a hang, caught by `timeout`."""
    L = three
    for host in ("host1", "host3"):
        L.cli(host, "run", "-d", "--name", "frontdb", "-p", "5432:80", "busybox", "sh", "-c", TICKER, host)
    both = [L.made.host(h).ip for h in ("host1", "host3")]
    assert wait_for(lambda: L.client("host2").get("/system/consul")["services_seen"] >= 2, 30)
    L.cli("host2", "run", "-d", "--name", "dbamb", "--ambassador", "frontdb", "--ambassador-policy", "keep")
    assert wait_for(lambda: sorted(hosts_of(amb_stats(L, "host2", "dbamb").get("listeners", {}).get("80", {})
                                            .get("backends", []))) == both, 30)
    L.cli("host2", "run", "-d", "--name", "app", "busybox", "sleep", "900")

    L.cli("host2", "exec", "app", "sh", "-c",
          "(timeout 60 nc dbamb 80 > /tmp/ticks 2>&1; echo $? > /tmp/nc-rc) </dev/null >/dev/null 2>&1 &")
    first = lambda: L.cli("host2", "exec", "app", "sh", "-c", "head -1 /tmp/ticks", check=False)
    assert wait_for(lambda: first().startswith("tick-"), 15), first()
    serving = first().removeprefix("tick-")
    other = {"host1": "host3", "host3": "host1"}[serving]

    os.kill(L.client(serving).get("/containers/frontdb")["pid"], signal.SIGKILL)
    rc = lambda: L.cli("host2", "exec", "app", "cat", "/tmp/nc-rc", check=False)
    assert wait_for(lambda: rc().isdigit(), 90), "nc neither ended nor timed out"
    assert rc() != "124", "the stream through the ambassador hung after its backend was killed"
    ticks = set(L.cli("host2", "exec", "app", "cat", "/tmp/ticks").split())
    assert ticks == {f"tick-{serving}"}, ticks

    for _ in range(3):
        got = L.cli("host2", "exec", "app", "sh", "-c", "timeout 15 nc dbamb 80 | head -1", check=False)
        assert got == f"tick-{other}", got
    assert wait_for(lambda: amb_stats(L, "host2", "dbamb").get("metrics", {})
                    .get("connections_open", {}).get("total") == 0, 30)
    m = amb_stats(L, "host2", "dbamb")["metrics"]
    per_host = by_host(m["connections_total"]["backends"])
    assert per_host[L.made.host(serving).ip] == 1, m     # the killed stream only
    assert per_host[L.made.host(other).ip] >= 3, m
    assert m["rejected_total"]["total"] == 0, m
