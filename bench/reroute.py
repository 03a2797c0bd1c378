#!/usr/bin/env python3
"""bench/reroute: how soon a planned move in Consul reaches new connections, and
how many client connections fail meanwhile: portlink's ambassador against the
industry's consul-template + HAProxy (its mechanism emulated, see below).

Topology (one namespace plt-reroute-*, loopback only; nothing in the root namespace):
  consul       a dev agent on 127.0.0.1:8500 (portlink.lab.consul_agent)
  backends     A on 127.0.0.1:7001, B on 127.0.0.1:7002 (this file, --backend-server):
               each connection gets the backend's name and a newline, then an echo
  ambassador   :17000, python -P -m portlink.ambassador --service benchsvc
               --consul 127.0.0.1:8500 --policy drain --drain-deadline 5
  haproxy      :17001, master-worker (-W) with hard-stop-after 5s (the drain's
               equivalent), reloaded by the watcher below
  watcher      this file, --watcher: consul-template's mechanism without its
               quiescence wait: blocking queries on /v1/health/service/benchsvc?passing,
               on a change it renders the HAProxy config (atomic rename), sends the
               master SIGUSR2 (a seamless reload: the listeners pass to the new worker)
               and waits until the new worker runs before it handles the next change

A move is planned and make-before-break: register the new backend's instance
(benchsvc-b, say) and then deregister the old one (benchsvc-a) through the
agent's HTTP API, back to back. t0 is taken just before the register PUT; from
t0 a prober opens a new connection through the path under test every --interval
(1 ms) and reads the answer. first_new = t0 to the first answer from the new
backend (the headline figure); cutover = t0 to the first answer after the last
one from the old backend (so also the old backend's removal). A move ends after
50 answers in a row from the new backend once the deregister PUT returned, or
after --timeout (a miss). Moves alternate A->B, B->A and are --gap apart.

While moves run, a steady client process opens connections all the time: one
thread a short connection every 2 ms (connect, read the name, close), two
threads back-to-back held connections (the name, then an echo every 25 ms for
300 ms, well inside the 5 s drain). A refused/reset/timed-out connection, an
empty answer or a held connection cut short is a failure; so is any failed probe.

--tls: the same moves through mutual TLS (issue 15's secure links). Each backend
gets a server-side ambassador (A: :7101 -> 7001, B: :7102 -> 7002, `--tls-serve
benchsvc`, leaves from the agent's Connect CA), registered as a Connect-native
instance of benchsvc at the server side's port; the ambassador under test is
the client side (`--service benchsvc --tls-dial web`: it follows the
mesh-capable instances and dials them over mTLS). HAProxy's servers then carry
`ssl crt web.pem ca-file roots.pem verify required` with the agent's leaf for
web, so both sides cross the same server sides.

Each side runs alone, in alternating blocks of --block moves (ambassador block,
HAProxy block, ...), so neither's reaction loads the CPU during the other's.

Prints one JSON line: per side median/p99/max of first_new and cutover, misses,
failed connections (with the breakdown), the ratios ambassador / haproxy_reload,
and the targets (reported, not asserted). Progress goes to stderr.
Run as root:  .venv/bin/python -P bench/reroute.py [--moves 100] [--block 25] [--tls]"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PY = sys.executable
HERE = Path(__file__).resolve()
HAPROXY = "/usr/sbin/haproxy"
SERVICE = "benchsvc"
CONSUL = "127.0.0.1:8500"
BACKENDS = {"A": 7001, "B": 7002}
SERVER_SIDES = {"A": 7101, "B": 7102}      # --tls: the server-side ambassador in front of each backend
SOURCE = "web"                              # --tls: the identity the client sides dial as
DAEMON_WARM = 1             # runtime/ambassadors.py TLS_WARM: the --tls-warm portlinkd gives client sides
AMB_PORT, HAP_PORT, AMB_METRICS = 17000, 17001, 17900
DRAIN_DEADLINE = 5
AMB_COUNTERS = ("connections_total", "connect_failures_total", "rejected_total", "reroutes_total")
SIDES = ("ambassador", "haproxy_reload")


def log(msg: str) -> None:
    print(f"bench/reroute: {msg}", file=sys.stderr, flush=True)


# -- helpers that run inside the namespace (re-invoked as this file) ------------------

def backend_server(name: str, port: int) -> int:
    """Answer each connection with `name`\\n, then echo until EOF."""
    import asyncio
    greeting = f"{name}\n".encode()

    class Proto(asyncio.Protocol):
        def connection_made(self, t):
            self.t = t
            t.write(greeting)

        def data_received(self, data):
            self.t.write(data)

        def eof_received(self):
            return False

    async def serve():
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(Proto, "127.0.0.1", port, reuse_address=True, backlog=1024)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        srv.close()

    asyncio.run(serve())
    return 0


def classify(e: BaseException) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(e, EOFError):
        return "empty"
    if isinstance(e, BrokenPipeError):
        return "broken_pipe"
    return f"other:{type(e).__name__}"


def read_line(s: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(64)
        if not chunk:
            raise EOFError(buf)
        buf += chunk
    return buf


def probe(port: int, timeout: float = 1.0) -> str:
    """One new connection: the backend's name, or 'error:<kind>'."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            return read_line(s).decode().strip()
    except (OSError, EOFError) as e:
        return "error:" + classify(e)


