"""Secure links under change, in a 3-host lab (every daemon --secure-links,
Consul with ACLs, Connect's CA), with test_secure_links' lab wrapper:

- a planned move with drain: frontdb stopped on host1 (after starting on host3)
  leaves Consul before its signal, so the long-lived mTLS stream to it goes on
  (the client side drains it) and completes while new connections go to host3,
  none failing;
- icc off across hosts: frontdb's server side reaches exactly frontdb's exposed
  port over an `--icc off` bridge, a cross-host link works, and neither another
  port of frontdb nor another container there answers the server side;
- a CA root rotation during traffic: the held stream and every new connection
  go on; both sides then hold leaves of the new root."""

from __future__ import annotations

import os
import re
import threading
import time

import pytest

from helpers import wait_for
from portlink.lab import lab as labmod
from portlink.lab.consul_agent import http_get
from test_secure_links import Lab

pytestmark = pytest.mark.root

# frontdb: ticks on 80 (N lines, fewer if /tmp/stop appears, then done-<host>), a
# page on 81. On TERM it stops accepting and exits once the streams it serves
# have ended (a graceful server).
TICK = ('#!/bin/sh\ntouch /tmp/busy.$$\ni=0\nwhile [ $i -lt $N ] && [ ! -e /tmp/stop ]; do echo tick-$H-$i; '
        'i=$((i+1)); sleep 0.2; done\necho done-$H\nrm -f /tmp/busy.$$\n')
SERVE = ('export H=$0 N=$2; printf %s "$1" > /tick; chmod +x /tick; echo db-on-$0 > /tmp/index.html; '
         'httpd -f -p 81 -h /tmp & W=$!; nc -ll -p 80 -e /tick & L=$!; '
         "trap 'kill $L $W; n=0; while ls /tmp/busy.* >/dev/null 2>&1 && [ $n -lt 150 ]; "
         "do sleep 0.1; n=$((n+1)); done; exit 0' TERM; "
         'while true; do sleep 1 & wait $!; done')
# In web: one request a round to sql:81, each answer (or FAIL) a line, END when
# done ({n} rounds, fewer if /tmp/{out}.stop appears).
REQUESTS = ('i=0; while [ $i -lt {n} ] && [ ! -e /tmp/{out}.stop ]; do i=$((i+1)); r=$(timeout 3 wget -qO- http://sql:81/ 2>/dev/null) '
            '|| r=FAIL; echo "${{r:-FAIL}}" >> /tmp/{out}; sleep 0.2; done; echo END >> /tmp/{out}')


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root, labmod.LAB_ROOT = labmod.LAB_ROOT, tmp_path_factory.mktemp("labs")
    try:
        made = labmod.up(3, f"m{os.getpid() % 10000}", progress=lambda *_: None)
        try:
            yield Lab(made)
        finally:
            errors = labmod.down(made.name, progress=lambda *_: None)
            assert not errors, errors
    finally:
        labmod.LAB_ROOT = root


def frontdb(L: Lab, host: str, ticks: int = 25) -> None:
    L.cli(host, "run", "-d", "--name", "frontdb", "--expose", "80", "--expose", "81",
          "busybox", "sh", "-c", SERVE, host, TICK, str(ticks))


def hosts_of(instances: list[dict]) -> dict[str, int]:
    """Connect-native instances per host (one per exposed port)."""
    out: dict[str, int] = {}
    for i in instances:
        out[i["Service"]["Address"]] = out.get(i["Service"]["Address"], 0) + 1
    return out


def lines(L: Lab, host: str, ctr: str, path: str) -> list[str]:
    return L.cli(host, "exec", ctr, "sh", "-c", f"cat {path} 2>/dev/null; true", check=False).splitlines()


def in_background(L: Lab, host: str, ctr: str, script: str) -> None:
    L.cli(host, "exec", ctr, "sh", "-c", f"({script}) >/dev/null 2>&1 & sleep 0.2")


class ConnectHistory:
    """Every change of `service`'s passing Connect instances as `host`'s agent
    sees them (blocking queries, in a thread): a list of sets of (address, port meta)."""

    def __init__(self, L: Lab, host: str, service: str) -> None:
        self.seen: list[frozenset] = []
        self._stop = threading.Event()
        h = L.made.host(host)
        self._url, self._ns = f"http://{h.ip}:8500/v1/health/connect/{service}?passing=1&wait=2s", h.netns_path
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        index = 0
        while not self._stop.is_set():
            try:
                code, headers, got = http_get(f"{self._url}&index={index}", 5, self._ns)
            except Exception:
                time.sleep(0.2)
                continue
            if code != 200:
                time.sleep(0.2)
                continue
            index = int({k.lower(): v for k, v in headers.items()}.get("x-consul-index", 0))
            now = frozenset((e["Service"]["Address"], e["Service"]["Meta"].get("portlink-port")) for e in got)
            if not self.seen or self.seen[-1] != now:
                self.seen.append(now)

    def stop(self) -> list[frozenset]:
        self._stop.set()
        self._thread.join(10)
        return self.seen


