"""The `portlink` command: a Docker-style CLI that talks to portlinkd.

--host / PORTLINK_HOST pick the daemon's socket, so one machine can drive several
simulated hosts. Errors print one line and exit 125 (as docker does); a
foreground `run` exits with the container's own exit code."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import time
import urllib.parse
from pathlib import Path

from portlink.runtime import logfmt
from portlink.runtime.daemon import DEFAULT_SOCKET

EXIT_ERROR = 125


class CliError(Exception):
    pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        deadline = time.monotonic() + (self.timeout or 30)
        try:
            while True:
                try:
                    s.connect(self._path)
                    break
                except BlockingIOError:
                    # The daemon's accept queue is full (a burst of clients): a UNIX socket
                    # says so at once rather than waiting. Wait our turn, as TCP would.
                    if time.monotonic() > deadline:
                        raise CliError(f"portlinkd at {self._path} is not accepting connections "
                                       "(its queue stayed full)") from None
                    time.sleep(0.01)
        except (FileNotFoundError, ConnectionRefusedError):
            raise CliError(f"cannot reach portlinkd at {self._path}: is it running? "
                           "(start it with `portlinkd`, or pick a host with --host / PORTLINK_HOST)") from None
        except PermissionError:
            raise CliError(f"permission denied on {self._path}: the portlink socket is root-only") from None
        self.sock = s


class Client:
    def __init__(self, socket_path: str, timeout: float | None = 120) -> None:
        self.path = socket_path.removeprefix("unix://")
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict | None = None, query: dict | None = None,
                stream: bool = False):
        if query:
            path += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None}, doseq=True)
        conn = _UnixConnection(self.path, None if stream else self.timeout)
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        if resp.status >= 400:
            raw = resp.read()
            try:
                msg = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                msg = raw.decode(errors="replace").strip() or f"HTTP {resp.status}"
            raise CliError(msg)
        if stream:
            return resp
        raw = resp.read()
        return json.loads(raw) if raw else None

    def get(self, path, **q):
        return self.request("GET", path, query=q or None)

    def post(self, path, body=None, **q):
        return self.request("POST", path, body, q or None)

    def delete(self, path, **q):
        return self.request("DELETE", path, query=q or None)


def _q(ref: str) -> str:
    return urllib.parse.quote(ref, safe="")


def parse_env_file(path: str) -> list[str]:
    """Docker's --env-file: KEY=value lines, # comments, a bare KEY takes the caller's value."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise CliError(f"cannot read --env-file {path}: {e.strerror}") from None
    out = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            if line in os.environ:
                out.append(f"{line}={os.environ[line]}")
            continue
        out.append(line)
    return out


def _env_args(entries: list[str]) -> list[str]:
    # -e KEY alone passes the caller's value, as docker does.
    return [e if "=" in e else f"{e}={os.environ.get(e, '')}" for e in entries]


def _ports_text(c: dict) -> str:
    return ", ".join(f"{p['host_ip']}:{p['host_port']}->{p['container_port']}/{p['proto']}"
                     for p in c["network"]["ports"])


def _status_text(c: dict) -> str:
    if c["status"] == "running":
        return f"Up {_ago(c['started'])}"
    if c["status"] == "exited":
        code = c["exit_code"]
        return f"Exited ({'?' if code is None else code}) {_ago(c['finished'])} ago" if c["finished"] else "Created"
    return c["status"].capitalize()


def _ago(t: float | None) -> str:
    if not t:
        return ""
    s = int(time.time() - t)
    for unit, n in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if s >= n:
            return f"{s // n} {unit}"
    return f"{s} seconds"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _stream(resp, out=None) -> None:
    out = out or sys.stdout.buffer
    while True:
        chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
        if not chunk:
            break
        out.write(chunk)
        out.flush()


