#!/usr/bin/env python3
"""bench/scale_links: N cross-host links on one host, what they cost: memory,
start time of the 1st and the Nth link, Consul watches per service.

Issue 18's target is 1,000 links on one host within 1 GiB of RSS for
everything portlink runs for them, the 1,000th link starting within 1.5x the
time of the 1st, and one Consul watch per service per host. Today each
ambassador is its own Python process; this bench measures where that stands
and extrapolates (stated as such) to 1,000. It does not change the
architecture.

Topology: a 2-host lab (portlink.lab: namespaces on a switch, a Consul agent
and a portlinkd --secure-links per host, ACLs on). host2 holds the services:
--count names svc0000..., each registered on host2's agent as portlink's
registrar registers a published container on a secure-links host (a
plaintext instance and a Connect-native one, meta portlink-port 80/tcp),
straight through the agent's HTTP API (IDs plbench-...): the services' side
is not what is measured, and N real containers there would each bring their
own server-side ambassador. host1 holds the links: on a network `links`
(10.96.0.0/20), link k is `run -d --name lk --net links --link svcK:db busybox
sleep`: svcK is on no local container but in Consul, so portlinkd starts the
shared ambassador amb-svcK-links (a client side dialling over mutual TLS, its
own leaf certificate from host1's agent, following svcK's Connect instances)
and returns once it has backends. The links are made one after another; the
figure per link is that run's round trip.

Measured after the N links are up:
- memory: every process of every ambassador container (the forwarder and any
  child) plus its monitor (portlink-logshim), VmRSS and PSS
  (/proc/PID/smaps_rollup; shared pages split among their users), in total
  and per link; the linkers (busybox sleep + monitor) apart; portlinkd's RSS
  before and after (its share: records, the DNS snapshot, the catalog cache).
- start: the 1st link's run, the Nth's, the medians of the first and the last
  10, and nth/first.
- Consul: established TCP connections to host1's agent (ss in host1's
  namespace), by source: each ambassador's (its blocking queries: the
  service, its leaf certificate, the CA roots, ...) and portlinkd's (one
  per service in the catalog cache, plus the service list), and the
  blocking queries per service this adds up to.

--plaintext: the lab's daemons run plaintext links (no --secure-links), so
each link's ambassador is served by host1's host forwarder (one process for
all, runtime/host_forwarder.py; the ambassador container's own process
portlink-pause, shim/pause.c). Memory is then every ambassador container's processes and monitors
plus the forwarder; Consul connections include the forwarder's own (ss -p in
host1's namespace, by its pid). The peer, in the same run: --peers sidecars
(`run --ambassador svcK`, each its own Python forwarder process, as every
ambassador was before) measured the same way, per ambassador, and the ratio.

--networks K spreads the links over K networks links0..links{K-1} (link k on
links{k mod K}, its ambassador amb-svcK-links{k mod K} there too): a Linux
bridge holds at most 1,024 ports and each link is two, so --count 1000 needs
K >= 2. The start times also come as the median of each tenth of the links.

Prints one JSON line. Teardown removes the links and ambassadors (concurrent
rm -f, bounded) and then the lab, also on error or ^C. Run as root:
  .venv/bin/python -P bench/scale_links.py [--count 50] [--max-seconds 900]"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dnslib import QTYPE, DNSRecord

from portlink.lab import lab as labmod
from portlink.lab.consul_agent import http_get
from portlink.netns.kernel_ns import entered
from portlink.runtime.client import Client, CliError

PORT = 80
SUBNET = "10.96.0.0/20"          # room for 4,000 containers: N linkers + N ambassadors
MAX_NETWORKS = 16                 # --networks: 10.96.0.0/20, 10.96.16.0/20, ... 10.96.240.0/20


def network_of(k: int, count: int) -> str:
    """The network of link k: `links` alone, or links0..links{K-1} round robin. A
    bridge holds at most 1,024 ports (BR_MAX_PORTS), two per link (linker and
    ambassador): 1,000 links need at least two networks."""
    return "links" if count == 1 else f"links{k % count}"


def subnet_of(i: int, count: int) -> str:
    return SUBNET if count == 1 else f"10.96.{16 * i}.0/20"
TARGET_LINKS, TARGET_RSS_MIB, TARGET_RATIO = 1000, 1024, 1.5
MONITOR = "portlink-logshim"[:15]   # /proc/PID/comm keeps 15 characters


def progress(msg: str) -> None:
    if sys.stderr.isatty():          # as every bench: progress on a terminal only
        print(f"bench/scale_links: {msg}", file=sys.stderr, flush=True)


def svc(k: int) -> str:
    return f"svc{k:04d}"


# /proc ---------------------------------------------------------------------------------
def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(process `pid`'s CPU time, user + system, of all its threads; the machine's
    busy CPU time, /proc/stat less idle and iowait), in seconds."""
    hz = os.sysconf("SC_CLK_TCK")
    st = Path(f"/proc/{pid}/stat").read_text()
    fields = st[st.rindex(")") + 2:].split()
    machine = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (int(fields[11]) + int(fields[12])) / hz, (sum(machine) - machine[3] - machine[4]) / hz


