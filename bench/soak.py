#!/usr/bin/env python3
"""bench/soak: a bounded soak of DNS queries, proxied connections and container
churn against one simulated host, watching the daemon's and the ambassador's
memory and open file descriptors for growth.

Everything is in sandbox namespaces made here:

  host        SimHost plt-soak-*: portlinkd with `--dns 127.0.0.1:5300`, an
              upstream resolver this file starts in the host's namespace
              (`--upstream`: answers any A with an address in 192.0.2.0/24,
              TTL 1; never a real upstream)
  containers  db, client (--link db:store), web (busybox httpd on :80)
  dns load    from client's namespace at its gateway, closed loop: db, store
              (link alias), web, nosuch-K (NXDOMAIN), hK.soak.test (forwarded,
              5000 names: more than the forwarder's cache), db AAAA (NODATA);
              every 20th query over TCP; every answer is checked
  proxied     the ambassador forwarder (`python -m portlink.ambassador --listen
              17000 --backend 17000=<web>:80 --metrics 127.0.0.1:9102`) in the
              host's namespace; client threads there open a connection, GET
              /hostname, check web's hostname came back, close
  churn       run -d (publishing a port, linked to db) then rm -f, in a loop

RSS (VmRSS) and open fds (/proc/PID/fd) of portlinkd and the ambassador are
sampled every --sample-seconds. The first --warmup-seconds (default a fifth
of the run, at least 5 s) fill thread pools, caches and netlink sockets; growth
is measured from the first sample after it. When the load stops, fds are given
up to 15 s to come back.

Prints one JSON line: per process start / after-warm-up / end / max RSS and
fds, fds after the load stopped, queries and connections done by kind, error
counts, and a `growth` verdict: "none" when RSS grew less than --rss-slack-mib
after warm-up and fds came back to within --fd-slack of the warm-up figure,
else what grew. Exit 0 either way (a benchmark, not a test).

Run as root:  .venv/bin/python -P bench/soak.py [--minutes 2] [--max-queries N] [--max-conns N]"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype

from portlink.netns import kernel_ns
from portlink.runtime.client import Client, CliError
from portlink.lab.sandbox import SimHost

UPSTREAM_PORT = 5300
AMB_PORT = 17000
METRICS = "127.0.0.1:9102"
FORWARDED_NAMES = 5000


def progress(msg: str) -> None:
    if sys.stderr.isatty():
        print(msg, file=sys.stderr, flush=True)


# --upstream: the test resolver the daemon forwards to -----------------------------------
def forwarded_ip(name: str) -> str:
    k = int(re.match(r"h(\d+)\.", name).group(1)) if re.match(r"h\d+\.", name) else 0
    return f"192.0.2.{k % 250 + 1}"


def serve_upstream(port: int, max_seconds: float) -> None:
    """A tiny UDP resolver on 127.0.0.1 of the namespace it runs in: any A gets
    forwarded_ip(name), TTL 1; anything else NXDOMAIN. Stops by itself."""
    from dnslib import QTYPE, RR, A, DNSRecord, RCODE
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    s.settimeout(1)
    end = time.monotonic() + max_seconds
    while time.monotonic() < end:
        try:
            data, peer = s.recvfrom(4096)
            q = DNSRecord.parse(data)
        except socket.timeout:
            continue
        except Exception:
            continue
        r = q.reply()
        name = str(q.q.qname).rstrip(".")
        if q.q.qtype == QTYPE.A:
            r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A(forwarded_ip(name)), ttl=1))
        else:
            r.header.rcode = RCODE.NXDOMAIN
        s.sendto(r.pack(), peer)


# sampling ---------------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Series:
    pid: int
    samples: list[tuple[float, int, int]] = field(default_factory=list)   # (t, rss KiB, fds)

    def sample(self, t: float) -> None:
        self.samples.append((t, rss_kib(self.pid), fd_count(self.pid)))

    def summary(self, warm_t: float, settled_fds: int) -> dict:
        s = self.samples
        warm = next((x for x in s if x[0] >= warm_t), s[-1])
        post = [x for x in s if x[0] >= warm_t]
        slope = _slope([(t / 60, r) for t, r, _ in post]) if len(post) >= 3 else None
        return {"pid": self.pid,
                "rss_kib": {"start": s[0][1], "after_warmup": warm[1], "end": s[-1][1], "max": max(x[1] for x in s),
                            "trend_kib_per_min": round(slope, 1) if slope is not None else None},
                "fds": {"start": s[0][2], "after_warmup": warm[2], "end_of_load": s[-1][2],
                        "max": max(x[2] for x in s), "after_load": settled_fds},
                # [seconds, RSS KiB, fds], at most 40 of them: the shape of any growth
                "series": [[round(t), r, f] for t, r, f in s[::max(1, -(-len(s) // 40))]]}


def _slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    den = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / den if den else 0.0


# load generators --------------------------------------------------------------------
@dataclass
class Counts:
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def ok(self, kind: str) -> None:
        with self.lock:
            self.done[kind] = self.done.get(kind, 0) + 1

    def fail(self, kind: str, what: str) -> None:
        with self.lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1
            if len(self.examples) < 10:
                self.examples.append(what)

    def total(self) -> int:
        with self.lock:
            return sum(self.done.values()) + sum(self.errors.values())


def _tcp_query(server: str, wire: bytes, timeout: float) -> bytes:
    with socket.create_connection((server, 53), timeout=timeout) as s:
        s.sendall(struct.pack("!H", len(wire)) + wire)
        buf = b""
        while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError("closed before a whole answer")
            buf += chunk
        return buf[2:2 + struct.unpack("!H", buf[:2])[0]]


def dns_loop(netns: str, server: str, expect: dict[str, str], stop: threading.Event, cap: int, c: Counts) -> None:
    """Closed-loop queries from inside a container's namespace; each answer checked."""
    rnd = random.Random(1)
    with kernel_ns.entered(netns):   # sockets made in here belong to the container's namespace
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.settimeout(5)   # generous: a loaded 2-CPU machine, not a latency target
        i = 0
        while not stop.is_set() and i < cap:
            i += 1
            pick = i % 6
            if pick == 0:
                name, kind, qtype = "db", "local", "A"
            elif pick == 1:
                name, kind, qtype = "store", "link_alias", "A"
            elif pick == 2:
                name, kind, qtype = "web", "local", "A"
            elif pick == 3:
                name, kind, qtype = f"nosuch-{rnd.randrange(100)}", "nxdomain", "A"
            elif pick == 4:
                name, kind, qtype = f"h{rnd.randrange(FORWARDED_NAMES)}.soak.test", "forwarded", "A"
            else:
                name, kind, qtype = "db", "nodata", "AAAA"
            query = dns.message.make_query(name, qtype).to_wire()
            over_tcp = i % 20 == 0
            try:
                if over_tcp:
                    wire = _tcp_query(server, query, 5)
                else:
                    udp.sendto(query, (server, 53))
                    while True:   # skip a late answer to an earlier query that timed out
                        wire, _ = udp.recvfrom(65535)
                        if wire[:2] == query[:2]:
                            break
                r = dns.message.from_wire(wire)
            except (OSError, dns.exception.DNSException) as e:
                c.fail("timeout" if isinstance(e, (socket.timeout, TimeoutError)) else "transport",
                       f"{name}: {type(e).__name__} {e}")
                continue
            got = sorted(a.address for rr in r.answer for a in rr if rr.rdtype == dns.rdatatype.A)
            if kind == "nxdomain":
                good = r.rcode() == dns.rcode.NXDOMAIN
            elif kind == "nodata":
                good = r.rcode() == dns.rcode.NOERROR and not r.answer
            elif kind == "forwarded":
                good = r.rcode() == dns.rcode.NOERROR and got == [forwarded_ip(name)]
            else:
                good = r.rcode() == dns.rcode.NOERROR and got == [expect[name]]
            if good:
                c.ok(f"{kind}_{'tcp' if over_tcp else 'udp'}")
            else:
                c.fail("wrong_answer", f"{name} {qtype}: {dns.rcode.to_text(r.rcode())} {got}")
        udp.close()