# commands -------------------------------------------------------------------------
def cmd_run(cl: Client, a) -> int:
    env = _env_args(a.env)
    for f in a.env_file:
        env = parse_env_file(f) + env
    spec = {"image": a.image, "name": a.name or "", "cmd": a.command, "env": env,
            "publish": a.publish, "expose": a.expose, "network": a.net, "hostname": a.hostname or "",
            "dns": a.dns, "workdir": a.workdir or "", "user": a.user or "",
            "links": a.link, "aliases": a.network_alias,
            # In the foreground the CLI removes the container itself, after it has
            # read the output and the exit code (as the docker client does).
            "rm": a.rm and a.detach,
            "labels": dict(l.split("=", 1) if "=" in l else (l, "") for l in a.label)}
    if a.log_opt:
        try:
            spec["log_opts"] = logfmt.parse_log_opt_args(a.log_opt)
        except ValueError as e:
            raise CliError(str(e)) from None
    if a.ambassador:
        ports = []
        for e in a.expose:
            p = e.removesuffix("/tcp")
            if not p.isdigit():
                raise CliError(f"invalid --expose {e!r} for an ambassador: a TCP port number")
            ports.append(int(p))
        spec.update(image=a.image or "busybox", expose=[],
                    ambassador={"service": a.ambassador, "ports": ports, "policy": a.ambassador_policy,
                                "drain_deadline": a.ambassador_drain})
    elif not a.image:
        raise CliError("run needs an image (or --ambassador SERVICE)")
    c = cl.post("/containers", spec)
    if a.detach:
        print(c["id"])
        return 0
    try:
        # the container's stdout on ours, its stderr on ours, as `docker run` does
        _print_records(cl.request("GET", f"/containers/{c['id']}/logs", query={"follow": "1", "format": "cri"},
                                  stream=True), timestamps=False, flush=True)
        code = _exit_code(cl, c["id"])
    except KeyboardInterrupt:
        return 130
    if a.rm:
        cl.delete(f"/containers/{c['id']}", force="1")
    return code


def _exit_code(cl: Client, cid: str) -> int:
    # The log stream ends when the container stops; the reaper records the code
    # a moment later.
    deadline = time.monotonic() + 5
    while True:
        info = cl.get(f"/containers/{cid}")
        if info["status"] != "running" and (info["exit_code"] is not None or time.monotonic() > deadline):
            return info["exit_code"] if info["exit_code"] is not None else EXIT_ERROR
        time.sleep(0.02)


def cmd_ps(cl: Client, a) -> int:
    cs = cl.get("/containers", all="1" if a.all else None)
    if a.format == "json":
        print(json.dumps(cs, indent=2))
        return 0
    if a.quiet:
        print("\n".join(c["id"][:12] for c in cs))
        return 0
    rows = [["CONTAINER ID", "IMAGE", "COMMAND", "STATUS", "IP", "PORTS", "NAMES"]]
    for c in cs:
        cmd = " ".join(c["config"]["cmd"])
        rows.append([c["id"][:12], c["image"], json.dumps(cmd[:20] + ("…" if len(cmd) > 20 else ""), ensure_ascii=False),
                     _status_text(c), c["network"]["ip"] or "", _ports_text(c), c["name"]])
    print(_table(rows))
    return 0


def _each(refs, fn) -> int:
    rc = 0
    for ref in refs:
        try:
            fn(ref)
            print(ref)
        except CliError as e:
            print(f"portlink: {e}", file=sys.stderr)
            rc = EXIT_ERROR
    return rc


def cmd_start(cl, a):
    return _each(a.containers, lambda r: cl.post(f"/containers/{_q(r)}/start"))


def cmd_stop(cl, a):
    return _each(a.containers, lambda r: cl.post(f"/containers/{_q(r)}/stop", t=str(a.time)))


def cmd_restart(cl, a):
    return _each(a.containers, lambda r: cl.post(f"/containers/{_q(r)}/restart", t=str(a.time)))


