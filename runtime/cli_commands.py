"""The `portlink` commands that talk to a daemon: each takes the Client and the
parsed arguments and returns the exit code (cli.py parses and dispatches)."""

from __future__ import annotations

import json
import os
import sys
import time

from portlink.runtime import cli_format as fmt
from portlink.runtime import logrecord
from portlink.runtime.client import CliError, Client

EXIT_ERROR = 125


def _q(ref: str) -> str:
    import urllib.parse     # here, not at the top: `portlink ps` has no use for it
    return urllib.parse.quote(ref, safe="")


def parse_env_file(path: str) -> list[str]:
    """Docker's --env-file: KEY=value lines, # comments, a bare KEY takes the caller's value."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
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


def _health_body(a) -> dict:
    """The --health-* flags given (runtime/health.py checks them in the daemon)."""
    out = {k: v for k, v in (("health_cmd", a.health_cmd), ("health_interval", a.health_interval),
                             ("health_timeout", a.health_timeout), ("health_start_period", a.health_start_period),
                             ("health_retries", a.health_retries)) if v is not None}
    if a.no_healthcheck:
        out["no_healthcheck"] = True
    return out


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
    spec.update(_limits_body(a))
    if a.entrypoint is not None:       # Docker: one word, or "" for none
        spec["entrypoint"] = [a.entrypoint] if a.entrypoint else []
    if a.stop_signal:
        spec["stop_signal"] = a.stop_signal
    spec.update(_health_body(a))
    for key, values in (("add_hosts", a.add_host), ("dns_search", a.dns_search), ("dns_options", a.dns_option)):
        if values:       # checked by the daemon (runtime.hostopts)
            spec[key] = values
    if a.init:
        spec["init"] = True
    if a.restart:   # checked by the daemon (runtime.restart_policy); --rm in the foreground is the CLI's
        if a.rm and a.restart != "no":
            raise CliError("--restart and --rm conflict: a container removed when it exits cannot be "
                           "restarted (drop one of them)")
        spec["restart"] = a.restart
    if a.log_opt:
        try:
            spec["log_opts"] = logrecord.parse_log_opt_args(a.log_opt)
        except ValueError as e:
            raise CliError(str(e)) from None
    # confinement: checked by the daemon (runtime.security)
    for key, values in (("security_opt", a.security_opt), ("cap_add", a.cap_add), ("cap_drop", a.cap_drop)):
        if values:
            spec[key] = values
    # volumes and mounts: checked by the daemon (runtime.volspec)
    for key, values in (("volumes", a.volume), ("mounts", a.mount), ("tmpfs", a.tmpfs),
                        ("volumes_from", a.volumes_from)):
        if values:
            spec[key] = values
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
    if a.tty or a.interactive:   # the container's monitor holds a pty / its stdin open
        spec.update(tty=a.tty, interactive=a.interactive)
    c = cl.post("/containers", spec)
    if a.detach:
        print(c["id"])
        return 0
    if a.tty or a.interactive:
        return _run_attached(cl, a, c)
    try:
        # the container's stdout on ours, its stderr on ours, as `docker run` does
        fmt.print_records(cl.request("GET", f"/containers/{c['id']}/logs", query={"follow": "1", "format": "cri"},
                                     stream=True), timestamps=False, flush=True)
        if not a.rm:
            return _exit_code(cl, c["id"])
    except KeyboardInterrupt:
        return 130
    # --rm: anonymous volumes too. The log ended with the process, whose code is
    # recorded by then: the removal (after the cleanup of its run) answers it.
    gone = cl.delete(f"/containers/{c['id']}", force="1", volumes="1")
    code = gone.get("exit_code")
    if code is None:
        print(f"portlink: container {c['name']} was removed, but its exit code is unknown "
              f"({'its monitor ended before it' if 'exit_code' in gone else 'portlinkd did not say it: an older daemon?'})",
              file=sys.stderr)
        return EXIT_ERROR
    return code


def _run_attached(cl: Client, a, c: dict) -> int:
    """Foreground `run -i/-t`: through the container's attach socket (runtime.cli_attach)."""
    from portlink.runtime import cli_attach
    try:
        code = cli_attach.run_attached(cl, c, tty=a.tty, stdin=a.interactive)
    except KeyboardInterrupt:
        return 130
    except cli_attach.AttachError as e:
        # Its monitor is gone: the container ended before we came (the daemon may be
        # a moment from recording it), or the monitor was killed.
        deadline = time.monotonic() + 5
        while cl.get(f"/containers/{c['id']}")["status"] == "running":
            if time.monotonic() > deadline:
                raise CliError(str(e)) from None
            time.sleep(0.02)
        # It ended (and its monitor with it) before we came: its output is in its log.
        fmt.print_records(cl.request("GET", f"/containers/{c['id']}/logs", query={"format": "cri"}, stream=True),
                          timestamps=False, flush=True)
        code = None
    if code is None and cl.get(f"/containers/{c['id']}")["status"] == "running":
        return 0   # detached (ctrl-p ctrl-q): it runs on
    recorded = _exit_code(cl, c["id"], removing=a.rm)   # also waits for the daemon to see the end, as docker run does
    code = recorded if code is None else code
    if a.rm:
        cl.delete(f"/containers/{c['id']}", force="1", volumes="1")
    return code


