#!/usr/bin/env python3
"""bench/proxy: portlink's ambassador as a TCP forwarder against socat and HAProxy,
same namespace, same run.

Topology (one namespace plt-proxy-*, loopback only; nothing in the root namespace):
  iperf3 -s -p 5201              throughput target
  echo server :7000              a small uvloop echo server (this file, --echo-server)
  ambassador  :15201 -> 5201, :16201 -> 7000   python -P -m portlink.ambassador (one process)
  socat       :15202 -> 5201, :16202 -> 7000   TCP-LISTEN:...,fork,reuseaddr (one process each)
  haproxy     :15203 -> 5201, :16203 -> 7000   mode tcp, nbthread 1 (like the ambassador: one thread)
  haproxy_mt  :15204 -> 5201, :16204 -> 7000   the same config with HAProxy's default threads
  haproxy_tuned :15205 -> 5201, :16205 -> 7000 nbthread 1, tune.bufsize 256 KiB, option splice-auto
  ambassador_copy :15206 -> 5201, :16206 -> 7000  the ambassador with --no-splice (bytes through Python)

Throughput: `iperf3 -c 127.0.0.1 -p PORT -t SECONDS -J` through each path (direct = 5201),
the paths rotated every round, --rounds rounds; the figure is the median Gbit/s
(receiver side). The forwarders' CPU use during their runs comes from /proc
(utime + stime deltas): percent of one CPU and CPU seconds per Gbit/s forwarded.

Latency: a client process (this file, --rr-client) in the namespace does, through
each path to the echo server, --rr sequential 64-byte request/response round
trips over one connection, and --cpr connect-per-request round trips (connect,
64 bytes each way, close); p50/p99 in microseconds over every round's samples.
`added` = the path's figure minus direct's.

Prints one JSON line: direct, ambassador, socat, haproxy, haproxy_mt, haproxy_tuned,
the ratios ambassador/direct, ambassador/haproxy (nbthread 1) and ambassador/haproxy_tuned,
and the targets (reported, not asserted).
Run as root:  .venv/bin/python -P bench/proxy.py [--seconds 5] [--rounds 3] [--rr 5000] [--cpr 1000]
              [--paths direct,ambassador,haproxy,haproxy_tuned]"""

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
import time
from pathlib import Path

PY = sys.executable
HERE = Path(__file__).resolve()
IPERF_PORT, ECHO_PORT = 5201, 7000
PATHS = {              # name -> (throughput port, latency port)
    "direct": (IPERF_PORT, ECHO_PORT),
    "ambassador": (15201, 16201),
    "socat": (15202, 16202),
    "haproxy": (15203, 16203),
    "haproxy_mt": (15204, 16204),
    "haproxy_tuned": (15205, 16205),
    "ambassador_copy": (15206, 16206),
    "ambassador_base": (15207, 16207),     # --baseline: another checkout's ambassador
}
HAPROXIES = {"haproxy": {"nbthread": 1}, "haproxy_mt": {"nbthread": None},
             "haproxy_tuned": {"nbthread": 1, "tuned": True}}
TUNED_BUFSIZE = 262144
HAPROXY = "/usr/sbin/haproxy"
MSG = 64
RR_WARMUP, CPR_WARMUP = 200, 50      # round trips a latency client makes before it records


def log(msg: str) -> None:
    print(f"bench/proxy: {msg}", file=sys.stderr, flush=True)


# -- helpers that run inside the namespace (re-invoked as this file) ------------------

