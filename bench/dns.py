#!/usr/bin/env python3
"""bench/dns: portlink's resolver against Podman's aardvark-dns, same run.

Each side answers a container name on its own network to a client container
on that network, dnsperf (one thread, -c clients, -q outstanding) running in
the client's namespace:

  portlink  a sandbox host (plt-dnsb-*) with its portlinkd; containers
            "target" and "client" on the default network; dnsperf asks the
            gateway (portlink's resolver) for "target" from the client's netns.
  aardvark  bench/dns_aardvark.py: a bridge, two namespaces, aardvark-dns 1.4
            run as netavark runs it, asked for "target".

Rounds alternate (portlink, aardvark, portlink, ...) so drift on a small VM
hits both; the figures are medians over the rounds. p99 comes from dnsperf's
per-response latencies (-v) in a separate pass at the same settings (see
dns_aardvark.run_dnsperf). At saturation latency is queueing (Little's law:
avg ~ outstanding / QPS), so the default -q is 20, not dnsperf's 100.

Prints one JSON line: both sides' qps/avg/p99, and ratio = portlink/aardvark QPS.
Run as root:  .venv/bin/python -P bench/dns.py [--seconds 10] [--rounds 3]"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dns_aardvark import AARDVARK_VERSION, AardvarkSide, DnsperfResult, run_dnsperf  # noqa: E402

from portlink.lab.sandbox import Namespace, SimHost  # noqa: E402


class ContainerNs(Namespace):
    """A portlink container's network namespace, entered by its bind-mount path."""

    def __init__(self, path: str) -> None:
        super().__init__(name=os.path.basename(path))
        self._path = path

    @property
    def path(self) -> str:
        return self._path

    def delete(self) -> None:
        raise RuntimeError("a container's namespace is portlink's to delete")


class PortlinkSide:
    def __enter__(self) -> "PortlinkSide":
        self.host = SimHost.start("dnsb")
        try:
            for name in ("target", "client"):
                self.host.cli("run", "-d", "--name", name, "busybox", "sleep", "3600", check=True)
            info = self.host.client.get("/containers/client")
            self.client_ns = ContainerNs(info["network"]["netns"])
            self.server_ip = info["dns"]["server"]
            self.name = "target"
            want = self.host.client.get("/containers/target")["network"]["ip"]
            got = self.client_ns.run("dig", f"@{self.server_ip}", "target", "+short", "+time=2",
                                     "+tries=1", check=False).stdout.split()
            if got != [want]:
                raise RuntimeError(f"portlink answered {got} for target, expected [{want}]")
        except BaseException:
            self.host.destroy()
            raise
        return self

    def __exit__(self, *exc) -> None:
        errors = self.host.destroy()
        if errors:
            print(f"bench/dns: teardown reported {errors}", file=sys.stderr)


def _summary(runs: list[DnsperfResult]) -> dict:
    med = lambda xs: round(statistics.median(xs), 3) if xs else None
    return {
        "qps": med([r.qps for r in runs]),
        "avg_ms": med([r.avg_ms for r in runs]),
        "p99_ms": med([r.p99_ms for r in runs if r.p99_ms is not None]),
        "qps_runs": [round(r.qps) for r in runs],
        "p99_runs": [round(r.p99_ms, 3) if r.p99_ms is not None else None for r in runs],
        "lost": sum(r.lost for r in runs),
        "rcodes": {k: sum(r.rcodes.get(k, 0) for r in runs) for k in sorted({k for r in runs for k in r.rcodes})},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="portlink vs aardvark-dns under dnsperf")
    ap.add_argument("--seconds", type=float, default=10.0, help="dnsperf -l per measured pass")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per side")
    ap.add_argument("--clients", type=int, default=8, help="dnsperf -c")
    ap.add_argument("--outstanding", type=int, default=20, help="dnsperf -q")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench/dns: needs root (network namespaces)")
    if not (1 <= a.rounds <= 20 and 1 <= a.seconds <= 120):
        raise SystemExit("bench/dns: --rounds 1..20 and --seconds 1..120")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    results: dict[str, list[DnsperfResult]] = {"portlink": [], "aardvark": []}
    with PortlinkSide() as pl, AardvarkSide() as av:
        for i in range(a.rounds):
            for key, side in (("portlink", pl), ("aardvark", av)):
                print(f"bench/dns: round {i + 1}/{a.rounds} {key}", file=sys.stderr, flush=True)
                results[key].append(run_dnsperf(side.client_ns, side.server_ip, [(side.name, "A")],
                                                a.seconds, a.clients, a.outstanding))
    p, v = _summary(results["portlink"]), _summary(results["aardvark"])
    doc = {
        "bench": "dns", "query": "container name, A, same network",
        "seconds": a.seconds, "rounds": a.rounds, "clients": a.clients, "outstanding": a.outstanding,
        "portlink": p, "aardvark_dns": {**v, "version": AARDVARK_VERSION},
        "ratio_qps": round(p["qps"] / v["qps"], 3) if v["qps"] else None,
        "ratio_p99": round(p["p99_ms"] / v["p99_ms"], 3) if p["p99_ms"] and v["p99_ms"] else None,
        "targets": {"ratio_qps_min": 1.0, "portlink_p99_ms_max": 2.0},
    }
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
