"""`portlink stats` arithmetic (no root needed): cgroup v1, v2 and hybrid files
parsed from fixture texts, CPU % from two samples, rows, ambassadors' counts."""

from __future__ import annotations

import json

from portlink.ambassador.forward import Ambassador
from portlink.runtime import stats

CID = "977d5c795885abd67d91806ef4fe54ed8957d597a986543a0125556f743adb7d"

# This machine: v1 controllers each on its own mount, plus cgroup2 at .../unified.
HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_PROC_CGROUP = "\n".join(f"{n}:{c}:/portlink/{CID}" for n, c in
                               ((9, "name=systemd"), (8, "pids"), (7, "blkio"), (4, "memory"),
                                (2, "cpuacct"), (1, "cpu"), (0, ""))) + "\n"

V1_MEMORY_STAT = """\
cache 20975616
rss 53248
rss_huge 0
shmem 0
inactive_file 20975616
hierarchical_memory_limit 9223372036854771712
total_cache 20979712
total_rss 57344
total_inactive_file 20975616
"""
V1_BLKIO = """\
8:0 Read 4096
8:0 Write 1048576
8:0 Sync 1052672
8:0 Async 0
8:0 Discard 0
8:0 Total 1052672
8:16 Read 8192
8:16 Write 0
8:16 Total 8192
Total 1060864
"""
V2_CPU_STAT = "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\nnr_periods 0\n"
V2_MEMORY_STAT = "anon 10485760\nfile 4194304\nkernel 81920\nshmem 0\ninactive_file 4194304\n"
V2_IO_STAT = ("8:0 rbytes=1000 wbytes=2000 rios=3 wios=4 dbytes=0 dios=0\n"
              "253:1 rbytes=10 wbytes=20 rios=1 wios=1 dbytes=0 dios=0\n")
PROC_IO = ("rchar: 8399564\nwchar: 8388608\nsyscr: 26\nsyscw: 8\nread_bytes: 4096\n"
           "write_bytes: 8409088\ncancelled_write_bytes: 4096\n")


def test_cgroup_dirs_on_a_hybrid_host():
    v1, v2 = stats.cgroup_dirs(HYBRID_PROC_CGROUP, HYBRID_MOUNTINFO)
    assert v1["memory"] == f"/sys/fs/cgroup/memory/portlink/{CID}"
    assert v1["cpuacct"] == f"/sys/fs/cgroup/cpuacct/portlink/{CID}"
    assert v1["blkio"] == f"/sys/fs/cgroup/blkio/portlink/{CID}"
    assert v1["name=systemd"] == f"/sys/fs/cgroup/systemd/portlink/{CID}"
    assert v2 == f"/sys/fs/cgroup/unified/portlink/{CID}"


def test_cgroup_dirs_on_v2_and_comounted_v1():
    v1, v2 = stats.cgroup_dirs("0::/system.slice/web.scope\n",
                               "25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n")
    assert v1 == {} and v2 == "/sys/fs/cgroup/system.slice/web.scope"
    v1, v2 = stats.cgroup_dirs("3:cpu,cpuacct:/portlink/x\n1:memory:/portlink/x\n",
                               "30 1 0:3 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
                               "31 1 0:4 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    assert v1 == {"cpu": "/sys/fs/cgroup/cpu,cpuacct/portlink/x", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct/portlink/x",
                  "memory": "/sys/fs/cgroup/memory/portlink/x"}
    assert v2 is None   # no cgroup2 mount


def test_cgroup_dirs_with_a_mount_of_part_of_the_hierarchy():
    # A mount of /portlink (as inside a cgroup namespace): paths are below its root.
    mi = "40 1 0:5 /portlink /mnt/cg rw - cgroup2 cgroup2 rw\n"
    assert stats.cgroup_dirs("0::/portlink/abc\n", mi) == ({}, "/mnt/cg/abc")
    assert stats.cgroup_dirs("0::/other/abc\n", mi) == ({}, None)     # not visible there


def test_v1_figures():
    v1 = {"cpuacct/cpuacct.usage": "48597309\n", "memory/memory.stat": V1_MEMORY_STAT,
          "memory/memory.usage_in_bytes": "21762048\n", "memory/memory.limit_in_bytes": "9223372036854771712\n",
          "blkio/blkio.throttle.io_service_bytes": V1_BLKIO, "pids/pids.current": "3\n"}
    f = stats.figures(v1, {})
    assert f == {"cgroup": "v1", "cpu_ns": 48597309,
                 "memory": {"usage": 21762048, "rss": 57344, "cache": 20979712, "limit": None},
                 "blkio": {"read": 4096 + 8192, "write": 1048576}, "pids": 3, "pids_limit": None}
    limited = stats.figures({**v1, "memory/memory.limit_in_bytes": "104857600\n"}, {})
    assert limited["memory"]["limit"] == 104857600


