"""The state store's durability against its cost: the journal writes a `run`
makes (record, lease, forget, container row updates), with SQLite in WAL mode
at synchronous=NORMAL (survives a killed process) and FULL (survives a power
cut: every commit waits for the disk), side by side in one run.

    .venv/bin/python -P bench/store_sync.py [--runs 200] [--dir DIR]

Prints one JSON line: the median time of one run's writes under each mode and
their ratio. DIR defaults to a temporary directory on the state dir's usual
filesystem (/var/tmp); nothing else is touched."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from portlink.runtime.state import Store

KINDS = ("dir", "mount", "netns", "lease", "veth", "port", "runc")


def one_run(store: Store, i: int) -> float:
    """The store writes of one `run` then `rm`: a row, seven journal records, the
    running update, then the undo's forgets and the row's removal."""
    owner = f"c{i:06d}"
    t = time.perf_counter()
    store.execute("INSERT INTO containers(id,name,spec,status,created) VALUES (?,?,?,?,?)",
                  owner, owner, "{}", "creating", time.time())
    for k in KINDS:
        store.record(k, f"{k}-{owner}", owner)
    store.execute("UPDATE containers SET status='running', pid=1 WHERE id=?", owner)
    for k in reversed(KINDS):
        store.forget(k, f"{k}-{owner}")
    store.execute("DELETE FROM containers WHERE id=?", owner)
    return time.perf_counter() - t


def measure(path: Path, mode: str, runs: int, deadline: float) -> list[float]:
    store = Store(path)
    store._db.execute(f"PRAGMA synchronous={mode}")
    out = []
    for i in range(runs):
        if time.monotonic() > deadline:
            break
        out.append(one_run(store, i))
    store.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--dir", default="/var/tmp")
    p.add_argument("--max-seconds", type=float, default=120)
    a = p.parse_args()
    deadline = time.monotonic() + a.max_seconds
    res = {}
    with tempfile.TemporaryDirectory(prefix="portlink-store-", dir=a.dir) as d:
        for mode in ("NORMAL", "FULL"):
            times = measure(Path(d) / f"{mode}.db", mode, a.runs, deadline)
            res[mode] = round(statistics.median(times) * 1000, 3) if times else None
    ratio = round(res["FULL"] / res["NORMAL"], 2) if res["FULL"] and res["NORMAL"] else None
    print(json.dumps({"bench": "store_sync", "runs": a.runs, "normal_median_ms": res["NORMAL"],
                      "full_median_ms": res["FULL"], "ratio_full_normal": ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
