#!/usr/bin/env python3
"""bench/consul_dns: how long a Consul change takes to show in a DNS answer,
portlink's resolver against Consul's own DNS interface, on the same changes.

Topology (nothing in the root namespace):
  host     a sandbox host (plt-cdns-*) running portlinkd --consul 198.51.100.2:8500
           --advertise 198.51.100.1, with a container "client" on the default network
  outside  a namespace (plt-cdnsout-*) linked to the host, 198.51.100.2, running a
           dev Consul agent (HTTP :8500, DNS :8600)

Each change re-registers service instance `bench-svc` (name `benchsvc`) on the
agent's HTTP API with a new address 198.51.100.<k>. t0 is taken right before
the PUT; from then on two threads poll, side by side, `benchsvc.service.consul`
A every --interval (1 ms):
  portlink    at the client's gateway (10.77.0.1:53), from a socket opened in the
              client container's namespace (so portlink sees a known container)
  consul_dns  at 198.51.100.2:8600, from a socket opened in the outside namespace
The figure is the time from t0 to the first answer that is exactly the new
address; a side that does not get there within --timeout (5 s) counts as missed.
Changes are --gap (100 ms) apart after both sides settle, so each is an isolated
event (portlink's watches rate-limit re-queries to 20/s per watch, per Consul's
advice). One untimed warm-up registration first brings `benchsvc` into both.

Prints one JSON line: each side's median/p99/max ms and misses, the PUT's own
median round trip (part of both figures), and ratio = portlink / consul_dns. Progress goes to stderr.
Run as root:  .venv/bin/python -P bench/consul_dns.py [--changes 100]"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from portlink.lab.consul_agent import AgentSpec, start_agent, wait_ready
from portlink.netns.kernel_ns import entered
from portlink.lab.sandbox import Namespace, SimHost, link_namespaces

HOST_IP, OUTSIDE_IP = "198.51.100.1", "198.51.100.2"   # as tests/integration/helpers.Outside
QNAME = "benchsvc.service.consul"


def udp_socket_in(netns: str) -> socket.socket:
    """A UDP socket opened inside the namespace at `netns` (setns is per thread)."""
    out: list = []

    def inside() -> None:
        try:
            with entered(netns):
                out.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        except BaseException as e:
            out.append(e)
    t = threading.Thread(target=inside)
    t.start()
    t.join(10)
    if not out or isinstance(out[0], BaseException):
        raise RuntimeError(f"cannot open a socket in {netns}: {out[0] if out else 'timed out'}")
    return out[0]


class Resolver:
    def __init__(self, name: str, netns: str, server: str, port: int) -> None:
        self.name, self.server, self.port = name, server, port
        self.sock = udp_socket_in(netns)
        self.queries = self.timeouts = 0

    def ask(self) -> list[str] | None:
        """The A answers for QNAME, or None when no reply came within 250 ms."""
        self.queries += 1
        try:
            r = dns.query.udp(dns.message.make_query(QNAME, "A"), self.server, timeout=0.25, port=self.port,
                              sock=self.sock, ignore_unexpected=True)
        except dns.exception.Timeout:
            self.timeouts += 1
            return None
        return sorted(rr.address for rrset in r.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset)

    def wait_for(self, want: str, go: threading.Event, timeout: float, interval: float) -> float | None:
        """perf_counter() of the first answer that is exactly [want]; None if not within timeout."""
        go.wait()
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.ask() == [want]:
                return time.perf_counter()
            time.sleep(interval)
        return None

    def close(self) -> None:
        self.sock.close()


def summary(ms: list[float], missed: int, side: Resolver) -> dict:
    s = sorted(ms)
    pick = lambda q: round(s[max(0, math.ceil(q * len(s)) - 1)], 3) if s else None   # nearest rank
    return {"median_ms": round(statistics.median(s), 3) if s else None, "p99_ms": pick(0.99),
            "max_ms": round(s[-1], 3) if s else None, "missed": missed,
            "queries": side.queries, "query_timeouts": side.timeouts}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Consul change -> DNS answer: portlink vs Consul DNS")
    ap.add_argument("--changes", type=int, default=100, help="timed changes (1..1000)")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds before a change counts as missed")
    ap.add_argument("--interval", type=float, default=0.001, help="seconds between polls of one resolver")
    ap.add_argument("--gap", type=float, default=0.1, help="seconds between changes")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench/consul_dns: needs root (network namespaces)")
    if not (1 <= a.changes <= 1000 and 0.1 <= a.timeout <= 30 and 0 <= a.interval <= 0.1 and 0 <= a.gap <= 5):
        raise SystemExit("bench/consul_dns: --changes 1..1000, --timeout 0.1..30, --interval 0..0.1, --gap 0..5")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    log = lambda msg: print(f"bench/consul_dns: {msg}", file=sys.stderr, flush=True)

    h = outside = agent = None
    tmp = Path(tempfile.mkdtemp(prefix="plt-cdns-"))
    sides: list[Resolver] = []
    try:
        h = SimHost.start("cdns", extra_args=["--consul", f"{OUTSIDE_IP}:8500", "--advertise", HOST_IP])
        outside = Namespace.create("cdnsout")
        link_namespaces(h.ns, HOST_IP, outside, OUTSIDE_IP)
        agent = start_agent(AgentSpec("bench-consul", OUTSIDE_IP, tmp / "consul"), outside.path)
        wait_ready(agent)
        h.cli("run", "-d", "--name", "client", "busybox", "sleep", "3600", check=True)
        info = h.client.get("/containers/client")
        sides = [Resolver("portlink", info["network"]["netns"], info["dns"]["server"], 53),
                 Resolver("consul_dns", outside.path, OUTSIDE_IP, 8600)]
        log(f"portlink at {info['dns']['server']}:53 from {info['network']['ip']}, consul at {OUTSIDE_IP}:8600")

        def change(k: int, timeout: float) -> tuple[str, list[float | None]]:
            want = f"198.51.100.{k}"
            go = threading.Event()
            futs = [pool.submit(s.wait_for, want, go, timeout, a.interval) for s in sides]
            t0 = time.perf_counter()
            go.set()
            code, _, body = agent.put("/v1/agent/service/register",
                                      {"ID": "bench-svc", "Name": "benchsvc", "Address": want, "Port": 9000})
            put_ms.append((time.perf_counter() - t0) * 1000)
            if code != 200:
                raise RuntimeError(f"register {want}: HTTP {code} {body}")
            return want, [None if (t := f.result()) is None else (t - t0) * 1000 for f in futs]

        times: dict[str, list[float]] = {s.name: [] for s in sides}
        missed = {s.name: 0 for s in sides}
        put_ms: list[float] = []      # the PUT's own round trip, part of both sides' figures
        with ThreadPoolExecutor(max_workers=2) as pool:
            want, got = change(250, 30.0)     # warm-up: the service appears (catalog + service watch)
            if None in got:
                raise RuntimeError(f"warm-up: {QNAME} never answered {want} "
                                   f"({', '.join(f'{s.name}: {s.ask()}' for s in sides)})")
            log(f"warm-up: portlink {got[0]:.1f} ms, consul_dns {got[1]:.1f} ms")
            for i in range(a.changes):
                time.sleep(a.gap)
                want, got = change(10 + i % 200, a.timeout)
                for s, ms in zip(sides, got):
                    if ms is None:
                        missed[s.name] += 1
                        log(f"change {i + 1} ({want}): {s.name} MISSED within {a.timeout}s, answers {s.ask()}")
                    else:
                        times[s.name].append(ms)
                        if ms > 1000:
                            log(f"change {i + 1} ({want}): {s.name} slow, {ms:.1f} ms")
                if (i + 1) % 10 == 0 or i + 1 == a.changes:
                    log(f"{i + 1}/{a.changes} changes; medians so far: " + ", ".join(
                        f"{n} {statistics.median(t):.2f} ms" for n, t in times.items() if t))
        p, c = (summary(times[s.name], missed[s.name], s) for s in sides)
        ratio = lambda key: round(p[key] / c[key], 3) if p[key] and c[key] else None
        print(json.dumps({"bench": "consul_dns", "changes": a.changes, "query": f"{QNAME} A",
                          "interval_ms": a.interval * 1000, "gap_ms": a.gap * 1000, "timeout_s": a.timeout,
                          "register_put_median_ms": round(statistics.median(put_ms[1:]), 3),
                          "portlink": p, "consul_dns": c,
                          "ratio_median": ratio("median_ms"), "ratio_p99": ratio("p99_ms")}))
        return 0
    finally:
        for s in sides:
            s.close()
        if h is not None:       # before the agent stops: prune deregisters through it
            errors = h.destroy()
            if errors:
                log(f"teardown reported {errors}")
        if agent is not None:
            agent.stop()
        if outside is not None:
            outside.delete()
        shutil.rmtree(tmp, ignore_errors=True)
        left = [n for n in (h and h.ns.name, outside and outside.name) if n and n in
                subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout]
        if left:
            log(f"namespaces left behind: {left}")


if __name__ == "__main__":
    sys.exit(main())