def echo_server(port: int, host: str = "127.0.0.1") -> int:
    """Echo every byte back, one process, uvloop if present."""
    import asyncio

    class Echo(asyncio.Protocol):
        def connection_made(self, t):
            self.t = t

        def data_received(self, data):
            self.t.write(data)

        def eof_received(self):
            return False          # close after EOF

    async def serve():
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(Echo, host, port, reuse_address=True, backlog=1024)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        srv.close()

    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as r:
        r.run(serve())
    return 0


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def rr_client(port: int, count: int, mode: str, host: str = "127.0.0.1") -> int:
    """Print {"us": [...], "errors": n} for `count` round trips (after a warm-up)."""
    payload = os.urandom(MSG)
    out: list[float] = []
    errors = 0
    clock = time.perf_counter_ns
    if mode == "rr":
        s = socket.create_connection((host, port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for i in range(count + RR_WARMUP):
                t = clock()
                s.sendall(payload)
                if _recv_exact(s, MSG) != payload:
                    raise RuntimeError("echo mismatch")
                if i >= RR_WARMUP:
                    out.append((clock() - t) / 1000)
        finally:
            s.close()
    else:
        for i in range(count + CPR_WARMUP):
            t = clock()
            try:
                s = socket.create_connection((host, port), timeout=5)
                try:
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    s.sendall(payload)
                    ok = _recv_exact(s, MSG) == payload
                finally:
                    s.close()
            except OSError:
                ok = False
            if not ok:
                errors += 1
            elif i >= CPR_WARMUP:
                out.append((clock() - t) / 1000)
    print(json.dumps({"us": [round(x, 2) for x in out], "errors": errors}))
    return 0


# -- the benchmark ------------------------------------------------------------------------

def haproxy_cfg(nbthread: int | None, tput_port: int, lat_port: int, tuned: bool = False) -> str:
    """HAProxy at its defaults, or `tuned` for bulk TCP the way an operator would:
    256 KiB buffers, kernel splicing when it pays (splice-auto), a higher maxconn."""
    threads = f"    nbthread {nbthread}\n" if nbthread else ""
    tune = (f"    tune.bufsize {TUNED_BUFSIZE}\n    tune.maxrewrite 1024\n    maxconn 4096\n"
            if tuned else "    maxconn 4096\n")
    return (
        "global\n"
        f"{threads}"
        f"{tune}"
        "defaults\n"
        "    mode tcp\n"
        + ("    option splice-auto\n" if tuned else "") +
        "    timeout connect 5s\n"
        "    timeout client 120s\n"
        "    timeout server 120s\n"
        "frontend fe_tput\n"
        f"    bind 127.0.0.1:{tput_port}\n"
        "    default_backend be_tput\n"
        "backend be_tput\n"
        f"    server s1 127.0.0.1:{IPERF_PORT}\n"
        "frontend fe_lat\n"
        f"    bind 127.0.0.1:{lat_port}\n"
        "    default_backend be_lat\n"
        "backend be_lat\n"
        f"    server s1 127.0.0.1:{ECHO_PORT}\n")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], q: float) -> float | None:
    s = sorted(xs)
    return round(s[max(0, math.ceil(q * len(s)) - 1)], 1) if s else None   # nearest rank