def steady_client(port: int, interval: float, hold: float, echo_every: float) -> int:
    """Open connections until stdin closes; then print the counts as JSON."""
    stop = threading.Event()
    lock = threading.Lock()
    c = {"short": 0, "short_ok": 0, "held": 0, "held_ok": 0, "failures": {}, "answers": {}, "held_spans": []}

    def count(kind: str, answer: str | None = None, fail: str | None = None, span=None) -> None:
        with lock:
            if span is not None:   # (start, end, backend, ok), time.monotonic(): the clock is machine-wide
                c["held_spans"].append((round(span[0], 6), round(span[1], 6), answer, fail is None))
            c[kind] += 1
            if fail:
                c["failures"][f"{kind}:{fail}"] = c["failures"].get(f"{kind}:{fail}", 0) + 1
            else:
                c[kind + "_ok"] += 1
                c["answers"][answer] = c["answers"].get(answer, 0) + 1

    def short() -> None:
        while not stop.is_set():
            t = time.monotonic()
            ans = probe(port)
            count("short", ans, ans[6:] if ans.startswith("error:") else None)
            stop.wait(max(0.0, t + interval - time.monotonic()))

    def held() -> None:
        while not stop.is_set():
            name = None
            t = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    name = read_line(s).decode().strip()
                    end = time.monotonic() + hold
                    i = 0
                    while time.monotonic() < end:
                        msg = f"ping {i}\n".encode()
                        s.sendall(msg)
                        if read_line(s) != msg:
                            raise EOFError("echo mismatch")
                        i += 1
                        time.sleep(echo_every)
                count("held", name, span=(t, time.monotonic()))
            except (OSError, EOFError) as e:
                count("held", name, ("cut_" if name else "") + classify(e), span=(t, time.monotonic()))

    threads = [threading.Thread(target=short, daemon=True)] + [threading.Thread(target=held, daemon=True)
                                                                for _ in range(2)]
    for t in threads:
        t.start()
    sys.stdin.read()          # until the parent closes our stdin
    stop.set()
    for t in threads:
        t.join(hold + 5)
    print(json.dumps(c), flush=True)
    return 0


def render_haproxy(instances: list[tuple[str, str, int]], port: int, tls: str = "") -> str:
    """The HAProxy config consul-template would render for these (id, address, port);
    `tls`: the options of each server line (mutual TLS to server-side ambassadors)."""
    servers = "".join(f"    server {iid} {addr}:{p}{tls}\n" for iid, addr, p in sorted(instances))
    return ("global\n"
            f"    hard-stop-after {DRAIN_DEADLINE}s\n"
            "    maxconn 4096\n"
            "defaults\n"
            "    mode tcp\n"
            "    timeout connect 2s\n"
            "    timeout client 30s\n"
            "    timeout server 30s\n"
            "frontend fe\n"
            f"    bind 127.0.0.1:{port}\n"
            "    default_backend be\n"
            "backend be\n"
            "    balance roundrobin\n"
            f"{servers}")