def cmd_rm(cl, a):
    return _each(a.containers, lambda r: cl.delete(f"/containers/{_q(r)}", force="1" if a.force else None))


def cmd_inspect(cl, a):
    out = []
    for ref in a.refs:
        try:
            out.append(cl.get(f"/containers/{_q(ref)}"))
        except CliError as e:
            try:
                out.append(cl.get(f"/networks/{_q(ref)}"))
            except CliError:
                raise e from None
    print(json.dumps(out, indent=2))
    return 0


def cmd_logs(cl, a):
    """Like `docker logs`: stdout lines to stdout, stderr lines to stderr; -t puts
    each line's time first. The daemon sends CRI records (format=cri), so the
    streams and the bytes come through as the container wrote them."""
    resp = cl.request("GET", f"/containers/{_q(a.container)}/logs", stream=True,
                      query={"follow": "1" if a.follow else None, "tail": a.tail, "since": a.since, "format": "cri"})
    try:
        _print_records(resp, a.timestamps, a.follow)
    except KeyboardInterrupt:
        return 130
    return 0


def _print_records(resp, timestamps: bool, flush: bool) -> None:
    """CRI records from the daemon: stdout lines to our stdout, stderr lines to our stderr."""
    outs = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    open_line: dict[str, bool] = {}   # a fragment of this stream was printed: its line goes on
    for raw in resp:
        rec = logfmt.parse_record(raw.rstrip(b"\n"))
        if rec is None:
            continue
        out = outs[rec.stream]
        out.write(logfmt.render_text(rec, timestamps, not open_line.get(rec.stream)))
        open_line[rec.stream] = rec.partial
        if flush:
            out.flush()
    for out in outs.values():
        out.flush()


def cmd_events(cl, a):
    """Like `docker events`: the recorded ones from --since, then new ones until
    --until or Ctrl-C. JSON lines with --format json."""
    resp = cl.request("GET", "/events", query={"since": a.since, "until": a.until, "filter": a.filter,
                                                "follow": None if a.until else "1"}, stream=True)
    try:
        for line in resp:
            e = json.loads(line)
            if a.format == "json":
                print(json.dumps(e), flush=True)
                continue
            when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(e["time"])) + f".{int(e['time'] % 1 * 1e6):06d}Z"
            attrs = ", ".join(f"{k}={v}" for k, v in sorted(e["attrs"].items()))
            ident = f" {e['id'][:12]}" if e["id"] else ""
            print(f"{when} {e['type']} {e['action']}{ident} ({'name=' + e['name']}{', ' + attrs if attrs else ''})",
                  flush=True)
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_stats(cl, a):
    """Like `docker stats`: a sample now and one every --interval; each row compares
    a sample with the one before (CPU % needs two). On a terminal the table is
    redrawn in place, piped each sample prints a block; --no-stream prints once."""
    from portlink.runtime import stats as st
    if not 0.1 <= a.interval <= 3600:
        raise CliError(f"invalid --interval {a.interval:g}: expected 0.1 to 3600 seconds")

    def take(first: bool) -> list[dict]:
        if not a.containers:
            return cl.get("/stats", all="1" if a.all else None)
        out = []
        for ref in a.containers:
            try:
                out.append(cl.get(f"/containers/{_q(ref)}/stats"))
            except CliError:
                if first:
                    raise
                # removed while we watch: it leaves the table
        return out

    redraw = a.format == "table" and sys.stdout.isatty() and not a.no_stream
    prev = {s["id"]: s for s in take(True)}
    try:
        while True:
            time.sleep(a.interval)
            cur = take(False)
            rows = [st.row(prev.get(s["id"]), s) for s in cur]
            if a.format == "json":
                for r in rows:
                    print(json.dumps(r))
            else:
                cells = [st.table_cells(r) for r in rows]
                if not any("conns_open" in r for r in rows):
                    cells = [c[:-1] for c in cells]      # no ambassador: no CONNS column
                head = st.HEADER[:len(cells[0])] if cells else st.HEADER[:-1]
                print(("\x1b[H\x1b[2J" if redraw else "") + _table([head, *cells]) + ("" if redraw or a.no_stream else "\n"))
            sys.stdout.flush()
            if a.no_stream:
                return 0
            prev = {s["id"]: s for s in cur}
    except KeyboardInterrupt:
        return 130


