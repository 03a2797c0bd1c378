"""Load on one simulated host: 200 concurrent `run`s and `rm -f`s against one
daemon, and 500 containers on one network with DNS, links and the firewall
checked against the kernel. Daemon memory is reported, never asserted (the
machine is shared: only a sanity bound)."""

from __future__ import annotations

import json
import random
import re
import sqlite3
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import snapshot
from helpers import dig, wait_for
from portlink.netns import kernel_link
from portlink.runtime.client import Client, CliError

pytestmark = pytest.mark.root

REPORT = Path("/tmp/portlink-load-report.json")


# What the kernel, the firewall and the store hold -------------------------------------
def dnat_elements(rules: str) -> set[tuple[str, str, str]]:
    """The nftables DNAT map elements as (map, key, value), from `system firewall`."""
    out = set()
    for m in re.finditer(r"map (\w+) \{(.*?)\n\t\}", rules, re.S):
        els = re.search(r"elements = \{(.*?)\}", m.group(2), re.S)
        for e in (els.group(1).split(",") if els else []):
            key, value = (" ".join(x.split()) for x in e.split(":"))
            out.add((m.group(1), key, value))
    return out


def expected_elements(containers: list[dict]) -> set[tuple[str, str, str]]:
    out = set()
    for c in containers:
        for p in c["network"]["ports"]:
            any_ip = p["host_ip"] == "0.0.0.0"
            key = f"{p['host_port']}" if any_ip else f"{p['host_ip']} . {p['host_port']}"
            out.add((f"{p['proto']}_{'any' if any_ip else 'ip'}", key,
                     f"{c['network']['ip']} . {p['container_port']}"))
    return out


def store_rows(h, sql: str) -> list[tuple]:
    """Read the daemon's SQLite store directly (read-only, WAL allows a concurrent reader)."""
    db = sqlite3.connect(f"file:{h.state_dir / 'state.db'}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def daemon_rss_kib(h) -> int:
    # SimHost starts portlinkd through nsenter, which execs it: the pid is the daemon's.
    status = Path(f"/proc/{h.proc.pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))


def record(section: str, figures: dict) -> None:
    """Print the figures and keep them in REPORT (one JSON object, a key per test)."""
    print(json.dumps({section: figures}))
    try:
        data = json.loads(REPORT.read_text())
    except (OSError, ValueError):
        data = {}
    data[section] = figures
    REPORT.write_text(json.dumps(data, indent=1) + "\n")


def check_consistent(h, containers: list[dict]) -> None:
    """No two containers share a name, an address or a host port, in the API, in
    the kernel (each namespace's eth0), in the firewall and in the store."""
    names = [c["name"] for c in containers]
    ips = [c["network"]["ip"] for c in containers]
    ports = [(p["proto"], p["host_port"]) for c in containers for p in c["network"]["ports"]]
    assert [n for n, k in Counter(names).items() if k > 1] == []
    assert [i for i, k in Counter(ips).items() if k > 1] == [] and None not in ips
    assert [p for p, k in Counter(ports).items() if k > 1] == []
    # The kernel: the address each container really has.
    kernel = {c["name"]: str(kernel_link.address_of(c["network"]["netns"])) for c in containers}
    assert kernel == {c["name"]: c["network"]["ip"] for c in containers}
    veths = [l for l in snapshot_links(h) if l.startswith("plv-")]
    assert sorted(veths) == sorted(c["network"]["veth"] for c in containers)
    # The firewall: exactly the published ports, each once.
    assert dnat_elements(h.client.get("/system/firewall")["rules"]) == expected_elements(containers)
    # The store: one lease per running container, its address; one port row per published port.
    leases = store_rows(h, "SELECT ip, container_id FROM leases")
    assert sorted(leases) == sorted((c["network"]["ip"], c["id"]) for c in containers)
    port_rows = store_rows(h, "SELECT proto, host_port, container_id FROM ports")
    assert sorted(port_rows) == sorted((p["proto"], p["host_port"], c["id"])
                                       for c in containers for p in c["network"]["ports"])
    runc = h.ns.run("runc", "--root", str(h.state_dir / "runc"), "list", "-q").stdout.split()
    assert sorted(runc) == sorted(c["id"] for c in containers)


def snapshot_links(h) -> list[str]:
    return re.findall(r"^\d+: ([^:@]+)", h.ns.run("ip", "-o", "link", "show").stdout, re.M)


def fire(socket: str, calls: list, workers: int) -> list:
    """Run calls [(method, path, body, query)] from a pool of `workers` threads,
    released together when there is a thread per call; each result is ("ok",
    response) or ("error", message)."""
    start = threading.Barrier(len(calls)) if len(calls) <= workers else None

    def one(call):
        method, path, body, query = call
        if start:
            try:
                start.wait(timeout=60)
            except threading.BrokenBarrierError:
                pass
        try:
            return "ok", Client(socket, timeout=900).request(method, path, body, query)
        except CliError as e:
            return "error", str(e)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, calls))