def cpu_per_link(cpu: list[tuple[float, float]], window: int) -> dict:
    """CPU per link over the first and the last `window` links from `cpu` (the
    readings before the first link and after each one): the start's cost with
    the machine's scheduling taken out, which the wall-clock ratio is not."""
    n = len(cpu) - 1
    w = max(1, min(window, n // 4))

    def per(a: int, b: int, i: int) -> float:
        return round(1000 * (cpu[b][i] - cpu[a][i]) / (b - a), 1)
    first = {"portlinkd_ms": per(0, w, 0), "machine_ms": per(0, w, 1)}
    last = {"portlinkd_ms": per(n - w, n, 0), "machine_ms": per(n - w, n, 1)}
    return {"window_links": w, "first": first, "last": last,
            "ratio_portlinkd": round(last["portlinkd_ms"] / first["portlinkd_ms"], 2) if first["portlinkd_ms"] else None,
            "ratio_machine": round(last["machine_ms"] / first["machine_ms"], 2) if first["machine_ms"] else None}


def rss_kib(pid: int) -> int:
    try:
        return int(proc_status(pid).get("VmRSS", "0 kB").split()[0])
    except OSError:
        return 0


def pss_kib(pid: int) -> int:
    try:
        m = re.search(r"^Pss:\s+(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.M)
        return int(m.group(1)) if m else 0
    except OSError:
        return 0


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int(proc_status(int(d.name))["PPid"])
            except (OSError, KeyError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    return kids


def tree(pid: int, kids: dict[int, list[int]]) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def container_procs(pid: int, kids: dict[int, list[int]]) -> tuple[list[int], int | None]:
    """The container's processes (its init and descendants) and its monitor (the
    log shim that is its parent), by pid."""
    try:
        ppid = int(proc_status(pid)["PPid"])
        monitor = ppid if Path(f"/proc/{ppid}/comm").read_text().strip() == MONITOR else None
    except (OSError, KeyError, ValueError):
        monitor = None
    return tree(pid, kids), monitor


def mem(pids: list[int]) -> dict:
    by: dict[str, dict] = {}
    for p in pids:
        try:
            comm = Path(f"/proc/{p}/comm").read_text().strip()
        except OSError:
            continue
        b = by.setdefault(comm, {"processes": 0, "rss_kib": 0, "pss_kib": 0})
        b["processes"] += 1
        b["rss_kib"] += rss_kib(p)
        b["pss_kib"] += pss_kib(p)
    return {"processes": len(pids), "rss_kib": sum(b["rss_kib"] for b in by.values()),
            "pss_kib": sum(b["pss_kib"] for b in by.values()), "by_command": by}


# the lab ------------------------------------------------------------------------------
def _monitor_mounts(pid: int) -> int | None:
    """Lines of the mountinfo of a container's monitor (its init's parent)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            ppid = next(int(l.split()[1]) for l in f if l.startswith("PPid:"))
        with open(f"/proc/{ppid}/mountinfo") as f:
            return sum(1 for _ in f)
    except (OSError, StopIteration):
        return None


class InHost:
    """A thread kept inside a lab host's namespace, for calls that must start there."""

    def __init__(self, netns: str) -> None:
        self.netns, self._inside = netns, []
        self.pool = ThreadPoolExecutor(1, initializer=self._enter)

    def _enter(self) -> None:
        cm = entered(self.netns)          # kept: collected, it would leave the namespace
        cm.__enter__()
        self._inside.append(cm)
        if os.stat("/proc/thread-self/ns/net").st_ino != os.stat(self.netns).st_ino:
            raise RuntimeError(f"thread not inside {self.netns}")

    def call(self, fn, *args):
        return self.pool.submit(fn, *args).result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def register_all(agent: InHost, host: labmod.LabHost, token: str, n: int, plaintext: bool = False) -> None:
    for k in range(n):
        plain = {"ID": f"plbench-{svc(k)}", "Name": svc(k), "Address": host.ip, "Port": 20000 + k,
                 "Meta": {"portlink-port": f"{PORT}/tcp", "portlink-host": "bench"}}
        native = {**plain, "ID": f"plbench-{svc(k)}-tls", "Port": 30000 + k, "Connect": {"Native": True}}
        for body in (plain,) if plaintext else (plain, native):
            code, _, data = agent.call(http_get, f"http://{host.ip}:8500/v1/agent/service/register", 10.0,
                                       None, "PUT", body, token)
            if code != 200:
                raise RuntimeError(f"register {body['ID']}: HTTP {code} {data}")


def dns_a(netns: str, server: str, name: str) -> list[str]:
    with entered(netns):
        sk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sk.settimeout(1)
        q = DNSRecord.question(name, "A")
        sk.sendto(q.pack(), (server, 53))
        r = DNSRecord.parse(sk.recv(4096))
        return sorted(str(rr.rdata) for rr in r.rr if rr.rtype == QTYPE.A)
    except OSError:
        return []
    finally:
        sk.close()


def agent_connections(netns: str, agent_ip: str) -> dict[str, int]:
    """Established TCP connections the agent accepted on its HTTP port, by peer
    address (the agent's side: an ambassador's own side is in its namespace)."""
    p = subprocess.run(["nsenter", f"--net={netns}", "ss", "-Htn", "state", "established",
                        f"( sport = :8500 and src {agent_ip} )"], capture_output=True, text=True, timeout=30)
    out: dict[str, int] = {}
    for line in p.stdout.splitlines():
        cols = line.split()
        if len(cols) >= 4:
            peer = cols[3].rsplit(":", 1)[0]
            out[peer] = out.get(peer, 0) + 1
    return out


def forwarder_pid(host: labmod.LabHost) -> int | None:
    """The host forwarder portlinkd recorded (runtime.host_forwarder), if any."""
    try:
        return json.loads((Path(host.workdir) / "state" / "hostfwd.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def consul_conns_of(netns: str, pid: int) -> int:
    """Established TCP connections process `pid` holds to any port 8500 (its own side)."""
    p = subprocess.run(["nsenter", f"--net={netns}", "ss", "-Htnp", "state", "established", "( dport = :8500 )"],
                       capture_output=True, text=True, timeout=30)
    return sum(1 for line in p.stdout.splitlines() if f"pid={pid}," in line)


def remove_all(sock: str, names: list[str], seconds: float) -> list[str]:
    """rm -f every container named, 4 at a time, within `seconds`; the errors."""
    errors: list[str] = []
    deadline = time.monotonic() + seconds

    def rm(name: str) -> None:
        if time.monotonic() > deadline:
            errors.append(f"rm {name}: out of time")
            return
        try:
            Client(sock, timeout=120).delete(f"/containers/{name}", force="1")
        except CliError as e:
            if "no such" not in str(e).lower():
                errors.append(f"rm {name}: {e}")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(rm, names))
    return errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=50, help="links on host1, to as many services on host2 (default 50)")
    ap.add_argument("--max-seconds", type=float, default=900, help="bound on making the links (default 900)")
    ap.add_argument("--plaintext", action="store_true",
                    help="plaintext links: the ambassadors are served by the host forwarder")
    ap.add_argument("--peers", type=int, default=5,
                    help="with --plaintext: sidecar ambassadors with a process each, measured alongside (default 5)")
    ap.add_argument("--networks", type=int, default=1,
                    help=f"spread the links over this many networks, round robin (1 to {MAX_NETWORKS}; "
                         "default 1: `links`); a bridge holds at most 1,024 ports, two per link")
    ap.add_argument("--name", default=f"sl{os.getpid() % 100000}", help="the lab's name")
    a = ap.parse_args()
    if not 2 <= a.count <= 1000:
        sys.exit("--count must be 2 to 1000")
    if not 1 <= a.networks <= MAX_NETWORKS:
        sys.exit(f"--networks must be 1 to {MAX_NETWORKS}")
    if os.geteuid() != 0:
        sys.exit("bench/scale_links.py must run as root (it starts a lab)")
    load_before = os.getloadavg()
    out: dict = {"bench": "scale_links", "requested": a.count, "errors": []}
    lab = labmod.up(2, a.name, progress=progress, secure_links=not a.plaintext)
    out["mode"] = "plaintext, host forwarder" if a.plaintext else "secure links, a process per ambassador"
    h1, h2 = lab.hosts
    token = labmod.management_token_file(lab).read_text().strip()
    in1, in2 = InHost(h1.netns_path), InHost(h2.netns_path)
    client = Client(h1.socket, timeout=180)
    made: list[str] = []
    try:
        for i in range(a.networks):
            client.post("/networks", {"name": network_of(i, a.networks), "subnet": subnet_of(i, a.networks)})
        out["networks"] = a.networks
        progress(f"registering {a.count} services on host2's agent")
        register_all(in2, h2, token, a.count, a.plaintext)
        probe = client.post("/containers", {"image": "busybox", "name": "probe", "network": network_of(0, a.networks),
                                            "cmd": ["sleep", "86400"]})
        made.append("probe")
        # host1 follows Consul: its resolver answers the first and (waited for a bounded
        # time, reported if not) the last service.
        names = [f"{svc(0)}.service.consul", f"{svc(a.count - 1)}.service.consul"]
        deadline = time.monotonic() + 60
        while True:
            seen = [dns_a(probe["network"]["netns"], probe["dns"]["server"], x) == [h2.ip] for x in names]
            if all(seen) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if not seen[0]:
            raise RuntimeError(f"host1 never learnt {names[0]} from Consul")
        out["last_service_known_to_host1_dns"] = seen[1]
        out["host1_services_seen"] = client.get("/system/consul").get("services_seen")
        daemon_before = rss_kib(h1.daemon_pid)
        conns_before = agent_connections(h1.netns_path, h1.ip)
        lat: list[float] = []
        linked: list[int] = []
        failed: list[str] = []
        stop_at = time.monotonic() + a.max_seconds
        cpu = [cpu_seconds(h1.daemon_pid)]   # host1's portlinkd and the machine, after each link
        progress(f"making {a.count} links")
        for k in range(a.count):
            if time.monotonic() > stop_at:
                out["stopped_early"] = True
                break
            t = time.monotonic()
            net = network_of(k, a.networks)
            try:
                client.post("/containers", {"image": "busybox", "name": f"l{k}", "network": net,
                                            "links": [f"{svc(k)}:db"], "cmd": ["sleep", "86400"]})
            except CliError as e:     # reported, and the next link tried: what fails is the finding
                failed.append(f"l{k} -> {svc(k)}: {e}")
                continue
            lat.append(time.monotonic() - t)
            cpu.append(cpu_seconds(h1.daemon_pid))
            linked.append(k)
            made += [f"l{k}", f"amb-{svc(k)}-{net}"]
            if (k + 1) % 10 == 0:
                progress(f"{k + 1} links, last {1000 * lat[-1]:.0f} ms")
        n = len(lat)
        time.sleep(2)                   # the last ambassadors' first blocking queries are in
        # The daemon's periodic drift check (every --check-interval) at this many links:
        # one on demand, timed; and the mounts runc's start copies (see bench/runc_mounts.py).
        t0 = time.monotonic()
        findings = client.post("/system/check", {})
        drift = {"seconds": round(time.monotonic() - t0, 3), "findings": len(findings["findings"])}
        with open(f"/proc/{h1.daemon_pid}/mountinfo") as f:
            mounts = sum(1 for _ in f)
        cs = {c["name"]: c for c in client.get("/containers", all="1")}
        # What the last linker's runc started from: its monitor's copy of the launch
        # namespace (runtime/launch_ns.py), the same size for the 1st and the Nth.
        launch_mounts = _monitor_mounts(cs[f"l{linked[-1]}"]["pid"]) if linked else None
        if not n:
            raise RuntimeError(f"no link could be made: {failed[:3]}")
        ambs = [cs[f"amb-{svc(k)}-{network_of(k, a.networks)}"] for k in linked]
        linkers = [cs[f"l{k}"] for k in linked]
        kids = children_map()
        amb_procs, amb_monitors, link_procs, link_monitors = [], [], [], []
        for c in ambs:
            p, m = container_procs(c["pid"], kids)
            amb_procs += p
            amb_monitors += [m] if m else []
        for c in linkers:
            p, m = container_procs(c["pid"], kids)
            link_procs += p
            link_monitors += [m] if m else []
        fwd_pid = forwarder_pid(h1) if a.plaintext else None
        fwd_procs = [fwd_pid] if fwd_pid else []
        amb_mem = mem(amb_procs + amb_monitors + fwd_procs)
        fwd_mem = mem(amb_procs + fwd_procs)
        conns = agent_connections(h1.netns_path, h1.ip)
        amb_ips = {c["network"]["ip"] for c in ambs}
        amb_conns = sum(v for k, v in conns.items() if k in amb_ips)
        daemon_conns = conns.get(h1.ip, 0)
        if fwd_pid:
            # The forwarder is in host1's namespace: its connections would count as portlinkd's.
            fwd_consul = consul_conns_of(h1.netns_path, fwd_pid)
            amb_conns += fwd_consul
            daemon_conns -= fwd_consul
            out["host_forwarder"] = {"pid": fwd_pid, **mem([fwd_pid]), "consul_connections": fwd_consul,
                                     "fds": len(os.listdir(f"/proc/{fwd_pid}/fd"))}
            out["ambassador_containers_only"] = mem(amb_procs + amb_monitors)
        per_link_rss_mib = amb_mem["rss_kib"] / 1024 / n
        per_link_pss_mib = amb_mem["pss_kib"] / 1024 / n
        first10, last10 = lat[:10], lat[-10:]
        peer = None
        if a.plaintext and a.peers:
            try:
                # The peer, same run: sidecars with a Python forwarder of their own each.
                side_lat, sides = [], []
                for k in range(min(a.peers, n)):
                    t = time.monotonic()
                    c = client.post("/containers", {"name": f"side{k}", "network": network_of(k, a.networks),
                                                    "image": "busybox",
                                                    "ambassador": {"service": svc(k)}})
                    side_lat.append(time.monotonic() - t)
                    made.append(f"side{k}")
                    sides.append(c)
                time.sleep(2)
                kids = children_map()
                side_procs = []
                for c in sides:
                    c = client.get(f"/containers/side{sides.index(c)}")
                    p, m = container_procs(c["pid"], kids)
                    side_procs += p + ([m] if m else [])
                sm = mem(side_procs)
                side_conns = agent_connections(h1.netns_path, h1.ip)
                side_ips = {client.get(f"/containers/side{k}")["network"]["ip"] for k in range(len(sides))}
                peer = {"what": "sidecar ambassadors, a Python process each (how every ambassador ran before)",
                        "count": len(sides), **sm,
                        "per_ambassador_rss_mib": round(sm["rss_kib"] / 1024 / len(sides), 2),
                        "per_ambassador_pss_mib": round(sm["pss_kib"] / 1024 / len(sides), 2),
                        "start_ms_median": round(1000 * statistics.median(side_lat), 1),
                        "consul_connections_per_ambassador": round(
                            sum(v for k, v in side_conns.items() if k in side_ips) / len(sides), 2)}
                out["peer_per_process"] = peer
            except CliError as e:      # the links' figures stand without the peer's
                out["peer_error"] = str(e)
                peer = None
        out.update({
            "links": n, "link_failures": len(failed), "link_failures_first": failed[:5],
            "first_failed_link": failed[0].split(" ")[0] if failed else None,
            "ambassador_processes_and_monitors": {**amb_mem, "rss_mib": round(amb_mem["rss_kib"] / 1024, 1),
                                                  "pss_mib": round(amb_mem["pss_kib"] / 1024, 1),
                                                  "monitors": len(amb_monitors)},
            "forwarders_only": fwd_mem,
            "per_link_rss_mib": round(per_link_rss_mib, 3), "per_link_pss_mib": round(per_link_pss_mib, 3),
            **({"ratio_per_link_rss_peer_over_hosted": round(peer["per_ambassador_rss_mib"] / per_link_rss_mib, 1),
                "ratio_per_link_pss_peer_over_hosted": round(peer["per_ambassador_pss_mib"] / per_link_pss_mib, 1)}
               if peer else {}),
            "total_rss_mib": round(amb_mem["rss_kib"] / 1024, 1), "total_pss_mib": round(amb_mem["pss_kib"] / 1024, 1),
            "linkers_not_counted": mem(link_procs + link_monitors),
            "daemon_rss_kib": {"before": daemon_before, "with_links": rss_kib(h1.daemon_pid)},
            "start_ms": {"first": round(1000 * lat[0], 1), "nth": round(1000 * lat[-1], 1),
                         "first10_median": round(1000 * statistics.median(first10), 1),
                         "last10_median": round(1000 * statistics.median(last10), 1),
                         "all_median": round(1000 * statistics.median(lat), 1),
                         # how the start grows: the median of each tenth of the links, in order
                         "median_by_tenth": [round(1000 * statistics.median(lat[i * n // 10:(i + 1) * n // 10]), 1)
                                             for i in range(10) if (i + 1) * n // 10 > i * n // 10]},
            "cpu_per_link": cpu_per_link(cpu, 100),
            "drift_check": drift, "mounts_in_daemon_namespace": mounts,
            "mounts_in_launch_namespace": launch_mounts,
            "start_ratio_nth_over_first": round(lat[-1] / lat[0], 2),
            "start_ratio_last10_over_first10": round(statistics.median(last10) / statistics.median(first10), 2),
            "consul": {
                "agent_connections_before_links": conns_before,
                "from_ambassadors": amb_conns, "per_ambassador": round(amb_conns / n, 2),
                "from_portlinkd": daemon_conns,
                "blocking_queries_per_service": round((amb_conns + n) / n, 2),
                "note": "per service: its ambassador's connections to the agent (each holds one blocking "
                        "query: the service's Connect instances, the ambassador's leaf, the CA roots; with "
                        "--plaintext the host forwarder's, which holds none) plus portlinkd's one watch of "
                        "the service (catalog cache)",
            },
            "extrapolated_to_1000_links": {
                "stated_as": "extrapolation: per-link figures measured at this N, times 1000",
                "rss_gib": round(per_link_rss_mib * TARGET_LINKS / 1024, 1),
                "pss_gib": round(per_link_pss_mib * TARGET_LINKS / 1024, 1),
                "blocking_queries_on_the_agent": round((amb_conns + n) / n * TARGET_LINKS),
            },
            "targets": {"links": TARGET_LINKS, "rss_mib_total": TARGET_RSS_MIB, "start_ratio": TARGET_RATIO,
                        "watches_per_service_per_host": 1},
        })
    except Exception as e:
        out["errors"].append(f"{type(e).__name__}: {e}")
        raise
    finally:
        try:
            progress(f"removing {len(made)} containers")
            # The linkers first: an ambassador goes with its last linker; any left then.
            out["errors"] += remove_all(h1.socket, [x for x in made if not x.startswith("amb-")], 600)
            out["errors"] += remove_all(h1.socket, [x for x in made if x.startswith("amb-")], 300)
            in1.close()
            in2.close()
        finally:
            # The lab goes whatever the removals did, an interrupt included: it removes
            # whatever they left.
            errs = labmod.down(a.name, progress=progress)
            out["errors"] += [f"teardown: {e}" for e in errs]
            out["loadavg_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
