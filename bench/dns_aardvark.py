#!/usr/bin/env python3
"""bench/dns_aardvark: the aardvark-dns half of the container DNS benchmark.

Setup (every piece in a network namespace this module creates, named plt-*):

    plt-dnshost-<hex>    bridge br0 10.99.0.1/24; aardvark-dns listens on 10.99.0.1:53
      |-- veth --  plt-dnsclient-<hex>  eth0 10.99.0.2/24   (dnsperf / dig run here)
      `-- veth --  plt-dnstarget-<hex>  eth0 10.99.0.3/24   (the container named "target")

aardvark-dns (/usr/lib/podman/aardvark-dns, 1.4.0) runs the way netavark runs it:
`aardvark-dns --config <dir>/aardvark-dns -p 53 run`, where `<dir>/aardvark-dns/<network>`
is the network's config file. Format (aardvark-dns src/config/mod.rs): the first line
is the gateway IP(s) to bind to, comma-separated; each further line is one container,
`<id> <ipv4s> <ipv6s> <name,alias,...>`, single spaces, an empty field for no IPv6.
aardvark answers only queries whose source IP is a container listed there, so the
client container (10.99.0.2) is listed too. On `run`, 1.4 forks: the parent exits once
the child serves, and the child writes its pid to `<config dir>/aardvark.pid`; that pid
is what `close()` kills (after checking it is still that aardvark-dns). The start runs
with this process as child subreaper, so the server becomes our child and is reaped.

No DNS ever leaves the sandbox: the benchmark asks only for names aardvark serves
itself, and the host namespace has no route beyond 10.99.0.0/24, so a forward to the
machine's upstream resolvers (/etc/resolv.conf) could not get out; setup checks that
(`ip route get <upstream>` must fail there).

Measuring: `run_dnsperf` runs dnsperf (2.10, one thread, `-c` clients, `-q` queries
outstanding) in the client namespace for a bounded time (`-l`), after a 1 s warm-up
pass that is not reported. dnsperf prints throughput and the average latency but no
percentiles (no histogram option in 2.10), so p99 comes from dnsperf itself in verbose
mode (`-v`: one line with the latency of every response), nearest rank. Printing those
lines can cost dnsperf throughput (14 % median over 10 paired runs here while other work
shared the 2 CPUs, a few % on a quiet machine; output goes to a tmpfs file, not a
pipe), so by default the run is split: a plain pass gives
qps/avg/sent/completed/lost, then a pass with `-v` and the same settings, of
min(seconds, 5) s, gives p99; its own qps/avg are reported beside it (`p99_pass`),
`p99_method` names the method. `p99_pass="same"` takes all figures from one `-v` pass.
Both passes run closed-loop at saturation, so latency is mostly queueing in front of
the server. `qps_per_second` (dnsperf -S 1) shows the run's spread: on a small VM it is
easily +-20 % second to second, so compare servers over several runs.

Run alone (root):  .venv/bin/python bench/dns_aardvark.py [--seconds 10] [--clients 8]
[--outstanding 100]; prints one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from portlink.lab.sandbox import Namespace

AARDVARK = "/usr/lib/podman/aardvark-dns"
AARDVARK_VERSION = "1.4.0"       # Debian bookworm; checked at setup
NETWORK = "bench"
SUBNET_PREFIX = 24
GATEWAY = "10.99.0.1"
CLIENT_IP = "10.99.0.2"
TARGET_IP = "10.99.0.3"
TARGET_NAME = "target"
CLIENT_NAME = "client"
START_TIMEOUT = 10.0
PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37
P99_PASS_SECONDS = 5.0          # length of the separate verbose (-v) pass


class BenchError(Exception):
    pass


def _progress(msg: str) -> None:
    if sys.stderr.isatty():
        print(f"[bench/dns_aardvark] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ dnsperf

@dataclass
class DnsperfResult:
    qps: float
    avg_ms: float
    p99_ms: float | None
    sent: int
    completed: int
    lost: int
    raw: str
    p99_method: str = "none"
    p99_pass: dict | None = None        # qps/avg_ms/completed of the -v pass, when separate
    # dnsperf -S 1 intervals as printed; the first is now and then 0.0, a dnsperf quirk
    # (sent / run time show no stall then)
    qps_per_second: list[float] = field(default_factory=list)
    rcodes: dict[str, int] = field(default_factory=dict)
    server_cpu_s: float | None = None   # the server's CPU (user + system) during the main pass

    @property
    def server_cpu_us_per_query(self) -> float | None:
        return self.server_cpu_s / self.completed * 1e6 if self.server_cpu_s is not None and self.completed else None


_STAT = {
    "sent": r"Queries sent:\s+(\d+)",
    "completed": r"Queries completed:\s+(\d+)",
    "lost": r"Queries lost:\s+(\d+)",
    "qps": r"Queries per second:\s+([\d.]+)",
    "avg_s": r"Average Latency \(s\):\s+([\d.]+)",
}
_VERBOSE = re.compile(r"^> (\S+) .* ([\d.]+)$")     # "> NOERROR target A 0.000123"; rcode T = timeout
_INTERVAL = re.compile(r"^\d+\.\d+: ([\d.]+)$")     # -S 1: "<unix time>: <qps>"


def _parse_stats(text: str) -> dict[str, float]:
    out = {}
    for key, pat in _STAT.items():
        m = re.search(pat, text)
        if not m:
            raise BenchError(f"dnsperf output has no {key!r}:\n{text[-3000:]}")
        out[key] = float(m.group(1))
    return out


def _parse_rcodes(text: str) -> dict[str, int]:
    m = re.search(r"Response codes:\s+(.*)", text)
    return {code: int(n) for code, n in re.findall(r"([A-Z]+) (\d+) \(", m.group(1))} if m else {}


def _split_verbose(text: str) -> tuple[list[float], str]:
    """Per-response latencies (seconds) from -v lines, and the rest of the output."""
    lat, rest = [], []
    for line in text.splitlines():
        m = _VERBOSE.match(line)
        if m:
            if m.group(1) not in ("T", "I"):        # timed out / interrupted: no latency
                lat.append(float(m.group(2)))
        else:
            rest.append(line)
    return lat, "\n".join(rest)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


@dataclass
class _Pass:
    seconds: float
    stats: dict[str, float]
    latencies: list[float]
    text: str                       # dnsperf's output without the -v lines


def _dnsperf(client_ns: Namespace, server: str, qfile: Path, seconds: float, clients: int,
             outstanding: int, threads: int, verbose: bool = False) -> _Pass:
    """One bounded dnsperf run: -l bounds the sending, -t 2 the wait for the last answers."""
    argv = ["dnsperf", "-s", server, "-p", "53", "-d", str(qfile), "-l", f"{seconds:g}",
            "-c", str(clients), "-T", str(threads), "-q", str(outstanding), "-t", "2", "-S", "1"]
    if verbose:
        argv.append("-v")
    out_path = qfile.with_suffix(".out")
    # Output to a file (tmpfs when there is one): a pipe reader would compete for the CPUs.
    with open(out_path, "w+") as out:
        p = subprocess.run(client_ns.argv(*argv), stdin=subprocess.DEVNULL, stdout=out,
                           stderr=subprocess.PIPE, text=True, timeout=seconds + 30)
        out.seek(0)
        lat, text = _split_verbose(out.read())
    if p.returncode != 0:
        raise BenchError(f"dnsperf failed ({p.returncode}): {p.stderr.strip() or text[-2000:]}")
    return _Pass(seconds, _parse_stats(text), lat, text)


def _scratch_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") else None


def run_dnsperf(client_ns: Namespace, server: str, queries: list[tuple[str, str]], seconds: float,
                clients: int = 8, outstanding: int = 100, *, threads: int = 1,
                warmup: float = 1.0, p99_pass: str = "separate",
                server_cpu: Callable[[], float] | None = None) -> DnsperfResult:
    """dnsperf in `client_ns` against server:53 for `seconds`, cycling through `queries`
    (name, type), after an unreported `warmup` pass.

    dnsperf reports no percentiles; p99 comes from its -v lines (the latency of every
    response). p99_pass: "separate" (default) takes qps/avg from a plain pass and p99
    from an extra -v pass of min(seconds, P99_PASS_SECONDS) at the same settings, whose
    own qps/avg are in `.p99_pass`; "same" takes every figure from one -v pass; "none"
    gives no p99. `server_cpu`: the server's CPU seconds so far (cpu_seconds of its
    pids), read around the main pass into `.server_cpu_s`."""
    if p99_pass not in ("separate", "same", "none"):
        raise ValueError(f"p99_pass must be separate, same or none, not {p99_pass!r}")
    with tempfile.TemporaryDirectory(prefix="plt-dnsperf-", dir=_scratch_dir()) as tmp:
        qfile = Path(tmp) / "queries.txt"
        qfile.write_text("".join(f"{name} {qtype}\n" for name, qtype in queries))

        def run(secs: float, verbose: bool = False) -> _Pass:
            return _dnsperf(client_ns, server, qfile, secs, clients, outstanding, threads, verbose)

        if warmup > 0:
            run(warmup)
        cpu0 = server_cpu() if server_cpu else None
        main = run(seconds, verbose=p99_pass == "same")
        cpu = server_cpu() - cpu0 if server_cpu else None
        lat_pass = main if p99_pass == "same" else None
        if p99_pass == "separate":
            lat_pass = run(min(seconds, P99_PASS_SECONDS), verbose=True)
    return dataclasses.replace(_result(main, lat_pass, p99_pass), server_cpu_s=cpu)


def cpu_seconds(*pids: int) -> float:
    """User + system CPU seconds of these processes (all their threads) so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick


def _result(main: _Pass, lat_pass: _Pass | None, mode: str) -> DnsperfResult:
    st, text = main.stats, main.text
    p99 = percentile(lat_pass.latencies, 99) * 1000 if lat_pass and lat_pass.latencies else None
    method, extra = "none", None
    if p99 is not None and mode == "same":
        method = "dnsperf -v per-response latencies, nearest rank, same pass as qps/avg"
    elif p99 is not None:
        method = ("dnsperf -v per-response latencies, nearest rank, from a separate -v pass "
                  "with the same settings (-v costs dnsperf some throughput; see p99_pass)")
        vs = lat_pass.stats
        extra = {"seconds": lat_pass.seconds, "qps": vs["qps"], "avg_ms": vs["avg_s"] * 1000,
                 "completed": int(vs["completed"]), "lost": int(vs["lost"])}
        text += "\n--- p99 pass (-v, latency lines removed) ---\n" + lat_pass.text
    intervals = [float(m.group(1)) for m in map(_INTERVAL.match, main.text.splitlines()) if m]
    return DnsperfResult(qps=st["qps"], avg_ms=st["avg_s"] * 1000, p99_ms=p99, sent=int(st["sent"]),
                         completed=int(st["completed"]), lost=int(st["lost"]), raw=text,
                         p99_method=method, p99_pass=extra, qps_per_second=intervals,
                         rcodes=_parse_rcodes(main.text))


