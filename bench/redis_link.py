#!/usr/bin/env python3
"""bench/redis_link: redis-benchmark across hosts, through a link against straight
to the published port, same lab, same run.

Topology (a 3-host lab of its own, portlink.lab: namespaces, nothing in the root one;
daemons with plaintext links unless --secure, which runs them --secure-links;
--datapath kernel runs them --link-datapath kernel: the plaintext link's
ambassador forwards by nftables DNAT in its namespace, not in its process):
  host1  cache: portlink/redis:7 (scripts/build-images), published on 10.99.0.1:6379
  host2  redis-benchmark in a `run --rm` container of the same image, either
           link       `--link cache:cache`, -h cache: host2's ambassador forwards
                      across the lab switch (with --secure: mutual TLS to the
                      server-side ambassador on host1)
           published  -h 10.99.0.1: plain TCP to host1's published port

ROUNDS rounds, each running both paths one after the other (the order alternates
each round): `redis-benchmark -c CLIENTS -n REQUESTS -t set,get --csv`. Reported:
the median requests/s of SET and GET per path, their mean, and the ratio link /
published (target >= 0.85, reported, not asserted).

Prints one JSON line. Run as root:
  .venv/bin/python -P bench/redis_link.py [--requests 100000] [--rounds 3] [--clients 20] [--secure]
                                          [--datapath proxy|kernel]"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apps import Bench, say  # noqa: E402  (same lab plumbing as bench/apps.py)

ROOT = Path(__file__).resolve().parents[1]
REDIS = "portlink/redis:7"
PATHS = {"link": ("--link", "cache:cache", "cache"), "published": ("10.99.0.1",)}
TESTS = ("SET", "GET")


def parse(out: str) -> dict[str, float]:
    """redis-benchmark --csv: {"SET": rps, "GET": rps}."""
    got = {}
    for row in csv.reader(io.StringIO(out)):
        if row and row[0] in TESTS:
            got[row[0]] = float(row[1])
    missing = [t for t in TESTS if t not in got]
    if missing:
        raise RuntimeError(f"redis-benchmark's output lacks {', '.join(missing)}:\n{out[-2000:]}")
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="redis-benchmark across lab hosts: through --link vs the published port")
    ap.add_argument("--requests", type=int, default=100000, help="redis-benchmark -n per run (1000..10000000)")
    ap.add_argument("--rounds", type=int, default=3, help="runs per path (1..20)")
    ap.add_argument("--clients", type=int, default=20, help="redis-benchmark -c (1..500)")
    ap.add_argument("--secure", action="store_true", help="daemons with --secure-links (mutual TLS links)")
    ap.add_argument("--datapath", choices=["proxy", "kernel"], default="proxy",
                    help="daemons' --link-datapath for plaintext links (kernel: nftables DNAT)")
    a = ap.parse_args(argv)
    if a.secure and a.datapath == "kernel":
        raise SystemExit("bench/redis_link: --datapath kernel is for plaintext links: not with --secure")
    if not (1000 <= a.requests <= 10_000_000 and 1 <= a.rounds <= 20 and 1 <= a.clients <= 500):
        raise SystemExit("bench/redis_link: --requests 1000..10000000, --rounds 1..20, --clients 1..500")
    if os.geteuid() != 0:
        raise SystemExit("bench/redis_link: needs root (network namespaces)")
    built = subprocess.run([str(ROOT / "scripts/build-images"), "redis"], capture_output=True, text=True,
                           timeout=900)
    if built.returncode != 0:
        raise SystemExit(f"bench/redis_link: scripts/build-images redis failed: {built.stderr.strip()}")
    archive = built.stdout.split("\t")[1].strip()

    from portlink.lab import lab as labmod
    tmp = Path(tempfile.mkdtemp(prefix="plt-bench-redis-"))
    labmod.LAB_ROOT = tmp / "labs"          # a lab of its own, removed at the end
    say(f"lab up (3 hosts, {'secure' if a.secure else 'plaintext'} links, {a.datapath} data path)")
    made = labmod.up(3, f"br{os.getpid() % 100000}", progress=lambda *_: None, secure_links=a.secure,
                     link_datapath=a.datapath)
    errors: list[str] = []
    load: list[list[float]] = []
    kernel_seen: dict = {}
    try:
        b = Bench(labmod, made)
        for host in ("host1", "host2"):
            b.on(host, "load", "-q", "-i", archive)
        b.on("host1", "run", "-d", "--name", "cache", "-p", "6379:6379", "--health-interval", "1s", REDIS)
        b.until("host2", "run", "--rm", "--link", "cache:cache", REDIS, "redis-cli", "-h", "cache", "ping",
                timeout=90)
        # One linker for the whole run keeps the ambassador (and its counters) between
        # the `run --rm` benchmarks; the data path is the same with or without it.
        b.on("host2", "run", "-d", "--name", "holder", "--link", "cache:cache", "busybox", "sleep", "3600")
        load.append([round(x, 2) for x in os.getloadavg()])
        runs: dict[str, list[dict]] = {k: [] for k in PATHS}
        for i in range(a.rounds):
            order = list(PATHS) if i % 2 == 0 else list(PATHS)[::-1]
            for name in order:
                target = PATHS[name]
                say(f"round {i + 1}/{a.rounds}: {name}")
                out = b.on("host2", "run", "--rm", *target[:-1], REDIS, "redis-benchmark", "-h", target[-1],
                           "-p", "6379", "-c", str(a.clients), "-n", str(a.requests), "-t", "set,get", "--csv",
                           timeout=600)
                runs[name].append(parse(out))
        load.append([round(x, 2) for x in os.getloadavg()])
        if a.datapath == "kernel":
            # Proof the link's bytes took the kernel path: its nft counters, and the
            # forwarder behind the rules (it saw only what the rules left to it).
            from portlink.runtime.client import Client
            amb = Client(made.host("host2").socket).get("/containers/amb-cache-bridge")["ambassador"]
            kernel_seen = {"kernel_connections": amb.get("kernel", {}).get("connections_total"),
                           "forwarder_connections": amb.get("metrics", {}).get("connections_total", {}).get("total")}
    finally:
        errors = labmod.down(made.name, progress=lambda *_: None)
        shutil.rmtree(tmp, ignore_errors=True)
    med = {}
    for k, v in runs.items():
        med[k] = {t.lower() + "_rps": round(statistics.median(r[t] for r in v), 1) for t in TESTS}
        med[k]["mean_rps"] = round(statistics.mean(med[k][t.lower() + "_rps"] for t in TESTS), 1)
        med[k]["runs"] = v
    ratio = round(med["link"]["mean_rps"] / med["published"]["mean_rps"], 3)
    print(json.dumps({"bench": "redis_link", "what": "redis-benchmark SET/GET, host2 -> cache on host1",
                      "links": "secure (mutual TLS)" if a.secure else "plaintext", "datapath": a.datapath,
                      "clients": a.clients, "requests": a.requests, "rounds": a.rounds, "cpus": os.cpu_count(),
                      "loadavg_before_after": load, **med,
                      "ratio_link_vs_published": ratio,
                      "ratio_link_vs_published_by_test": {
                          t: round(med["link"][t.lower() + "_rps"] / med["published"][t.lower() + "_rps"], 3)
                          for t in TESTS},
                      "target_ratio_min": 0.85, "target_met": ratio >= 0.85,
                      **kernel_seen, "lab_down_errors": errors}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