def cleanup(L: Lab, *where: tuple[str, str]) -> None:
    for host, name in where:
        L.cli(host, "rm", "-f", name, check=False)


def test_a_move_with_drain_keeps_the_open_stream_and_new_connections_go_to_the_new_host(lab):
    L = lab
    try:
        frontdb(L, "host1")
        assert wait_for(lambda: hosts_of(L.connect_instances("frontdb")) == {"10.99.0.1": 2}, 20)
        L.run_linked("host2", "-d", "--name", "web", "--link", "frontdb:sql", "busybox", "sleep", "600")
        frontdb(L, "host3")
        assert wait_for(lambda: hosts_of(L.connect_instances("frontdb")) == {"10.99.0.1": 2, "10.99.0.3": 2}, 20)
        # Two streams at once: least connections puts one on each host.
        for s in ("a", "b"):
            in_background(L, "host2", "web", f"timeout 30 nc sql 80 > /tmp/stream-{s}")
        first = lambda: {s: (lines(L, "host2", "web", f"/tmp/stream-{s}") or [""])[0] for s in "ab"}
        assert wait_for(lambda: all(v.startswith("tick-") for v in first().values()), 10), first()
        on_host1 = [s for s, v in first().items() if v.startswith("tick-host1-")]
        assert len(on_host1) == 1, first()
        stream = f"/tmp/stream-{on_host1[0]}"
        in_background(L, "host2", "web", REQUESTS.format(n=40, out="new"))
        assert wait_for(lambda: len(lines(L, "host2", "web", "/tmp/new")) >= 2, 10)

        # The move: host1's frontdb stops gracefully (it leaves Consul first), then goes.
        history = ConnectHistory(L, "host2", "frontdb")
        L.cli("host1", "stop", "-t", "20", "frontdb")
        assert L.get("host1", "/containers/frontdb")["exit_code"] == 0     # ended by itself, not killed
        assert "srv-frontdb" not in [c["name"] for c in L.get("host1", "/containers", all="1")]
        L.cli("host1", "rm", "frontdb")
        assert hosts_of(L.connect_instances("frontdb")) == {"10.99.0.3": 2}
        # Once out of Consul, host1 never came back: its server side outlives frontdb by
        # a moment, and is not advertised again meanwhile.
        seen = [{a for a, _ in s} for s in history.stop()]
        left = next((i for i, s in enumerate(seen) if "10.99.0.1" not in s), None)
        assert left is not None and all("10.99.0.1" not in s for s in seen[left:]), seen

        # The open stream to host1 was drained, not cut: every tick and its end arrived.
        got = lines(L, "host2", "web", stream)
        assert got == [f"tick-host1-{i}" for i in range(25)] + ["done-host1"], got
        # ... and it was still open when host1 left the client side's set
        assert re.search(r"port 80: reroute .*\(1 connections on gone backends draining\)",
                         L.cli("host2", "logs", "amb-frontdb-bridge")), L.cli("host2", "logs", "amb-frontdb-bridge")
        # New connections: none failed, and once host1 was out, all went to host3.
        assert wait_for(lambda: "END" in lines(L, "host2", "web", "/tmp/new"), 30)
        new = lines(L, "host2", "web", "/tmp/new")[:-1]
        assert len(new) == 40 and set(new) <= {"db-on-host1", "db-on-host3"}, \
            (new, L.get("host2", "/containers/amb-frontdb-bridge").get("ambassador"),   # its counters, for a failure's cause
             L.cli("host2", "logs", "amb-frontdb-bridge", check=False)[-4000:])
        assert "db-on-host3" in new
        assert [L.fetch("host2", "web", "http://sql:81/") for _ in range(5)] == ["db-on-host3"] * 5
        other = "b" if on_host1[0] == "a" else "a"
        assert wait_for(lambda: lines(L, "host2", "web", f"/tmp/stream-{other}")[-1:] == ["done-host3"], 15)
    finally:
        cleanup(L, ("host2", "web"), ("host1", "frontdb"), ("host3", "frontdb"))


