#!/usr/bin/env python3
"""bench/scale_hosts: many hosts, many services moving: how soon a change in
Consul reaches every host's DNS and every ambassador that follows the service,
and what each Consul agent serves per change.

Topology: a lab (portlink.lab) of --hosts hosts (default 10: 3 Consul servers,
7 clients), each its own namespace on the lab switch with a Consul agent and a
portlinkd (--secure-links, ACLs on, as `portlink lab up` makes it). On every
host a `dnsprobe` container (busybox sleep): the DNS questions come from its
namespace to its gateway, as a container's would. --amb-services of the
services get --amb-per-service ambassador containers each (real ones:
`run --ambassador SERVICE`, the forwarder process following the service's
Connect instances over the agent of its host), on hosts other than the
service's first.

Services: --services names (default 100), each registered as portlink's
registrar registers a published container on a secure-links host: a plaintext
instance (what `svc.service.consul` answers) and a Connect-native instance
(what client-side ambassadors dial), both at the host's underlay address, on
the agent of the host it runs on. They are registered straight through the
agent's HTTP API rather than by running 100 containers with -p: a real
container also starts a server-side ambassador (a Python process, ~44 MiB and
~1 s of CPU each), and a real move would time runc and that start-up, not the
Consul change this bench is about. IDs are `plbench-...`, which no registrar
touches.

A change moves one service to another host, make-before-break: register the
new instances on the new host's agent, then deregister the old ones on the
old host's agent, back to back (4 PUTs). t0 is taken just before the first
PUT. Meanwhile one poller thread per host (kept inside that host's namespace,
its DNS socket made in the probe container's namespace) asks the host's DNS
for the service every --interval and GETs /stats of that host's ambassadors
for the service, until the DNS answer is exactly the new address and each
ambassador's backends are exactly the new instance. The change's figure is
the latest of those (every host, every affected ambassador), from t0; none
within --timeout is a miss. Changes run one at a time, --gap apart; move m
moves service m mod --services, so --moves 200 moves each service twice.

Agent load: every agent's cumulative HTTP request counts
(GET /v1/agent/metrics?format=prometheus, `consul_api_http_count` by method
and path; the lab turns Prometheus retention on) are read before and after
the changes and, for the baseline, before and after an idle window as long;
requests per change = (during - idle - this bench's own PUTs and reads) /
changes, per host, split into blocking health queries and the rest.

The interval: a PUT to an agent's /v1/agent/service/(de)register returns once
the agent has synced the change to the servers (a Raft commit), so a PUT's
return is the change's commit. The DNS answer is exactly the new address from
the third PUT (the old plaintext instance's deregistration), the ambassadors'
backends from the fourth: `after_commit` measures each from that PUT's return,
`after_last_put_returned` everything from the fourth's, and the headline from t0
(Consul's own write path included).

--profile adds, per host, a blocking query like the daemon's (the service's
/v1/health/service?passing, on the host's agent, from the host's namespace):
the time Consul delivered the change to that agent, so each figure splits into
Consul's delivery and what portlink took after it. Its queries are counted as
the bench's own in the agent load.

Prints one JSON line. Everything lives in the lab, which is removed at the
end (also on error or ^C). Run as root:
  .venv/bin/python -P bench/scale_hosts.py [--hosts 10] [--services 100] [--moves 200] [--profile]"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from dnslib import QTYPE, DNSRecord

from portlink.lab import lab as labmod
from portlink.lab.consul_agent import http_get
from portlink.netns.kernel_ns import entered
from portlink.runtime.client import Client

PORT = 80                       # the container port every service stands for (meta portlink-port)
METRICS_PORT = 9102             # the ambassador's /stats (runtime.ambassadors.METRICS_PORT)
ID_PREFIX = "plbench-"


def progress(msg: str) -> None:
    if sys.stderr.isatty():          # as every bench: progress on a terminal only
        print(f"bench/scale_hosts: {msg}", file=sys.stderr, flush=True)


def pct(xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no samples."""
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))]


def ms(x: float | None) -> float | None:
    return None if x is None else round(1000 * x, 1)


@dataclass
class Placement:
    """Where a service's instances are now."""
    service: str
    host: int                   # index into the lab's hosts
    port: int                   # the plaintext instance's port; the native one is port + 10000
    ids: tuple[str, str] = ("", "")


