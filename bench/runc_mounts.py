"""bench/runc_mounts.py: what the mounts of the namespace runc runs in cost each start.

Why: at 1,000 links a host holds ~3,800 mounts of portlink's (an overlay root
and a netns file per container), all in the namespace portlinkd and runc run
in. A new container's mount namespace starts as a copy of that one, and runc
then makes the copy a slave and detaches the old root from it: work that grows
with every mount there. This measures bare `runc run --detach` + `runc delete
--force` of a minimal bundle (busybox `true`, runc's default spec, read-only
root) with 0 extra mounts and then with --mounts more (4 KiB tmpfs each), in
the same run.

Safety: everything happens in a mount namespace of its own (`unshare -m
--propagation private`): the extra mounts are never seen by the host, and go
with that namespace. The bundle and runc's root are in a temp dir removed at
the end; no network is set up (runc's default spec makes an empty netns).

Run as root:  .venv/bin/python -P bench/runc_mounts.py [--mounts 1000,4000] [--runs 10]
Prints one JSON line: the median ms per run + delete at each mount count and
the ratio of the largest to none."""

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


def _sh(*argv: str) -> None:
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"runc_mounts: {' '.join(argv[:4])} failed ({p.returncode}): {p.stderr.strip()[-300:]}")


def _mounts() -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(1 for _ in f)


def inner(a: argparse.Namespace) -> dict:
    """In the private mount namespace: time runc at each mount count."""
    tmp = tempfile.mkdtemp(prefix="plt-runcmounts-")
    bundle, root, mnt = (os.path.join(tmp, d) for d in ("bundle", "root", "mnt"))
    try:
        os.makedirs(os.path.join(bundle, "rootfs", "bin"))
        shutil.copy("/bin/busybox", os.path.join(bundle, "rootfs", "bin", "busybox"))
        os.symlink("busybox", os.path.join(bundle, "rootfs", "bin", "true"))
        _sh("runc", "spec", "--bundle", bundle)
        with open(os.path.join(bundle, "config.json")) as f:
            spec = json.load(f)
        spec["process"].update(args=["/bin/true"], terminal=False)
        spec["root"]["readonly"] = True
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(spec, f)
        out, made = {}, 0
        for want in [0, *a.mounts]:
            for i in range(made, want):
                d = os.path.join(mnt, str(i))
                os.makedirs(d)
                _sh("mount", "-t", "tmpfs", "-o", "size=4k", "plt-runcmounts", d)
            made = max(made, want)
            times = []
            for i in range(a.runs):
                cid = f"plt-runcmounts-{os.getpid()}-{want}-{i}"
                t0 = time.perf_counter()
                _sh("runc", "--root", root, "run", "--detach", "--bundle", bundle, cid)
                _sh("runc", "--root", root, "delete", "--force", cid)
                times.append((time.perf_counter() - t0) * 1000)
            out[str(want)] = {"mounts_in_namespace": _mounts(), "run_delete_median_ms": round(statistics.median(times), 1)}
        return out
    finally:
        subprocess.run(["umount", "-R", "-l", mnt], capture_output=True)   # goes with the namespace anyway
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mounts", default="1000,4000", help="extra mount counts, ascending (default 1000,4000)")
    ap.add_argument("--runs", type=int, default=10, help="runc run + delete per mount count (default 10)")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.mounts = sorted(int(x) for x in a.mounts.split(","))
    if not 0 < a.runs <= 100 or not a.mounts or a.mounts[0] < 1 or a.mounts[-1] > 20000:
        ap.error("--runs is 1..100 and --mounts counts are 1..20000")
    if a.inner:
        print(json.dumps(inner(a)), flush=True)
        return 0
    if os.geteuid() != 0:
        ap.error("run as root (runc and mount)")
    p = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-P", __file__, "--inner",
                        "--mounts", ",".join(map(str, a.mounts)), "--runs", str(a.runs)],
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"runc_mounts: the inner run failed: {p.stderr.strip()[-500:]}")
    by = json.loads(p.stdout.strip().splitlines()[-1])
    none, most = by["0"]["run_delete_median_ms"], by[str(a.mounts[-1])]["run_delete_median_ms"]
    print(json.dumps({"bench": "runc_mounts", "runs": a.runs, "by_extra_mounts": by,
                      f"ratio_{a.mounts[-1]}_vs_0": round(most / none, 2),
                      "ms_per_1000_mounts": round((most - none) / a.mounts[-1] * 1000, 1),
                      "loadavg": os.getloadavg()[0]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