def test_v1_memory_without_hierarchical_totals():
    m = stats.memory_v1("cache 100\nrss 200\n", "4096", "8192")
    assert (m.usage, m.rss, m.cache, m.limit) == (4096, 200, 100, 8192)


def test_v1_block_counters_empty_then_the_older_files():
    # "Total 0" alone: no device has counters (recent kernels count only once throttling is set up)
    assert stats.blkio_v1("Total 0\n") is None
    f = stats.figures({"blkio/blkio.throttle.io_service_bytes": "Total 0\n",
                       "blkio/blkio.io_service_bytes": "8:0 Read 10\n8:0 Write 20\nTotal 30\n"}, {})
    assert f["blkio"] == {"read": 10, "write": 20}
    assert stats.figures({"blkio/blkio.throttle.io_service_bytes": "Total 0\n"}, {})["blkio"] is None


def test_v2_figures():
    v2 = {"cpu.stat": V2_CPU_STAT, "memory.current": "15000000\n", "memory.max": "max\n",
          "memory.stat": V2_MEMORY_STAT, "io.stat": V2_IO_STAT, "pids.current": "7\n"}
    f = stats.figures({}, v2)
    assert f == {"cgroup": "v2", "cpu_ns": 1_500_000_000,
                 "memory": {"usage": 15000000, "rss": 10485760, "cache": 4194304, "limit": None},
                 "blkio": {"read": 1010, "write": 2020}, "pids": 7, "pids_limit": None}
    assert stats.figures({}, {**v2, "memory.max": "536870912\n"})["memory"]["limit"] == 536870912
    assert stats.figures({}, {**v2, "io.stat": ""})["blkio"] == {"read": 0, "write": 0}


def test_hybrid_takes_each_controller_from_where_it_is_mounted():
    # On this machine unified has cpu.stat (always there) but the v1 cpuacct is the controller.
    f = stats.figures({"cpuacct/cpuacct.usage": "5000\n", "pids/pids.current": "2\n"},
                      {"cpu.stat": V2_CPU_STAT, "pids.current": "9\n"})
    assert (f["cgroup"], f["cpu_ns"], f["pids"]) == ("hybrid", 5000, 2)
    # a controller only in the unified hierarchy is read there
    f = stats.figures({"cpuacct/cpuacct.usage": "5000\n"},
                      {"memory.current": "100", "memory.stat": "anon 60\nfile 40\n"})
    assert f["memory"] == {"usage": 100, "rss": 60, "cache": 40, "limit": None}


def test_task_io_and_meminfo():
    assert stats.task_io(PROC_IO) == stats.BlockIO(4096, 8409088 - 4096)
    assert stats.task_io("read_bytes: 0\nwrite_bytes: 0\ncancelled_write_bytes: 4096\n") == stats.BlockIO(0, 0)
    assert stats.meminfo_total("MemTotal:       24683656 kB\nMemFree: 1 kB\n") == 24683656 * 1024


def test_veth_counters_swap_to_the_containers_side():
    veth = {"rx_bytes": 100, "tx_bytes": 5000, "rx_packets": 2, "tx_packets": 9, "rx_dropped": 0, "tx_dropped": 1}
    assert stats.container_net(veth) == {"rx_bytes": 5000, "tx_bytes": 100, "rx_packets": 9, "tx_packets": 2,
                                         "rx_dropped": 1, "tx_dropped": 0}
    assert stats.container_net(None) is None


def info(status="running", pid=42, ambassador=None) -> dict:
    return {"id": CID, "name": "web", "status": status, "pid": pid if status == "running" else None,
            "config": {"ambassador": ambassador}, "network": {"veth": "plv-977d5c79588"}}


def smp(cpu_ns: int, read_ns: int, pid: int = 42, **kw) -> dict:
    files = {"cgroup": "v1", "cpu_ns": cpu_ns,
             "memory": {"usage": 300 << 20, "rss": 200 << 20, "cache": 100 << 20, "limit": None},
             "blkio": None, "pids": 4, **kw}
    return stats.sample(info(pid=pid), files, stats.BlockIO(7, 8), stats.container_net(
        {"rx_bytes": 1, "tx_bytes": 2, "rx_packets": 3, "tx_packets": 4}), 1 << 30, read_ns, 1000.0)


def test_cpu_percent_is_per_core_like_docker():
    a = smp(cpu_ns=0, read_ns=10**9)
    assert stats.cpu_percent(a, smp(cpu_ns=2 * 10**9, read_ns=2 * 10**9)) == 200.0      # two busy cores
    assert stats.cpu_percent(a, smp(cpu_ns=25 * 10**7, read_ns=2 * 10**9)) == 25.0
    assert stats.cpu_percent(None, a) is None                                            # first sample
    assert stats.cpu_percent(a, smp(cpu_ns=10**9, read_ns=2 * 10**9, pid=43)) is None    # restarted between
    assert stats.cpu_percent(smp(cpu_ns=10**9, read_ns=10**9), smp(cpu_ns=5, read_ns=2 * 10**9)) is None