class Procs:
    """The processes a bench starts in its namespace (set `ns` once it exists),
    each writing to a log file in `tmp`; shared by bench/proxy.py and bench/secure.py."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ns = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, *argv: str) -> subprocess.Popen:
        self.logs[name] = self.tmp / f"{name}.log"
        with open(self.logs[name], "wb") as f:
            self.procs[name] = self.ns.popen(*argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self.procs[name]

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited ({p.returncode}): {self.logs[name].read_text()[-1500:]}")

    def wait_port(self, port: int, what: str, timeout: float = 20, interval: float = 0.1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            r = self.ns.run(PY, "-P", "-c", "import socket,sys; socket.create_connection(('127.0.0.1', "
                            "int(sys.argv[1])), timeout=1).close()", str(port), check=False, timeout=10)
            if r.returncode == 0:
                return
            time.sleep(interval)
        raise RuntimeError(f"{what} does not accept on 127.0.0.1:{port} within {timeout}s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ambassador vs socat vs HAProxy: throughput and latency")
    ap.add_argument("--seconds", type=float, default=5.0, help="iperf3 -t per run (1..60)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, each path once per round (1..20)")
    ap.add_argument("--rr", type=int, default=5000, help="round trips over one connection per path per round")
    ap.add_argument("--cpr", type=int, default=1000, help="connect-per-request round trips per path per round")
    ap.add_argument("--no-haproxy-mt", action="store_true", help="skip HAProxy with its default threads")
    ap.add_argument("--baseline", metavar="PYTHON",
                    help="also run the ambassador of another checkout, started by its interpreter "
                         "(e.g. /work/base/.venv/bin/python), as path ambassador_base")
    ap.add_argument("--paths", default=",".join(PATHS),
                    help=f"comma-separated paths to run (direct and ambassador always run): {','.join(PATHS)}")
    ap.add_argument("--echo-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--rr-client", nargs=3, metavar=("PORT", "N", "MODE"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.echo_server:
        return echo_server(a.echo_server)
    if a.rr_client:
        return rr_client(int(a.rr_client[0]), int(a.rr_client[1]), a.rr_client[2])

    if os.geteuid() != 0:
        raise SystemExit("bench/proxy: needs root (network namespaces)")
    if not (1 <= a.seconds <= 60 and 1 <= a.rounds <= 20 and 100 <= a.rr <= 200000 and 50 <= a.cpr <= 20000):
        raise SystemExit("bench/proxy: --seconds 1..60, --rounds 1..20, --rr 100..200000, --cpr 50..20000")
    for tool in (HAPROXY, shutil.which("socat"), shutil.which("iperf3")):
        if not tool or not os.access(tool, os.X_OK):
            raise SystemExit("bench/proxy: needs /usr/sbin/haproxy, socat and iperf3 (./scripts/setup installs them)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

    from portlink.lab.sandbox import Namespace

    wanted = {p.strip() for p in a.paths.split(",") if p.strip()} | {"direct", "ambassador"}
    unknown = sorted(wanted - set(PATHS))
    if unknown:
        raise SystemExit(f"bench/proxy: unknown --paths {','.join(unknown)}: expected some of {','.join(PATHS)}")
    if a.baseline:
        if not os.access(a.baseline, os.X_OK):
            raise SystemExit(f"bench/proxy: --baseline {a.baseline}: not an executable interpreter")
        wanted.add("ambassador_base")
    elif "ambassador_base" in wanted:
        raise SystemExit("bench/proxy: path ambassador_base needs --baseline PYTHON")
    paths = [p for p in PATHS if p in wanted and not (a.no_haproxy_mt and p == "haproxy_mt")]
    tmp = Path(tempfile.mkdtemp(prefix="plt-proxy-"))
    ns: Namespace | None = None
    run = Procs(tmp)
    procs, logs, start, check_alive, wait_port = run.procs, run.logs, run.start, run.check_alive, run.wait_port

    try:
        ns = run.ns = Namespace.create("proxy")
        log(f"namespace {ns.name}, temp dir {tmp}")
        start("iperf3_server", "iperf3", "-s", "-p", str(IPERF_PORT), "-B", "127.0.0.1")
        start("echo", PY, "-P", str(HERE), "--echo-server", str(ECHO_PORT))
        for name, py, extra in (("ambassador", PY, ()), ("ambassador_copy", PY, ("--no-splice",)),
                                ("ambassador_base", a.baseline, ())):
            if name in paths:
                tp, lp = PATHS[name]
                start(name, py, "-P", "-m", "portlink.ambassador", "--bind", "127.0.0.1", *extra,
                      "--listen", str(tp), "--listen", str(lp),
                      "--backend", f"{tp}=127.0.0.1:{IPERF_PORT}", "--backend", f"{lp}=127.0.0.1:{ECHO_PORT}")
        for port, target in zip(PATHS["socat"], (IPERF_PORT, ECHO_PORT)):
            if "socat" in paths:
                start(f"socat_{port}", "socat", f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr",
                      f"TCP:127.0.0.1:{target}")
        for name, how in HAPROXIES.items():
            if name not in paths:
                continue
            cfg = tmp / f"{name}.cfg"
            cfg.write_text(haproxy_cfg(how["nbthread"], *PATHS[name], tuned=how.get("tuned", False)))
            sh = subprocess.run([HAPROXY, "-c", "-q", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
            if sh.returncode != 0:
                raise RuntimeError(f"haproxy -c {cfg}: {sh.stderr.strip() or sh.stdout.strip()}")
            start(name, HAPROXY, "-db", "-f", str(cfg))
        for name in paths:
            for port in PATHS[name]:
                wait_port(port, name)
        log("all paths accept: " + ", ".join(f"{n} {PATHS[n][0]}/{PATHS[n][1]}" for n in paths))

        load_before = [round(x, 2) for x in os.getloadavg()]
        gbps: dict[str, list[float]] = {p: [] for p in paths}
        retrans: dict[str, list[int]] = {p: [] for p in paths}
        cpu: dict[str, list[float]] = {p: [] for p in paths}
        cpu_s: dict[str, float] = {p: 0.0 for p in paths}      # CPU seconds over all throughput runs
        gbit: dict[str, float] = {p: 0.0 for p in paths}       # Gbit carried over all throughput runs
        lat: dict[str, dict[str, list[float]]] = {p: {"rr": [], "cpr": []} for p in paths}
        p99_rounds: dict[str, dict[str, list[float]]] = {p: {"rr": [], "cpr": []} for p in paths}
        lat_errors: dict[str, int] = {p: 0 for p in paths}
        lat_cpu: dict[str, dict[str, list[float]]] = {p: {"rr": [], "cpr": []} for p in paths}   # CPU s, round trips
        cpu_pid = {name: procs[name].pid for name in ("ambassador", "ambassador_copy", "ambassador_base", *HAPROXIES)
                   if name in procs}

        def iperf(port: int) -> dict:
            last = ""
            for _ in range(3):    # the server refuses a test while it finishes the previous one
                r = ns.run("iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(a.seconds), "-J",
                           check=False, timeout=a.seconds + 60)
                try:
                    doc = json.loads(r.stdout)
                except ValueError:
                    doc = {"error": r.stderr.strip() or r.stdout[-300:]}
                if "error" not in doc:
                    return doc
                last = doc["error"]
                time.sleep(1)
            raise RuntimeError(f"iperf3 -c through port {port} failed: {last}")

        for rnd in range(a.rounds):
            order = paths[rnd % len(paths):] + paths[:rnd % len(paths)]
            for name in order:
                check_alive()
                pid = cpu_pid.get(name)
                c0, w0 = (cpu_seconds(pid) if pid else 0.0), time.monotonic()
                doc = iperf(PATHS[name][0])
                end = doc["end"]
                if pid:
                    used = cpu_seconds(pid) - c0
                    cpu[name].append(used / (time.monotonic() - w0) * 100)
                    cpu_s[name] += used
                    gbit[name] += end["sum_received"]["bytes"] * 8 / 1e9
                gbps[name].append(end["sum_received"]["bits_per_second"] / 1e9)
                retrans[name].append(int(end.get("sum_sent", {}).get("retransmits", 0)))
                log(f"round {rnd + 1}/{a.rounds} throughput {name}: {gbps[name][-1]:.2f} Gbit/s"
                    + (f" (its CPU {cpu[name][-1]:.0f}%)" if pid else ""))
            for name in order:
                for mode, n in (("rr", a.rr), ("cpr", a.cpr)):
                    check_alive()
                    pid = cpu_pid.get(name)
                    c0 = cpu_seconds(pid) if pid else 0.0
                    r = ns.run(PY, "-P", str(HERE), "--rr-client", str(PATHS[name][1]), str(n), mode,
                               check=False, timeout=600)
                    if pid:
                        lat_cpu[name][mode] += [cpu_seconds(pid) - c0, n + (RR_WARMUP if mode == "rr" else CPR_WARMUP)]
                    if r.returncode != 0:
                        raise RuntimeError(f"latency client {name} {mode} failed: {r.stderr.strip()[-1500:]}")
                    doc = json.loads(r.stdout)
                    lat[name][mode] += doc["us"]
                    lat_errors[name] += doc["errors"]
                    p99_rounds[name][mode].append(pct(doc["us"], 0.99))
                    log(f"round {rnd + 1}/{a.rounds} latency {name} {mode}: p50 {pct(doc['us'], 0.5)} us, "
                        f"p99 {pct(doc['us'], 0.99)} us, errors {doc['errors']}")
        check_alive()

        def side(name: str) -> dict:
            d = {"throughput_gbps": round(statistics.median(gbps[name]), 3),
                 "throughput_runs_gbps": [round(x, 3) for x in gbps[name]],
                 "iperf3_retransmits": sum(retrans[name])}
            if cpu[name]:
                d["cpu_pct_during_throughput"] = round(statistics.median(cpu[name]), 1)
                # CPU seconds per Gbit carried = CPU-seconds/s per Gbit/s: lower is better.
                d["cpu_s_per_gbit"] = round(cpu_s[name] / gbit[name], 4) if gbit[name] else None
            for mode, label in (("rr", "one_connection"), ("cpr", "connect_per_request")):
                xs = lat[name][mode]
                d[label] = {"p50_us": pct(xs, 0.5), "p99_us": pct(xs, 0.99), "samples": len(xs),
                            "p99_rounds_us": p99_rounds[name][mode],
                            "p99_median_of_rounds_us": round(statistics.median(p99_rounds[name][mode]), 1)}
                if lat_cpu[name][mode]:
                    # The forwarder's CPU (user + system) per round trip, warm-ups included:
                    # steadier than any p99 on shared CPUs.
                    used, trips = sum(lat_cpu[name][mode][0::2]), sum(lat_cpu[name][mode][1::2])
                    d[label]["cpu_us_per_round_trip"] = round(used / trips * 1e6, 1)
                if name != "direct":
                    base = lat["direct"][mode]
                    d[label]["added_p50_us"] = round(pct(xs, 0.5) - pct(base, 0.5), 1)
                    d[label]["added_p99_us"] = round(pct(xs, 0.99) - pct(base, 0.99), 1)
            d["latency_errors"] = lat_errors[name]
            return d

        out = {name: side(name) for name in paths}
        out["ambassador"]["threads"] = "1 (single-threaded Python asyncio" + (
            ", uvloop)" if _has_uvloop() else ")")
        out["ambassador"]["data_path"] = "splice(2) socket -> pipe -> socket (ambassador/splice.py)"
        if "ambassador_copy" in out:
            out["ambassador_copy"]["data_path"] = "--no-splice: asyncio transports, bytes through Python"
        if "ambassador_base" in out:
            out["ambassador_base"]["interpreter"] = a.baseline
        for name, how in HAPROXIES.items():
            if name in out:
                out[name]["nbthread"] = how["nbthread"] or f"default ({os.cpu_count()} CPUs)"
        if "haproxy_tuned" in out:
            out["haproxy_tuned"]["tuning"] = f"tune.bufsize {TUNED_BUFSIZE}, option splice-auto, maxconn 4096"
        if "socat" in out:
            out["socat"]["processes"] = "one forked process per connection"

        def ratio(x, y):
            return round(x / y, 3) if x is not None and y not in (None, 0) else None

        def vs(peer: str) -> dict:
            """The ambassador's figures over `peer`'s: throughput (higher is better),
            added p99 per mode and CPU per Gbit/s (lower is better)."""
            if peer not in out:
                return {}
            amb, other = out["ambassador"], out[peer]
            r = {"throughput": ratio(amb["throughput_gbps"], other["throughput_gbps"])}
            if peer != "direct":
                r |= {f"added_p99_{label}": ratio(amb[label]["added_p99_us"], other[label]["added_p99_us"])
                      for label in ("one_connection", "connect_per_request")}
            if "cpu_s_per_gbit" in other:
                r["cpu_s_per_gbit"] = ratio(amb.get("cpu_s_per_gbit"), other["cpu_s_per_gbit"])
            for label in ("one_connection", "connect_per_request"):
                if "cpu_us_per_round_trip" in other[label]:
                    r[f"cpu_per_round_trip_{label}"] = ratio(amb[label].get("cpu_us_per_round_trip"),
                                                             other[label]["cpu_us_per_round_trip"])
            return r

        ratios = {peer: vs(peer) for peer in ("direct", *HAPROXIES, "ambassador_copy", "ambassador_base")
                  if peer in out}
        by_mode = {label: ratios.get("haproxy", {}).get(f"added_p99_{label}")
                   for label in ("one_connection", "connect_per_request")}
        worst = [v for v in by_mode.values() if v is not None]
        peers = [p for p in ("haproxy", "haproxy_tuned") if p in ratios]
        added = [ratios[p][f"added_p99_{m}"] for p in peers for m in ("one_connection", "connect_per_request")]
        targets = {"throughput_vs_direct_min": 0.8, "throughput_vs_haproxy_tuned_min": 1.0,
                   "added_p99_vs_each_haproxy_max": 1.0}
        met = {"throughput_vs_direct": ratios["direct"]["throughput"] >= 0.8,
               "throughput_vs_haproxy_tuned": (ratios["haproxy_tuned"]["throughput"] >= 1.0
                                               if "haproxy_tuned" in ratios else None),
               "added_p99_vs_each_haproxy": (all(x is not None and x <= 1.0 for x in added) if added else None)}
        doc = {
            "bench": "proxy", "seconds": a.seconds, "rounds": a.rounds, "rr": a.rr, "cpr": a.cpr,
            "message_bytes": MSG, "cpus": os.cpu_count(),
            "loadavg_before": load_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "note": "ambassador is single-threaded Python; haproxy is nbthread 1, haproxy_mt HAProxy's default "
                    "threads; iperf3 client, server and forwarder share the machine's CPUs",
            "versions": {"haproxy": _version([HAPROXY, "-v"]), "socat": _version(["socat", "-V"], 1),
                         "iperf3": _version(["iperf3", "--version"])},
            **out,
            "ratio_throughput_vs_haproxy": ratios.get("haproxy", {}).get("throughput"),
            "ratio_added_p99_vs_haproxy": max(worst) if worst else None,
            "ratio_added_p99_vs_haproxy_by_mode": by_mode,
            "ratios": ratios,
            "targets": targets,
            "targets_met": met,
        }
        if "haproxy_mt" in out:
            doc["ratio_throughput_vs_haproxy_mt"] = ratio(out["ambassador"]["throughput_gbps"],
                                                          out["haproxy_mt"]["throughput_gbps"])
        print(json.dumps(doc))
        return 0
    finally:
        for name, p in reversed(list(procs.items())):
            if p.poll() is not None:
                log(f"{name} had exited by itself ({p.returncode}): {logs[name].read_text()[-800:]}")
                continue
            p.terminate()     # our own child, by its pid (nsenter execs, so it is the program itself)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                log(f"{name} (pid {p.pid}) ignored SIGTERM for 10s: killing it")
                p.kill()
                p.wait(5)
        if ns is not None:
            ns.delete()
            if ns.name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout:
                log(f"namespace left behind: {ns.name}")
        shutil.rmtree(tmp, ignore_errors=True)


def _has_uvloop() -> bool:
    import importlib.util
    return importlib.util.find_spec("uvloop") is not None


def _version(argv: list[str], line: int = 0) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.splitlines()
        return out[line].strip() if len(out) > line else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


if __name__ == "__main__":
    sys.exit(main())