def conn_loop(ns_path: str, want: str, stop: threading.Event, cap: list[int], c: Counts) -> None:
    """Connections through the ambassador, from the host's namespace."""
    with kernel_ns.entered(ns_path):
        while not stop.is_set():
            with c.lock:
                if cap[0] <= 0:
                    return
                cap[0] -= 1
            try:
                with socket.create_connection(("127.0.0.1", AMB_PORT), timeout=10) as s:
                    s.sendall(b"GET /hostname HTTP/1.0\r\n\r\n")
                    buf = b""
                    while chunk := s.recv(4096):
                        buf += chunk
                if buf.startswith(b"HTTP/1.") and buf.rstrip().endswith(want.encode()):
                    c.ok("proxied")
                else:
                    c.fail("wrong_answer", f"proxied: {buf[:80]!r}")
            except OSError as e:
                c.fail("timeout" if isinstance(e, (socket.timeout, TimeoutError)) else "transport",
                       f"proxied: {type(e).__name__} {e}")


def churn_loop(sock: str, stop: threading.Event, c: Counts) -> None:
    """run -d then rm -f, one at a time: the daemon's lifecycle paths under the soak."""
    cl = Client(sock, timeout=120)
    k = 0
    while not stop.is_set():
        k += 1
        try:
            info = cl.post("/containers", {"image": "busybox", "name": f"churn-{k}", "cmd": ["sleep", "600"],
                                           "publish": ["80"], "links": ["db:db"]})
            cl.delete(f"/containers/{info['id']}", force="1")
            c.ok("cycles")
        except (CliError, OSError) as e:
            c.fail("churn", f"churn-{k}: {e}")
        stop.wait(0.2)