@dataclass
class Amb:
    name: str
    service: str
    host: int
    ip: str


@dataclass
class HostSide:
    """One lab host as the bench drives it: a caller thread and a poller thread,
    both kept inside the host's namespace for their whole life."""
    index: int
    host: labmod.LabHost
    caller: ThreadPoolExecutor = field(init=False)
    poller: ThreadPoolExecutor = field(init=False)
    watcher: ThreadPoolExecutor = field(init=False)    # --profile: a blocking query like the daemon's
    dns_sock: socket.socket | None = None
    dns_server: str = ""
    conns: dict[str, http.client.HTTPConnection] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._inside: list = []

        def stay_inside() -> None:
            # Never left: the thread lives in the host. The context is kept: collected, it
            # would run its exit and put the thread back in this process's namespace.
            cm = entered(self.host.netns_path)
            cm.__enter__()
            self._inside.append(cm)
            if os.stat("/proc/thread-self/ns/net").st_ino != os.stat(self.host.netns_path).st_ino:
                raise RuntimeError(f"thread not inside {self.host.netns_path}")
        self.caller = ThreadPoolExecutor(1, initializer=stay_inside)
        self.poller = ThreadPoolExecutor(1, initializer=stay_inside)
        self.watcher = ThreadPoolExecutor(1, initializer=stay_inside)

    def close(self) -> None:
        for ex in (self.caller, self.poller, self.watcher):
            ex.shutdown(wait=True, cancel_futures=True)
        if self.dns_sock:
            self.dns_sock.close()
        for c in self.conns.values():
            c.close()