def cmd_exec(cl, a):
    r = cl.post(f"/containers/{_q(a.container)}/exec",
                {"cmd": a.command, "env": _env_args(a.env), "tty": a.tty, "workdir": a.workdir})
    # runc exec joins the container's namespaces by pid: run it here with our own
    # stdio so an interactive exec needs no stream relay through the daemon.
    argv = r["argv"]
    os.execv(argv[0], argv)


def cmd_network(cl, a):
    if a.ncmd == "create":
        icc = {"on": True, "true": True, "off": False, "false": False}.get(a.icc.lower())
        if icc is None:
            raise CliError(f"invalid --icc {a.icc!r}: use on or off")
        n = cl.post("/networks", {"name": a.name, "subnet": a.subnet, "gateway": a.gateway,
                                  "internal": a.internal, "icc": icc})
        print(n["id"])
    elif a.ncmd == "ls":
        ns = cl.get("/networks")
        if a.format == "json":
            print(json.dumps(ns, indent=2))
        else:
            rows = [["NETWORK ID", "NAME", "SUBNET", "GATEWAY", "BRIDGE", "INTERNAL", "ICC"]]
            rows += [[n["id"][:12], n["name"], n["subnet"], n["gateway"], n["bridge"],
                      str(n["internal"]).lower(), "on" if n["icc"] else "off"] for n in ns]
            print(_table(rows))
    elif a.ncmd == "inspect":
        print(json.dumps([cl.get(f"/networks/{_q(r)}") for r in a.refs], indent=2))
    elif a.ncmd == "rm":
        return _each(a.refs, lambda r: cl.delete(f"/networks/{_q(r)}"))
    return 0


def _import_with_progress(cl, path: str, name: str) -> dict:
    """On a terminal: a progress line redrawn in place while the daemon extracts."""
    resp = cl.request("POST", "/images", {"path": path, "name": name}, query={"progress": "1"}, stream=True)
    started, result = time.monotonic(), None
    for line in resp:
        item = json.loads(line)
        if "progress" in item:
            done, total = item["progress"]
            pct = 100 * done / total if total else 100
            bar = "#" * int(pct / 5)
            print(f"\r[image] importing {name}: [{bar:<20}] {pct:5.1f}% {done / 1e6:.1f}/{total / 1e6:.1f} MB "
                  f"{time.monotonic() - started:.1f}s", end="", file=sys.stderr, flush=True)
        else:
            result = item
    print(file=sys.stderr)
    if result is None or "error" in result:
        raise CliError(result["error"] if result else "the import ended without a result")
    return result["image"]


def cmd_image(cl, a):
    if a.icmd == "import":
        path = os.path.abspath(a.tarball)
        img = _import_with_progress(cl, path, a.name) if sys.stderr.isatty() else \
            cl.post("/images", {"path": path, "name": a.name})   # piped: quiet, one result line
        for w in img.get("warnings", []):
            print(f"portlink: warning: {w}", file=sys.stderr)
        print(img["name"])
    elif a.icmd == "ls":
        rows = [["NAME", "SIZE", "COMMAND"]]
        rows += [[i["name"], f"{i['size'] / 1e6:.1f}MB", " ".join(i["cmd"])] for i in cl.get("/images")]
        print(_table(rows))
    elif a.icmd == "rm":
        return _each(a.names, lambda n: cl.delete(f"/images/{_q(n)}"))
    return 0