def test_row_of_a_container_without_a_memory_limit():
    r = stats.row(smp(0, 10**9), smp(5 * 10**8, 2 * 10**9))
    assert r["cpu_percent"] == 50.0
    # no limit of its own: the host's memory (1 GiB here) is the limit
    assert (r["mem_usage"], r["mem_limit"], r["mem_rss"], r["mem_cache"]) == (300 << 20, 1 << 30, 200 << 20, 100 << 20)
    assert r["mem_percent"] == round(300 / 1024 * 100, 2)
    assert (r["net_rx_bytes"], r["net_tx_bytes"], r["net_rx_packets"], r["net_tx_packets"]) == (2, 1, 4, 3)
    # the cgroup kept no block counters: the processes' own accounting stands in, and says so
    assert (r["block_read"], r["block_write"], r["block_source"]) == (7, 8, "tasks")
    assert "conns_open" not in r
    json.dumps(r)
    cells = stats.table_cells(r)
    assert cells[:6] == ["web", CID[:12], "50.00%", "300MiB / 1GiB", "200MiB + 100MiB", "29.30%"]
    assert cells[6:10] == ["2B / 1B", "4 / 3", "7B / 8B", "4"]


def test_row_prefers_the_cgroups_block_counters_and_a_limit_below_the_hosts():
    cur = smp(10, 2 * 10**9, blkio={"read": 1, "write": 2},
              memory={"usage": 50 << 20, "rss": 1, "cache": 2, "limit": 100 << 20})
    r = stats.row(None, cur)
    assert (r["block_read"], r["block_write"], r["block_source"]) == (1, 2, "cgroup")
    assert (r["mem_limit"], r["mem_percent"], r["cpu_percent"]) == (100 << 20, 50.0, None)


def test_row_of_a_stopped_container():
    cur = stats.sample(info(status="exited"), None, None, None, 1 << 30, 5, 6.0)
    r = stats.row(None, cur)
    assert r["status"] == "exited" and r["cpu_percent"] is None and r["mem_usage"] is None
    assert r["net_rx_bytes"] is None and r["block_source"] is None and r["pids"] is None
    assert stats.table_cells(r)[2:] == ["--"] * 8 + [""]


def test_ambassador_rows_show_connection_counts_from_its_stats():
    amb = Ambassador([5432, 80], host="127.0.0.1")    # the forwarder's own object, not listening
    amb.metrics.opened(5432, "10.0.0.5:5432")
    amb.metrics.opened(5432, "10.0.0.6:5432")
    amb.metrics.opened(80, "10.0.0.6:80")
    amb.metrics.closed(5432, "10.0.0.5:5432")
    snap = json.loads(json.dumps(amb.snapshot()))     # what its GET /stats returns
    conns = stats.ambassador_conns(snap)
    assert conns == {"open": 2, "total": 3}
    cur = stats.sample(info(ambassador={"service": "db"}), None, None, None, None, 1, 1.0)
    assert cur["ambassador"] is True
    r = stats.row(None, {**cur, "conns": conns})
    assert (r["conns_open"], r["conns_total"]) == (2, 3)
    assert stats.table_cells(r)[-1] == "2 / 3"
    down = stats.row(None, {**cur, "conns": stats.ambassador_conns({"error": "no metrics from http://x"})})
    assert down["conns_open"] is None and down["conns_error"] == "no metrics from http://x"
    assert stats.ambassador_conns({"metrics": {"connections_open": {}}})["error"].startswith("the ambassador's /stats")


def test_sizes():
    assert stats.binary_size(0) == "0B"
    assert stats.binary_size(1536) == "1.5KiB"
    assert stats.binary_size(25276063744) == "23.5GiB"
    assert stats.decimal_size(16781312) == "16.8MB"
    assert stats.decimal_size(None) == "--"


def test_pids_limit_from_pids_max_max_is_none():
    assert stats.figures({"pids/pids.current": "3\n", "pids/pids.max": "2048\n"}, {})["pids_limit"] == 2048
    assert stats.figures({"pids/pids.current": "3\n", "pids/pids.max": "max\n"}, {})["pids_limit"] is None
    assert stats.figures({}, {"pids.current": "3\n", "pids.max": "50\n"})["pids_limit"] == 50
    # hybrid: the v1 pids controller's limit, not the unified hierarchy's file
    assert stats.figures({"pids/pids.current": "1\n", "pids/pids.max": "50\n"},
                         {"pids.current": "9\n", "pids.max": "max\n"})["pids_limit"] == 50
