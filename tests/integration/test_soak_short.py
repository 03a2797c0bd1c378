"""A short, bounded soak (bench/soak.py for ~36 s): DNS queries from a container,
connections through an ambassador forwarder and container churn against one
simulated host. Every answer must be right, and neither portlinkd nor the
ambassador may keep file descriptors or grow in memory after warm-up (a leak
detector with generous bounds, not a performance target)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
FD_SLACK = 8            # a netlink socket or a pool thread's more is not a leak
RSS_SLACK_KIB = 30 * 1024


def test_short_soak_keeps_fds_and_memory():
    p = subprocess.run([sys.executable, "-P", str(SOAK), "--minutes", "0.6", "--warmup-seconds", "10",
                        "--fd-slack", str(FD_SLACK), "--rss-slack-mib", str(RSS_SLACK_KIB // 1024)],
                       capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    print(json.dumps(r))
    assert r["teardown_errors"] == []

    # The load happened, of every kind, and every answer was right.
    q = r["queries"]
    assert set(q["by_kind"]) >= {"local_udp", "link_alias_udp", "nxdomain_udp", "nodata_udp", "forwarded_udp",
                                 "local_tcp", "forwarded_tcp"}, q
    assert q["errors"] == {}, r["error_examples"]
    c = r["connections"]
    assert c["ok"] > 0 and c["errors"] == {}, r["error_examples"]
    assert r["ambassador_stats"]["metrics"]["connections_total"]["total"] == c["ok"]
    assert r["ambassador_stats"]["metrics"]["connections_open"]["total"] == 0
    assert r["churn"]["cycles"] > 0 and r["churn"]["errors"] == {}, r["error_examples"]

    # No growth: fds come back after the load, memory stays after warm-up.
    for name, proc in r["processes"].items():
        assert proc["fds"]["after_load"] <= proc["fds"]["after_warmup"] + FD_SLACK, (name, proc["fds"])
        assert proc["rss_kib"]["end"] - proc["rss_kib"]["after_warmup"] < RSS_SLACK_KIB, (name, proc["rss_kib"])
    assert r["growth"]["verdict"] == "none"
