#!/usr/bin/env python3
"""bench/scale: N containers on one network of one simulated host.

A sandbox host (plt-scale-*) with its own portlinkd; a network sized for N;
the first ten containers are started one by one (they are link targets), the
rest by --workers concurrent API clients. Every 10th publishes a port (-p 80),
every 25th links to one of the first ten (`peer`). Then:

  dns        from the first and the last container (dig in their namespaces,
             at their gateway): the first, middle and last names resolve to
             exactly their addresses, a link alias to its target's
  firewall   the DNAT map elements are exactly the published ports
  rm         every container removed by --workers concurrent `rm -f`

Prints one JSON line: containers, seconds to start all, per-container ms,
the median request time of the first and last 50 runs (does a run get slower
as the host fills?), daemon RSS before / with N / after removal, DNS and
firewall checks, rm seconds. --max-seconds bounds the start phase: past it no
more runs are sent and the JSON says "stopped_early".

Run as root:  .venv/bin/python -P bench/scale.py [--count 500] [--workers 8]"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from ipaddress import ip_network
from pathlib import Path

from portlink.runtime.client import Client, CliError
from portlink.lab.sandbox import SimHost

SUBNET_BASE = "10.92.0.0"


def progress(msg: str) -> None:
    if sys.stderr.isatty():
        print(msg, file=sys.stderr, flush=True)


def rss_kib(pid: int) -> int:
    m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1))


def subnet_for(n: int) -> str:
    """The smallest /p from SUBNET_BASE with room for n containers and the gateway."""
    prefix = min(24, 32 - math.ceil(math.log2(n + 3)))
    return str(ip_network(f"{SUBNET_BASE}/{prefix}", strict=False))


def spec(i: int) -> dict:
    s = {"image": "busybox", "name": f"c{i}", "network": "scale", "cmd": ["sleep", "3600"]}
    if i % 10 == 0:
        s["publish"] = ["80"]
    if i % 25 == 0 and i >= 10:
        s["links"] = [f"c{i // 25 % 10}:peer"]
    return s


def dig(netns: str, server: str, name: str) -> list[str]:
    p = subprocess.run(["nsenter", f"--net={netns}", "dig", f"@{server}", name, "+short", "+time=3", "+tries=1"],
                       capture_output=True, text=True, timeout=20)
    return p.stdout.split()


def dnat_count(rules: str) -> int:
    els = re.findall(r"elements = \{(.*?)\}", rules, re.S)
    return sum(len([e for e in block.split(",") if e.strip()]) for block in els)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=500, help="containers (default 500)")
    ap.add_argument("--workers", type=int, default=8, help="concurrent API clients (default 8)")
    ap.add_argument("--max-seconds", type=float, default=900, help="bound on the start phase (default 900)")
    a = ap.parse_args()
    if not 11 <= a.count <= 4000:
        sys.exit("--count must be 11 to 4000")
    if os.geteuid() != 0:
        sys.exit("bench/scale.py must run as root (it starts a sandbox host)")
    load_before = os.getloadavg()
    out: dict = {"bench": "scale", "requested": a.count, "workers": a.workers, "errors": []}
    h = SimHost.start("scale")
    try:
        sock = h.socket
        client = Client(sock, timeout=600)
        client.post("/networks", {"name": "scale", "subnet": subnet_for(a.count)})
        pid = h.proc.pid   # nsenter execs portlinkd: this is the daemon
        rss_before = rss_kib(pid)
        lat: dict[int, float] = {}
        deadline = time.monotonic() + a.max_seconds
        stopped = threading.Event()

        def run(i: int) -> None:
            if time.monotonic() > deadline:
                stopped.set()
                return
            t = time.monotonic()
            try:
                Client(sock, timeout=600).post("/containers", spec(i))
                lat[i] = time.monotonic() - t
            except CliError as e:
                out["errors"].append(f"run c{i}: {e}")
            if len(lat) % 50 == 0:
                progress(f"{len(lat)} running")

        t0 = time.monotonic()
        for i in range(10):
            run(i)
        with ThreadPoolExecutor(a.workers) as pool:
            list(pool.map(run, range(10, a.count)))
        start_s = time.monotonic() - t0
        n = len(lat)
        rss_full = rss_kib(pid)
        order = sorted(lat)

        cs = {c["name"]: c for c in client.get("/containers")}
        progress("checking DNS and the firewall")
        checks = []
        names = [order[0], order[len(order) // 2], order[-1]]
        for asker in (f"c{names[0]}", f"c{names[-1]}"):
            c = cs[asker]
            for t in names:
                checks.append(dig(c["network"]["netns"], c["dns"]["server"], f"c{t}") == [cs[f"c{t}"]["network"]["ip"]])
        linker = next((f"c{i}" for i in order if i >= 10 and i % 25 == 0), None)
        if linker:
            c = cs[linker]
            target = f"c{int(linker[1:]) // 25 % 10}"
            checks.append(dig(c["network"]["netns"], c["dns"]["server"], "peer") == [cs[target]["network"]["ip"]])
        published = sum(1 for c in cs.values() if c["network"]["ports"])
        fw_ok = dnat_count(client.get("/system/firewall")["rules"]) == published

        progress("removing")
        t1 = time.monotonic()

        def rm(cid: str) -> None:
            try:
                Client(sock, timeout=600).delete(f"/containers/{cid}", force="1")
            except CliError as e:
                out["errors"].append(f"rm {cid[:12]}: {e}")

        with ThreadPoolExecutor(a.workers) as pool:
            list(pool.map(rm, [c["id"] for c in cs.values()]))
        rm_s = time.monotonic() - t1
        first = [lat[i] for i in order[:50]]
        last = [lat[i] for i in order[-50:]]
        out.update({
            "containers": n, "stopped_early": stopped.is_set(), "published": published,
            "start_all_s": round(start_s, 2), "per_container_ms": round(1000 * start_s / max(n, 1), 1),
            "first50_request_ms": round(1000 * statistics.median(first), 1),
            "last50_request_ms": round(1000 * statistics.median(last), 1),
            "daemon_rss_kib": {"before": rss_before, "with_all": rss_full, "after_rm": rss_kib(pid)},
            "dns_ok": all(checks), "dns_checked": len(checks), "firewall_ok": fw_ok,
            "rm_all_s": round(rm_s, 2), "rm_per_container_ms": round(1000 * rm_s / max(n, 1), 1),
        })
    finally:
        errs = h.destroy()
        out["errors"] += [f"teardown: {e}" for e in errs]
        out["loadavg_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