# ------------------------------------------------------------------ aardvark side

def _veth_into(host: Namespace, bridge: str, peer: Namespace, host_if: str, ip: str) -> None:
    """veth pair: `host_if` on the bridge in `host`, `eth0` with `ip` in `peer`."""
    host.run("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", peer.name)
    host.run("ip", "link", "set", host_if, "master", bridge, "up")
    peer.run("ip", "addr", "add", f"{ip}/{SUBNET_PREFIX}", "dev", "eth0")
    peer.run("ip", "link", "set", "eth0", "up")


def _no_ipv6(ns: Namespace) -> None:
    # IPv4-only network: no DAD / router solicitations on the new links.
    ns.run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")


def _resolv_conf_servers() -> list[str]:
    """The machine's upstream resolvers, where aardvark-dns would forward to."""
    try:
        lines = Path("/etc/resolv.conf").read_text().splitlines()
    except OSError:
        return []
    return [ln.split()[1] for ln in lines if ln.startswith("nameserver") and len(ln.split()) > 1]


def check_tools() -> None:
    """dnsperf, dig and the aardvark-dns this benchmark is about, or a loud failure."""
    for tool in ("dnsperf", "dig"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed")
    p = subprocess.run([AARDVARK, "--version"], capture_output=True, text=True, timeout=10)
    if p.returncode != 0 or p.stdout.split()[-1:] != [AARDVARK_VERSION]:
        raise BenchError(f"{AARDVARK} --version: {p.stdout.strip()!r}, expected {AARDVARK_VERSION}")


@contextlib.contextmanager
def _child_subreaper():
    """While inside, orphans of our descendants become our children (PR_SET_CHILD_SUBREAPER):
    aardvark-dns's forked server then is our child, so we can reap it after killing it
    instead of leaving a zombie to PID 1."""
    libc = ctypes.CDLL(None, use_errno=True)
    before = ctypes.c_int(0)
    libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(before), 0, 0, 0)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, before.value, 0, 0, 0)


