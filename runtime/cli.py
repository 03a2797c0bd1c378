"""The `portlink` command: a Docker-style CLI that talks to portlinkd.

--host / PORTLINK_HOST pick the daemon's socket, so one machine can drive several
simulated hosts. Errors print one line and exit 125 (as docker does); a
foreground `run` exits with the container's own exit code.

A thin client: this module parses and dispatches, cli_commands has the commands,
cli_format the tables and printing, client the HTTP-over-UNIX-socket Client. It
imports nothing of the daemon (no aiohttp, pyroute2, asyncio), so a command
starts fast; the rare commands that need more import it themselves."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from portlink.runtime.cli_commands import (EXIT_ERROR, cmd_events, cmd_exec, cmd_image, cmd_inspect, cmd_logs,
                                           cmd_network, cmd_ps, cmd_restart, cmd_rm, cmd_run, cmd_start, cmd_stats,
                                           cmd_stop, cmd_system, cmd_volume)
from portlink.runtime.cli_images import cmd_load, cmd_save
from portlink.runtime.cli_links import add_link
from portlink.runtime.client import DEFAULT_SOCKET, Client, CliError


def _lazy(module: str, name: str):
    """A command whose module is imported only when it runs: cli_cp imports tarfile
    and tempfile, cli_ops the signal table, which `run` and `ps` have no use for.
    Made once here, so every parser built names the same function."""
    def fn(cl, a):
        mod = __import__(f"portlink.runtime.{module}", fromlist=[name])
        return getattr(mod, name)(cl, a)
    fn.__name__ = fn.__qualname__ = name
    return fn


cmd_cp = _lazy("cli_cp", "cmd_cp")
cmd_kill, cmd_port, cmd_top, cmd_wait = (_lazy("cli_ops", n) for n in ("cmd_kill", "cmd_port", "cmd_top", "cmd_wait"))


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
                print(f"{h.name}\t{h.ip}\t{h.ns}\tPORTLINK_HOST={h.socket}\tDOCKER_HOST=unix://{h.docker_socket}")
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


def _columns() -> int:
    """shutil.get_terminal_size().columns, as argparse's help formatter asks for it,
    without importing shutil (which imports zlib, bz2 and lzma): the command's
    startup pays for that on every run, help or not."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
        columns = columns or 80
    return columns


# The width while build_parser runs: argparse makes a formatter for every
# add_argument (to check its metavar), ~60 for `run`, each asking the terminal.
_building_columns: int | None = None


class _HelpFormatter(argparse.HelpFormatter):
    def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
        if width is None:
            width = (_building_columns or _columns()) - 2
        super().__init__(prog, indent_increment, max_help_position, width)


class _Parser(argparse.ArgumentParser):
    """argparse's parser with the help formatter above (its subparsers are of this class too)."""

    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kw)