def health(index: int, wait: str = "30s") -> tuple[int, list[tuple[str, str, int]]]:
    """One (blocking, when index > 0) query of the service's passing instances."""
    import urllib.request
    q = f"?passing&index={index}&wait={wait}" if index else "?passing"
    with urllib.request.urlopen(f"http://{CONSUL}/v1/health/service/{SERVICE}{q}", timeout=40) as r:
        got = int(r.headers.get("X-Consul-Index", "0"))
        entries = json.loads(r.read() or b"[]")
    out = []
    for e in entries:
        s = e.get("Service") or {}
        out.append((s.get("ID", ""), s.get("Address") or (e.get("Node") or {}).get("Address", ""), int(s["Port"])))
    return got, out


def master_cli(sock_path: str, command: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect(sock_path)
        s.sendall(command.encode() + b"\n")
        s.shutdown(socket.SHUT_WR)     # one command, then the master CLI closes
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode(errors="replace")


def current_worker(sock_path: str) -> str | None:
    """The pid of HAProxy's current worker, from the master CLI's `show proc`."""
    lines = master_cli(sock_path, "show proc").splitlines()
    try:
        i = lines.index("# workers")
    except ValueError:
        return None
    for line in lines[i + 1:]:
        if line.startswith("#"):
            return None
        if line.split():
            return line.split()[0]
    return None


def watcher(cfg: str, master_pid: int, master_sock: str, port: int, events: str, ready: str, tls: str = "") -> int:
    """consul-template's mechanism, no quiescence wait: watch, render, reload, repeat."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    loaded = Path(cfg).read_text()
    index, first = 0, True
    with open(events, "a") as ev:
        while True:
            try:
                got, instances = health(index)
            except OSError as e:
                print(f"watcher: consul: {e}", file=sys.stderr, flush=True)
                time.sleep(0.1)
                index = 0
                continue
            seen = time.monotonic()
            index = 1 if got < 1 else (0 if got < index else got)
            text = render_haproxy(instances, port, tls)
            if text != loaded and instances:       # consul-template keeps the file when the set is empty too
                tmp = cfg + ".tmp"
                Path(tmp).write_text(text)
                os.replace(tmp, cfg)
                before = current_worker(master_sock)
                os.kill(master_pid, signal.SIGUSR2)
                deadline = time.monotonic() + 10
                now = None
                while time.monotonic() < deadline:
                    try:
                        now = current_worker(master_sock)
                    except OSError:
                        now = None     # the master is re-executing itself
                    if now is not None and now != before:
                        break
                    time.sleep(0.001)
                loaded = text
                ev.write(json.dumps({"servers": [i[0] for i in sorted(instances)], "reload_ms":
                                     round((time.monotonic() - seen) * 1000, 3), "worker": now,
                                     "ok": now is not None and now != before}) + "\n")
                ev.flush()
            if first:
                first = False
                Path(ready).write_text("ready\n")


# -- the benchmark ------------------------------------------------------------------------

class Prober(threading.Thread):
    """A thread that lives inside the namespace and runs one move's probing per job."""

    def __init__(self, netns: str, interval: float, timeout: float, tail: int = 50) -> None:
        super().__init__(daemon=True)
        self.netns, self.interval, self.timeout, self.tail = netns, interval, timeout, tail
        self.jobs: queue.Queue = queue.Queue()
        self.ready = threading.Event()

    def run(self) -> None:
        from portlink.netns.kernel_ns import entered
        with entered(self.netns):
            self.ready.set()
            while (job := self.jobs.get()) is not None:
                try:
                    job["result"] = self.probe_move(**job["args"])
                except BaseException as e:     # handed back to the main thread
                    job["result"] = e
                job["done"].set()

    def submit(self, **args) -> dict:
        job = {"args": args, "done": threading.Event(), "result": None}
        self.jobs.put(job)
        return job

    def probe_move(self, port: int, new: str, old: str, go: threading.Event, settled: threading.Event) -> dict:
        go.wait(30)
        start = time.perf_counter()
        trace: list[tuple[float, str]] = []
        run = 0
        while True:
            t = time.perf_counter()
            if t - start > self.timeout:
                break
            ans = probe(port)
            trace.append((time.perf_counter(), ans))
            run = run + 1 if (ans == new and settled.is_set()) else 0
            if run >= self.tail:
                break
            delay = t + self.interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        return {"trace": trace, "start": start}

    def probe_until(self, port: int, want: str, timeout: float) -> str:
        """From the main thread: probe until `want` answers (a block's start)."""
        go, settled = threading.Event(), threading.Event()
        go.set()
        settled.set()
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            job = self.submit(port=port, new=want, old="", go=go, settled=settled)
            job["done"].wait(self.timeout + 10)
            r = job["result"]
            if isinstance(r, BaseException):
                raise r
            if r and r["trace"]:
                last = r["trace"][-1][1]
                if last == want:
                    return last
            time.sleep(0.1)
        raise RuntimeError(f"port {port} did not answer {want!r} within {timeout}s (last answer {last!r})")


def haproxy_tls_options(agent, tmp: Path) -> str:
    """HAProxy's server options for mutual TLS to the server sides: the agent's
    Connect leaf for SOURCE as its client certificate, Connect's roots as its CA."""
    leaf = roots = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:       # the CA may still be starting
        code, _, leaf = agent.get(f"/v1/agent/connect/ca/leaf/{SOURCE}", timeout=10)
        code2, _, roots = agent.get("/v1/agent/connect/ca/roots", timeout=10)
        if code == 200 and code2 == 200 and roots.get("Roots"):
            break
        time.sleep(0.2)
    else:
        raise RuntimeError(f"no connect leaf for {SOURCE} from the agent within 30s (HTTP {code})")
    pem, ca = tmp / f"{SOURCE}.pem", tmp / "roots.pem"
    fd = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(leaf["CertPEM"].rstrip("\n") + "\n" + leaf["PrivateKeyPEM"])
    ca.write_text("".join(r["RootCert"].rstrip("\n") + "\n" for r in roots["Roots"]))
    return f" ssl crt {pem} ca-file {ca} verify required"


def pct(xs: list[float], q: float) -> float | None:
    s = sorted(xs)
    return round(s[max(0, math.ceil(q * len(s)) - 1)], 3) if s else None   # nearest rank


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Consul move -> new connections: ambassador vs consul-template+HAProxy")
    ap.add_argument("--moves", type=int, default=100, help="timed moves per side (1..1000)")
    ap.add_argument("--block", type=int, default=25, help="moves per block; blocks alternate the sides")
    ap.add_argument("--interval", type=float, default=0.001, help="seconds between the prober's connections")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds before a move counts as missed")
    ap.add_argument("--gap", type=float, default=0.2, help="seconds between moves")
    ap.add_argument("--steady-interval", type=float, default=0.002, help="seconds between the steady short connections")
    ap.add_argument("--backend-server", nargs=2, metavar=("NAME", "PORT"), help=argparse.SUPPRESS)
    ap.add_argument("--steady-client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--tls", action="store_true",
                    help="through mutual TLS: the ambassador is a client side dialling server-side ambassadors "
                         "(HAProxy dials them with TLS too)")
    ap.add_argument("--watcher", nargs=6, metavar=("CFG", "MASTER_PID", "MASTER_SOCK", "PORT", "EVENTS", "READY"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--tls-warm", type=int, default=None, metavar="N",
                    help=f"with --tls: the client side's --tls-warm (default {DAEMON_WARM}, as portlinkd "
                         "starts client sides; 0: a TLS connection per client)")
    ap.add_argument("--sides", default=",".join(SIDES), help=f"the sides to run, comma-separated ({','.join(SIDES)})")
    ap.add_argument("--watcher-tls", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.backend_server:
        return backend_server(a.backend_server[0], int(a.backend_server[1]))
    if a.steady_client:
        return steady_client(a.steady_client, a.steady_interval, 0.3, 0.025)
    if a.watcher:
        cfg, pid, sock, port, events, ready = a.watcher
        return watcher(cfg, int(pid), sock, int(port), events, ready, a.watcher_tls)

    if os.geteuid() != 0:
        raise SystemExit("bench/reroute: needs root (network namespaces)")
    if not (1 <= a.moves <= 1000 and 1 <= a.block <= 1000 and 0 <= a.interval <= 0.1
            and 0.5 <= a.timeout <= 30 and 0 <= a.gap <= 5 and 0.0005 <= a.steady_interval <= 1):
        raise SystemExit("bench/reroute: --moves 1..1000, --block 1..1000, --interval 0..0.1, --timeout 0.5..30, "
                         "--gap 0..5, --steady-interval 0.0005..1")
    sides = tuple(dict.fromkeys(x.strip() for x in a.sides.split(",") if x.strip()))
    if not sides or any(x not in SIDES for x in sides):
        raise SystemExit(f"bench/reroute: --sides takes one or both of {', '.join(SIDES)}")
    if a.tls_warm is not None and not (a.tls and 0 <= a.tls_warm <= 64):
        raise SystemExit("bench/reroute: --tls-warm 0..64, only with --tls")
    if a.tls and a.tls_warm is None:
        a.tls_warm = DAEMON_WARM
    if not os.access(HAPROXY, os.X_OK):
        raise SystemExit(f"bench/reroute: needs {HAPROXY} (./scripts/setup installs it)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

    from portlink.lab.consul_agent import AgentSpec, http_get, start_agent, wait_ready
    from portlink.lab.sandbox import Namespace

    tmp = Path(tempfile.mkdtemp(prefix="plt-reroute-"))
    ns: Namespace | None = None
    agent = None
    procs: dict[str, subprocess.Popen] = {}       # running now, by role
    logs: dict[str, Path] = {}

    def start(name: str, *argv: str, **kw) -> subprocess.Popen:
        logs[name] = tmp / f"{name}.log"
        with open(logs[name], "ab") as f:
            kw.setdefault("stdout", f)
            kw.setdefault("stdin", subprocess.DEVNULL)
            procs[name] = ns.popen(*argv, stderr=f, **kw)
        return procs[name]

    def stop(name: str, timeout: float = 10) -> int | None:
        p = procs.pop(name, None)
        if p is None:
            return None
        if p.poll() is None:
            p.terminate()            # our own child, by its pid (nsenter execs the program)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{name} (pid {p.pid}) ignored SIGTERM for {timeout}s: killing it")
                p.kill()
                p.wait(5)
        return p.returncode

    def check_alive(*names: str) -> None:
        for name in names:
            p = procs.get(name)
            if p is not None and p.poll() is not None:
                raise RuntimeError(f"{name} exited ({p.returncode}): {logs[name].read_text()[-2000:]}")

    def register(name: str) -> None:
        body = {"ID": f"{SERVICE}-{name.lower()}", "Name": SERVICE, "Address": "127.0.0.1", "Port": BACKENDS[name]}
        if a.tls:       # the server side in front of the backend, as portlink registers it
            body |= {"Port": SERVER_SIDES[name], "Connect": {"Native": True}}
        code, _, body = agent.put("/v1/agent/service/register", body)
        if code != 200:
            raise RuntimeError(f"register {name}: HTTP {code} {body}")

    def deregister(name: str) -> None:
        code, _, body = agent.put(f"/v1/agent/service/deregister/{SERVICE}-{name.lower()}")
        if code != 200:
            raise RuntimeError(f"deregister {name}: HTTP {code} {body}")

    prober: Prober | None = None
    try:
        ns = Namespace.create("reroute")
        log(f"namespace {ns.name}, temp dir {tmp}")
        agent = start_agent(AgentSpec("bench-reroute", "127.0.0.1", tmp / "consul"), ns.path)
        for name, port in BACKENDS.items():
            start(f"backend_{name}", PY, "-P", str(HERE), "--backend-server", name, str(port))
        wait_ready(agent)
        hap_tls = ""
        if a.tls:
            for name, port in SERVER_SIDES.items():
                start(f"server_side_{name}", PY, "-P", "-m", "portlink.ambassador", "--bind", "127.0.0.1",
                      "--listen", str(port), "--backend", f"{port}=127.0.0.1:{BACKENDS[name]}",
                      "--tls-serve", SERVICE, "--consul", CONSUL, "--tls-keys", str(tmp / f"keys-{name}"))
            hap_tls = haproxy_tls_options(agent, tmp)
        prober = Prober(ns.path, a.interval, a.timeout)
        prober.start()
        if not prober.ready.wait(10):
            raise RuntimeError("the prober thread did not enter the namespace")
        load_before = [round(x, 2) for x in os.getloadavg()]
        current = "A"
        register(current)
        log(f"consul ready at {CONSUL}; {SERVICE} -> A (127.0.0.1:{BACKENDS['A']})")

        first_new = {s: [] for s in SIDES}
        cutover = {s: [] for s in SIDES}
        missed = {s: 0 for s in SIDES}
        probe_fail: dict[str, dict[str, int]] = {s: {} for s in SIDES}
        probes = {s: 0 for s in SIDES}
        steady: dict[str, list[dict]] = {s: [] for s in SIDES}
        put_ms: list[float] = []
        removals: list[tuple[float, str]] = []     # (time.monotonic() after the deregister PUT, backend)
        done = {s: 0 for s in SIDES}

        amb_delta = dict.fromkeys(AMB_COUNTERS, 0)
        amb_base = amb_delta

        def amb_metrics() -> dict[str, int]:
            code, _, stats = http_get(f"http://127.0.0.1:{AMB_METRICS}/stats", 5, ns.path)
            if code != 200:
                raise RuntimeError(f"ambassador /stats: HTTP {code} {stats}")
            return {k: stats["metrics"][k]["total"] for k in AMB_COUNTERS}

        def start_side(side: str) -> int:
            if side == "ambassador":
                start("ambassador", PY, "-P", "-m", "portlink.ambassador", "--bind", "127.0.0.1",
                      "--listen", str(AMB_PORT), "--service", SERVICE, "--consul", CONSUL,
                      "--policy", "drain", "--drain-deadline", str(DRAIN_DEADLINE),
                      "--metrics", f"127.0.0.1:{AMB_METRICS}",
                      *(("--tls-dial", SOURCE, "--tls-keys", str(tmp / "keys-client")) if a.tls else ()),
                      *(("--tls-warm", str(a.tls_warm)) if a.tls_warm is not None else ()))
                return AMB_PORT
            cfg = tmp / "haproxy.cfg"
            code, _, entries = http_get(f"{agent.http}/v1/health/service/{SERVICE}?passing", 5, ns.path)
            if code != 200:
                raise RuntimeError(f"consul health of {SERVICE}: HTTP {code} {entries}")
            instances = [(e["Service"]["ID"], e["Service"]["Address"], e["Service"]["Port"]) for e in entries]
            cfg.write_text(render_haproxy(instances, HAP_PORT, hap_tls))
            chk = subprocess.run([HAPROXY, "-c", "-q", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
            if chk.returncode != 0:
                raise RuntimeError(f"haproxy -c: {chk.stderr.strip() or chk.stdout.strip()}")
            sock = tmp / "master.sock"
            master = start("haproxy", HAPROXY, "-W", "-f", str(cfg), "-S", str(sock))
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                check_alive("haproxy")
                try:
                    if current_worker(str(sock)):
                        break
                except OSError:
                    pass
                time.sleep(0.05)
            else:
                raise RuntimeError("haproxy's master CLI shows no worker within 15s")
            ready = tmp / "watcher.ready"
            ready.unlink(missing_ok=True)
            start("watcher", PY, "-P", str(HERE), "--watcher", str(cfg), str(master.pid), str(sock),
                  str(HAP_PORT), str(tmp / "reloads.jsonl"), str(ready), f"--watcher-tls={hap_tls}")
            deadline = time.monotonic() + 15
            while not ready.exists():
                check_alive("watcher", "haproxy")
                if time.monotonic() > deadline:
                    raise RuntimeError("the watcher did not read consul within 15s")
                time.sleep(0.02)
            return HAP_PORT

        def stop_side(side: str) -> None:
            if side == "ambassador":
                end = amb_metrics()
                for k in AMB_COUNTERS:
                    amb_delta[k] += end[k] - amb_base[k]
                rc = stop("ambassador")
                if rc not in (0, None):
                    log(f"ambassador exited {rc} on SIGTERM: {logs['ambassador'].read_text()[-1500:]}")
            else:
                stop("watcher")
                rc = stop("haproxy", timeout=DRAIN_DEADLINE + 10)
                if rc not in (0, None):
                    log(f"haproxy exited {rc}: {logs['haproxy'].read_text()[-1500:]}")

        blocks = math.ceil(a.moves / a.block)
        for b in range(blocks):
            for side in sides:
                n = min(a.block, a.moves - done[side])
                if n <= 0:
                    continue
                port = start_side(side)
                prober.probe_until(port, current, 20)
                if side == "ambassador":     # counters from here on: start-up rejections are not the moves'
                    amb_base = amb_metrics()
                start("steady", PY, "-P", str(HERE), "--steady-client", str(port),
                           "--steady-interval", str(a.steady_interval), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                time.sleep(0.2)
                watch = ("ambassador",) if side == "ambassador" else ("haproxy", "watcher")
                for _ in range(n):
                    time.sleep(a.gap)
                    check_alive(*watch, "steady", "backend_A", "backend_B",
                                *([f"server_side_{n}" for n in SERVER_SIDES] if a.tls else []))
                    new = "B" if current == "A" else "A"
                    go, settled = threading.Event(), threading.Event()
                    job = prober.submit(port=port, new=new, old=current, go=go, settled=settled)
                    t0 = time.perf_counter()
                    go.set()
                    register(new)
                    t1 = time.perf_counter()
                    deregister(current)
                    settled.set()
                    removals.append((time.monotonic(), current))
                    put_ms.append((t1 - t0) * 1000)
                    if not job["done"].wait(a.timeout + 10):
                        raise RuntimeError("the prober hangs")
                    r = job["result"]
                    if isinstance(r, BaseException):
                        raise r
                    trace = r["trace"]
                    probes[side] += len(trace)
                    for _, ans in trace:
                        if ans.startswith("error:"):
                            k = ans[6:]
                            probe_fail[side][k] = probe_fail[side].get(k, 0) + 1
                    first = next((t for t, ans in trace if ans == new), None)
                    last_old = max((i for i, (_, ans) in enumerate(trace) if ans == current), default=-1)
                    after = next((t for t, ans in trace[last_old + 1:] if ans == new), None)
                    done[side] += 1
                    if first is None or after is None:
                        missed[side] += 1
                        log(f"{side} move {done[side]} {current}->{new}: MISSED within {a.timeout}s "
                            f"(last answers {[ans for _, ans in trace[-5:]]})")
                    else:
                        first_new[side].append((first - t0) * 1000)
                        cutover[side].append((after - t0) * 1000)
                    current = new
                    if done[side] % 10 == 0 or done[side] == a.moves:
                        log(f"{side}: {done[side]}/{a.moves} moves; first_new median "
                            f"{statistics.median(first_new[side]) if first_new[side] else float('nan'):.2f} ms, "
                            f"cutover median {statistics.median(cutover[side]) if cutover[side] else float('nan'):.2f}"
                            f" ms, failed probes {sum(probe_fail[side].values())}")
                time.sleep(0.2)
                p = procs.pop("steady")
                try:
                    out, _ = p.communicate(b"", timeout=15)
                    steady[side].append(json.loads(out))
                except (subprocess.TimeoutExpired, ValueError) as e:
                    p.kill()
                    p.wait(5)
                    raise RuntimeError(f"the steady client did not report: {e}: {logs['steady'].read_text()[-1500:]}")
                stop_side(side)

        def merged(side: str) -> dict:
            out = {"short_connections": 0, "short_ok": 0, "held_connections": 0, "held_ok": 0,
                   "held_across_removal": 0, "held_across_removal_ok": 0, "failures": {}, "answers": {}}
            for s in steady[side]:
                for start, end, name, ok in s["held_spans"]:
                    # its backend was deregistered while it was open: it rode out a drain
                    if any(who == name and start < t < end for t, who in removals):
                        out["held_across_removal"] += 1
                        out["held_across_removal_ok"] += ok
                out["short_connections"] += s["short"]
                out["short_ok"] += s["short_ok"]
                out["held_connections"] += s["held"]
                out["held_ok"] += s["held_ok"]
                for k in ("failures", "answers"):
                    for kk, v in s[k].items():
                        out[k][kk] = out[k].get(kk, 0) + v
            return out

        def summary(side: str) -> dict:
            st = merged(side)
            failed = sum(st["failures"].values()) + sum(probe_fail[side].values())
            return {"median_ms": round(statistics.median(first_new[side]), 3) if first_new[side] else None,
                    "p99_ms": pct(first_new[side], 0.99), "max_ms": pct(first_new[side], 1.0),
                    "cutover_median_ms": round(statistics.median(cutover[side]), 3) if cutover[side] else None,
                    "cutover_p99_ms": pct(cutover[side], 0.99), "missed": missed[side],
                    "failed_connections": failed,
                    "probe_connections": probes[side], "probe_failures": probe_fail[side], "steady": st}

        amb, hap = summary("ambassador"), summary("haproxy_reload")
        amb["ambassador_metrics_during_moves"] = amb_delta
        ev = [json.loads(line) for line in (tmp / "reloads.jsonl").read_text().splitlines()] \
            if (tmp / "reloads.jsonl").exists() else []
        hap["reloads"] = len(ev)
        hap["reloads_failed"] = sum(1 for e in ev if not e["ok"])
        hap["reload_median_ms"] = round(statistics.median(e["reload_ms"] for e in ev), 3) if ev else None
        hap["mechanism"] = ("consul-template emulated without quiescence wait: blocking queries on "
                            f"/v1/health/service/{SERVICE}?passing, render, atomic rename, SIGUSR2 to the "
                            "master-worker HAProxy (seamless reload), next change after the new worker runs")
        hap["note"] = ("real consul-template also waits its configured quiescence `wait` before rendering "
                       "(min 5 s is common in setups), which would add to every figure here")
        ratio = lambda k: round(amb[k] / hap[k], 3) if amb[k] and hap[k] else None
        print(json.dumps({
            "bench": "reroute", "path": "mtls" if a.tls else "plain", "sides": list(sides),
            **({"tls_warm": a.tls_warm} if a.tls_warm is not None else {}), "moves": a.moves, "block": a.block, "interval_ms": a.interval * 1000,
            "gap_ms": a.gap * 1000, "timeout_s": a.timeout, "drain_deadline_s": DRAIN_DEADLINE,
            "cpus": os.cpu_count(), "loadavg_before": load_before,
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "move": "register new instance, then deregister old (make-before-break), back to back",
            "register_put_median_ms": round(statistics.median(put_ms), 3) if put_ms else None,
            "ambassador": amb, "haproxy_reload": hap,
            "ratio_median": ratio("median_ms"), "ratio_p99": ratio("p99_ms"),
            "ratio_cutover_median": ratio("cutover_median_ms"), "ratio_cutover_p99": ratio("cutover_p99_ms"),
            "targets": {"ambassador_p99_ms_max": 50, "ambassador_failed_connections": 0},
        }))
        return 0
    finally:
        if prober is not None:
            prober.jobs.put(None)
            prober.join(a.timeout + 5)
        for name in ("steady", "watcher", "haproxy", "ambassador", *[f"server_side_{n}" for n in SERVER_SIDES],
                     *[f"backend_{n}" for n in BACKENDS]):
            p = procs.get(name)
            if p is not None and name == "steady" and p.stdin:
                p.stdin.close()
            stop(name, timeout=DRAIN_DEADLINE + 10)
        if agent is not None:
            agent.stop()
        if ns is not None:
            ns.delete()
            if ns.name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout:
                log(f"namespace left behind: {ns.name}")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