# 200 concurrent runs, then 200 concurrent removals ------------------------------------
N_RUNS = 200
DUP_NAMES = 10       # pairs asking for one name: exactly one of each pair wins
DUP_PORTS = 5        # pairs asking for one fixed host port: exactly one of each pair wins
PORT_BASE = 18000


def test_200_concurrent_runs_then_removals(nft_host):
    h = nft_host
    h.client.get("/networks/bridge")            # the default network exists before the storm
    before = snapshot(h)
    reqs = []
    for k in range(DUP_NAMES):
        reqs += [{"name": f"dup-{k}", "publish": ["80"]}, {"name": f"dup-{k}"}]
    for k in range(DUP_PORTS):
        reqs += [{"name": f"port-{k}-a", "publish": [f"{PORT_BASE + k}:80"]},
                 {"name": f"port-{k}-b", "publish": [f"{PORT_BASE + k}:8080"]}]
    for i in range(N_RUNS - len(reqs)):
        reqs.append({"name": f"load-{i}", "publish": ["80"] if i % 3 else []})
    random.Random(7).shuffle(reqs)
    calls = [("POST", "/containers", {"image": "busybox", "cmd": ["sleep", "3600"], **r}, None) for r in reqs]
    results = fire(h.socket, calls, workers=N_RUNS)

    # Every request got a definite answer, and the failures are exactly the conflicts.
    assert len(results) == N_RUNS
    failures = [(r["name"], msg) for r, (kind, msg) in zip(reqs, results) if kind == "error"]
    wins = {r["name"]: res for r, (kind, res) in zip(reqs, results) if kind == "ok"}
    for k in range(DUP_NAMES):
        lost = [m for n, m in failures if n == f"dup-{k}"]
        assert len(lost) == 1 and f"container name 'dup-{k}' is already in use" in lost[0], lost
    for k in range(DUP_PORTS):
        lost = [(n, m) for n, m in failures if n.startswith(f"port-{k}-")]
        assert len(lost) == 1, lost
        winner = ({f"port-{k}-a", f"port-{k}-b"} - {lost[0][0]}).pop()
        assert f"host port {PORT_BASE + k}/tcp is already published by container '{winner}'" in lost[0][1]
    assert len(failures) == DUP_NAMES + DUP_PORTS, failures
    assert all(w["status"] == "running" for w in wins.values())

    # The API, the kernel, the firewall and the store agree; nothing is shared.
    containers = json.loads(h.cli("ps", "-a", "--format", "json", check=True).stdout)
    assert sorted(c["name"] for c in containers) == sorted(wins)
    assert all(c["status"] == "running" for c in containers)
    assert {c["id"] for c in containers} == {w["id"] for w in wins.values()}
    check_consistent(h, containers)
    rss = daemon_rss_kib(h)

    # 200 concurrent rm -f: every container by id, and again by name for the contested
    # names (two removals racing for one container) and for the port losers (gone).
    by_id = [("DELETE", f"/containers/{c['id']}", None, {"force": "1"}) for c in containers]
    again = [f"dup-{k}" for k in range(DUP_NAMES)] + [n for n, _ in failures if n.startswith("port-")]
    by_name = [("DELETE", f"/containers/{n}", None, {"force": "1"}) for n in again]
    assert len(by_id) + len(by_name) == N_RUNS
    listing = {"ok": 0, "errors": []}
    done = threading.Event()

    def ps_meanwhile():   # `ps -a` while containers vanish: never an error
        while not done.is_set():
            try:
                Client(h.socket, timeout=900).get("/containers", all="1")
                listing["ok"] += 1
            except CliError as e:
                listing["errors"].append(str(e))

    poller = threading.Thread(target=ps_meanwhile)
    poller.start()
    try:
        rm = fire(h.socket, by_id + by_name, workers=N_RUNS)
    finally:
        done.set()
        poller.join()
    assert listing["errors"] == [] and listing["ok"] > 0, listing
    id_results = dict(zip((c["name"] for c in containers), rm[:len(by_id)]))
    name_results = dict(zip(again, rm[len(by_id):]))
    for name, (kind, msg) in id_results.items():
        if name.startswith("dup-") and kind == "error":
            # The racing removal by name won: this one must say so, nothing worse.
            assert "not found" in msg and name_results[name][0] == "ok", (name, msg, name_results[name])
        else:
            assert kind == "ok", (name, msg)
    for name, (kind, msg) in name_results.items():
        if name.startswith("port-"):
            assert kind == "error" and f"container {name!r} not found" in msg
        else:
            assert kind == "ok" or "not found" in msg, (name, msg)

    # Nothing leaked: veths, namespaces, mounts, leases, rules, runc containers.
    after = wait_for(lambda: (lambda s: s if s == before else None)(snapshot(h)), timeout=30) or snapshot(h)
    assert after == before
    assert store_rows(h, "SELECT * FROM leases") == [] and store_rows(h, "SELECT * FROM ports") == []
    assert store_rows(h, "SELECT kind, name FROM resources WHERE kind != 'bridge'") == []
    record("concurrent_200", {"runs": N_RUNS, "started": len(wins), "conflicts": len(failures),
                              "daemon_rss_kib_at_peak": rss, "daemon_rss_kib_after": daemon_rss_kib(h)})
    assert 10_000 < rss < 4_000_000   # sanity only: a daemon of some MiB, not a measurement target