def _add_run(sub) -> None:
    r = sub.add_parser("run", help="create and start a container")
    r.add_argument("-d", "--detach", action="store_true")
    r.add_argument("-i", "--interactive", action="store_true", help="keep stdin open (attach sends to it)")
    r.add_argument("-t", "--tty", action="store_true", help="a pseudo-terminal, held by the container's monitor")
    r.add_argument("--name")
    r.add_argument("-e", "--env", action="append", default=[])
    r.add_argument("--env-file", action="append", default=[])
    r.add_argument("-p", "--publish", action="append", default=[], help="[hostip:][hostport:]port[/proto]")
    r.add_argument("--expose", action="append", default=[])
    r.add_argument("--net", "--network", default="bridge")
    r.add_argument("--hostname")
    r.add_argument("--rm", action="store_true")
    r.add_argument("--restart", metavar="POLICY", default="",
                   help="no, on-failure[:N], always or unless-stopped (Docker's; not with --rm)")
    r.add_argument("--dns", action="append", default=[],
                   help="upstream resolver for this container's names portlink does not own")
    r.add_argument("--link", action="append", default=[], help="NAME[:ALIAS]: env vars, /etc/hosts and DNS for NAME")
    r.add_argument("--network-alias", "--alias", action="append", default=[],
                   help="another DNS name for this container on its network")
    r.add_argument("-w", "--workdir")
    r.add_argument("-u", "--user")
    # limits (runtime/limits.py checks them in the daemon)
    r.add_argument("--pids-limit", type=int, metavar="N",
                   help="at most N processes and threads (default 2048; 0 or -1: unlimited)")
    r.add_argument("-m", "--memory", metavar="SIZE", help="memory limit: 512m, 1g (at least 6m)")
    r.add_argument("--memory-swap", metavar="SIZE",
                   help="memory plus swap (default twice --memory; -1: unlimited swap)")
    r.add_argument("--cpus", metavar="N", help="CPUs the container may use: 0.5, 2")
    r.add_argument("--ulimit", action="append", default=[], metavar="NAME=SOFT[:HARD]",
                   help="a resource limit, like nofile=1024:2048 (at most the daemon's hard limit)")
    r.add_argument("-l", "--label", action="append", default=[])
    r.add_argument("--log-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="log rotation: max-size=10m, max-file=3 (default: portlinkd --log-max-size/--log-max-files)")
    r.add_argument("--security-opt", action="append", default=[], metavar="OPT",
                   help="seccomp=unconfined, seccomp=PATH (a profile on the daemon's host), no-new-privileges")
    r.add_argument("--cap-add", action="append", default=[], metavar="CAP", help="NET_RAW, CAP_SYS_ADMIN, ALL")
    r.add_argument("--cap-drop", action="append", default=[], metavar="CAP")
    # volumes and mounts (runtime/volspec.py checks them in the daemon)
    r.add_argument("-v", "--volume", action="append", default=[], metavar="[NAME:|HOST-PATH:]PATH[:ro]",
                   help="a named volume (made if missing), a host directory, or PATH alone: an anonymous volume")
    r.add_argument("--mount", action="append", default=[], metavar="type=volume|bind|tmpfs,source=..,target=..",
                   help="Docker's long form: readonly, volume-nocopy, tmpfs-size=, tmpfs-mode=")
    r.add_argument("--tmpfs", action="append", default=[], metavar="PATH[:OPTIONS]",
                   help="a tmpfs (nosuid, nodev, noexec; 64m unless size=): ro, exec, size=, mode=")
    r.add_argument("--volumes-from", action="append", default=[], metavar="CONTAINER[:ro|:rw]",
                   help="the volumes and binds of another container")
    r.add_argument("--ambassador", metavar="SERVICE",
                   help="run an ambassador: forward the service's ports (from Consul, or --expose) "
                        "to its healthy instances, rerouting as they move")
    r.add_argument("--ambassador-policy", choices=["keep", "drain", "close"], default="drain",
                   help="what happens to open connections to an instance that left (default drain)")
    r.add_argument("--ambassador-drain", type=float, default=10.0, metavar="S",
                   help="drain deadline in seconds")
    # the image's config (runtime/image_config.py)
    r.add_argument("--entrypoint", metavar="CMD",
                   help="run CMD instead of the image's ENTRYPOINT (and drop its CMD); \"\" clears it")
    r.add_argument("--stop-signal", metavar="SIG", help="signal `stop` sends first (default: the image's, or SIGTERM)")
    # health checks (runtime/health.py): over the image's HEALTHCHECK
    r.add_argument("--health-cmd", metavar="CMD", help="command the container's /bin/sh runs (in the container) to check its health")
    r.add_argument("--health-interval", metavar="D", help="time between checks (default 30s)")
    r.add_argument("--health-timeout", metavar="D", help="a check running longer is killed and fails (default 30s)")
    r.add_argument("--health-retries", type=int, metavar="N",
                   help="consecutive failures that make it unhealthy (default 3)")
    r.add_argument("--health-start-period", metavar="D",
                   help="failures in this time after start do not count (default 0s)")
    r.add_argument("--no-healthcheck", action="store_true", help="no check, not even the image's HEALTHCHECK")
    _add_run_host_flags(r)
    r.add_argument("image", nargs="?")
    r.add_argument("command", nargs=argparse.REMAINDER)
    r.set_defaults(fn=cmd_run)


def _add_run_host_flags(r) -> None:
    """Docker's --add-host, --dns-search, --dns-option, --init (runtime/hostopts.py checks them)."""
    r.add_argument("--add-host", action="append", default=[], metavar="NAME:IP",
                   help="a line in the container's /etc/hosts; IP host-gateway: its network's gateway")
    r.add_argument("--dns-search", action="append", default=[], metavar="DOMAIN",
                   help="a search domain in its /etc/resolv.conf ('.': none)")
    r.add_argument("--dns-option", action="append", default=[], metavar="OPT",
                   help="a resolv.conf option: ndots:N, timeout:N, attempts:N, rotate, edns0, ...")
    r.add_argument("--init", action="store_true",
                   help="run tini as PID 1 (/sbin/docker-init): it forwards signals and reaps zombies")


def _add_ps(sub) -> None:
    s = sub.add_parser("ps", help="list containers")
    s.add_argument("-a", "--all", action="store_true")
    s.add_argument("-q", "--quiet", action="store_true")
    s.add_argument("--format", choices=["table", "json"], default="table")
    s.set_defaults(fn=cmd_ps)


def _add_lifecycle(name: str, fn, helptext: str):
    def add(sub) -> None:
        x = sub.add_parser(name, help=helptext)
        if name != "start":
            x.add_argument("-t", "--time", type=float, default=10, help="seconds before SIGKILL")
        x.add_argument("containers", nargs="+")
        x.set_defaults(fn=fn)
    return add


def _add_rm(sub) -> None:
    x = sub.add_parser("rm", help="remove containers")
    x.add_argument("-f", "--force", action="store_true")
    x.add_argument("-v", "--volumes", action="store_true", help="remove its anonymous volumes too")
    x.add_argument("containers", nargs="+")
    x.set_defaults(fn=cmd_rm)


def _add_events(sub) -> None:
    x = sub.add_parser("events", help="what happened on this host (follows until --until or Ctrl-C)")
    x.add_argument("--since", help="Unix time or duration back from now (30s, 10m, 2h)")
    x.add_argument("--until", help="Unix time or duration back from now; 0s: now, and do not follow")
    x.add_argument("-f", "--filter", action="append", default=[],
                   help="KEY=VALUE: type, event, container, name, network, service (repeatable)")
    x.add_argument("--format", choices=["text", "json"], default="text")
    x.set_defaults(fn=cmd_events)


def _add_stats(sub) -> None:
    x = sub.add_parser("stats", help="live CPU, memory, network and block I/O of containers")
    x.add_argument("containers", nargs="*", metavar="NAME", help="these containers (default: all running)")
    x.add_argument("-a", "--all", action="store_true", help="stopped containers too")
    x.add_argument("--no-stream", action="store_true", help="two samples --interval apart, printed once")
    x.add_argument("--format", choices=["table", "json"], default="table",
                   help="json: one JSON object per container per sample (JSON lines)")
    x.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between samples (default 1)")
    x.set_defaults(fn=cmd_stats)


def _add_logs(sub) -> None:
    x = sub.add_parser("logs", help="print a container's output")
    x.add_argument("-f", "--follow", action="store_true", help="then print new output until the container stops")
    x.add_argument("-n", "--tail", help="only the last N lines (of all the rotated files), or all")
    x.add_argument("--since", help="lines from then on: Unix time, duration back from now (10m, 1h30m) or RFC 3339")
    x.add_argument("-t", "--timestamps", action="store_true", help="each line's time first (RFC 3339, UTC)")
    x.add_argument("container")
    x.set_defaults(fn=cmd_logs)


def _add_exec(sub) -> None:
    x = sub.add_parser("exec", help="run a command in a running container")
    x.add_argument("-i", "--interactive", action="store_true", help="accepted for docker compatibility; stdin is always attached")
    x.add_argument("-t", "--tty", action="store_true")
    x.add_argument("-e", "--env", action="append", default=[])
    x.add_argument("-w", "--workdir")
    x.add_argument("container")
    x.add_argument("command", nargs=argparse.REMAINDER)
    x.set_defaults(fn=cmd_exec)


def _add_attach(sub) -> None:
    x = sub.add_parser("attach", help="the output of a running container live, and your input to it "
                                      "(-i); ctrl-p ctrl-q detaches")
    x.add_argument("--no-stdin", action="store_true", help="do not send input")
    x.add_argument("container")
    x.set_defaults(fn=_cmd_attach)


def _cmd_attach(cl, a) -> int:
    from portlink.runtime import cli_attach   # only this command pays for the import
    try:
        return cli_attach.cmd_attach(cl, a)
    except cli_attach.AttachError as e:
        raise CliError(str(e)) from None


def _add_inspect(sub) -> None:
    x = sub.add_parser("inspect", help="show containers or networks as JSON")
    x.add_argument("refs", nargs="+")
    x.set_defaults(fn=cmd_inspect)


def _add_network(sub) -> None:
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


def _add_image(sub) -> None:
    i = sub.add_parser("image", help="manage images")
    isub = i.add_subparsers(dest="icmd", required=True)
    imp = isub.add_parser("import")
    imp.add_argument("tarball")
    imp.add_argument("name")
    isub.add_parser("ls")
    isub.add_parser("rm").add_argument("names", nargs="+")
    isub.add_parser("inspect", help="an image's config as JSON").add_argument("names", nargs="+")
    t = isub.add_parser("tag", help="another name for an image")
    t.add_argument("source")
    t.add_argument("target")
    _load_args(isub.add_parser("load", help="load images from a docker-save or OCI archive"))
    _save_args(isub.add_parser("save", help="write images as a docker-save archive"))
    i.set_defaults(fn=cmd_image)


def _load_args(x) -> None:
    x.add_argument("-i", "--input", default="-", metavar="FILE",
                   help="a docker-save archive or OCI image layout (tar, tar.gz); - or none: stdin")
    x.add_argument("-q", "--quiet", action="store_true")
    x.set_defaults(fn=cmd_load)


def _save_args(x) -> None:
    x.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    x.add_argument("images", nargs="+")
    x.set_defaults(fn=cmd_save)


def _add_load(sub) -> None:
    _load_args(sub.add_parser("load", help="load images from a docker-save archive or an OCI image layout"))


def _add_save(sub) -> None:
    _save_args(sub.add_parser("save", help="write images as a docker-save archive"))


def _add_volume(sub) -> None:
    v = sub.add_parser("volume", help="manage volumes")
    vsub = v.add_subparsers(dest="vcmd", required=True)
    c = vsub.add_parser("create", help="create a volume (a random name if none)")
    c.add_argument("-l", "--label", action="append", default=[])
    c.add_argument("name", nargs="?", default="")
    ls = vsub.add_parser("ls", help="list volumes")
    ls.add_argument("-q", "--quiet", action="store_true")
    ls.add_argument("-f", "--filter", action="append", default=[], help="dangling=true|false")
    ls.add_argument("--format", choices=["table", "json"], default="table")
    vsub.add_parser("inspect", help="show volumes as JSON").add_argument("names", nargs="+")
    rm = vsub.add_parser("rm", help="remove volumes no container uses")
    rm.add_argument("-f", "--force", action="store_true", help="no error for a missing volume")
    rm.add_argument("names", nargs="+")
    pr = vsub.add_parser("prune", help="remove unused anonymous volumes (-a: named ones too)")
    pr.add_argument("-a", "--all", action="store_true")
    pr.add_argument("-f", "--force", action="store_true", help="do not ask")
    v.set_defaults(fn=cmd_volume)


def _add_system(sub) -> None:
    y = sub.add_parser("system", help="host-wide operations")
    ysub = y.add_subparsers(dest="scmd", required=True)
    pr = ysub.add_parser("prune", help="remove everything portlink created on this host")
    pr.add_argument("-f", "--force", action="store_true")
    pr.add_argument("--volumes", action="store_true", help="and every volume (volumes are kept otherwise)")
    ysub.add_parser("firewall", help="show portlink's firewall rules")
    ysub.add_parser("consul", help="show the link to Consul").add_argument(
        "--sync", action="store_true", help="resync this host's entries now and show what changed")
    ysub.add_parser("check", help="find and repair drift (veths, bridges, firewall, Consul entries, "
                    "dead processes)").add_argument("--format", choices=["table", "json"], default="table")
    y.set_defaults(fn=cmd_system)


def _add_kill(sub) -> None:
    x = sub.add_parser("kill", help="send a signal to containers' main process (default KILL)")
    x.add_argument("-s", "--signal", default="KILL", metavar="SIGNAL",
                   help="a name (KILL, SIGHUP) or a number (default KILL)")
    x.add_argument("containers", nargs="+")
    x.set_defaults(fn=cmd_kill)


def _add_wait(sub) -> None:
    x = sub.add_parser("wait", help="block until containers stop, then print their exit codes")
    x.add_argument("containers", nargs="+")
    x.set_defaults(fn=cmd_wait)


def _add_top(sub) -> None:
    x = sub.add_parser("top", help="the processes of a container (ps on the host; default -ef)")
    x.add_argument("container")
    x.add_argument("ps_args", nargs=argparse.REMAINDER, metavar="PS OPTIONS")
    x.set_defaults(fn=cmd_top)


def _add_port(sub) -> None:
    x = sub.add_parser("port", help="a container's published ports (80/tcp -> 0.0.0.0:8080)")
    x.add_argument("container")
    x.add_argument("private", nargs="?", metavar="PRIVATE_PORT[/PROTO]")
    x.set_defaults(fn=cmd_port)


def _add_cp(sub) -> None:
    x = sub.add_parser("cp", help="copy files between a container and this machine",
                       description="portlink cp [-L] CONTAINER:SRC DEST|-  or  portlink cp [-L] SRC|- CONTAINER:DEST "
                                   "(- is a tar on stdout/stdin; PATH/. is a directory's contents)")
    x.add_argument("-L", "--follow-link", action="store_true", help="follow a symbolic link in a local SRC")
    x.add_argument("src", metavar="SRC")
    x.add_argument("dest", metavar="DEST")
    x.set_defaults(fn=cmd_cp)


def _add_lab(sub) -> None:
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


# Each command's subparser, in the order `portlink --help` lists them.
COMMANDS = {
    "run": _add_run,
    "ps": _add_ps,
    "start": _add_lifecycle("start", cmd_start, "start stopped containers"),
    "stop": _add_lifecycle("stop", cmd_stop, "stop running containers"),
    "restart": _add_lifecycle("restart", cmd_restart, "restart containers"),
    "rm": _add_rm,
    "events": _add_events,
    "stats": _add_stats,
    "logs": _add_logs,
    "exec": _add_exec,
    "attach": _add_attach,
    "kill": _add_kill,
    "wait": _add_wait,
    "top": _add_top,
    "port": _add_port,
    "cp": _add_cp,
    "inspect": _add_inspect,
    "network": _add_network,
    "image": _add_image,
    "volume": _add_volume,
    "load": _add_load,
    "save": _add_save,
    "system": _add_system,
    "lab": _add_lab,
    "link": add_link,
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `only`, the same parser with just that command's
    subparser (what parsing that command needs: the rest only shows in help and
    in the error for an unknown command)."""
    global _building_columns
    _building_columns = _columns()
    try:
        p = _Parser(prog="portlink", description="portlink: containers, networks and links across hosts")
        p.add_argument("-H", "--host", default=os.environ.get("PORTLINK_HOST", DEFAULT_SOCKET),
                       help="daemon socket (env PORTLINK_HOST; default %(default)s)")
        sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
        for name, add in COMMANDS.items():
            if only is None or name == only:
                add(sub)
    finally:
        _building_columns = None     # help, printed later, asks again
    return p


def command_of(argv: list[str]) -> str | None:
    """The command `argv` names when that is plain without parsing: its first
    word, or the word after a leading `-H HOST` / `--host HOST` / `-HHOST` /
    `--host=HOST`. None otherwise (help, no command, an unknown one, abbreviated
    options): then the whole parser parses, so help and errors stay the same."""
    i = 0
    if argv[:1] in (["-H"], ["--host"]):
        if len(argv) < 2 or argv[1].startswith("-"):
            return None
        i = 2
    elif argv and (argv[0].startswith("--host=") or (argv[0].startswith("-H") and len(argv[0]) > 2)):
        i = 1
    return argv[i] if i < len(argv) and argv[i] in COMMANDS else None


def main(argv: list[str] | None = None) -> None:
    as_program = argv is None
    if argv is None:
        argv = sys.argv[1:]
    # Only the chosen command's subparser: building all of them is most of argparse's cost.
    a = build_parser(command_of(argv)).parse_args(argv)
    try:
        code = a.fn(Client(a.host), a)
    except CliError as e:
        print(f"portlink: {e}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    except BrokenPipeError:
        sys.exit(0)
    if as_program and a.cmd in _QUICK_EXIT and (code is None or isinstance(code, int)):
        _exit_now(code or 0)
    sys.exit(code)


# Commands that leave nothing to finish at exit but their output: the interpreter's
# teardown (freeing every module and object) is skipped, a few ms of a short run.
_QUICK_EXIT = frozenset({"run", "ps", "rm", "inspect", "start", "stop", "kill", "wait"})


def _exit_now(code: int) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        os._exit(0)    # as main's BrokenPipeError: the reader went away
    os._exit(code)


if __name__ == "__main__":
    main()