def cmd_system(cl, a):
    if a.scmd == "prune":
        if not a.force and sys.stdin.isatty():
            if input("This removes every container, network and rule portlink made on this host. Continue? [y/N] ").lower() != "y":
                return 1
        r = cl.post("/system/prune")
        for x in r["removed"]:
            print(f"removed {x}")
        for e in r["errors"]:
            print(f"portlink: {e}", file=sys.stderr)
        return EXIT_ERROR if r["errors"] else 0
    if a.scmd == "firewall":
        r = cl.get("/system/firewall")
        print(f"# driver: {r['driver']}\n{r['rules']}")
    if a.scmd == "consul":
        r = cl.post("/system/consul/sync") if a.sync else cl.get("/system/consul")
        print(json.dumps(r, indent=2))
    if a.scmd == "check":
        r = cl.post("/system/check")
        if a.format == "json":
            print(json.dumps(r, indent=2))
        elif not r["findings"]:
            print("no drift: the kernel, the firewall and Consul match the state")
        for f in r["findings"] if a.format != "json" else []:
            outcome = "repaired" if f["repaired"] else f"NOT repaired: {f['error']}"
            print(f"{f['subject']}: {f['problem']} ({outcome})")
        return EXIT_ERROR if any(not f["repaired"] for f in r["findings"]) else 0
    return 0