def test_icc_off_the_server_side_reaches_exactly_the_exposed_port_and_the_link_works(lab):
    L = lab
    L.cli("host1", "network", "create", "--icc", "off", "--subnet", "10.96.5.0/24", "quiet")
    try:
        # frontdb serves 80 (exposed) and 81 (not); `other` serves 80 on the same network.
        L.cli("host1", "run", "-d", "--name", "frontdb", "--net", "quiet", "--expose", "80", "busybox", "sh", "-c",
              "echo db-quiet > /tmp/index.html; httpd -p 81 -h /tmp; exec httpd -f -p 80 -h /tmp")
        L.cli("host1", "run", "-d", "--name", "other", "--net", "quiet", "--expose", "80", "busybox", "sh", "-c",
              "echo other > /tmp/index.html; exec httpd -f -p 80 -h /tmp")
        assert wait_for(lambda: hosts_of(L.connect_instances("frontdb")) == {"10.99.0.1": 1}, 20)
        srv = L.get("host1", "/containers/srv-frontdb")
        db_ip = L.get("host1", "/containers/frontdb")["network"]["ip"]
        other_ip = L.get("host1", "/containers/other")["network"]["ip"]
        assert srv["network"]["name"] == "quiet" and srv["config"]["ambassador"]["backends"] == {"80": f"{db_ip}:80"}

        # Across hosts, through the link: the exposed port.
        got = L.run_linked("host2", "--rm", "--link", "frontdb:sql", "busybox", "sh", "-c",
                           "timeout 5 wget -qO- http://sql/; exit $?")
        assert got == "db-quiet", got
        # From the server side's own namespace: exactly frontdb:80, nothing else on the bridge.
        from_srv = lambda url: L.fetch("host1", "srv-frontdb", url)
        assert from_srv(f"http://{db_ip}/") == "db-quiet"
        assert from_srv(f"http://{db_ip}:81/") != "db-quiet"
        assert from_srv(f"http://{other_ip}/") != "other"
        # and frontdb's other port does answer on the bridge itself (the drop is the firewall's)
        assert L.fetch("host1", "frontdb", "http://127.0.0.1:81/") == "db-quiet"
        # A container on that network without a link gets nothing from frontdb.
        assert L.fetch("host1", "other", f"http://{db_ip}/") != "db-quiet"
    finally:
        cleanup(L, ("host1", "frontdb"), ("host1", "other"))
        L.cli("host1", "network", "rm", "quiet", check=False)


def serial(L: Lab, host: str, ctr: str, service: str) -> str | None:
    stats = L.get(host, f"/containers/{ctr}").get("ambassador") or {}
    return ((stats.get("tls") or {}).get("services") or {}).get(service, {}).get("serial")


def test_a_ca_root_rotation_during_traffic_drops_nothing(lab):
    L = lab
    try:
        frontdb(L, "host1", ticks=600)      # the held stream ticks until told to end (at most 2 min)
        assert wait_for(lambda: hosts_of(L.connect_instances("frontdb")) == {"10.99.0.1": 2}, 20)
        L.run_linked("host2", "-d", "--name", "web", "--link", "frontdb:sql", "busybox", "sleep", "600")
        identity = L.get("host2", "/containers/amb-frontdb-bridge")["config"]["ambassador"]["identity"]
        old = {"srv": serial(L, "host1", "srv-frontdb", "frontdb"),
               "amb": serial(L, "host2", "amb-frontdb-bridge", identity)}
        assert all(old.values()), old
        code, roots = L.consul("GET", "/v1/connect/ca/roots")
        assert code == 200
        old_root = roots["ActiveRootID"]

        in_background(L, "host2", "web", "timeout 150 nc sql 80 > /tmp/held")
        in_background(L, "host2", "web", REQUESTS.format(n=600, out="rot"))
        assert wait_for(lambda: len(lines(L, "host2", "web", "/tmp/rot")) >= 2, 10)
        assert wait_for(lambda: len(lines(L, "host2", "web", "/tmp/held")) >= 2, 10)
        code, cfg = L.consul("GET", "/v1/connect/ca/configuration")
        assert code == 200, cfg
        bits = 384 if cfg["Config"].get("PrivateKeyBits", 256) != 384 else 256      # a new root key
        code, out = L.consul("PUT", "/v1/connect/ca/configuration",
                             {"Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": bits}})
        assert code == 200, out
        assert wait_for(lambda: L.consul("GET", "/v1/connect/ca/roots")[1]["ActiveRootID"] != old_root, 15)
        # Both sides follow with new leaves (the agents spread re-signing over a while).
        assert wait_for(lambda: serial(L, "host1", "srv-frontdb", "frontdb") not in (None, old["srv"]), 45)
        assert wait_for(lambda: serial(L, "host2", "amb-frontdb-bridge", identity) not in (None, old["amb"]), 45)
        during = len(lines(L, "host2", "web", "/tmp/rot"))
        assert wait_for(lambda: len(lines(L, "host2", "web", "/tmp/rot")) >= during + 10, 15)
        L.cli("host1", "exec", "frontdb", "touch", "/tmp/stop")
        L.cli("host2", "exec", "web", "touch", "/tmp/rot.stop")

        # The held stream crossed the rotation whole; no new connection failed.
        assert wait_for(lambda: lines(L, "host2", "web", "/tmp/held")[-1:] == ["done-host1"], 15)
        held = lines(L, "host2", "web", "/tmp/held")
        assert held == [f"tick-host1-{i}" for i in range(len(held) - 1)] + ["done-host1"], held
        assert wait_for(lambda: "END" in lines(L, "host2", "web", "/tmp/rot"), 15)
        rot = lines(L, "host2", "web", "/tmp/rot")
        assert rot == ["db-on-host1"] * (len(rot) - 1) + ["END"] and len(rot) > during + 10, rot
        # A new link after the rotation: a new client side, leaves of the new root.
        L.cli("host2", "rm", "-f", "web")
        assert L.cli("host2", "run", "--rm", "--link", "frontdb:sql", "busybox", "sh", "-c",
                     "timeout 5 wget -qO- http://sql:81/; exit $?", check=False) == "db-on-host1"
    finally:
        cleanup(L, ("host2", "web"), ("host1", "frontdb"))