# main ---------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=2.0, help="length of the load (default 2)")
    ap.add_argument("--max-queries", type=int, default=5_000_000, help="stop DNS after this many queries")
    ap.add_argument("--max-conns", type=int, default=1_000_000, help="stop connections after this many")
    ap.add_argument("--conn-threads", type=int, default=2, help="client threads through the ambassador (2)")
    ap.add_argument("--no-churn", action="store_true", help="no container run/rm loop")
    ap.add_argument("--sample-seconds", type=float, default=None, help="sampling period (default: run/30, 1-5 s)")
    ap.add_argument("--warmup-seconds", type=float, default=None, help="default: a fifth of the run, at least 5 s")
    ap.add_argument("--rss-slack-mib", type=float, default=30.0, help="RSS growth after warm-up called none (30)")
    ap.add_argument("--fd-slack", type=int, default=8, help="fds above the warm-up figure called none (8)")
    ap.add_argument("--upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--upstream-seconds", type=float, default=600, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.upstream:
        return serve_upstream(a.upstream, a.upstream_seconds)
    if not 0.05 <= a.minutes <= 24 * 60:
        sys.exit("--minutes must be 0.05 to 1440")
    if os.geteuid() != 0:
        sys.exit("bench/soak.py must run as root (it starts a sandbox host)")
    seconds = a.minutes * 60
    sample_every = a.sample_seconds or min(5.0, max(1.0, seconds / 30))
    warmup = a.warmup_seconds if a.warmup_seconds is not None else max(5.0, seconds / 5)
    out: dict = {"bench": "soak", "minutes": a.minutes, "warmup_s": warmup, "sample_s": sample_every}
    procs: list[subprocess.Popen] = []
    h = SimHost.start("soak", extra_args=["--dns", f"127.0.0.1:{UPSTREAM_PORT}"])
    try:
        procs.append(h.ns.popen(sys.executable, "-P", __file__, "--upstream", str(UPSTREAM_PORT),
                                "--upstream-seconds", str(seconds + 300), stdin=subprocess.DEVNULL))
        cl = Client(h.socket, timeout=120)
        db = cl.post("/containers", {"image": "busybox", "name": "db", "cmd": ["sleep", "86400"]})
        client = cl.post("/containers", {"image": "busybox", "name": "client", "links": ["db:store"],
                                         "cmd": ["sleep", "86400"]})
        web = cl.post("/containers", {"image": "busybox", "name": "web", "cmd": ["httpd", "-f", "-p", "80", "-h", "/etc"]})
        amb = h.ns.popen(sys.executable, "-P", "-m", "portlink.ambassador", "--listen", str(AMB_PORT),
                         "--backend", f"{AMB_PORT}={web['network']['ip']}:80", "--metrics", METRICS,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(amb)
        _wait_listening(h, AMB_PORT)
        _wait_upstream(h.ns.path)
        expect = {"db": db["network"]["ip"], "store": db["network"]["ip"], "web": web["network"]["ip"]}
        series = {"portlinkd": Series(h.proc.pid), "ambassador": Series(amb.pid)}

        stop = threading.Event()
        qc, pc, cc = Counts(), Counts(), Counts()
        conn_cap = [a.max_conns]
        threads = [threading.Thread(target=dns_loop, args=(client["network"]["netns"], client["dns"]["server"],
                                                           expect, stop, a.max_queries, qc), daemon=True)]
        threads += [threading.Thread(target=conn_loop, args=(h.ns.path, web["config"]["hostname"], stop, conn_cap, pc),
                                     daemon=True) for _ in range(a.conn_threads)]
        if not a.no_churn:
            threads.append(threading.Thread(target=churn_loop, args=(h.socket, stop, cc), daemon=True))
        t0 = time.monotonic()
        for s in series.values():
            s.sample(0.0)
        for t in threads:
            t.start()
        next_sample = sample_every
        while True:
            now = time.monotonic() - t0
            if now >= seconds or not any(t.is_alive() for t in threads):
                break
            time.sleep(max(0.0, min(next_sample, seconds) - now))
            now = time.monotonic() - t0
            if now >= next_sample:
                for s in series.values():
                    s.sample(now)
                next_sample += sample_every
                progress(f"{now:.0f}s queries {qc.total()} conns {pc.total()} churn {cc.total()} "
                         f"rss {series['portlinkd'].samples[-1][1]} KiB")
        stop.set()
        for t in threads:
            t.join(30)
        load_s = time.monotonic() - t0
        for s in series.values():
            s.sample(load_s)
        # After the load: fds should come back (closed connections, finished handlers).
        settled = {}
        for name, s in series.items():
            warm_fds = next((x for x in s.samples if x[0] >= warmup), s.samples[-1])[2]
            deadline = time.monotonic() + 15
            while fd_count(s.pid) > warm_fds + a.fd_slack and time.monotonic() < deadline:
                time.sleep(0.5)
            settled[name] = fd_count(s.pid)
        amb_stats = _ambassador_stats(h.ns.path)

        procs_out = {n: s.summary(warmup, settled[n]) for n, s in series.items()}
        growth = {}
        for n, p in procs_out.items():
            rss_growth = p["rss_kib"]["end"] - p["rss_kib"]["after_warmup"]
            fd_growth = p["fds"]["after_load"] - p["fds"]["after_warmup"]
            growth[n] = {"rss_kib_after_warmup": rss_growth, "fds_after_load": fd_growth}
        grew = [f"{n} rss +{g['rss_kib_after_warmup']} KiB" for n, g in growth.items()
                if g["rss_kib_after_warmup"] > a.rss_slack_mib * 1024]
        grew += [f"{n} fds +{g['fds_after_load']}" for n, g in growth.items() if g["fds_after_load"] > a.fd_slack]
        out.update({
            "duration_s": round(load_s, 1), "samples": len(series["portlinkd"].samples),
            "queries": {"total": qc.total(), "by_kind": qc.done, "errors": qc.errors,
                        "per_s": round(qc.total() / load_s)},
            "connections": {"total": pc.total(), "ok": pc.done.get("proxied", 0), "errors": pc.errors,
                            "per_s": round(pc.total() / load_s)},
            "churn": {"cycles": cc.done.get("cycles", 0), "errors": cc.errors},
            "error_examples": qc.examples + pc.examples + cc.examples,
            "processes": procs_out, "growth": {"verdict": "none" if not grew else "; ".join(grew), **growth},
            "ambassador_stats": amb_stats,
        })
    finally:
        for p in procs:   # our own children, by pid
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        errs = h.destroy()
        out["teardown_errors"] = errs
        out["loadavg"] = round(os.getloadavg()[0], 2)
        print(json.dumps(out), flush=True)


def _wait_listening(h: SimHost, port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if f":{port} " in h.ns.run("ss", "-ltn").stdout:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the ambassador did not listen on {port}")


def _wait_upstream(ns_path: str) -> None:
    """Until the test resolver answers: a forwarded query before it is up is a SERVFAIL."""
    q = dns.message.make_query("h1.soak.test", "A").to_wire()
    with kernel_ns.entered(ns_path):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.2)
        try:
            for _ in range(150):
                try:
                    s.sendto(q, ("127.0.0.1", UPSTREAM_PORT))
                    s.recvfrom(4096)
                    return
                except OSError:
                    time.sleep(0.1)
        finally:
            s.close()
    raise RuntimeError(f"the test resolver did not answer on 127.0.0.1:{UPSTREAM_PORT}")


def _ambassador_stats(ns_path: str) -> dict:
    with kernel_ns.entered(ns_path):
        try:
            with urllib.request.urlopen(f"http://{METRICS}/stats", timeout=5) as r:
                return json.loads(r.read())
        except OSError as e:
            return {"error": str(e)}


if __name__ == "__main__":
    main()