def cmd_lab(cl, a):
    """Local, not through a daemon: the lab makes the daemons."""
    from portlink.errors import PortlinkError
    from portlink.lab import lab

    def progress(text: str) -> None:
        if sys.stderr.isatty():      # a terminal sees progress; a pipe only the result
            print(f"[lab] {text}", file=sys.stderr, flush=True)
    try:
        if a.lcmd == "up":
            t0 = time.monotonic()
            made = lab.up(a.hosts, a.name, progress)
            for h in made.hosts:
                print(f"{h.name}\t{h.ip}\t{h.ns}\tPORTLINK_HOST={h.socket}")
            progress(f"lab {a.name!r} up in {time.monotonic() - t0:.1f}s")
        elif a.lcmd == "ls":
            rows = [r for r in lab.ls() if a.name in (None, r["lab"])]
            if a.format == "json":
                print(json.dumps(rows, indent=2))
            else:
                print("LAB\tHOST\tIP\tCONSUL\tPORTLINKD\tAGENT\tNAMESPACE")
                for r in rows:
                    print(f"{r['lab']}\t{r['host']}\t{r['ip']}\t{r['consul']}\t{r['portlinkd']}\t"
                          f"{r['consul_agent']}\t{r['namespace']}")
        elif a.lcmd == "exec":
            argv = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
            return lab.main_exec(a.name, a.lab_host, argv)
        elif a.lcmd == "consul":
            act = lab.agent_start if a.action == "start" else lab.agent_stop
            act(a.name, a.lab_hosts, progress=progress)
        elif a.lcmd == "down":
            errors = lab.down(a.name, progress)
            for e in errors:
                print(f"portlink: {e}", file=sys.stderr)
            return EXIT_ERROR if errors else 0
    except PortlinkError as e:
        print(f"portlink: {e}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="portlink", description="portlink: containers, networks and links across hosts")
    p.add_argument("-H", "--host", default=os.environ.get("PORTLINK_HOST", DEFAULT_SOCKET),
                   help="daemon socket (env PORTLINK_HOST; default %(default)s)")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="create and start a container")
    r.add_argument("-d", "--detach", action="store_true")
    r.add_argument("--name")
    r.add_argument("-e", "--env", action="append", default=[])
    r.add_argument("--env-file", action="append", default=[])
    r.add_argument("-p", "--publish", action="append", default=[], help="[hostip:][hostport:]port[/proto]")
    r.add_argument("--expose", action="append", default=[])
    r.add_argument("--net", "--network", default="bridge")
    r.add_argument("--hostname")
    r.add_argument("--rm", action="store_true")
    r.add_argument("--dns", action="append", default=[],
                   help="upstream resolver for this container's names portlink does not own")
    r.add_argument("--link", action="append", default=[], help="NAME[:ALIAS]: env vars, /etc/hosts and DNS for NAME")
    r.add_argument("--network-alias", "--alias", action="append", default=[],
                   help="another DNS name for this container on its network")
    r.add_argument("-w", "--workdir")
    r.add_argument("-u", "--user")
    r.add_argument("-l", "--label", action="append", default=[])
    r.add_argument("--log-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="log rotation: max-size=10m, max-file=3 (default: portlinkd --log-max-size/--log-max-files)")
    r.add_argument("--ambassador", metavar="SERVICE",
                   help="run an ambassador: forward the service's ports (from Consul, or --expose) "
                        "to its healthy instances, rerouting as they move")
    r.add_argument("--ambassador-policy", choices=["keep", "drain", "close"], default="drain",
                   help="what happens to open connections to an instance that left (default drain)")
    r.add_argument("--ambassador-drain", type=float, default=10.0, metavar="S",
                   help="drain deadline in seconds")
    r.add_argument("image", nargs="?")
    r.add_argument("command", nargs=argparse.REMAINDER)
    r.set_defaults(fn=cmd_run)

    s = sub.add_parser("ps", help="list containers")
    s.add_argument("-a", "--all", action="store_true")
    s.add_argument("-q", "--quiet", action="store_true")
    s.add_argument("--format", choices=["table", "json"], default="table")
    s.set_defaults(fn=cmd_ps)

    for name, fn, helptext in (("start", cmd_start, "start stopped containers"),
                               ("stop", cmd_stop, "stop running containers"),
                               ("restart", cmd_restart, "restart containers")):
        x = sub.add_parser(name, help=helptext)
        if name != "start":
            x.add_argument("-t", "--time", type=float, default=10, help="seconds before SIGKILL")
        x.add_argument("containers", nargs="+")
        x.set_defaults(fn=fn)

    x = sub.add_parser("rm", help="remove containers")
    x.add_argument("-f", "--force", action="store_true")
    x.add_argument("containers", nargs="+")
    x.set_defaults(fn=cmd_rm)

    x = sub.add_parser("events", help="what happened on this host (follows until --until or Ctrl-C)")
    x.add_argument("--since", help="Unix time or duration back from now (30s, 10m, 2h)")
    x.add_argument("--until", help="Unix time or duration back from now; 0s: now, and do not follow")
    x.add_argument("-f", "--filter", action="append", default=[],
                   help="KEY=VALUE: type, event, container, name, network, service (repeatable)")
    x.add_argument("--format", choices=["text", "json"], default="text")
    x.set_defaults(fn=cmd_events)

    x = sub.add_parser("stats", help="live CPU, memory, network and block I/O of containers")
    x.add_argument("containers", nargs="*", metavar="NAME", help="these containers (default: all running)")
    x.add_argument("-a", "--all", action="store_true", help="stopped containers too")
    x.add_argument("--no-stream", action="store_true", help="two samples --interval apart, printed once")
    x.add_argument("--format", choices=["table", "json"], default="table",
                   help="json: one JSON object per container per sample (JSON lines)")
    x.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between samples (default 1)")
    x.set_defaults(fn=cmd_stats)

    x = sub.add_parser("logs", help="print a container's output")
    x.add_argument("-f", "--follow", action="store_true", help="then print new output until the container stops")
    x.add_argument("-n", "--tail", help="only the last N lines (of all the rotated files), or all")
    x.add_argument("--since", help="lines from then on: Unix time, duration back from now (10m, 1h30m) or RFC 3339")
    x.add_argument("-t", "--timestamps", action="store_true", help="each line's time first (RFC 3339, UTC)")
    x.add_argument("container")
    x.set_defaults(fn=cmd_logs)

    x = sub.add_parser("exec", help="run a command in a running container")
    x.add_argument("-i", "--interactive", action="store_true", help="accepted for docker compatibility; stdin is always attached")
    x.add_argument("-t", "--tty", action="store_true")
    x.add_argument("-e", "--env", action="append", default=[])
    x.add_argument("-w", "--workdir")
    x.add_argument("container")
    x.add_argument("command", nargs=argparse.REMAINDER)
    x.set_defaults(fn=cmd_exec)

    x = sub.add_parser("inspect", help="show containers or networks as JSON")
    x.add_argument("refs", nargs="+")
    x.set_defaults(fn=cmd_inspect)

    n = sub.add_parser("network", help="manage networks")
    nsub = n.add_subparsers(dest="ncmd", required=True)
    c = nsub.add_parser("create")
    c.add_argument("--subnet")
    c.add_argument("--gateway")
    c.add_argument("--internal", action="store_true")
    c.add_argument("--icc", default="on", help="on|off: may containers on this network talk to each other")
    c.add_argument("name")
    ls = nsub.add_parser("ls")
    ls.add_argument("--format", choices=["table", "json"], default="table")
    nsub.add_parser("inspect").add_argument("refs", nargs="+")
    nsub.add_parser("rm").add_argument("refs", nargs="+")
    n.set_defaults(fn=cmd_network)

    i = sub.add_parser("image", help="manage images")
    isub = i.add_subparsers(dest="icmd", required=True)
    imp = isub.add_parser("import")
    imp.add_argument("tarball")
    imp.add_argument("name")
    isub.add_parser("ls")
    isub.add_parser("rm").add_argument("names", nargs="+")
    i.set_defaults(fn=cmd_image)

    y = sub.add_parser("system", help="host-wide operations")
    ysub = y.add_subparsers(dest="scmd", required=True)
    ysub.add_parser("prune", help="remove everything portlink created on this host").add_argument(
        "-f", "--force", action="store_true")
    ysub.add_parser("firewall", help="show portlink's firewall rules")
    ysub.add_parser("consul", help="show the link to Consul").add_argument(
        "--sync", action="store_true", help="resync this host's entries now and show what changed")
    ysub.add_parser("check", help="find and repair drift (veths, bridges, firewall, Consul entries, "
                    "dead processes)").add_argument("--format", choices=["table", "json"], default="table")
    y.set_defaults(fn=cmd_system)

    lb = sub.add_parser("lab", help="simulated multi-host lab on this machine (namespaces, a switch, Consul)")
    lsub = lb.add_subparsers(dest="lcmd", required=True)
    x = lsub.add_parser("up", help="create N hosts, each with portlinkd and a Consul agent")
    x.add_argument("--hosts", type=int, default=3)
    x.add_argument("--name", default="lab")
    x = lsub.add_parser("ls", help="list lab hosts")
    x.add_argument("--name", default=None)
    x.add_argument("--format", choices=["table", "json"], default="table")
    x = lsub.add_parser("exec", help="run a command on a lab host (portlink talks to its daemon)")
    x.add_argument("--name", default="lab")
    x.add_argument("lab_host", metavar="HOST")
    x.add_argument("argv", nargs=argparse.REMAINDER)
    x = lsub.add_parser("consul", help="stop or start lab hosts' Consul agents (fault drills)")
    x.add_argument("--name", default="lab")
    x.add_argument("action", choices=["stop", "start"])
    x.add_argument("lab_hosts", metavar="HOST", nargs="+")
    x = lsub.add_parser("down", help="remove everything the lab made")
    x.add_argument("--name", default="lab")
    lb.set_defaults(fn=cmd_lab)
    return p


def main(argv: list[str] | None = None) -> None:
    a = build_parser().parse_args(argv)
    try:
        sys.exit(a.fn(Client(a.host), a))
    except CliError as e:
        print(f"portlink: {e}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":
    main()
