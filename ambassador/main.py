"""`python -m portlink.ambassador`: the process inside an ambassador container.

    python -m portlink.ambassador --listen PORT [--listen PORT ...]
        (--service NAME --consul ADDR | --backend PORT=IP:TARGETPORT ...)
        [--bind 0.0.0.0] [--policy keep|drain|close] [--drain-deadline 10]
        [--metrics IP:PORT] [--connect-timeout 2] [--cooldown 5]
        [--tls-serve [PORT=]SERVICE ... | --tls-dial SOURCE [--tls-target SERVICE]]
        [--tls-keys DIR] [--authorize-cache 1] [--no-splice]

Mutual TLS with Consul Connect's CA (needs --consul): --tls-serve makes this
the server side ("I actually talk to frontdb": clients must present a leaf of
the CA and be authorized to reach SERVICE); --tls-dial the client side ("I
pretend I'm frontdb": backends are dialled presenting SOURCE's leaf and must
be the target service; with --service, its mesh-capable instances are followed).

Every argument is checked before anything starts: a bad one exits 2 with a
message naming it. SIGTERM/SIGINT stop it cleanly (exit 0); SIGUSR2 stops accepting
and lets the open connections finish."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import math
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from portlink.ambassador.backends import Backend
from portlink.ambassador.forward import Ambassador
from portlink.ambassador.secure import Secure, TLSOptions, add_tls_arguments, tls_options
from portlink.ambassador.sources import follow_consul, parse_hostport, parse_ip, parse_port, static_sets
from portlink import parse
from portlink.errors import InvalidArgument
from portlink.reroute import DEFAULT_POLICY, DRAIN_DEADLINE, POLICIES

log = logging.getLogger("portlink.ambassador")

PROG = "portlink-ambassador"
WATCH_WAIT = 30.0
_SERVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class UsageError(Exception):
    """A bad command line: the message names the bad value. Exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):   # argparse would print and exit; we raise, nothing started
        raise UsageError(message)


@dataclass(frozen=True)
class Options:
    listen: tuple[int, ...]
    bind: str = "0.0.0.0"
    backends: Mapping[int, tuple[Backend, ...]] = field(default_factory=dict)   # static mode
    service: str | None = None                                                  # consul mode
    consul: object | None = None      # portlink.catalog.config.ConsulConfig
    policy: str = DEFAULT_POLICY
    drain_deadline: float = DRAIN_DEADLINE
    metrics: tuple[str, int] | None = None
    connect_timeout: float = 2.0
    cooldown: float = 5.0
    tls: TLSOptions | None = None
    splice: bool = True               # plaintext pairs on the kernel path (ambassador/splice.py)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Forward TCP from local ports to backends, static or from Consul.")
    p.add_argument("--listen", action="append", default=[], metavar="PORT",
                   help="port to accept on (repeatable, at least one)")
    p.add_argument("--backend", action="append", default=[], metavar="PORT=IP:TARGETPORT",
                   help="static backend of listener PORT (repeatable)")
    p.add_argument("--service", metavar="NAME", help="follow the healthy instances of this Consul service")
    p.add_argument("--consul", metavar="ADDR", help="Consul agent, host[:port] or http(s)://host:port "
                   "(default $CONSUL_HTTP_ADDR)")
    p.add_argument("--bind", default="0.0.0.0", metavar="IP", help="address the listeners bind (0.0.0.0)")
    p.add_argument("--policy", default=DEFAULT_POLICY, metavar="|".join(POLICIES),
                   help="connections whose backend left the set: keep them, drain them "
                        f"(closed after --drain-deadline) or close them at once ({DEFAULT_POLICY})")
    p.add_argument("--drain-deadline", default=f"{DRAIN_DEADLINE:g}", metavar="S",
                   help=f"seconds before draining connections close ({DRAIN_DEADLINE:g})")
    p.add_argument("--metrics", metavar="IP:PORT", help="serve GET /metrics (Prometheus) and GET /stats (JSON) here")
    p.add_argument("--connect-timeout", default="2", metavar="S", help="seconds to wait for a backend to answer (2)")
    p.add_argument("--cooldown", default="5", metavar="S", help="seconds a failed backend is tried last (5)")
    p.add_argument("--no-splice", action="store_true",
                   help="copy plaintext bytes through Python instead of splice(2) between the sockets "
                        "(for comparison; TLS pairs always copy)")
    add_tls_arguments(p)
    return p


def _seconds(text: str, flag: str, positive: bool = False) -> float:
    """Seconds (2.5), or a duration like 500ms or 1m."""
    try:
        v = parse.duration(flag, text)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v < 0 or (positive and v == 0) or v > 86400:
        kind = "a positive" if positive else "a non-negative"
        raise UsageError(f"invalid {flag} {text!r}: expected {kind} number of seconds (at most 86400)")
    return v