def _limits_body(a) -> dict:
    """The limit flags given, as the daemon reads them (it checks them: runtime/limits.py)."""
    body: dict = {}
    if a.pids_limit is not None:
        body["pids_limit"] = a.pids_limit
    if a.memory is not None:
        body["memory"] = a.memory
    if a.memory_swap is not None:
        body["memory_swap"] = a.memory_swap
    if a.cpus is not None:
        try:
            body["cpus"] = float(a.cpus)
        except ValueError:
            body["cpus"] = a.cpus      # the daemon says what is wrong with it
    if a.ulimit:
        body["ulimits"] = a.ulimit
    return body


def _exit_code(cl: Client, cid: str, removing: bool = False) -> int:
    """The code of the run that ended. The log stream ends when the container's
    process does, and its code is recorded then, while the cleanup after it may
    still run (status "running"; a start clears the code, so a code there is this
    run's). `removing`: the removal that follows waits for that cleanup; else wait
    for it here, so the container is seen stopped once `run` returns."""
    deadline = time.monotonic() + 5
    while True:
        info = cl.get(f"/containers/{cid}")
        done = info["exit_code"] is not None and (removing or info["status"] != "running")
        # Past the deadline it may be running again (a restart policy): report what is known.
        if done or time.monotonic() > deadline:
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
    print(fmt.ps_table(cs))
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
    return _each(a.containers, lambda r: cl.delete(f"/containers/{_q(r)}", force="1" if a.force else None,
                                                   volumes="1" if a.volumes else None))


def cmd_inspect(cl, a):
    out = []
    for ref in a.refs:
        try:
            out.append(cl.get(f"/containers/{_q(ref)}"))
        except CliError as e:
            try:
                out.append(cl.get(f"/networks/{_q(ref)}"))
            except CliError:
                try:
                    out += cl.get("/images/inspect", name=ref)
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
        fmt.print_records(resp, a.timestamps, a.follow)
    except KeyboardInterrupt:
        return 130
    return 0


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
            print(fmt.event_line(e), flush=True)
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
                print(("\x1b[H\x1b[2J" if redraw else "") + fmt.table([head, *cells]) + ("" if redraw or a.no_stream else "\n"))
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
            print(fmt.network_table(ns))
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
        rows = [["NAME", "ID", "SIZE", "COMMAND"]]
        rows += [[i["name"], i.get("id", "")[7:19], f"{i['size'] / 1e6:.1f}MB",
                  " ".join([*i.get("entrypoint", []), *i["cmd"]])] for i in cl.get("/images")]
        print(fmt.table(rows))
    elif a.icmd == "rm":
        return _each(a.names, lambda n: cl.delete(f"/images/{_q(n)}"))   # %2F: the route takes the slashes
    elif a.icmd == "inspect":
        print(json.dumps(cl.get("/images/inspect", name=a.names), indent=2))
    elif a.icmd == "tag":
        print(cl.post("/images/tag", {"source": a.source, "target": a.target})["name"])
    return 0


def cmd_volume(cl, a):
    if a.vcmd == "create":
        labels = dict(l.split("=", 1) if "=" in l else (l, "") for l in a.label)
        print(cl.post("/volumes", {"name": a.name, "labels": labels})["Name"])
    elif a.vcmd == "ls":
        dangling = None
        for f in a.filter:
            key, _, value = f.partition("=")
            if key != "dangling" or value.lower() not in ("true", "false", "1", "0"):
                raise CliError(f"invalid --filter {f!r}: dangling=true or dangling=false")
            dangling = "1" if value.lower() in ("true", "1") else "0"
        vs = cl.get("/volumes", dangling=dangling)
        if a.format == "json":
            print(json.dumps(vs, indent=2))
        elif a.quiet:
            print("\n".join(v["Name"] for v in vs))
        else:
            print(fmt.volume_table(vs))
    elif a.vcmd == "inspect":
        print(json.dumps([cl.get(f"/volumes/{_q(n)}") for n in a.names], indent=2))
    elif a.vcmd == "rm":
        return _each(a.names, lambda n: cl.delete(f"/volumes/{_q(n)}", force="1" if a.force else None))
    elif a.vcmd == "prune":
        if not a.force and sys.stdin.isatty():
            what = "every unused volume" if a.all else "every unused anonymous volume"
            if input(f"This removes {what} and its data. Continue? [y/N] ").lower() != "y":
                return 1
        for name in cl.post("/volumes/prune", all="1" if a.all else None)["removed"]:
            print(name)
    return 0


def cmd_system(cl, a):
    if a.scmd == "prune":
        if not a.force and sys.stdin.isatty():
            if input("This removes every container, network and rule portlink made on this host. Continue? [y/N] ").lower() != "y":
                return 1
        r = cl.post("/system/prune", volumes="1" if a.volumes else None)
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
