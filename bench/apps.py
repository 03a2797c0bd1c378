#!/usr/bin/env python3
"""bench/apps: pgbench across hosts, through a link against straight to the
published port, same lab, same run.

Topology (a 3-host lab of its own, portlink.lab: namespaces, nothing in the root one;
every daemon --secure-links, as `portlink lab up` makes them):
  host1  db: portlink/postgres:15 (scripts/build-images), data in the volume
         pgdata, published on 10.99.0.1:5432
  host2  pgbench in a `run --rm` container of the same image, either
           link       `--link db:db`, -h db: the client-side ambassador on host2,
                      mutual TLS across the lab switch, the server side on host1
           published  -h 10.99.0.1 -p 5432: plain TCP to host1's published port

pgbench -i -s SCALE once (through the link), then ROUNDS rounds, each running both
paths one after the other (the order alternates each round), `pgbench -c CLIENTS
-j 2 -T SECONDS` (TPC-B-like, the default script). Reported: the median tps
(without initial connection time) and average latency of each path, the ratio
link / published, and the failed transactions (must be 0).

Prints one JSON line. Run as root:
  .venv/bin/python -P bench/apps.py [--seconds 10] [--rounds 3] [--clients 4] [--scale 1]"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PG = "portlink/postgres:15"


def say(text: str) -> None:
    if sys.stderr.isatty():
        print(f"[bench/apps] {text}", file=sys.stderr, flush=True)


def parse(out: str) -> dict:
    """pgbench's summary: tps, average latency (ms), processed and failed transactions."""
    pats = {"tps": r"^tps = ([\d.]+) \(without initial connection time\)",
            "latency_ms": r"^latency average = ([\d.]+) ms",
            "processed": r"^number of transactions actually processed: (\d+)",
            "failed": r"^number of failed transactions: (\d+)"}
    got = {k: re.search(p, out, re.M) for k, p in pats.items()}
    missing = [k for k, m in got.items() if m is None]
    if missing:
        raise RuntimeError(f"pgbench's output lacks {', '.join(missing)}:\n{out[-2000:]}")
    return {k: float(m.group(1)) for k, m in got.items()}


class Bench:
    def __init__(self, labmod, made) -> None:
        self.labmod, self.made = labmod, made

    def on(self, host: str, *args: str, timeout: float = 300) -> str:
        cmd, env = self.labmod.exec_argv(self.made.name, host, ["portlink", *args])
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise RuntimeError(f"{host}: portlink {' '.join(args)}: {p.stderr.strip()[-2000:]}")
        return p.stdout

    def until(self, host: str, *args: str, timeout: float = 60) -> str:
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                return self.on(host, *args)
            except RuntimeError as e:
                last = e
                time.sleep(0.5)
        raise RuntimeError(f"not ready within {timeout}s: {last}")


PATHS = {"link": ("--link", "db:db", "db"), "published": ("10.99.0.1",)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="pgbench across lab hosts: through --link vs the published port")
    ap.add_argument("--seconds", type=int, default=10, help="pgbench -T per run (1..300)")
    ap.add_argument("--rounds", type=int, default=3, help="runs per path (1..20)")
    ap.add_argument("--clients", type=int, default=4, help="pgbench -c (1..64)")
    ap.add_argument("--scale", type=int, default=1, help="pgbench -i -s (1..20)")
    a = ap.parse_args(argv)
    if not (1 <= a.seconds <= 300 and 1 <= a.rounds <= 20 and 1 <= a.clients <= 64 and 1 <= a.scale <= 20):
        raise SystemExit("bench/apps: --seconds 1..300, --rounds 1..20, --clients 1..64, --scale 1..20")
    if os.geteuid() != 0:
        raise SystemExit("bench/apps: needs root (network namespaces)")
    built = subprocess.run([str(ROOT / "scripts/build-images"), "postgres"], capture_output=True, text=True,
                           timeout=900)
    if built.returncode != 0:
        raise SystemExit(f"bench/apps: scripts/build-images postgres failed: {built.stderr.strip()}")
    archive = built.stdout.split("\t")[1].strip()

    from portlink.lab import lab as labmod
    tmp = Path(tempfile.mkdtemp(prefix="plt-bench-apps-"))
    labmod.LAB_ROOT = tmp / "labs"          # a lab of its own, removed at the end
    say("lab up (3 hosts)")
    made = labmod.up(3, f"ba{os.getpid() % 100000}", progress=lambda *_: None)
    errors: list[str] = []
    try:
        b = Bench(labmod, made)
        for host in ("host1", "host2"):
            b.on(host, "load", "-q", "-i", archive)
        b.on("host1", "run", "-d", "--name", "db", "-v", "pgdata:/var/lib/postgresql/data", "-p", "5432:5432",
             "--health-interval", "1s", PG)
        say(f"pgbench -i -s {a.scale} through the link")
        b.until("host2", "run", "--rm", "--link", "db:db", PG, "pgbench", "-h", "db", "-U", "postgres", "-i", "-q",
                "-s", str(a.scale), "postgres", timeout=90)
        runs: dict[str, list[dict]] = {k: [] for k in PATHS}
        for i in range(a.rounds):
            order = list(PATHS) if i % 2 == 0 else list(PATHS)[::-1]
            for name in order:
                target = PATHS[name]
                say(f"round {i + 1}/{a.rounds}: {name}")
                out = b.on("host2", "run", "--rm", *target[:-1], PG, "pgbench", "-h", target[-1], "-p", "5432",
                           "-U", "postgres", "-c", str(a.clients), "-j", "2", "-T", str(a.seconds), "postgres",
                           timeout=a.seconds + 120)
                runs[name].append(parse(out))
    finally:
        errors = labmod.down(made.name, progress=lambda *_: None)
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: {"tps": round(statistics.median(r["tps"] for r in v), 1),
               "latency_ms": round(statistics.median(r["latency_ms"] for r in v), 3),
               "failed": int(sum(r["failed"] for r in v)),
               "runs_tps": [round(r["tps"], 1) for r in v]} for k, v in runs.items()}
    print(json.dumps({"bench": "apps", "what": "pgbench TPC-B-like, host2 -> db on host1",
                      "clients": a.clients, "seconds": a.seconds, "rounds": a.rounds, "scale": a.scale,
                      **med, "ratio_link_vs_published": round(med["link"]["tps"] / med["published"]["tps"], 3),
                      "lab_down_errors": errors}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