def parse_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Options:
    """The command line as Options; UsageError names the first bad value."""
    a = build_parser().parse_args(list(argv))
    try:
        if not a.listen:
            raise UsageError("--listen PORT is required (at least one)")
        listen = tuple(parse_port(t, "--listen") for t in a.listen)
        dup = sorted({p for p in listen if listen.count(p) > 1})
        if dup:
            raise UsageError(f"--listen {dup[0]} is given more than once")
        bind = parse_ip(a.bind, "--bind")
        if a.policy not in POLICIES:
            raise UsageError(f"invalid --policy {a.policy!r}: expected one of {', '.join(POLICIES)}")
        drain = _seconds(a.drain_deadline, "--drain-deadline")
        connect_timeout = _seconds(a.connect_timeout, "--connect-timeout", positive=True)
        cooldown = _seconds(a.cooldown, "--cooldown")
        metrics = parse_hostport(a.metrics, "--metrics") if a.metrics is not None else None
        if metrics and metrics[1] in listen and (bind in ("0.0.0.0", "::") or metrics[0] in (bind, "0.0.0.0", "::")):
            raise UsageError(f"--metrics {a.metrics} uses listener port {metrics[1]}")
    except ValueError as e:
        raise UsageError(str(e)) from None

    backends: dict[int, tuple[Backend, ...]] = {}
    service = consul = None
    tls_wanted = bool(a.tls_serve or a.tls_dial)
    if a.service is not None and a.backend:
        raise UsageError("give either --service (Consul) or --backend (static), not both")
    if a.service is not None:
        if not _SERVICE.match(a.service):
            raise UsageError(f"invalid --service {a.service!r}: expected a Consul service name "
                             "(letters, digits, '_', '.', '-')")
        from portlink.catalog.config import from_sources
        try:
            consul = from_sources(address=a.consul, env=env)
        except InvalidArgument as e:
            raise UsageError(str(e)) from None
        if consul is None:
            raise UsageError(f"--service {a.service} needs --consul ADDR (or CONSUL_HTTP_ADDR)")
        service = a.service
    elif a.consul is not None and not tls_wanted:
        raise UsageError(f"--consul {a.consul} is only used with --service NAME or the --tls-* flags")
    elif not a.backend:
        raise UsageError("no backends: give --service NAME --consul ADDR or --backend PORT=IP:TARGETPORT")
    else:
        try:
            backends = static_sets(a.backend)
        except ValueError as e:
            raise UsageError(str(e)) from None
        for port in backends:
            if port not in listen:
                raise UsageError(f"--backend for port {port}, which is not a --listen port")
        for port in listen:
            if port not in backends:
                raise UsageError(f"--listen {port} has no --backend {port}=IP:TARGETPORT")
    try:
        tls, consul = tls_options(a, listen, service, consul, env)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return Options(listen=listen, bind=bind, backends=backends, service=service, consul=consul,
                   policy=a.policy, drain_deadline=drain, metrics=metrics,
                   connect_timeout=connect_timeout, cooldown=cooldown, tls=tls, splice=not a.no_splice)


async def serve_metrics(stats, host: str, port: int):
    """GET /metrics and GET /stats on host:port; returns the server (cleanup() stops it).
    `stats` is a callable returning (prometheus text, JSON-able dict)."""
    from portlink.ambassador.stats_http import StatsServer

    server = StatsServer(stats)
    await server.start(host, port)
    return server


async def run(opts: Options, stop: asyncio.Event | None = None) -> int:
    """Serve until `stop` is set (or SIGTERM/SIGINT); 0 on a clean stop, 1 if a port cannot be bound."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    reach = consul = secure = None
    tls_kw: dict = {}
    if opts.consul is not None:
        from portlink.catalog.watch import Reachability
        reach = Reachability(opts.consul.url)
        consul = opts.consul.client(timeout=WATCH_WAIT * 1.1 + 5)
    if opts.tls is not None:
        secure = Secure(opts.tls, consul, reach, opts.service, config=opts.consul)
        tls_kw = secure.ambassador_options(opts.listen, opts.connect_timeout)
    amb = Ambassador(opts.listen, host=opts.bind, policy=opts.policy, drain_deadline=opts.drain_deadline,
                     connect_timeout=opts.connect_timeout, cooldown=opts.cooldown, splice=opts.splice, **tls_kw)
    for port, backends in opts.backends.items():
        amb.apply(port, backends)
    runner = task = None
    signals: list[int] = []
    try:
        # SIGUSR2: stop accepting, keep serving the open connections (the daemon
        # sends it to a server side before stopping its container: a drain).
        for sig, handler in ((signal.SIGTERM, stop.set), (signal.SIGINT, stop.set), (signal.SIGUSR2, amb.quiesce)):
            try:
                loop.add_signal_handler(sig, handler)
                signals.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass      # not the main thread (tests): the caller sets `stop`
        if secure is not None and not await secure.start(stop):
            return 0      # stopped before the first certificates came
        try:
            await amb.start()
        except OSError as e:
            log.error("cannot listen on %s: %s", opts.bind, e.strerror or e)
            return 1
        if signals:
            # A process of its own (not a test's thread): what start-up made lives as
            # long as the process, so the cyclic GC stops scanning it. A full collection
            # over it took 12-16 ms on the 2-core VM, a latency spike for whichever
            # connection was in flight.
            gc.collect()
            gc.freeze()
        if opts.service:
            task = loop.create_task(follow_consul(amb, consul, opts.service, reach, WATCH_WAIT,
                                                  connect=bool(opts.tls and opts.tls.dial_as)))

        def stats():
            snap = amb.snapshot()
            if opts.service:
                snap["consul"] = {"service": opts.service, "url": opts.consul.url, "reachable": reach.up}
            if secure is not None:
                snap["tls"] = secure.snapshot()
            return amb.metrics.render(), snap

        if opts.metrics:
            try:
                runner = await serve_metrics(stats, *opts.metrics)
            except OSError as e:
                log.error("cannot serve metrics on %s:%d: %s", *opts.metrics, e.strerror or e)
                return 1
        source = f"consul service {opts.service} at {opts.consul.url}" if opts.service else "static backends"
        log.info("listening on %s ports %s (%s, policy %s)", opts.bind,
                 ",".join(map(str, opts.listen)), source, opts.policy)
        await stop.wait()
        log.info("stopping")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if secure is not None:
            await secure.stop()
        if consul is not None:
            await consul.close()
        if runner is not None:
            await runner.cleanup()
        await amb.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:     # a dependency, but the forwarder works on the default loop too
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run(opts))