def test_concurrent_network_changes(nft_host):
    """Networks made, removed and first used at once: no two networks share a
    subnet, a removal never strands a container, the default network comes back once."""
    h = nft_host
    made = fire(h.socket, [("POST", "/networks", {"name": f"auto-{i}"}, None) for i in range(8)] +
                [("POST", "/networks", {"name": "same", "subnet": f"10.93.{i}.0/24"}, None) for i in range(4)],
                workers=12)
    assert [k for k, _ in made[:8]] == ["ok"] * 8, made[:8]
    subnets = [r["subnet"] for _, r in made[:8]]
    assert len(set(subnets)) == 8, subnets
    same = [m for k, m in made[8:] if k == "error"]
    assert len(same) == 3 and all("network 'same' already exists" in m for m in same), made[8:]
    addrs = re.findall(r"inet (\S+) .* (plb-\S+)", h.ns.run("ip", "-o", "-4", "addr").stdout)
    assert len({a for a, _ in addrs}) == len(addrs) == 10   # 8 + same + bridge, each its own gateway

    # A removal racing runs on the network: either it wins (every run then fails
    # naming the network) or a run wins (the removal is refused); never both.
    for attempt in range(3):
        h.client.post("/networks", {"name": "racy"})
        calls = [("POST", "/containers", {"image": "busybox", "network": "racy", "cmd": ["sleep", "600"]}, None)
                 for _ in range(12)]
        # The removal sent a little before, with, or a little after the runs.
        with ThreadPoolExecutor(2) as side:
            send_rm = lambda: fire(h.socket, [("DELETE", "/networks/racy", None, None)], 1)[0]
            send_runs = lambda: fire(h.socket, calls, workers=12)
            first, second = (send_rm, send_runs) if attempt < 2 else (send_runs, send_rm)
            f1 = side.submit(first)
            time.sleep((0.02, 0, 0.05)[attempt])
            f2 = side.submit(second)
            (rm_kind, rm_msg), runs = (f1.result(), f2.result()) if attempt < 2 else (f2.result(), f1.result())
        ran = [r for k, r in runs if k == "ok"]
        failed = [m for k, m in runs if k == "error"]
        assert all("racy" in m and ("not found" in m or "was removed" in m) for m in failed), failed
        if rm_kind == "ok":
            assert ran == [] and "racy" not in [n["name"] for n in h.client.get("/networks")]
        else:
            assert "in use by containers" in rm_msg and ran
            bridge = h.client.get("/networks/racy")["bridge"]
            for c in ran:   # attached to the bridge that still exists
                assert f"master {bridge}" in h.ns.run("ip", "-o", "link", "show", c["network"]["veth"]).stdout
            for c in ran:
                h.client.delete(f"/containers/{c['id']}", force="1")
            h.client.delete("/networks/racy")
        assert store_rows(h, "SELECT * FROM leases") == []

    # The default network, first used by many runs at once after a prune.
    assert h.client.post("/system/prune")["errors"] == []
    out = fire(h.socket, [("POST", "/containers", {"image": "busybox", "cmd": ["sleep", "600"]}, None)
                          for _ in range(12)], workers=12)
    assert [k for k, _ in out] == ["ok"] * 12, out
    assert [n["name"] for n in h.client.get("/networks")] == ["bridge"]
    containers = json.loads(h.cli("ps", "--format", "json", check=True).stdout)
    check_consistent(h, containers)


