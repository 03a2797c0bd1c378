#!/usr/bin/env python3
"""bench/secure: the mutual-TLS ambassador pair against HAProxy terminating and
originating TLS, next to direct and the plaintext ambassador, same namespace, same run.

Topology (one namespace plt-secure-*, loopback only; nothing in the root namespace):
  consul agent -dev          127.0.0.1:8500, Connect's built-in CA (EC P-256 leaves)
  iperf3 -s -p 5201          throughput target
  echo server :7000          bench/proxy.py --echo-server
  ambassador  :15201 -> 5201, :16201 -> 7000       plaintext, one process
  mtls_pair   :15301 -> :15302 -> 5201, :16301 -> :16302 -> 7000
              client side `--tls-dial web --tls-target frontdb` -> server side
              `--tls-serve frontdb`, two processes, leaves from the agent
  haproxy_tls :15401 -> :15402 -> 5201, :16401 -> :16402 -> 7000
              two HAProxy processes (nbthread 1 each, like the ambassadors): the
              front's servers `ssl crt client.pem ca-file ca.pem verify required`, the
              back's binds `ssl crt server.pem ca-file ca.pem verify required`; EC P-256
              keys from openssl in a temp dir, the same key type as Connect's leaves

Measurements are bench/proxy.py's: iperf3 through each path, the paths rotated
each round (median Gbit/s), and its --rr-client for request/response over one
connection and connect-per-request (p50/p99, nearest rank, `added` = minus direct).
CPU: both processes of a pair, during its iperf3 runs, also per Gbit/s.

Prints one JSON line with every figure, the ratios mtls_pair / haproxy_tls and the
targets of issue 15 (reported, not asserted).
--baseline PYTHON adds the path mtls_base: the same pair run by another checkout's
interpreter (e.g. /work/main/.venv/bin/python: its portlink), ports 15501/16501 ->
15502/16502, so a change is measured against its baseline side by side in one run
(ratio_*_mtls_vs_mtls_base; the baseline pair runs with that checkout's defaults). --warm N
is the client side's --tls-warm (default 1, as portlinkd starts client sides; 0: a TLS
connection per client).

Run as root:  .venv/bin/python -P bench/secure.py [--seconds 5] [--rounds 3] [--rr 5000] [--cpr 1000]
              [--baseline PYTHON] [--warm N]"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable
HERE = Path(__file__).resolve()
PROXY = HERE.parent / "proxy.py"
_spec = importlib.util.spec_from_file_location("bench_proxy", PROXY)
proxy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(proxy)          # its measurement code, not a copy

IPERF_PORT, ECHO_PORT = proxy.IPERF_PORT, proxy.ECHO_PORT
PATHS = {              # name -> (throughput port, latency port) the client uses
    "direct": (IPERF_PORT, ECHO_PORT),
    "ambassador": (15201, 16201),
    "mtls_pair": (15301, 16301),
    "haproxy_tls": (15401, 16401),
}
INNER = {"mtls_pair": (15302, 16302), "haproxy_tls": (15402, 16402),   # the TLS hop of each pair
         "mtls_base": (15502, 16502)}
BASE = (15501, 16501)       # --baseline: the outer ports of mtls_base
HAPROXY = proxy.HAPROXY
CONSUL = "127.0.0.1:8500"
DAEMON_WARM = 1             # runtime/ambassadors.py TLS_WARM (not imported: it needs the daemon's modules)


def log(msg: str) -> None:
    if sys.stderr.isatty():
        print(f"bench/secure: {msg}", file=sys.stderr, flush=True)


def make_certs(d: Path) -> dict[str, Path]:
    """A CA and a server and a client certificate, EC P-256 (Connect's default key type)."""
    def ossl(*argv: str) -> None:
        r = subprocess.run(["openssl", *argv], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"openssl {' '.join(argv[:2])}: {r.stderr.strip()[-500:]}")

    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"), "-days", "2", "-subj", "/CN=bench-ca")
    out = {"ca": d / "ca.pem"}
    for name in ("server", "client"):
        key, csr, crt = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt"
        ext = d / f"{name}.ext"
        ext.write_text(f"subjectAltName=DNS:{name}\nextendedKeyUsage="
                       f"{'serverAuth' if name == 'server' else 'clientAuth'}\n")
        ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
        ossl("x509", "-req", "-in", str(csr), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
             "-CAcreateserial", "-out", str(crt), "-days", "2", "-extfile", str(ext))
        pem = d / f"{name}.pem"          # HAProxy's crt: certificate and key in one file
        pem.write_text(crt.read_text() + key.read_text())
        out[name] = pem
    return out


def haproxy_cfg(front: bool, certs: dict[str, Path]) -> str:
    """The front (plain in, TLS out, like the client side) or the back (TLS in,
    plain out, like the server side); nbthread 1."""
    g = ("global\n    nbthread 1\n    maxconn 4096\n"
         "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 120s\n    timeout server 120s\n")
    for (outer, inner, target), tag in zip(
            zip(PATHS["haproxy_tls"], INNER["haproxy_tls"], (IPERF_PORT, ECHO_PORT)), ("tput", "lat")):
        if front:
            bind = f"127.0.0.1:{outer}"
            server = (f"127.0.0.1:{inner} ssl crt {certs['client']} ca-file {certs['ca']} verify required"
                      " verifyhost server")
        else:
            bind = f"127.0.0.1:{inner} ssl crt {certs['server']} ca-file {certs['ca']} verify required"
            server = f"127.0.0.1:{target}"
        g += (f"frontend fe_{tag}\n    bind {bind}\n    default_backend be_{tag}\n"
              f"backend be_{tag}\n    server s1 {server}\n")
    return g


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="mTLS ambassador pair vs HAProxy TLS: throughput and latency")
    ap.add_argument("--seconds", type=float, default=5.0, help="iperf3 -t per run (1..60)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, each path once per round (1..20)")
    ap.add_argument("--rr", type=int, default=5000, help="round trips over one connection per path per round")
    ap.add_argument("--cpr", type=int, default=1000, help="connect-per-request round trips per path per round")
    ap.add_argument("--baseline", metavar="PYTHON", help="also run the mTLS pair with this interpreter "
                    "(another checkout's venv) as the path mtls_base")
    ap.add_argument("--warm", type=int, default=DAEMON_WARM, metavar="N",
                    help=f"the client side's --tls-warm (default {DAEMON_WARM}, what portlinkd gives its client sides)")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench/secure: needs root (network namespaces)")
    if not (1 <= a.seconds <= 60 and 1 <= a.rounds <= 20 and 100 <= a.rr <= 200000 and 50 <= a.cpr <= 20000
            and 0 <= a.warm <= 64):
        raise SystemExit("bench/secure: --seconds 1..60, --rounds 1..20, --rr 100..200000, --cpr 50..20000, --warm 0..64")
    for tool in (HAPROXY, shutil.which("iperf3"), shutil.which("openssl")):
        if not tool or not os.access(tool, os.X_OK):
            raise SystemExit("bench/secure: needs /usr/sbin/haproxy, iperf3 and openssl "
                             "(./scripts/setup installs them)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

    from portlink.lab.consul_agent import AgentSpec, start_agent, wait_ready
    from portlink.lab.sandbox import Namespace

    paths = list(PATHS)
    if a.baseline:
        if not os.access(a.baseline, os.X_OK):
            raise SystemExit(f"bench/secure: --baseline {a.baseline} is not an executable")
        PATHS["mtls_base"] = BASE
        paths.append("mtls_base")
    tmp = Path(tempfile.mkdtemp(prefix="plt-secure-"))
    os.chmod(tmp, 0o700)
    ns: Namespace | None = None
    agent = None
    run = proxy.Procs(tmp)
    procs, logs, start, check_alive = run.procs, run.logs, run.start, run.check_alive
    wait_port = functools.partial(run.wait_port, timeout=60, interval=0.2)

    def amb(name: str, *args: str, python: str = PY) -> None:
        start(name, python, "-P", "-m", "portlink.ambassador", "--bind", "127.0.0.1", *args)

    try:
        ns = run.ns = Namespace.create("secure")
        log(f"namespace {ns.name}, temp dir {tmp}")
        agent = start_agent(AgentSpec("bench-secure", "127.0.0.1", tmp / "consul"), netns=ns.path)
        certs = make_certs(tmp)
        start("echo", PY, "-P", str(PROXY), "--echo-server", str(ECHO_PORT))
        t, l = PATHS["ambassador"]
        amb("ambassador", "--listen", str(t), "--listen", str(l),
            "--backend", f"{t}=127.0.0.1:{IPERF_PORT}", "--backend", f"{l}=127.0.0.1:{ECHO_PORT}")
        wait_ready(agent)
        (t, l), (ti, li) = PATHS["mtls_pair"], INNER["mtls_pair"]
        amb("mtls_server", "--listen", str(ti), "--listen", str(li), "--tls-serve", "frontdb",
            "--backend", f"{ti}=127.0.0.1:{IPERF_PORT}", "--backend", f"{li}=127.0.0.1:{ECHO_PORT}",
            "--consul", CONSUL, "--tls-keys", str(tmp / "keys-server"))
        amb("mtls_client", "--listen", str(t), "--listen", str(l), "--tls-dial", "web", "--tls-target", "frontdb",
            "--backend", f"{t}=127.0.0.1:{ti}", "--backend", f"{l}=127.0.0.1:{li}",
            "--consul", CONSUL, "--tls-keys", str(tmp / "keys-client"),
            "--tls-warm", str(a.warm))
        if a.baseline:
            (t, l), (ti, li) = BASE, INNER["mtls_base"]
            amb("base_server", "--listen", str(ti), "--listen", str(li), "--tls-serve", "frontdb",
                "--backend", f"{ti}=127.0.0.1:{IPERF_PORT}", "--backend", f"{li}=127.0.0.1:{ECHO_PORT}",
                "--consul", CONSUL, "--tls-keys", str(tmp / "keys-base-server"), python=a.baseline)
            amb("base_client", "--listen", str(t), "--listen", str(l), "--tls-dial", "web", "--tls-target", "frontdb",
                "--backend", f"{t}=127.0.0.1:{ti}", "--backend", f"{l}=127.0.0.1:{li}",
                "--consul", CONSUL, "--tls-keys", str(tmp / "keys-base-client"), python=a.baseline)
        for name, front in (("haproxy_back", False), ("haproxy_front", True)):
            cfg = tmp / f"{name}.cfg"
            cfg.write_text(haproxy_cfg(front, certs))
            chk = subprocess.run([HAPROXY, "-c", "-q", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
            if chk.returncode != 0:
                raise RuntimeError(f"haproxy -c {cfg}: {chk.stderr.strip() or chk.stdout.strip()}")
            start(name, HAPROXY, "-db", "-f", str(cfg))
        for name in paths:
            for port in PATHS[name] + INNER.get(name, ()):
                if port != IPERF_PORT:
                    wait_port(port, name)
        # after the probes: a probe through a pair to iperf3's port can leave it waiting on a
        # control connection that never sends its cookie
        start("iperf3_server", "iperf3", "-s", "-p", str(IPERF_PORT), "-B", "127.0.0.1")
        wait_port(IPERF_PORT, "iperf3")
        # one real exchange through each path before timing: a TLS hop that accepts
        # TCP but fails its handshake would otherwise show up only as errors
        for name in paths:
            r = ns.run(PY, "-P", str(PROXY), "--rr-client", str(PATHS[name][1]), "100", "rr", check=False, timeout=60)
            if r.returncode != 0:
                raise RuntimeError(f"{name} does not echo: {r.stderr.strip()[-800:]}")
        log("all paths echo")

        pair_pids = {"ambassador": [procs["ambassador"].pid],
                     "mtls_pair": [procs["mtls_client"].pid, procs["mtls_server"].pid],
                     "haproxy_tls": [procs["haproxy_front"].pid, procs["haproxy_back"].pid]}
        if a.baseline:
            pair_pids["mtls_base"] = [procs["base_client"].pid, procs["base_server"].pid]
        load_before = [round(x, 2) for x in os.getloadavg()]
        gbps: dict[str, list[float]] = {p: [] for p in paths}
        retrans: dict[str, list[int]] = {p: [] for p in paths}
        cpu: dict[str, list[float]] = {p: [] for p in paths}
        lat: dict[str, dict[str, list[float]]] = {p: {"rr": [], "cpr": []} for p in paths}
        p99_rounds: dict[str, dict[str, list[float]]] = {p: {"rr": [], "cpr": []} for p in paths}
        lat_errors: dict[str, int] = {p: 0 for p in paths}

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
                pids = pair_pids.get(name, [])
                c0, w0 = sum(proxy.cpu_seconds(p) for p in pids), time.monotonic()
                doc = iperf(PATHS[name][0])
                if pids:
                    cpu[name].append((sum(proxy.cpu_seconds(p) for p in pids) - c0) / (time.monotonic() - w0) * 100)
                end = doc["end"]
                gbps[name].append(end["sum_received"]["bits_per_second"] / 1e9)
                retrans[name].append(int(end.get("sum_sent", {}).get("retransmits", 0)))
                log(f"round {rnd + 1}/{a.rounds} throughput {name}: {gbps[name][-1]:.2f} Gbit/s"
                    + (f" (CPU {cpu[name][-1]:.0f}%)" if pids else ""))
            for name in order:
                for mode, n in (("rr", a.rr), ("cpr", a.cpr)):
                    check_alive()
                    r = ns.run(PY, "-P", str(PROXY), "--rr-client", str(PATHS[name][1]), str(n), mode,
                               check=False, timeout=600)
                    if r.returncode != 0:
                        raise RuntimeError(f"latency client {name} {mode} failed: {r.stderr.strip()[-1500:]}")
                    doc = json.loads(r.stdout)
                    lat[name][mode] += doc["us"]
                    lat_errors[name] += doc["errors"]
                    p99_rounds[name][mode].append(proxy.pct(doc["us"], 0.99))
                    log(f"round {rnd + 1}/{a.rounds} latency {name} {mode}: p50 {proxy.pct(doc['us'], 0.5)} us, "
                        f"p99 {proxy.pct(doc['us'], 0.99)} us, errors {doc['errors']}")
        check_alive()
        pct = proxy.pct

        def side(name: str) -> dict:
            g = statistics.median(gbps[name])
            d = {"throughput_gbps": round(g, 3), "throughput_runs_gbps": [round(x, 3) for x in gbps[name]],
                 "iperf3_retransmits": sum(retrans[name])}
            if cpu[name]:
                c = statistics.median(cpu[name])
                d["cpu_pct_during_throughput"] = round(c, 1)       # both processes of a pair
                d["cpu_core_seconds_per_gbit"] = round(c / 100 / g, 4) if g else None
            for mode, label in (("rr", "one_connection"), ("cpr", "connect_per_request")):
                xs = lat[name][mode]
                d[label] = {"p50_us": pct(xs, 0.5), "p99_us": pct(xs, 0.99), "samples": len(xs),
                            "p99_rounds_us": p99_rounds[name][mode],
                            "p99_median_of_rounds_us": round(statistics.median(p99_rounds[name][mode]), 1)}
                if name != "direct" and xs:
                    base = lat["direct"][mode]
                    d[label]["added_p50_us"] = round(pct(xs, 0.5) - pct(base, 0.5), 1)
                    d[label]["added_p99_us"] = round(pct(xs, 0.99) - pct(base, 0.99), 1)
            d["latency_errors"] = lat_errors[name]
            return d

        out = {name: side(name) for name in paths}
        out["mtls_pair"]["processes"] = "client side + server side, each single-threaded asyncio"
        out["haproxy_tls"]["processes"] = "front (TLS out) + back (TLS in), nbthread 1 each"

        def ratio(x, y):
            return round(x / y, 3) if x is not None and y not in (None, 0) else None

        by_mode = {label: ratio(out["mtls_pair"][label].get("added_p99_us"),
                                out["haproxy_tls"][label].get("added_p99_us"))
                   for label in ("one_connection", "connect_per_request")}
        r_tput = ratio(out["mtls_pair"]["throughput_gbps"], out["haproxy_tls"]["throughput_gbps"])
        met = {"throughput": r_tput is not None and r_tput >= 1.0,
               **{f"added_p99_{k}": v is not None and v <= 1.0 for k, v in by_mode.items()}}
        doc = {
            "bench": "secure", "warm": a.warm, "seconds": a.seconds, "rounds": a.rounds, "rr": a.rr, "cpr": a.cpr,
            "message_bytes": proxy.MSG, "cpus": os.cpu_count(), "key_type": "EC P-256 (both)",
            "note": "both client sides resume TLS sessions (HAProxy's default ssl-reuse; the ambassador's "
                    "ResumingClientContext); both pairs share the CPUs with iperf3 and the clients",
            "loadavg_before": load_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "versions": {"haproxy": proxy._version([HAPROXY, "-v"]), "openssl": proxy._version(["openssl", "version"]),
                         "iperf3": proxy._version(["iperf3", "--version"])},
            **out,
            "ratio_throughput_mtls_vs_haproxy_tls": r_tput,
            "ratio_added_p99_mtls_vs_haproxy_tls_by_mode": by_mode,
            "ratio_throughput_mtls_vs_plain_ambassador": ratio(out["mtls_pair"]["throughput_gbps"],
                                                               out["ambassador"]["throughput_gbps"]),
            "ratio_cpu_per_gbit_mtls_vs_haproxy_tls": ratio(out["mtls_pair"].get("cpu_core_seconds_per_gbit"),
                                                            out["haproxy_tls"].get("cpu_core_seconds_per_gbit")),
            **({"baseline_python": a.baseline,
                "ratio_throughput_mtls_base_vs_haproxy_tls": ratio(out["mtls_base"]["throughput_gbps"],
                                                                   out["haproxy_tls"]["throughput_gbps"]),
                "ratio_added_p99_mtls_base_vs_haproxy_tls_by_mode": {
                    label: ratio(out["mtls_base"][label].get("added_p99_us"),
                                 out["haproxy_tls"][label].get("added_p99_us"))
                    for label in ("one_connection", "connect_per_request")},
                "ratio_throughput_mtls_vs_mtls_base": ratio(out["mtls_pair"]["throughput_gbps"],
                                                            out["mtls_base"]["throughput_gbps"]),
                "ratio_added_p99_mtls_vs_mtls_base_by_mode": {
                    label: ratio(out["mtls_pair"][label].get("added_p99_us"), out["mtls_base"][label].get("added_p99_us"))
                    for label in ("one_connection", "connect_per_request")}} if a.baseline else {}),
            "targets": {"ratio_throughput_min": 1.0, "ratio_added_p99_max": 1.0},
            "targets_met": met,
        }
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
                p.kill()
                p.wait(5)
        if agent is not None:
            agent.stop()
        if ns is not None:
            ns.delete()
            if ns.name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout:
                print(f"bench/secure: namespace left behind: {ns.name}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
