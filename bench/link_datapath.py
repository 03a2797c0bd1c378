#!/usr/bin/env python3
"""bench/link_datapath: a plaintext cross-host link's throughput and added latency,
the forwarder (`--link-datapath proxy`) and the kernel path (`--link-datapath
kernel`, nftables DNAT in the ambassador's namespace), each against straight to
the other host and against HAProxy, same lab, same run.

bench/proxy.py runs every forwarder on one namespace's loopback; the kernel path
only exists between namespaces (it DNATs in the ambassador's own one), so it is
measured here, where an ambassador really sits: for each data path a 2-host lab
of its own (portlink.lab, namespaces, nothing in the root one):
  host1  iperf3 -s :5201 and an echo server :7000 (this file, --echo-server), in
         host1's namespace, registered in Consul as service `bench` (one
         instance per port, meta portlink-port)
  host2  clients in host2's namespace, three paths to host1:
           direct   10.99.0.1:5201 / :7000
           link     the ambassador `amb` (`run --ambassador bench`) on host2's
                    bridge: AMB_IP:5201 / :7000
           haproxy  HAProxy 2.6 in host2's namespace, mode tcp, nbthread 1, on
                    127.0.0.1:15203 / 16203 (it pays no bridge hop: the
                    ambassador, a container, does)
Each round rotates the paths: iperf3 -t SECONDS (median Gbit/s, receiver),
--rr request/response round trips of 64 bytes on one connection and --cpr
connect-per-request ones (p50/p99 us over all rounds). `added` = path - direct.

Prints one JSON line with both data paths, their ratios to direct and to
HAProxy, and the issue's targets (reported, not asserted). Run as root:
  .venv/bin/python -P bench/link_datapath.py [--seconds 5] [--rounds 3] [--rr 3000] [--cpr 500]
                                             [--datapaths proxy,kernel]"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apps import Bench, say  # noqa: E402
from proxy import echo_server, pct, rr_client  # noqa: E402

HERE = Path(__file__).resolve()
PY = sys.executable
IPERF, ECHO = 5201, 7000
HAPROXY = "/usr/sbin/haproxy"


def haproxy_cfg() -> str:
    return ("global\n    nbthread 1\n    maxconn 4096\ndefaults\n    mode tcp\n    timeout connect 5s\n"
            "    timeout client 120s\n    timeout server 120s\n"
            f"listen tput\n    bind 127.0.0.1:15203\n    server s1 10.99.0.1:{IPERF}\n"
            f"listen lat\n    bind 127.0.0.1:16203\n    server s1 10.99.0.1:{ECHO}\n")


def one_lab(labmod, datapath: str, a, tmp: Path) -> dict:
    from portlink.lab.consul_agent import http_get
    from portlink.runtime.client import Client
    say(f"{datapath}: lab up (2 hosts, plaintext links)")
    made = labmod.up(2, f"bd{os.getpid() % 10000}{datapath[0]}", progress=lambda *_: None, secure_links=False,
                     link_datapath=datapath)
    procs: list[subprocess.Popen] = []
    try:
        h1, h2 = made.host("host1"), made.host("host2")

        def start(h, *argv) -> None:
            log = open(tmp / f"{datapath}-{len(procs)}.log", "w")
            procs.append(subprocess.Popen(["nsenter", f"--net={h.netns_path}", *argv], stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))

        def run(h, *argv, timeout=120) -> str:
            p = subprocess.run(["nsenter", f"--net={h.netns_path}", *argv], capture_output=True, text=True,
                               timeout=timeout)
            if p.returncode != 0:
                raise RuntimeError(f"{' '.join(argv[:3])}: {p.stderr.strip()[-1000:]}")
            return p.stdout
        start(h1, "iperf3", "-s", "-p", str(IPERF))
        start(h1, PY, "-P", str(HERE), "--echo-server", "0.0.0.0", str(ECHO))
        cfg = tmp / f"{datapath}-haproxy.cfg"
        cfg.write_text(haproxy_cfg())
        start(h2, HAPROXY, "-db", "-f", str(cfg))
        for port in (IPERF, ECHO):
            body = {"ID": f"bench-{port}", "Name": "bench", "Address": h1.ip, "Port": port,
                    "Meta": {"portlink-port": f"{port}/tcp"}}
            assert http_get(f"http://{h1.ip}:8500/v1/agent/service/register", netns=h1.netns_path, method="PUT",
                            body=body)[0] == 200
        b = Bench(labmod, made)
        c2 = Client(h2.socket)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and c2.get("/system/consul")["services_seen"] < 1:
            time.sleep(0.2)
        b.until("host2", "run", "-d", "--name", "amb", "--ambassador", "bench", timeout=60)
        amb_ip = c2.get("/containers/amb")["network"]["ip"]
        targets = {"direct": (h1.ip, IPERF, ECHO), "link": (amb_ip, IPERF, ECHO),
                   "haproxy": ("127.0.0.1", 15203, 16203)}
        for name, (ip, _, lp) in targets.items():     # every path answers before the first round
            deadline = time.monotonic() + 30
            while True:
                try:
                    run(h2, PY, "-P", str(HERE), "--rr-client", ip, str(lp), "5", "cpr", timeout=30)
                    break
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
        tput: dict[str, list[float]] = {k: [] for k in targets}
        lat: dict[str, dict[str, list[float]]] = {k: {"rr": [], "cpr": []} for k in targets}
        errors: dict[str, int] = {k: 0 for k in targets}
        load = [[round(x, 2) for x in os.getloadavg()]]
        for i in range(a.rounds):
            order = list(targets)[i % 3:] + list(targets)[:i % 3]
            for name in order:
                ip, tp, lp = targets[name]
                say(f"{datapath} round {i + 1}/{a.rounds}: {name}")
                doc = json.loads(run(h2, "iperf3", "-c", ip, "-p", str(tp), "-t", str(a.seconds), "-J",
                                     timeout=a.seconds + 60))
                tput[name].append(doc["end"]["sum_received"]["bits_per_second"] / 1e9)
                for mode, n in (("rr", a.rr), ("cpr", a.cpr)):
                    r = json.loads(run(h2, PY, "-P", str(HERE), "--rr-client", ip, str(lp), str(n), mode,
                                       timeout=300))
                    lat[name][mode] += r["us"]
                    errors[name] += r["errors"]
        load.append([round(x, 2) for x in os.getloadavg()])
        amb = c2.get("/containers/amb")["ambassador"]
        seen = {"kernel_connections": amb.get("kernel", {}).get("connections_total"),
                "forwarder_connections": amb.get("metrics", {}).get("connections_total", {}).get("total")}
    finally:
        try:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        finally:
            # The lab goes whatever ending the clients did, an interrupt included.
            down = labmod.down(made.name, progress=lambda *_: None)
    out: dict = {"loadavg_before_after": load, "path_errors": errors, **seen, "lab_down_errors": down}
    for name in targets:
        out[name] = {"gbit_s": round(statistics.median(tput[name]), 2),
                     **{f"{m}_p{q}_us": pct(lat[name][m], q / 100) for m in ("rr", "cpr") for q in (50, 99)}}
    for name in ("link", "haproxy"):
        for m in ("rr", "cpr"):
            for q in (50, 99):
                out[name][f"added_{m}_p{q}_us"] = round(out[name][f"{m}_p{q}_us"] - out["direct"][f"{m}_p{q}_us"], 1)
    # A peer whose added figure is not above zero (noise beat direct) gives no ratio.
    ratio = lambda x, y: round(x / y, 3) if y and y > 0 else None
    out["ratios"] = {
        "link_throughput_vs_direct": ratio(out["link"]["gbit_s"], out["direct"]["gbit_s"]),
        "link_throughput_vs_haproxy": ratio(out["link"]["gbit_s"], out["haproxy"]["gbit_s"]),
        **{f"link_added_{m}_p99_vs_haproxy": ratio(out["link"][f"added_{m}_p99_us"],
                                                    out["haproxy"][f"added_{m}_p99_us"]) for m in ("rr", "cpr")}}
    return out


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--echo-server":
        return echo_server(int(sys.argv[3]), sys.argv[2])
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--rr-client":
        return rr_client(int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[2])
    ap = argparse.ArgumentParser(description="a cross-host link: forwarder vs kernel data path vs direct vs HAProxy")
    ap.add_argument("--seconds", type=int, default=5, help="iperf3 -t per run (1..60)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (1..10)")
    ap.add_argument("--rr", type=int, default=3000, help="request/response round trips per round (100..100000)")
    ap.add_argument("--cpr", type=int, default=500, help="connect-per-request round trips per round (100..20000)")
    ap.add_argument("--datapaths", default="proxy,kernel", help="comma-separated: proxy, kernel")
    a = ap.parse_args(argv)
    wanted = [d for d in a.datapaths.split(",") if d]
    if not (1 <= a.seconds <= 60 and 1 <= a.rounds <= 10 and 100 <= a.rr <= 100000 and 100 <= a.cpr <= 20000) \
            or not wanted or set(wanted) - {"proxy", "kernel"}:
        raise SystemExit("bench/link_datapath: --seconds 1..60, --rounds 1..10, --rr 100..100000, "
                         "--cpr 100..20000, --datapaths proxy,kernel")
    if os.geteuid() != 0:
        raise SystemExit("bench/link_datapath: needs root (network namespaces)")
    if not (os.path.exists(HAPROXY) and shutil.which("iperf3")):
        raise SystemExit("bench/link_datapath: needs haproxy and iperf3 (./scripts/setup installs them)")
    from portlink.lab import lab as labmod
    tmp = Path(tempfile.mkdtemp(prefix="plt-bench-dp-"))
    labmod.LAB_ROOT = tmp / "labs"
    try:
        results = {d: one_lab(labmod, d, a, tmp) for d in wanted}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    targets = {"throughput_vs_direct_min": 0.8, "added_p99_vs_haproxy_max": 1.0}
    at_most = lambda x, bound: None if x is None else x <= bound
    met = {d: {"throughput_vs_direct": r["ratios"]["link_throughput_vs_direct"] >= 0.8,
               "added_cpr_p99_vs_haproxy": at_most(r["ratios"]["link_added_cpr_p99_vs_haproxy"], 1.0),
               "added_rr_p99_vs_haproxy": at_most(r["ratios"]["link_added_rr_p99_vs_haproxy"], 1.0)}
           for d, r in results.items()}
    print(json.dumps({"bench": "link_datapath", "what": "host2 -> host1 through a plaintext link, per data path",
                      "seconds": a.seconds, "rounds": a.rounds, "rr": a.rr, "cpr": a.cpr, "cpus": os.cpu_count(),
                      **results, "targets": targets, "target_met": met}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