# 500 containers on one network ---------------------------------------------------------
N_BIG = 500
BIG_SUBNET = "10.91.0.0/22"
HTTPD_PORT = 18499


def _big_spec(i: int) -> dict:
    """Container i of the 500: every 10th publishes a port, every 25th links to one
    of the first ten, the last is a web server on a fixed host port linked to the middle one."""
    spec = {"image": "busybox", "name": f"c{i}", "network": "big", "cmd": ["sleep", "3600"]}
    if i == N_BIG - 1:
        return {**spec, "cmd": ["httpd", "-f", "-p", "80", "-h", "/etc"], "publish": [f"{HTTPD_PORT}:80"],
                "links": [f"c{N_BIG // 2}:mid"]}
    if i % 10 == 0:
        spec["publish"] = ["80"]
    if i % 25 == 0 and i >= 10:
        spec["links"] = [f"c{i // 25 % 10}:peer"]
    return spec


def test_500_containers_on_one_network(nft_host):
    h = nft_host
    h.client.post("/networks", {"name": "big", "subnet": BIG_SUBNET})
    before = snapshot(h)
    rss_idle = daemon_rss_kib(h)
    t0 = time.monotonic()
    for i in range(10):   # the link targets first
        h.client.post("/containers", _big_spec(i))
    middle = fire(h.socket, [("POST", "/containers", _big_spec(i), None) for i in range(10, N_BIG - 1)], workers=8)
    assert [m for k, m in middle if k == "error"] == []
    h.client.post("/containers", _big_spec(N_BIG - 1))
    start_s = time.monotonic() - t0
    rss_full = daemon_rss_kib(h)

    containers = json.loads(h.cli("ps", "--format", "json", check=True).stdout)
    assert len(containers) == N_BIG and all(c["status"] == "running" for c in containers)
    check_consistent(h, containers)   # names, addresses (kernel), DNAT elements, leases, runc
    by = {c["name"]: c for c in containers}
    ip = lambda n: by[n]["network"]["ip"]
    first, mid, last = "c0", f"c{N_BIG // 2}", f"c{N_BIG - 1}"

    # DNS from the first and the last container: exact addresses, names of the network.
    for asker in (first, last):
        for target in (first, mid, last):
            assert dig(h, asker, target) == [ip(target)]
        assert dig(h, asker, f"{mid}.big") == [ip(mid)]
        assert dig(h, asker, f"c{N_BIG}", status=True) == "NXDOMAIN"
    # Link aliases: only for the linking container, in DNS and in /etc/hosts.
    assert dig(h, last, "mid") == [ip(mid)]
    assert dig(h, first, "mid", status=True) == "NXDOMAIN"
    assert dig(h, "c25", "peer") == [ip("c1")] and dig(h, "c250", "peer") == [ip("c0")]
    for linker, alias, target in ((last, "mid", mid), ("c25", "peer", "c1"), ("c475", "peer", "c9")):
        hosts = h.cli("exec", linker, "cat", "/etc/hosts", check=True).stdout.splitlines()
        assert f"{ip(target)}\t{alias} {by[target]['config']['hostname']} {target}" in hosts

    # The firewall: the last container's published port answers from the host.
    url = f"http://127.0.0.1:{HTTPD_PORT}/hostname"
    # (timeout(1), not wget -T: Debian's static busybox 1.35 wget crashes on -T)
    got = wait_for(lambda: h.ns.run("timeout", "5", "busybox", "wget", "-qO-", url, check=False).stdout, timeout=30)
    assert got.strip() == by[last]["config"]["hostname"]
    published = sum(1 for c in containers if c["network"]["ports"])
    assert published == N_BIG // 10 + 1

    t1 = time.monotonic()
    gone = fire(h.socket, [("DELETE", f"/containers/{c['id']}", None, {"force": "1"}) for c in containers],
                workers=8)
    assert [m for k, m in gone if k == "error"] == []
    rm_s = time.monotonic() - t1
    after = wait_for(lambda: (lambda s: s if s == before else None)(snapshot(h)), timeout=60) or snapshot(h)
    assert after == before
    record("containers_500", {"containers": N_BIG, "published": published, "start_all_s": round(start_s, 1),
                              "per_container_ms": round(1000 * start_s / N_BIG, 1), "rm_all_s": round(rm_s, 1),
                              "daemon_rss_kib": {"idle": rss_idle, "with_500": rss_full,
                                                 "after_rm": daemon_rss_kib(h)}})
    assert 10_000 < rss_full < 4_000_000   # sanity only