class Bench:
    def __init__(self, a: argparse.Namespace, lab: labmod.Lab) -> None:
        self.a, self.lab = a, lab
        self.sides = [HostSide(i, h) for i, h in enumerate(lab.hosts)]
        self.token = labmod.management_token_file(lab).read_text().strip()
        self.placements: list[Placement] = []
        self.ambs: list[Amb] = []
        self.own_requests = [0] * len(self.sides)     # requests this bench sent to each agent
        self.own_health = [0] * len(self.sides)       # of which health queries (--profile's)
        self.errors: list[str] = []
        self.unseen: list[str] = []                   # (host, service) the host's DNS never answered at set-up
        self.setup_s = 0.0
        self.rng = random.Random(a.seed)

    # Consul, through the host's caller thread -------------------------------------------
    def agent(self, i: int, method: str, path: str, body: object = None) -> tuple[int, object]:
        h = self.sides[i].host
        self.own_requests[i] += 1
        code, _, data = self.sides[i].caller.submit(
            http_get, f"http://{h.ip}:8500{path}", 10.0, None, method, body, self.token).result()
        return code, data

    def register(self, p: Placement, tag: str, stamps: list[float] | None = None) -> None:
        ip = self.sides[p.host].host.ip
        plain = {"ID": f"{ID_PREFIX}{p.service}-{tag}", "Name": p.service, "Address": ip, "Port": p.port,
                 "Meta": {"portlink-port": f"{PORT}/tcp", "portlink-host": "bench"}}
        native = {**plain, "ID": f"{ID_PREFIX}{p.service}-{tag}-tls", "Port": p.port + 10000,
                  "Connect": {"Native": True}}
        for body in (plain, native):
            code, data = self.agent(p.host, "PUT", "/v1/agent/service/register", body)
            if stamps is not None:
                stamps.append(time.monotonic())
            if code != 200:
                raise RuntimeError(f"register {body['ID']} on {self.sides[p.host].host.name}: HTTP {code} {data}")
        p.ids = (plain["ID"], native["ID"])

    def deregister(self, host: int, ids: tuple[str, ...], stamps: list[float] | None = None) -> None:
        for sid in ids:
            code, data = self.agent(host, "PUT", f"/v1/agent/service/deregister/{sid}")
            if stamps is not None:
                stamps.append(time.monotonic())
            if code != 200:
                raise RuntimeError(f"deregister {sid}: HTTP {code} {data}")

    def http_counts(self, i: int) -> dict[str, int]:
        """The agent's cumulative HTTP request counts, 'METHOD path' -> n."""
        code, text = self.agent(i, "GET", "/v1/agent/metrics?format=prometheus")
        if code != 200:
            raise RuntimeError(f"metrics of {self.sides[i].host.name}: HTTP {code}")
        out = {}
        for m in re.finditer(r'^consul_api_http_count\{method="(\w+)",path="([^"]*)"\} (\d+)', text, re.M):
            out[f"{m.group(1)} {m.group(2)}"] = int(m.group(3))
        return out

    # set-up ------------------------------------------------------------------------------
    def setup(self) -> None:
        a, n = self.a, len(self.sides)
        progress(f"probe containers on {n} hosts")
        for s in self.sides:
            c = Client(s.host.socket, timeout=120).post(
                "/containers", {"image": "busybox", "name": "dnsprobe", "cmd": ["sleep", "86400"]})
            s.dns_server = c["dns"]["server"]
            netns = c["network"]["netns"]

            def make_sock(path: str = netns) -> socket.socket:
                with entered(path):          # the socket keeps the probe's namespace
                    sk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sk.settimeout(0.05)
                return sk
            s.dns_sock = s.poller.submit(make_sock).result()
        progress(f"registering {a.services} services")
        for k in range(a.services):
            p = Placement(f"svc{k:03d}", k % n, 20000 + k)
            self.register(p, "0")
            self.placements.append(p)
        progress("waiting for every host's DNS to answer every service")
        # Rounds over what is still missing, until --settle-timeout: what is missing then
        # is reported (a host that does not follow a service), not waited for forever.
        pending = [(s, p) for p in self.placements for s in self.sides]
        t = time.monotonic()
        while pending and time.monotonic() < t + a.settle_timeout:
            pending = [(s, p) for s, p in pending
                       if s.poller.submit(self.dns_answer, s, p.service).result() != [self.sides[p.host].host.ip]]
            if pending:
                time.sleep(0.5)
        self.setup_s = time.monotonic() - t
        self.unseen = sorted(f"{s.host.name}:{p.service}" for s, p in pending)
        if self.unseen:
            progress(f"after {a.settle_timeout:g} s, {len(self.unseen)} (host, service) pairs still unanswered")
        step = max(1, a.services // max(1, a.amb_services))
        chosen = list(range(0, a.services, step))[:a.amb_services]
        progress(f"{len(chosen) * a.amb_per_service} ambassadors for {len(chosen)} services")
        for k in chosen:
            p = self.placements[k]
            others = [i for i in range(n) if i != p.host]
            for j in range(a.amb_per_service):
                i = others[(k + 3 * j) % len(others)]
                name = f"amb-{p.service}-{j}"
                c = Client(self.sides[i].host.socket, timeout=180).post(
                    "/containers", {"name": name, "image": "busybox",
                                    "ambassador": {"service": p.service, "ports": [PORT]}})
                self.ambs.append(Amb(name, p.service, i, c["network"]["ip"]))
        deadline = time.monotonic() + a.settle_timeout
        for amb in self.ambs:
            p = self.placements[int(amb.service[3:])]
            want = [f"{self.sides[p.host].host.ip}:{p.port + 10000}"]
            s = self.sides[amb.host]
            if not s.poller.submit(self.await_amb, s, amb, want, deadline).result():
                raise RuntimeError(f"ambassador {amb.name} on {s.host.name} never had backends {want}")

    # polling (on a host's poller thread) -------------------------------------------------
    def dns_answer(self, s: HostSide, name: str) -> list[str] | None:
        q = DNSRecord.question(f"{name}.service.consul", "A")
        try:
            s.dns_sock.sendto(q.pack(), (s.dns_server, 53))
            while True:
                data = s.dns_sock.recv(4096)
                r = DNSRecord.parse(data)
                if r.header.id == q.header.id:
                    return sorted(str(rr.rdata) for rr in r.rr if rr.rtype == QTYPE.A)
        except (OSError, socket.timeout):
            return None

    def amb_backends(self, s: HostSide, amb: Amb) -> list[str] | None:
        for attempt in (1, 2):          # a kept-alive connection the server closed: once more, anew
            conn = s.conns.get(amb.name)
            if conn is None:
                conn = s.conns[amb.name] = http.client.HTTPConnection(amb.ip, METRICS_PORT, timeout=2)
            try:
                conn.request("GET", "/stats")
                snap = json.loads(conn.getresponse().read())
                return sorted(snap["listeners"][str(PORT)]["backends"])
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                conn.close()
                s.conns.pop(amb.name, None)
        return None

    def await_amb(self, s: HostSide, amb: Amb, want: list[str], deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self.amb_backends(s, amb) == want:
                return True
            time.sleep(0.05)
        return False

    def watch_change(self, s: HostSide, service: str, dns_want: list[str], ambs: list[Amb],
                     amb_want: list[str], start: threading.Event, deadline: float) -> dict:
        """Poll until this host's DNS and ambassadors show the change: the monotonic
        time each first did (None: not by the deadline)."""
        start.wait(5)
        done: dict[str, float | None] = {"dns": None, **{a.name: None for a in ambs}}
        while time.monotonic() < deadline and None in done.values():
            if done["dns"] is None and self.dns_answer(s, service) == dns_want:
                done["dns"] = time.monotonic()
            for amb in ambs:
                if done[amb.name] is None and self.amb_backends(s, amb) == amb_want:
                    done[amb.name] = time.monotonic()
            time.sleep(self.a.interval)
        return done

    def consul_sees(self, s: HostSide, service: str, plain_want: list[str], native_want: list[str],
                    ready: threading.Event, deadline: float) -> dict:
        """--profile: what the daemon's watch gets from the same agent. One read for the
        index, then blocking queries on /v1/health/service/SERVICE?passing (as the daemon's)
        until the plaintext instances are exactly the new one (what DNS answers) and the
        Connect-native ones too (what ambassadors dial): the monotonic time of each."""
        url = f"http://{s.host.ip}:8500/v1/health/service/{service}?passing=1"
        done: dict[str, float | None] = {"plain": None, "native": None, "returns": 0}
        index = "0"
        try:
            _, hdrs, _ = http_get(url, 5.0, None, "GET", None, self.token)
            index = hdrs.get("X-Consul-Index", "0")
        finally:
            ready.set()
        while time.monotonic() < deadline and (done["plain"] is None or done["native"] is None):
            code, hdrs, data = http_get(f"{url}&index={index}&wait=5s", 6.0, None, "GET", None, self.token)
            now = time.monotonic()
            done["returns"] += 1
            index = hdrs.get("X-Consul-Index", index)
            if code != 200:
                break
            got = {True: [], False: []}
            for e in data:
                sv = e["Service"]
                got[bool((sv.get("Connect") or {}).get("Native"))].append(f"{sv['Address']}:{sv['Port']}")
            if done["plain"] is None and sorted(got[False]) == plain_want:
                done["plain"] = now
            if done["native"] is None and sorted(got[True]) == native_want:
                done["native"] = now
        return done

    # the changes ------------------------------------------------------------------------
    def move(self, m: int) -> dict:
        a, n = self.a, len(self.sides)
        p = self.placements[m % len(self.placements)]
        old_host, old_ids = p.host, p.ids
        p.host = self.rng.choice([i for i in range(n) if i != old_host])
        p.port = 20000 + (m + len(self.placements)) % 9000
        ip = self.sides[p.host].host.ip
        affected = [x for x in self.ambs if x.service == p.service]
        start = threading.Event()
        deadline = time.monotonic() + a.timeout
        futs = [s.poller.submit(self.watch_change, s, p.service, [ip], [x for x in affected if x.host == s.index],
                                [f"{ip}:{p.port + 10000}"], start, deadline) for s in self.sides]
        profile = []
        if a.profile:
            readies = [threading.Event() for _ in self.sides]
            profile = [s.watcher.submit(self.consul_sees, s, p.service, [f"{ip}:{p.port}"],
                                        [f"{ip}:{p.port + 10000}"], ev, deadline)
                       for s, ev in zip(self.sides, readies)]
            for ev in readies:
                ev.wait(5)
        time.sleep(0.005)                # the pollers are asking the old answer by now
        start.set()
        t0 = time.monotonic()
        stamps: list[float] = []          # each PUT's return: Consul's agent syncs to the servers first
        self.register(p, str(m + 1), stamps)
        t_reg = time.monotonic()
        self.deregister(old_host, old_ids, stamps)
        t_dereg = time.monotonic()
        # The commit each target waits for: the old plaintext instance's deregistration (PUT 3)
        # for DNS, the old Connect-native one's (PUT 4) for ambassadors.
        t_dns_commit, t_amb_commit = stamps[2], stamps[3]
        dns: list[float | None] = []
        amb: list[float | None] = []
        amb_hosts: list[int] = []
        for i, f in enumerate(futs):
            got = f.result()
            dns.append(None if got["dns"] is None else got["dns"] - t0)
            amb += [None if v is None else v - t0 for k, v in got.items() if k != "dns"]
            amb_hosts += [i for k in got if k != "dns"]
        every = dns + amb
        prof = {}
        if profile:
            seen = [f.result() for f in profile]
            rel = lambda v: None if v is None else v - t0                     # noqa: E731
            prof = {"consul_plain_s": [rel(x["plain"]) for x in seen],
                    "consul_native_s": [rel(x["native"]) for x in seen],
                    "consul_returns": [x["returns"] for x in seen]}
            for i, x in enumerate(seen):
                self.own_requests[i] += 1 + x["returns"]     # health queries: net of them too
                self.own_health[i] += 1 + x["returns"]
        after_commit = [d + t0 - t_dns_commit for d in dns if d is not None] + \
                       [v + t0 - t_amb_commit for v in amb if v is not None]
        return {**prof, "amb_hosts": amb_hosts, "puts_s": t_dereg - t0,
                "dns_commit_s": t_dns_commit - t0, "amb_commit_s": t_amb_commit - t0,
                "after_commit_s": None if None in every else max(after_commit),
                "service": p.service, "from": old_host, "to": p.host, "ambassadors": len(affected),
                "dns_s": dns, "amb_s": amb, "register_s": t_reg - t0, "deregister_s": t_dereg - t_reg,
                "all_s": None if None in every else max(every),
                "after_puts_s": None if None in every else max(every) - (t_dereg - t0)}

    def close(self) -> None:
        for s in self.sides:
            s.close()


def summary(xs: list[float]) -> dict:
    return {"n": len(xs), "p50_ms": ms(pct(xs, 50)), "p99_ms": ms(pct(xs, 99)), "max_ms": ms(max(xs) if xs else None)}


def cpu_s(pid: int | None) -> float:
    """A process's CPU time so far (user + system, every thread), seconds; 0 if gone."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_change(hosts: list, before: list, after: list, idle_before: list, idle_after: list,
                   idle_s: float, run_s: float, changes: int) -> dict:
    """CPU milliseconds per change, net of the idle rate: each host's portlinkd and Consul
    agent (all on the same 2 cores as everything else, so each one's cost is everyone's wait)."""
    rate = run_s / idle_s if idle_s > 0 else 0.0
    out = {}
    for k, role in enumerate(("portlinkd", "consul")):
        per = [((after[i][k] - before[i][k]) - (idle_after[i][k] - idle_before[i][k]) * rate) * 1000 / changes
               for i in range(len(hosts))]
        out[role] = {"median_ms": round(statistics.median(per), 2), "max_ms": round(max(per), 2),
                     "sum_over_hosts_ms": round(sum(per), 1)}
    return out


def profile_summary(results: list[dict]) -> dict:
    """--profile: each figure split into Consul's delivery to the host's agent (a
    blocking query like the daemon's returning the new instances) and portlink's
    share after it (the daemon's watch, snapshot and resolver; an ambassador's own
    watch and apply), plus the bench's poll interval."""
    ok = [r for r in results if None not in r["consul_plain_s"] + r["consul_native_s"]]
    dns_after = [d - c for r in ok for d, c in zip(r["dns_s"], r["consul_plain_s"]) if d is not None]
    amb_after = [v - r["consul_native_s"][h] for r in ok for v, h in zip(r["amb_s"], r["amb_hosts"])
                 if v is not None]
    every_plain = [max(r["consul_plain_s"]) for r in ok]
    every_native = [max(r["consul_native_s"] + r["consul_plain_s"]) for r in ok]
    return {
        "changes_profiled": len(ok),
        "consul_every_agent_plain_from_t0": summary(every_plain),
        "consul_every_agent_both_from_t0": summary(every_native),
        "consul_every_agent_after_commit": summary([max([c - r["dns_commit_s"] for c in r["consul_plain_s"]] +
                                                        [c - r["amb_commit_s"] for c in r["consul_native_s"]])
                                                    for r in ok]),
        "one_agent_plain_after_commit": summary([c - r["dns_commit_s"] for r in ok for c in r["consul_plain_s"]]),
        "host_dns_after_its_agent": summary(dns_after),
        "ambassador_after_its_agent": summary(amb_after),
        "blocking_returns_per_change_per_agent": round(
            statistics.mean(x for r in ok for x in r["consul_returns"]), 2) if ok else None,
    }


def load_per_change(before: dict, after: dict, idle_before: dict, idle_after: dict,
                    idle_s: float, run_s: float, own: int, changes: int, own_health: int = 0) -> dict:
    """Requests one agent served per change, net of the idle rate and of this bench's own.
    An agent counts a request when it ends, so each window holds the metrics read
    that opened it (the idle one: 1; `own`: this bench's PUTs plus that read)."""
    def delta(x: dict, y: dict, pred) -> int:
        return sum(v - x.get(k, 0) for k, v in y.items() if pred(k))
    health = lambda k: k.startswith("GET v1_health_")                     # noqa: E731
    allreq = lambda k: True                                                # noqa: E731
    rate = run_s / idle_s if idle_s > 0 else 0.0
    run_all, run_health = delta(before, after, allreq), delta(before, after, health)
    idle_all, idle_health = delta(idle_before, idle_after, allreq) - 1, delta(idle_before, idle_after, health)
    net_all = run_all - idle_all * rate - own
    net_health = run_health - idle_health * rate - own_health
    paths = {}
    for k in set(after) | set(idle_after):
        net = delta(before, after, lambda x: x == k) - delta(idle_before, idle_after, lambda x: x == k) * rate
        if abs(net) / changes >= 0.05:
            paths[k] = round(net / changes, 2)
    return {"requests_per_change": round(net_all / changes, 2), "health_queries_per_change": round(net_health / changes, 2),
            "raw_requests": run_all, "idle_requests_same_span": round(idle_all * rate, 1), "bench_own_requests": own,
            "by_path_per_change_incl_bench": dict(sorted(paths.items(), key=lambda i: -i[1]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=10, help="lab hosts (3 are Consul servers; default 10)")
    ap.add_argument("--services", type=int, default=100, help="services moving (default 100)")
    ap.add_argument("--moves", type=int, default=200, help="changes, one at a time (default 200)")
    ap.add_argument("--amb-services", type=int, default=10, help="services that get ambassadors (default 10)")
    ap.add_argument("--amb-per-service", type=int, default=2, help="ambassadors per such service (default 2)")
    ap.add_argument("--interval", type=float, default=0.002, help="poll interval per host, s (default 0.002)")
    ap.add_argument("--timeout", type=float, default=5.0, help="a change not seen by then is a miss (default 5)")
    ap.add_argument("--gap", type=float, default=0.1, help="pause between changes, s (default 0.1)")
    ap.add_argument("--settle-timeout", type=float, default=60.0, help="bound on each set-up wait (default 60)")
    ap.add_argument("--max-seconds", type=float, default=600.0, help="bound on the change phase (default 600)")
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--profile", action="store_true",
                    help="also time, per host, a blocking query like the daemon's on the same agent: "
                         "how much of each figure is Consul's delivery and how much portlink's")
    ap.add_argument("--name", default=f"hs{os.getpid() % 100000}", help="the lab's name")
    a = ap.parse_args()
    if not 4 <= a.hosts <= labmod.MAX_HOSTS:
        sys.exit(f"--hosts must be 4 to {labmod.MAX_HOSTS}")
    if not 1 <= a.services <= 1000 or not 1 <= a.moves <= 10000:
        sys.exit("--services must be 1 to 1000 and --moves 1 to 10000")
    if not 0 <= a.amb_services <= a.services or not 0 <= a.amb_per_service < a.hosts:
        sys.exit("--amb-services must be at most --services and --amb-per-service below --hosts")
    if os.geteuid() != 0:
        sys.exit("bench/scale_hosts.py must run as root (it starts a lab)")
    load_before = os.getloadavg()
    out: dict = {"bench": "scale_hosts", "hosts": a.hosts, "consul_servers": min(a.hosts, labmod.SERVERS),
                 "services": a.services, "errors": []}
    t_up = time.monotonic()
    lab = labmod.up(a.hosts, a.name, progress=progress)
    out["lab_up_s"] = round(time.monotonic() - t_up, 1)
    b = Bench(a, lab)
    try:
        b.setup()
        n = len(b.sides)
        out["ambassadors"] = len(b.ambs)
        out["setup_dns_settle_s"] = round(b.setup_s, 1)
        out["setup_unanswered"] = {"pairs": len(b.unseen), "first": b.unseen[:12]}
        # Idle baseline first, as long as the changes are expected to take.
        idle_s = min(30.0, max(5.0, a.moves * (a.gap + 0.05)))
        progress(f"idle baseline {idle_s:.0f} s")
        cpus = lambda: [(cpu_s(s.host.daemon_pid), cpu_s(s.host.consul_pid)) for s in b.sides]   # noqa: E731
        idle_before = [b.http_counts(i) for i in range(n)]
        cpu_idle_before = cpus()
        t = time.monotonic()
        time.sleep(idle_s)
        idle_after = [b.http_counts(i) for i in range(n)]
        cpu_idle_after = cpus()
        idle_s = time.monotonic() - t
        before = [b.http_counts(i) for i in range(n)]
        cpu_before = cpus()
        own1, own_h1 = list(b.own_requests), list(b.own_health)
        progress(f"{a.moves} changes")
        results = []
        t_run = time.monotonic()
        stop_at = t_run + a.max_seconds
        for m in range(a.moves):
            if time.monotonic() > stop_at:
                out["stopped_early"] = True
                break
            results.append(b.move(m))
            if (m + 1) % 25 == 0:
                progress(f"{m + 1} changes")
            time.sleep(a.gap)
        run_s = time.monotonic() - t_run
        own_run = [b.own_requests[i] - own1[i] for i in range(n)]
        own_health = [b.own_health[i] - own_h1[i] for i in range(n)]
        cpu_after = cpus()
        after = [b.http_counts(i) for i in range(n)]
        changes = len(results)
        dns_all = [max(r["dns_s"]) for r in results if None not in r["dns_s"]]
        dns_each = [x for r in results for x in r["dns_s"] if x is not None]
        amb_each = [x for r in results for x in r["amb_s"] if x is not None]
        amb_changes = [r for r in results if r["ambassadors"]]
        amb_all = [max(r["dns_s"] + r["amb_s"]) for r in amb_changes if None not in r["dns_s"] + r["amb_s"]]
        every = [r["all_s"] for r in results if r["all_s"] is not None]
        loads = {b.sides[i].host.name: {"role": b.sides[i].host.consul_role,
                                         **load_per_change(before[i], after[i], idle_before[i], idle_after[i],
                                                           idle_s, run_s, own_run[i], changes, own_health[i])}
                 for i in range(n)}
        out.update({
            "changes": changes, "moves_per_service": round(changes / a.services, 2),
            "change_to_every_host_and_ambassador": {**summary(every), "missed": changes - len(every)},
            "change_to_every_host_dns": {**summary(dns_all), "missed": changes - len(dns_all)},
            "missed_changes": [f"{r['service']} -> host{r['to'] + 1}: {sum(x is None for x in r['dns_s'])} DNS, "
                               f"{sum(x is None for x in r['amb_s'])} ambassadors" for r in results
                               if r["all_s"] is None][:20],
            "change_to_one_host_dns": summary(dns_each),
            "changes_with_ambassadors": {**summary(amb_all), "missed": len(amb_changes) - len(amb_all)},
            "change_to_one_ambassador": summary(amb_each),
            "after_last_put_returned": summary([r["after_puts_s"] for r in results if r["after_puts_s"] is not None]),
            "after_commit": summary([r["after_commit_s"] for r in results if r["after_commit_s"] is not None]),
            "register_put_median_ms": ms(statistics.median(r["register_s"] for r in results)) if results else None,
            "deregister_put_median_ms": ms(statistics.median(r["deregister_s"] for r in results)) if results else None,
            "agent_load": loads,
            "agent_requests_per_change_max": max(v["requests_per_change"] for v in loads.values()),
            "cpu_per_change": cpu_per_change(b.sides, cpu_before, cpu_after, cpu_idle_before, cpu_idle_after,
                                             idle_s, run_s, changes) if changes else None,
            **({"profile": profile_summary(results)} if a.profile else {}),
            "target_p99_ms": 100,
            "target_met": bool(every) and len(every) == changes and pct(every, 99) < 0.1,
        })
    except Exception as e:
        out["errors"].append(f"{type(e).__name__}: {e}")
        raise
    finally:
        try:
            b.close()
        finally:
            # The lab goes whatever closing the bench's own sockets did, an interrupt included.
            errs = labmod.down(a.name, progress=progress)
            out["errors"] += [f"teardown: {e}" for e in errs]
            out["loadavg_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