def _gone(pid: int) -> bool:
    """True once `pid` has exited: reaped here if it is our child, else no longer running."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


class AardvarkSide:
    """Context manager: bridge + two container namespaces + aardvark-dns serving them."""

    server_ip = GATEWAY
    name = TARGET_NAME

    def __init__(self) -> None:
        self.namespaces: list[Namespace] = []
        self.workdir: Path | None = None
        self.pid: int | None = None
        self.host_ns: Namespace | None = None
        self.client_ns: Namespace | None = None
        self.target_ns: Namespace | None = None

    # -- lifecycle
    def __enter__(self) -> "AardvarkSide":
        check_tools()
        try:
            self._make_network()
            self._start_aardvark()
            self.check()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _new_ns(self, role: str) -> Namespace:
        ns = Namespace.create(role)
        self.namespaces.append(ns)
        return ns

    def _make_network(self) -> None:
        self.host_ns = self._new_ns("dnshost")
        self.client_ns = self._new_ns("dnsclient")
        self.target_ns = self._new_ns("dnstarget")
        for ns in self.namespaces:
            _no_ipv6(ns)
        h = self.host_ns
        h.run("ip", "link", "add", "br0", "type", "bridge")
        h.run("ip", "addr", "add", f"{GATEWAY}/{SUBNET_PREFIX}", "dev", "br0")
        h.run("ip", "link", "set", "br0", "up")
        _veth_into(h, "br0", self.client_ns, "veth-client", CLIENT_IP)
        _veth_into(h, "br0", self.target_ns, "veth-target", TARGET_IP)

    @property
    def config_dir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "aardvark-dns"

    def _write_config(self) -> None:
        self.config_dir.mkdir(parents=True)
        lines = [GATEWAY,
                 f"{'c' * 64} {CLIENT_IP}  {CLIENT_NAME}",
                 f"{'a' * 64} {TARGET_IP}  {TARGET_NAME}"]
        (self.config_dir / NETWORK).write_text("\n".join(lines) + "\n")

    def _start_aardvark(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.host_ns.name}-"))
        self._write_config()
        log = self.workdir / "aardvark.log"
        argv = self.host_ns.argv(AARDVARK, "--config", str(self.config_dir), "-p", "53", "run")
        # The parent returns once the forked server is ready; output goes to a file, as
        # a pipe would stay open in the daemon and hang the wait for EOF.
        with open(log, "wb") as out, _child_subreaper():
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                               timeout=START_TIMEOUT)
        self.pid = self._read_pid()
        if p.returncode != 0:
            raise BenchError(f"aardvark-dns run failed ({p.returncode}): {log.read_text()[-2000:]}")
        if self.pid is None:
            raise BenchError(f"aardvark-dns wrote no pid file: {log.read_text()[-2000:]}")

    def _read_pid(self) -> int | None:
        """The daemon's pid from its pid file, if that pid is our aardvark-dns."""
        try:
            pid = int((self.config_dir / "aardvark.pid").read_text().strip())
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        ours = os.path.basename(cmd[0]) == b"aardvark-dns" and str(self.config_dir).encode() in cmd
        return pid if ours else None

    def _stop_aardvark(self) -> None:
        pid, self.pid = self.pid or (self._read_pid() if self.workdir else None), None
        if pid is None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if _gone(pid):
                    return
                time.sleep(0.02)
        raise BenchError(f"aardvark-dns pid {pid} did not exit")

    def close(self) -> None:
        errors = []
        try:
            self._stop_aardvark()
        except BaseException as e:       # keep cleaning up
            errors.append(str(e))
        for ns in reversed(self.namespaces):
            ns.delete()
        self.namespaces.clear()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        if errors:
            raise BenchError("; ".join(errors))

    # -- checks
    def check(self) -> None:
        """Fail loudly unless the sandbox is sealed and aardvark answers as expected."""
        for upstream in _resolv_conf_servers():
            r = self.host_ns.run("ip", "route", "get", upstream, check=False)
            if r.returncode == 0:
                raise BenchError(f"aardvark's namespace has a route to upstream {upstream}: {r.stdout}")
        got = self.client_ns.run("dig", f"@{GATEWAY}", TARGET_NAME, "A", "+short",
                                 "+time=2", "+tries=1", check=False).stdout.split()
        if got != [TARGET_IP]:
            raise BenchError(f"dig @{GATEWAY} {TARGET_NAME} A from the client gave {got}, "
                             f"expected [{TARGET_IP}]")


# ------------------------------------------------------------------ main

def result_doc(server: str, r: DnsperfResult, **extra) -> dict:
    """The JSON line for one server: every figure except the raw output, rounded."""
    doc = {"server": server, **asdict(r), **extra}
    del doc["raw"]
    return _rounded(doc)


def _rounded(x):
    if isinstance(x, float):
        return round(x, 3)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="aardvark-dns under dnsperf, in plt-* namespaces")
    ap.add_argument("--seconds", type=float, default=10.0, help="dnsperf -l of the measured pass")
    ap.add_argument("--clients", type=int, default=8, help="dnsperf -c")
    ap.add_argument("--outstanding", type=int, default=100, help="dnsperf -q")
    ap.add_argument("--p99-pass", choices=("separate", "same", "none"), default="separate",
                    help="where p99 comes from (see run_dnsperf)")
    args = ap.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the with-block below still cleans up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if os.geteuid() != 0:
        raise SystemExit("bench/dns_aardvark: needs root (network namespaces)")
    _progress("setting up namespaces and aardvark-dns")
    with AardvarkSide() as side:
        _progress(f"dnsperf for {args.seconds:g}s (+ warm-up, + p99 pass)")
        r = run_dnsperf(side.client_ns, side.server_ip, [(side.name, "A")], args.seconds,
                        args.clients, args.outstanding, p99_pass=args.p99_pass)
    doc = result_doc("aardvark-dns", r, version=AARDVARK_VERSION, seconds=args.seconds,
                     clients=args.clients, outstanding=args.outstanding)
    sys.stdout.write(json.dumps(doc) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
