"""`portlink stats` on a simulated host with real containers: CPU of a busy loop
against an idle one, memory (RSS and cache) of containers that allocate, block
I/O, a transfer's bytes on both ends the right way round, the live stream, and
an ambassador's connection counts (real Consul)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from helpers import in_container_ns, wait_for
from portlink.lab.sandbox import VENV_BIN, SimHost
from test_consul import consul  # noqa: F401  (the fixture is used by name)
from test_monitor import events
from test_recovery_consul import register_external, through_link

pytestmark = pytest.mark.root

MB = 1_000_000
KEEP = "sleep 600 & wait"     # not a bare last command: sh would exec it and free what it holds


def stats_json(h: SimHost, *names: str, interval: str = "1") -> dict[str, dict]:
    """One `portlink stats --no-stream --format json` run: name -> row."""
    r = h.cli("stats", "--no-stream", "--format", "json", "--interval", interval, *names)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in r.stdout.splitlines()]
    return {row["name"]: row for row in rows}


def run(h: SimHost, name: str, script: str) -> None:
    h.cli("run", "-d", "--name", name, "busybox", "sh", "-c", script, check=True)


def test_cpu_of_a_busy_container_against_an_idle_one(nft_host):
    h = nft_host
    run(h, "busy", "while :; do :; done")
    run(h, "idle", KEEP)
    rows = stats_json(h, interval="2")
    busy, idle = rows["busy"]["cpu_percent"], rows["idle"]["cpu_percent"]
    # One core flat out is 100%; the margins leave room for a machine shared with other test runs.
    assert busy > 10 and idle < 5 and busy > 4 * idle, rows
    assert rows["busy"]["pids"] == 1 and rows["idle"]["pids"] == 2      # sh and its sleep


def test_memory_rss_and_cache_follow_what_containers_hold(nft_host):
    h = nft_host
    run(h, "idle", KEEP)
    # 20 MB in a shell variable (anonymous memory), 20 MB in /dev/shm (tmpfs: page cache)
    run(h, "heap", f"x=$(head -c 20000000 /dev/zero | tr '\\0' a); echo held; {KEEP}")
    run(h, "shm", f"head -c 20000000 /dev/zero > /dev/shm/blob; echo held; {KEEP}")
    assert wait_for(lambda: all("held" in h.cli("logs", n).stdout for n in ("heap", "shm")), timeout=30)
    rows = stats_json(h)
    idle, heap, shm = rows["idle"], rows["heap"], rows["shm"]
    assert heap["mem_rss"] - idle["mem_rss"] >= 19 * MB, (heap, idle)
    assert shm["mem_cache"] - idle["mem_cache"] >= 19 * MB, (shm, idle)
    assert shm["mem_rss"] < heap["mem_rss"] - 15 * MB
    for r in rows.values():
        assert r["mem_usage"] >= r["mem_rss"] and 0 < r["mem_limit"] and r["mem_percent"] is not None
    assert heap["mem_usage"] >= 20 * MB and shm["mem_usage"] >= 20 * MB


def test_block_io(nft_host):
    """Direct I/O is the reliable assertion: its bios are issued by the container's
    own process, so both sources count them (the cgroup's block counters where the
    kernel keeps them, else the processes' I/O accounting). A buffered write lands
    in the page cache, charged to the container's memory cgroup; when it reaches
    the disk is up to writeback (cgroup v1 charges that to no container)."""
    h = nft_host
    run(h, "direct", "dd if=/dev/zero of=/data bs=1M count=16 oflag=direct && "
                     f"dd if=/data of=/dev/null bs=1M iflag=direct && echo done; {KEEP}")
    run(h, "buffered", f"dd if=/dev/zero of=/data bs=1M count=16 && echo done; {KEEP}")
    assert wait_for(lambda: all("done" in h.cli("logs", n).stdout for n in ("direct", "buffered")), timeout=60)
    rows = stats_json(h)
    d, b = rows["direct"], rows["buffered"]
    assert d["block_write"] >= 16 * 2**20 and d["block_read"] >= 16 * 2**20, d
    assert d["block_source"] in ("cgroup", "tasks")
    assert b["mem_cache"] >= 16 * 2**20, b


def test_a_transfer_counts_on_both_ends_the_right_way_round(nft_host):
    h = nft_host
    run(h, "server", f"mkdir -p /www && head -c {5 * MB} /dev/zero > /www/big && exec httpd -f -p 80 -h /www")
    run(h, "client", KEEP)
    before = stats_json(h)
    ip = h.client.get("/containers/server")["network"]["ip"]
    r = h.cli("exec", "client", "wget", "-q", "-O", "/dev/null", f"http://{ip}/big")
    assert r.returncode == 0, r.stderr
    after = stats_json(h)
    s, c = after["server"], after["client"]
    grew = lambda row, k: row[k] - before[row["name"]][k]
    assert grew(s, "net_tx_bytes") >= 5 * MB and grew(c, "net_rx_bytes") >= 5 * MB, (s, c)
    # the other way only the request and ACKs
    assert grew(s, "net_rx_bytes") < MB and grew(c, "net_tx_bytes") < MB, (s, c)
    assert grew(c, "net_rx_packets") > 0 and grew(s, "net_tx_packets") >= grew(s, "net_rx_packets") // 10
    # the client's own eth0, inside its namespace, agrees with what the host-side veth counted
    link = json.loads(in_container_ns(h, "client", "ip", "-s", "-j", "link", "show", "eth0").stdout)[0]
    eth0 = link["stats64"]["rx"]["bytes"]
    assert abs(eth0 - c["net_rx_bytes"]) <= eth0 // 100, (eth0, c["net_rx_bytes"])


def test_table_stream_all_and_errors(nft_host):
    h = nft_host
    run(h, "web", KEEP)
    run(h, "gone", "exit 0")
    assert wait_for(lambda: h.client.get("/containers/gone")["status"] == "exited", timeout=20)

    r = h.cli("stats", "--no-stream")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "CONTAINER", "ID"] and "MEM USAGE / LIMIT" in lines[0]
    assert "CONNS" not in lines[0]                       # no ambassador here
    assert [l.split()[0] for l in lines[1:]] == ["web"]  # running only
    assert re.search(r"\d+(\.\d+)?%", lines[1]) and "--" not in lines[1]

    r = h.cli("stats", "--no-stream", "-a")
    gone = next(l for l in r.stdout.splitlines() if l.startswith("gone"))
    assert gone.split()[2:4] == ["--", "--"]             # a stopped container has no figures

    r = h.cli("stats", "--no-stream", "nosuch")
    assert r.returncode == 125 and "nosuch" in r.stderr

    # Live, piped: one block per interval, each a header and a row, until stopped.
    p = subprocess.Popen([str(VENV_BIN / "portlink"), "--host", h.socket, "stats", "--interval", "0.3"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        headers = 0
        deadline = time.monotonic() + 30
        while headers < 3 and time.monotonic() < deadline:
            line = p.stdout.readline()
            headers += line.startswith("NAME")
        assert headers == 3, "the live stats stream printed fewer than 3 blocks"
        assert p.poll() is None, "the live stream ended by itself"
    finally:
        p.kill()        # the CLI this test started
        p.wait(10)

    # Live JSON: one object per container per sample.
    p = subprocess.Popen([str(VENV_BIN / "portlink"), "--host", h.socket, "stats", "--format", "json",
                          "--interval", "0.3", "web"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        rows = [json.loads(p.stdout.readline()) for _ in range(3)]
    finally:
        p.kill()
        p.wait(10)
    assert [r["name"] for r in rows] == ["web"] * 3
    assert rows[0]["time"] < rows[1]["time"] < rows[2]["time"]


def test_api_samples_are_raw_counters(nft_host):
    h = nft_host
    run(h, "web", KEEP)
    one = h.client.get("/containers/web/stats")
    assert one["name"] == "web" and one["cgroup"] in ("v1", "v2", "hybrid")
    assert one["cpu_ns"] > 0 and one["memory"]["usage"] > 0 and one["pids"] == 2 and one["net"] is not None
    later = h.client.get("/stats")
    assert [s["name"] for s in later] == ["web"] and later[0]["read_ns"] > one["read_ns"]
    assert later[0]["cpu_ns"] >= one["cpu_ns"]


def test_an_ambassadors_row_shows_its_connections(consul):
    h = consul.h
    server = consul.out.serve_peer_address(9000)
    try:
        register_external(consul)
        # The daemon learns of the service from a blocking query: retry while it has not yet.
        assert wait_for(lambda: h.cli("run", "-d", "--name", "web", "--link", "ext:sql", "busybox", "sleep",
                                      "3600").returncode == 0, timeout=15, interval=0.3)
        amb = h.client.get("/containers/amb-ext-bridge")
        for _ in range(2):
            assert through_link(h, "web", "sql") != ""
        # a third connection held open: nc waits on a stdin that never ends
        h.cli("run", "-d", "--name", "holder", "busybox", "sh", "-c",
              f"sleep 600 | nc {amb['network']['ip']} 80", check=True)

        def counts():
            row = stats_json(h, "amb-ext-bridge", interval="0.2")["amb-ext-bridge"]
            return row if (row["conns_open"], row["conns_total"]) == (1, 3) else None
        row = wait_for(counts, timeout=20)
        last = stats_json(h, "amb-ext-bridge")["amb-ext-bridge"]
        assert row, {k: v for k, v in last.items() if k.startswith("conns")}
        # the same figures as any container; a link's ambassador is served by the host
        # forwarder (runtime.host_forwarder), so its own process is portlink-pause alone
        # (static musl: a few pages of its own)
        assert 0 < row["mem_rss"] < 1 * MB and row["pids"] == 1 and row["net_rx_bytes"] > 0
        assert Path(f"/proc/{amb['pid']}/comm").read_text().strip() == "portlink-pause"
        table = h.cli("stats", "--no-stream", "--interval", "0.2").stdout.splitlines()
        assert table[0].rstrip().endswith("CONNS")
        assert next(l for l in table if l.startswith("amb-ext-bridge")).rstrip().endswith("1 / 3")
        # portlink-pause is PID 1 of the ambassador's pid namespace, where a signal without a
        # handler is dropped: SIGTERM ends it through its own handler, with exit code 0. TERM
        # is not a hosted ambassador's stop signal (KILL), so it is restarted 0.2 s later:
        # its `die` event, not a look at its status, is what shows the end.
        h.cli("kill", "-s", "TERM", "amb-ext-bridge", check=True)
        died = wait_for(lambda: events(h, "amb-ext-bridge", "die"), 15)
        assert died and died[-1]["attrs"]["exit_code"] == 0, died
        again = wait_for(lambda: (lambda c: c if c["status"] == "running" and c["pid"] != amb["pid"] else None)(
            h.client.get("/containers/amb-ext-bridge")), 15)
        assert again, "the ambassador ended by TERM was not restarted"
    finally:
        server.kill()   # the peer-address server this test started
        server.wait(10)
