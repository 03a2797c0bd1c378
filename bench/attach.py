#!/usr/bin/env python3
"""bench/attach: network attach + detach per container, portlink vs Podman's netavark.

Both sides do the same job for each container, given an existing empty container
network namespace: create a veth pair into it, put the host end on the bridge,
address it, add its default route and publish one port (tcp 8080+i -> 80); then
undo it (rules first, then the veth).

  portlink  in-process calls of the layer the daemon uses: the container's
            layer-2 pin (L2Pins.add: port . MAC . address) + kernel_link.attach +
            NftablesDriver.add_ports, then remove_ports + L2Pins.remove +
            deleting the netns (bridge, base ruleset and bridge table made once
            before timing). netavark pins nothing at layer 2.
  netavark  the binary run the way podman runs it: `netavark --config D
            --rootless false setup|teardown <netns>` with the network options
            JSON on stdin. One untimed warm-up container is attached first and
            detached last, so netavark's bridge and per-network chains exist
            before timing, as portlink's do.

All N containers are attached first, then all detached: the median attach time
of the first 20 against the last 20 shows any per-container growth in firewall
cost.

  docker    Debian's dockerd 20.10 (its own containerd, runc), sealed in a
            sandbox by bench/dockerd_peer.py (plt-attdkr-* netns, private mount
            namespace, its own data-root, exec-root, pidfile, socket; iptables on,
            in that namespace only), with portlink's busybox image `docker load`ed
            (`portlink save` from a sandbox host plt-attpl-* with its portlinkd).
            Two figures, after the two sides above:
            - attach alone: --docker-count running containers (`sleep 3600`,
              default bridge) are each connected to a user network
              (POST /networks/<id>/connect through docker-py on the socket), all
              first, then each disconnected; the same medians as above. Docker
              publishes no port on connect (ports are fixed at create), so this
              is less work than either side above does.
            - `run --rm busybox true` end to end with the CLIs, --rounds rounds,
              order rotated each round: portlink (its default bridge network and
              `--network none`) against docker (the same two). bridge minus none
              is what the network costs inside a run.

Safety: nothing runs in the machine's root network namespace. The script makes
one sandbox namespace per side (`ip netns add plt-bench-<hex>-<side>`) and
re-executes itself inside it with nsenter (`--inner`); the inner process refuses
to run in the root namespace. Container namespaces are files under a temp dir
(/tmp/plt-bench-<hex>-*). Sandboxes, mounts and the temp dir are removed in a
finally block, also on error or Ctrl-C, and the root namespace's links, netns
list and nftables tables are compared with what was there before.

Output: one JSON line on stdout. Progress goes to stderr, only when it is a tty.
Exit 0 whether or not the targets are met; non-zero only on errors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Network

from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dockerd_peer import DockerPeer, DockerPeerError, RootRules  # noqa: E402

from portlink.lab.rootcheck import RootState  # noqa: E402
from portlink.lab.sandbox import VENV_BIN, SimHost  # noqa: E402

NETAVARK = "/usr/lib/podman/netavark"
SUBNET = IPv4Network("10.99.0.0/16")
GATEWAY = IPv4Address("10.99.0.1")
NETAVARK_BRIDGE = "podman9"
BASE_PORT = 8080
CONTAINER_PORT = 80
WINDOW = 20                     # first/last attaches compared for growth
TARGET_RATIO = 10
TARGET_RUN_RM_RATIO = 1 / 3     # portlink's run --rm at most a third of Docker's (issue 18)
DOCKER_IMAGE = "plt-attach/busybox"
DOCKER_NETWORK = "plt-attach-net"
TARGET_GROWTH = 1.5
SIDES = ("portlink", "netavark")
DETACH_GRACE = 120              # seconds past the deadline the detach loop may run

_TTY = sys.stderr.isatty()


def progress(msg: str) -> None:
    if _TTY:
        print(f"[bench/attach] {msg}", file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    print(f"bench/attach: {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- inner side

def _in_sandbox(sandbox: str) -> bool:
    """True when this process is in exactly the sandbox namespace the outer made
    (and not in the namespace of PID 1, when that one is visible)."""
    me = os.stat("/proc/self/ns/net")
    try:
        sb = os.stat(f"/run/netns/{sandbox}")
    except FileNotFoundError:
        return False
    with contextlib.suppress(OSError):
        init = os.stat("/proc/1/ns/net")
        if (init.st_dev, init.st_ino) == (me.st_dev, me.st_ino):
            return False
    return (sb.st_dev, sb.st_ino) == (me.st_dev, me.st_ino)


def _ip_for(slot: int) -> IPv4Address:
    # slot 0 is netavark's warm-up container; containers are slots 1..N.
    return SUBNET.network_address + 2 + slot


def _cid(run: str, slot: int) -> str:
    # 64 hex chars, unique in the first 11 (portlink's veth name keeps 11).
    return (f"{slot:05x}{run}" + "0" * 64)[:64]


class PortlinkSide:
    name = "portlink"

    def __init__(self, run: str, nsdir: str) -> None:
        from portlink.netns import kernel_link, kernel_ns, names
        from portlink.netns.fw_l2 import L2Pins
        from portlink.netns.fw_nftables import Nft, NftablesDriver
        from portlink.netns.model import Endpoint, NetworkSpec, PortMapping
        self._kl, self._ns = kernel_link, kernel_ns
        self._Endpoint, self._PortMapping = Endpoint, PortMapping
        self._names = names
        self._run, self._nsdir = run, nsdir
        net_id = ("bench" + run + "0" * 64)[:64]
        self.net = NetworkSpec(id=net_id, name="bench", subnet=SUBNET, gateway=GATEWAY,
                               bridge=names.bridge_name(net_id))
        self.fw = NftablesDriver()
        self.l2 = L2Pins(Nft())
        self._eps: dict[int, tuple] = {}

    def setup(self) -> None:
        self._kl.ensure_bridge(self.net)
        self.fw.apply_all([self.net], [])
        self.l2.apply_all([])

    def prepare(self, slot: int, path: str) -> None:
        cid = _cid(self._run, slot)
        ip = _ip_for(slot)
        ep = self._Endpoint(container_id=cid, netns_path=path, network=self.net, address=ip,
                            host_ifname=self._names.veth_name(cid))
        pm = self._PortMapping(proto="tcp", host_port=BASE_PORT + slot - 1, container_ip=ip,
                               container_port=CONTAINER_PORT)
        self._eps[slot] = (ep, pm)

    def attach(self, slot: int) -> None:
        ep, pm = self._eps[slot]
        self.l2.add([ep.pin])   # before the veth, as the daemon's journal does
        self._kl.attach(ep)
        self.fw.add_ports([pm])

    def detach(self, slot: int) -> None:
        ep, pm = self._eps[slot]
        errs = self.fw.remove_ports([pm]) + self.l2.remove([ep.pin])
        # As portlinkd's stop does: release the container's namespace and let the
        # kernel remove the veth pair with it (batched), instead of a synchronous
        # veth delete that waits ~20 ms for an RCU grace period. netavark's
        # teardown deletes the veth itself; podman deletes the namespace after it
        # (not timed here), so this only adds work to portlink's side.
        self._ns.delete_netns(ep.netns_path)
        if errs:
            raise BenchError("; ".join(errs))

    def verify(self, slot: int) -> None:
        """Untimed spot check that an attach really did the job."""
        ep, pm = self._eps[slot]
        got = self._kl.address_of(ep.netns_path)
        if got != ep.address:
            raise BenchError(f"portlink container {slot}: eth0 has {got}, expected {ep.address}")
        if f"{pm.host_port} : {pm.container_ip} . {pm.container_port}" not in self.fw.dump():
            raise BenchError(f"portlink container {slot}: port {pm} not in the nftables map")
        if f'"{ep.host_ifname}" . {ep.mac} . {ep.address}' not in self.l2.dump():
            raise BenchError(f"portlink container {slot}: no layer-2 pin for {ep.host_ifname}")

    def close(self) -> None:
        pass


class NetavarkSide:
    name = "netavark"

    def __init__(self, run: str, nsdir: str, cfgdir: str) -> None:
        self._run, self._nsdir, self._cfg = run, nsdir, cfgdir
        self._opts: dict[int, tuple[str, bytes]] = {}
        self._net_id = ("bench" + run + "f" * 64)[:64]
        self.warm_slot = 0

    def _json(self, slot: int) -> bytes:
        cid = _cid(self._run, slot)
        ports = []
        if slot != self.warm_slot:
            ports = [{"host_ip": "", "container_port": CONTAINER_PORT, "host_port": BASE_PORT + slot - 1,
                      "range": 1, "protocol": "tcp"}]
        doc = {
            "container_id": cid,
            "container_name": f"bench-{slot}",
            "port_mappings": ports,
            "networks": {"bench": {"static_ips": [str(_ip_for(slot))], "interface_name": "eth0"}},
            "network_info": {"bench": {
                "name": "bench", "id": self._net_id, "driver": "bridge",
                "network_interface": NETAVARK_BRIDGE,
                "subnets": [{"subnet": str(SUBNET), "gateway": str(GATEWAY)}],
                "ipv6_enabled": False, "internal": False, "dns_enabled": False,
                "ipam_options": {"driver": "host-local"},
            }},
        }
        return json.dumps(doc).encode()

    def _exec(self, verb: str, slot: int) -> None:
        path, data = self._opts[slot]
        r = subprocess.run([NETAVARK, "--config", self._cfg, "--rootless", "false", verb, path],
                           input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if r.returncode != 0:
            raise BenchError(f"netavark {verb} container {slot} failed ({r.returncode}): "
                             f"{r.stderr.decode(errors='replace').strip()[-500:]}")

    def setup(self) -> None:
        pass

    def prepare(self, slot: int, path: str) -> None:
        self._opts[slot] = (path, self._json(slot))

    def attach(self, slot: int) -> None:
        self._exec("setup", slot)

    def detach(self, slot: int) -> None:
        self._exec("teardown", slot)

    def verify(self, slot: int) -> None:
        path, _ = self._opts[slot]
        r = subprocess.run(["nsenter", f"--net={path}", "ip", "-4", "-o", "addr", "show", "dev", "eth0"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if f" {_ip_for(slot)}/" not in r.stdout.decode():
            raise BenchError(f"netavark container {slot}: eth0 lacks {_ip_for(slot)}: {r.stdout!r}")
        r = subprocess.run(["iptables", "-w", "-t", "nat", "-S"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if f"--dport {BASE_PORT + slot - 1} -j DNAT --to-destination {_ip_for(slot)}:{CONTAINER_PORT}" \
                not in r.stdout.decode():
            raise BenchError(f"netavark container {slot}: no DNAT rule for port {BASE_PORT + slot - 1}")

    def close(self) -> None:
        pass


def run_inner(args: argparse.Namespace) -> int:
    if not args.sandbox.startswith("plt-bench-") or not _in_sandbox(args.sandbox):
        warn("--inner runs only inside its plt-bench-* sandbox namespace (run without --inner)")
        return 2
    t_start = time.monotonic()
    deadline = t_start + args.seconds
    from portlink.netns import kernel_ns

    run = args.run
    nsdir = os.path.join(args.workdir, "ns")
    os.makedirs(nsdir, exist_ok=True)
    if args.inner == "portlink":
        side = PortlinkSide(run, nsdir)
    else:
        cfg = os.path.join(args.workdir, "netavark-config")
        os.makedirs(cfg, exist_ok=True)
        side = NetavarkSide(run, nsdir, cfg)

    made: list[str] = []
    slots: list[int] = []
    attached: list[int] = []
    warm_attached = False
    attach_s: list[float] = []
    detach_s: list[float] = []
    stopped_early = False
    prof = None
    if args.profile:
        import cProfile
        prof = cProfile.Profile()
    try:
        side.setup()
        # Container namespaces, made before timing (slot 0: netavark's warm-up).
        first = 0 if args.inner == "netavark" else 1
        for slot in range(first, args.count + 1):
            if time.monotonic() > deadline:
                stopped_early = True
                break
            path = os.path.join(nsdir, f"c{slot}")
            kernel_ns.create_netns(path)
            made.append(path)
            side.prepare(slot, path)
            if slot >= 1:
                slots.append(slot)
        if args.inner == "netavark" and made:
            side.attach(side.warm_slot)     # untimed: creates bridge and network chains
            warm_attached = True
        progress(f"{side.name}: {len(slots)} namespaces ready, attaching")

        spent = 0.0
        for n, slot in enumerate(slots):
            # Leave room for the detaches (netavark's take up to twice its attaches).
            now = time.monotonic()
            if now + 2 * spent + (spent / n if n else 0) > deadline:
                stopped_early = True
                break
            if prof:
                prof.enable()
            t0 = time.perf_counter()
            side.attach(slot)
            dt = time.perf_counter() - t0
            if prof:
                prof.disable()
            attached.append(slot)
            attach_s.append(dt)
            spent += dt
            if n in (0, len(slots) // 2) or slot == slots[-1]:
                side.verify(slot)
            if _TTY and (n + 1) % 50 == 0:
                progress(f"{side.name}: attached {n + 1}/{len(slots)} (last {dt * 1000:.2f} ms)")

        progress(f"{side.name}: {len(attached)} attached at once, detaching")
        hard = deadline + DETACH_GRACE
        while attached:
            if time.monotonic() > hard:
                stopped_early = True
                break
            slot = attached[0]
            if prof:
                prof.enable()
            t0 = time.perf_counter()
            side.detach(slot)
            dt = time.perf_counter() - t0
            if prof:
                prof.disable()
            attached.pop(0)
            detach_s.append(dt)
        if warm_attached:
            side.detach(side.warm_slot)
            warm_attached = False
    finally:
        # Everything else (veths, bridge, rules) lives in the sandbox namespace,
        # which the outer process deletes.
        for path in made:
            try:
                kernel_ns.delete_netns(path)
            except OSError as e:
                warn(f"cannot remove {path}: {e}")
        side.close()

    if prof:
        import io
        import pstats
        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf)
        st.sort_stats("cumulative").print_stats(30)
        st.sort_stats("tottime").print_stats(20)
        print(f"---- cProfile of {side.name} attach+detach ({len(attach_s)} containers) ----\n"
              + buf.getvalue(), file=sys.stderr, flush=True)

    out = {"side": side.name, "attach_s": attach_s, "detach_s": detach_s,
           "stopped_early": stopped_early, "seconds": time.monotonic() - t_start}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


# ---------------------------------------------------------------- outer side


def _sh(*cmd: str, check: bool = True) -> str:
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if check and r.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed: {r.stderr.decode(errors='replace').strip()}")
    return r.stdout.decode(errors="replace")



def _unmount_tree(root: str) -> None:
    from portlink.netns.kernel_ns import unmount
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            try:
                unmount(os.path.join(dirpath, f))
            except OSError as e:
                warn(str(e))


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    # nsenter execs the inner python (no fork), so proc.pid is that process.
    # A Ctrl-C at a terminal reached it already; a SIGTERM to us did not.
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)       # it removes its container namespaces
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _p90(xs: list[float]) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, math.ceil(0.9 * len(s)) - 1)]


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 3)


def summarize(res: dict) -> dict:
    a, d = res["attach_s"], res["detach_s"]
    both = [x + y for x, y in zip(a, d)]
    k = min(WINDOW, max(1, len(a) // 2))
    first, last = _median(a[:k]), _median(a[-k:])
    return {
        "containers": len(a),
        "attach_detach_median_ms": _ms(_median(both)),
        "attach_median_ms": _ms(_median(a)),
        "detach_median_ms": _ms(_median(d)),
        "p90_ms": _ms(_p90(both)),
        "first20_attach_ms": _ms(first),
        "last20_attach_ms": _ms(last),
        "growth": round(last / first, 3) if first and last else None,
        "stopped_early": res["stopped_early"],
    }


# ---------------------------------------------------------------- docker side

def _timed(argv: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise BenchError(f"{' '.join(argv[-6:])} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    return dt


def docker_connect_disconnect(dk: DockerPeer, count: int, deadline: float) -> dict:
    """`count` running containers connected to a user network, all first, then
    each disconnected, timed around each API call."""
    api = dk.api.api                       # docker-py's low-level client: one request each
    net = api.create_network(DOCKER_NETWORK, driver="bridge")["Id"]
    ids = []
    for i in range(count):
        if time.monotonic() > deadline:
            break
        ids.append(dk.docker("run", "-d", "--pull", "never", "--name", f"plt-att{i}", DOCKER_IMAGE,
                             "sleep", "3600").stdout.strip())
    # untimed warm-up: the network's bridge and rules exist before timing, as on the other sides
    api.connect_container_to_network(ids[0], net)
    api.disconnect_container_from_network(ids[0], net)
    attach_s, detach_s, stopped = [], [], len(ids) < count
    for n, cid in enumerate(ids):
        if time.monotonic() > deadline:
            stopped = True
            break
        t0 = time.perf_counter()
        api.connect_container_to_network(cid, net)
        attach_s.append(time.perf_counter() - t0)
        if n in (0, len(ids) - 1):     # untimed check: the container really has an address there
            if not dk.container_ip(cid, DOCKER_NETWORK):
                raise BenchError(f"docker container {cid[:12]} has no address on {DOCKER_NETWORK}")
    for cid in ids[:len(attach_s)]:
        t0 = time.perf_counter()
        api.disconnect_container_from_network(cid, net)
        detach_s.append(time.perf_counter() - t0)
    dk.docker("rm", "-f", *ids, timeout=300)
    return {"attach_s": attach_s, "detach_s": detach_s, "stopped_early": stopped}


def run_rm_rounds(h: SimHost, dk: DockerPeer, rounds: int, deadline: float) -> tuple[dict, bool]:
    pl_env = {**os.environ, "PORTLINK_HOST": h.socket}
    portlink = str(VENV_BIN / "portlink")
    sides = {
        "portlink": ([portlink, "run", "--rm", "busybox", "true"], pl_env),
        "portlink_none": ([portlink, "run", "--rm", "--network", "none", "busybox", "true"], pl_env),
        "docker": (dk.argv("run", "--rm", "--pull", "never", DOCKER_IMAGE, "true"), dk.env),
        "docker_none": (dk.argv("run", "--rm", "--pull", "never", "--network", "none", DOCKER_IMAGE, "true"),
                        dk.env),
    }
    # warm-up, untimed (page cache, bytecode cache, the daemons' first requests)
    warm = {k: v for k, v in pl_env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for argv, env in sides.values():
        _timed(argv, warm if env is pl_env else env)
    times: dict[str, list[float]] = {k: [] for k in sides}
    order, stopped = list(sides), False
    for i in range(rounds):
        if time.monotonic() > deadline:
            stopped = True
            break
        for name in order[i % len(order):] + order[:i % len(order)]:
            argv, env = sides[name]
            times[name].append(_timed(argv, env))
    return times, stopped


def run_docker(args: argparse.Namespace, deadline: float) -> dict:
    h: SimHost | None = None
    dk: DockerPeer | None = None
    errors: list[str] = []
    try:
        progress("docker: a portlink host for the image and run --rm, and the sandboxed dockerd")
        h = SimHost.start("attpl")
        dk = DockerPeer.start("attdkr")
        archive = str(dk.workdir / "busybox.tar")
        h.cli("save", "-o", archive, "busybox", check=True)
        dk.load(archive, DOCKER_IMAGE)
        progress(f"docker: network connect/disconnect of {args.docker_count} containers")
        cd = docker_connect_disconnect(dk, args.docker_count, deadline)
        progress(f"docker: run --rm x {args.rounds}")
        times, stopped = run_rm_rounds(h, dk, args.rounds, deadline)
        version = dk.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    finally:
        if dk is not None:
            errors += dk.close()
        if h is not None:
            errors += h.destroy()
    if errors:
        raise BenchError("docker side teardown: " + "; ".join(errors))
    med = {k: _ms(_median(v)) for k, v in times.items()}
    ratio = lambda a, b: round(a / b, 3) if a and b else None
    return {
        "version": version,
        "network_connect_disconnect": summarize(cd),
        "run_rm": {
            "rounds": len(times["docker"]),
            "portlink_median_ms": med["portlink"], "portlink_p90_ms": _ms(_p90(times["portlink"])),
            "portlink_network_none_median_ms": med["portlink_none"],
            "docker_median_ms": med["docker"], "docker_p90_ms": _ms(_p90(times["docker"])),
            "docker_network_none_median_ms": med["docker_none"],
            "portlink_network_share_ms": round(med["portlink"] - med["portlink_none"], 3)
            if med["portlink"] and med["portlink_none"] else None,
            "docker_network_share_ms": round(med["docker"] - med["docker_none"], 3)
            if med["docker"] and med["docker_none"] else None,
            "ratio_portlink_over_docker": ratio(med["portlink"], med["docker"]),
            "stopped_early": stopped,
        },
    }


def run_outer(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        warn("needs root (network namespaces, bridges, firewall)")
        return 2
    for tool in ("ip", "nsenter", "nft", "iptables"):
        if shutil.which(tool) is None:
            warn(f"{tool} not found")
            return 2
    if not os.access(NETAVARK, os.X_OK):
        warn(f"{NETAVARK} not found: install podman/netavark (scripts/setup)")
        return 2
    if not 1 <= args.count <= 5000:
        warn("--count must be between 1 and 5000")
        return 2
    if not (1 <= args.docker_count <= 500 and 1 <= args.rounds <= 200):
        warn("--docker-count must be 1 to 500 and --rounds 1 to 200")
        return 2

    root_before = RootState.read()
    rules_before = RootRules.read()
    run = secrets.token_hex(4)
    here = os.path.abspath(__file__)
    repo = os.path.dirname(os.path.dirname(here))
    t0 = time.monotonic()
    tmp = tempfile.mkdtemp(prefix=f"plt-bench-{run}-", dir="/tmp")
    sandboxes: list[str] = []
    results: dict[str, dict] = {}
    proc: subprocess.Popen | None = None
    docker_doc: dict | None = None

    def on_term(signum, frame):
        raise KeyboardInterrupt
    old_term = signal.signal(signal.SIGTERM, on_term)
    rc = 0
    try:
        for side in SIDES:
            # portlink first, bounded to a share of the budget; netavark gets the rest.
            share = 0.3 if side == "portlink" else 1.0
            remaining = args.max_seconds * share - (time.monotonic() - t0)
            if remaining <= 1:
                raise BenchError(f"--max-seconds exhausted before the {side} side")
            ns = f"plt-bench-{run}-{side[:2]}"
            _sh("ip", "netns", "add", ns)
            sandboxes.append(ns)
            workdir = os.path.join(tmp, side)
            os.makedirs(workdir)
            cmd = ["nsenter", f"--net=/run/netns/{ns}", sys.executable, here, "--inner", side,
                   "--count", str(args.count), "--seconds", f"{remaining:.3f}", "--run", run,
                   "--workdir", workdir, "--sandbox", ns]
            if args.profile and side == "portlink":
                cmd.append("--profile")
            progress(f"{side}: sandbox {ns}, up to {remaining:.0f} s")
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=repo)
            out, _ = proc.communicate()
            if proc.returncode != 0:
                raise BenchError(f"the {side} side failed (exit {proc.returncode})")
            lines = [l for l in out.decode().splitlines() if l.strip()]
            if not lines:
                raise BenchError(f"the {side} side printed no result")
            results[side] = json.loads(lines[-1])
            proc = None
            _sh("ip", "netns", "del", ns)
            sandboxes.remove(ns)
        if not args.no_docker:
            docker_doc = run_docker(args, time.monotonic() + args.docker_seconds)
    except KeyboardInterrupt:
        warn("interrupted; cleaning up")
        rc = 130
    except (BenchError, DockerPeerError, RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        warn(str(e))
        rc = 1
    finally:
        if proc is not None:
            with contextlib.suppress(KeyboardInterrupt):
                _stop(proc)
        _unmount_tree(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        for ns in sandboxes:
            _sh("ip", "netns", "del", ns, check=False)
        signal.signal(signal.SIGTERM, old_term)

    # The root namespace must look as it did before.
    leaks = root_before.leaks(lambda n: run in n or n.startswith(("plt-attpl-", "plt-attdkr-")), tmp)
    leaks += rules_before.changes()
    for l in leaks:
        warn("LEAK CHECK: " + l)
    if rc:
        return rc
    if leaks:
        return 1

    pl, nv = summarize(results["portlink"]), summarize(results["netavark"])
    ratio = None
    if pl["attach_detach_median_ms"] and nv["attach_detach_median_ms"]:
        ratio = round(nv["attach_detach_median_ms"] / pl["attach_detach_median_ms"], 2)
    doc = {
        "bench": "attach",
        "count": args.count,
        "portlink": pl,
        "netavark": nv,
        "ratio_netavark_over_portlink": ratio,
        "targets": {"ratio_min": TARGET_RATIO, "growth_max": TARGET_GROWTH},
        "met": {"ratio": ratio is not None and ratio >= TARGET_RATIO,
                "growth": pl["growth"] is not None and pl["growth"] <= TARGET_GROWTH},
    }
    if docker_doc is not None:
        dkm = docker_doc["network_connect_disconnect"]["attach_detach_median_ms"]
        rr = docker_doc["run_rm"]["ratio_portlink_over_docker"]
        doc["docker"] = docker_doc
        doc["ratio_docker_connect_disconnect_over_portlink"] = (
            round(dkm / pl["attach_detach_median_ms"], 2) if dkm and pl["attach_detach_median_ms"] else None)
        doc["targets"]["run_rm_ratio_max"] = round(TARGET_RUN_RM_RATIO, 3)
        doc["met"]["run_rm_vs_docker"] = rr is not None and rr <= TARGET_RUN_RM_RATIO
    doc["loadavg"] = os.getloadavg()[0]
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="network attach+detach per container: portlink vs netavark")
    ap.add_argument("--count", type=int, default=200, help="containers attached at once per side (default 200)")
    ap.add_argument("--max-seconds", type=float, default=300.0,
                    help="overall time budget; the loops stop and report what they have (default 300)")
    ap.add_argument("--profile", action="store_true", help="cProfile portlink's attach/detach (to stderr)")
    ap.add_argument("--no-docker", action="store_true", help="skip the Docker side")
    ap.add_argument("--docker-count", type=int, default=20,
                    help="running Docker containers connected and disconnected (default 20)")
    ap.add_argument("--rounds", type=int, default=10, help="rounds of run --rm, portlink and docker (default 10)")
    ap.add_argument("--docker-seconds", type=float, default=300.0,
                    help="time budget of the Docker side, after --max-seconds (default 300)")
    ap.add_argument("--inner", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=300.0, help=argparse.SUPPRESS)
    ap.add_argument("--run", default="", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--sandbox", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        if args.inner:
            if not args.workdir or not args.run or not args.sandbox:
                ap.error("--inner needs --workdir, --run and --sandbox")
            return run_inner(args)
        return run_outer(args)
    except KeyboardInterrupt:
        return 130
    except BenchError as e:
        warn(str(e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
