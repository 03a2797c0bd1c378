"""portlinkd: one per host. Builds the host (runtime.host), serves the API
(runtime.api) on a root-only UNIX socket, follows Consul, and stops on a signal
(containers keep running)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from ipaddress import ip_address
from pathlib import Path

from aiohttp import web

from portlink import logsetup, parse
from portlink.catalog import acl
from portlink.catalog import config as consul_config
from portlink.catalog.ambassador_tokens import AmbassadorTokens, Signer
from portlink.catalog.services import CheckPolicy
from portlink.catalog.sync import ConsulSync, route_source
from portlink.dns.zone import DEFAULT_TTL
from portlink.errors import InvalidArgument, PortlinkError
from portlink.threads import name_os_thread
from portlink.runtime import docker_api, exporter, logfmt, reaper
from portlink.runtime.api import MAX_BODY, Api
from portlink.runtime.client import DEFAULT_SOCKET  # the CLI's default too
from portlink.runtime.host import Host, HostConfig

log = logging.getLogger("portlink.daemon")
API_BACKLOG = 1024    # pending API connections (aiohttp's default is 128)

DEFAULT_STATE = "/var/lib/portlink"
WITHDRAW_WAIT = 3.0   # seconds a stop waits for Consul to drop the container's entries before its signal
# After its server side stopped accepting: the requests it took just before finish
# before the container hears its signal (a server that dies at once, like httpd
# killed from a trap, would cut them). Kubernetes' preStop sleep, for the same reason.
QUIESCE_SETTLE = 1.0
OOM_SCORE_ADJ = -500   # dockerd's: under memory pressure the OOM killer takes containers (0) first


def protect_from_oom(path: str = "/proc/self/oom_score_adj") -> bool:
    """Lower the daemon's own OOM score as dockerd does; children inherit it, so the
    OCI config sets containers back to 0. Lowering it needs CAP_SYS_RESOURCE: without
    it the daemon warns and goes on. True if it was set."""
    try:
        with open(path, "w") as f:
            f.write(str(OOM_SCORE_ADJ))
    except OSError as e:
        log.warning("cannot set portlinkd's oom_score_adj to %d (%s; it needs CAP_SYS_RESOURCE): the OOM "
                    "killer may take the daemon before a container", OOM_SCORE_ADJ, e.strerror or e)
        return False
    return True


def _seconds(text: str) -> float:
    """A duration flag: seconds (2.5) or a duration like 500ms, 10s, 1m (portlink.parse)."""
    return parse.duration("duration", text)


_seconds.__name__ = "duration"   # argparse: "invalid duration value: 'x'"


async def serve(cfg: HostConfig, socket_path: Path, check_interval: float = 30.0,
                metrics_addr: str | None = None, docker_socket: Path | None = None) -> None:
    # The loop's own pool (setup, follow-ups of catalog changes), named like the rest.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(thread_name_prefix="background", initializer=name_os_thread))
    host = Host(cfg)
    repaired = await asyncio.get_running_loop().run_in_executor(None, host.setup)
    if repaired:
        log.warning("reconciled after restart: %s", "; ".join(repaired))
    consul = await start_consul(host) if cfg.consul else None
    api = Api(host, consul)
    app = web.Application(middlewares=[api.errors], client_max_size=MAX_BODY)
    app.add_routes(api.routes())
    checker = asyncio.create_task(api.check_every(check_interval)) if check_interval else None
    feeder = asyncio.create_task(feed_reachability(host, consul)) if consul and host.forwarder else None
    metrics = await exporter.Exporter(host, consul, api.call).serve(metrics_addr) if metrics_addr else None
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if socket_path.exists() or socket_path.is_symlink():
        socket_path.unlink()
    old = os.umask(0o177)   # the socket is root-only from its first moment
    try:
        # A full accept queue makes a UNIX-socket connect() fail at once (EAGAIN), not
        # wait: room for a burst of clients (200 parallel `portlink run`s), capped by somaxconn.
        site = web.UnixSite(runner, str(socket_path), backlog=API_BACKLOG)
        await site.start()
    finally:
        os.umask(old)
    os.chmod(socket_path, 0o600)
    # The Docker API: a second front door onto the same Api (its pool, its host).
    docker = await docker_api.serve(api, docker_socket) if docker_socket else None
    tune_gc()
    log.info("portlinkd ready on %s (state %s, firewall %s)", socket_path, cfg.state_dir, host.fw.name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    await stop.wait()
    host.containers.restarts.close()   # no restart by a policy while shutting down
    if checker:
        checker.cancel()
    if feeder:
        feeder.cancel()
    # Containers keep running across a daemon stop; the next start reconciles.
    await runner.cleanup()
    if docker:
        await docker.cleanup()
    if metrics:
        await metrics.cleanup()
    if consul:
        await consul.stop()   # entries stay: the containers keep running
    host.close()


async def feed_reachability(host: Host, sync: ConsulSync, every: float = 1.0) -> None:
    """Consul lost or back (no catalog change says so): the hosted ambassadors are told."""
    loop = asyncio.get_running_loop()
    seen = sync.reach.up
    while True:
        await asyncio.sleep(every)
        if sync.reach.up != seen:
            seen = sync.reach.up
            await loop.run_in_executor(None, host.ambassadors.feed_all)


async def start_consul(host: Host) -> ConsulSync:
    """Register this host's published ports and follow the catalog for DNS."""
    cfg = host.cfg
    advertise = cfg.advertise or route_source(cfg.consul.host, cfg.consul.port)
    if ip_address(advertise).is_loopback and not cfg.advertise:
        raise InvalidArgument(f"the route to Consul at {cfg.consul.url} is over loopback, so this host has no "
                              "address other hosts or containers could use: give --advertise IP")
    loop = asyncio.get_running_loop()
    pending = False
    rebuild = False

    last: dict = dict(host.catalog.services or {})

    def follow_up() -> None:
        nonlocal pending, rebuild, last
        pending = False          # cleared first: a change during this schedules another
        if rebuild:
            rebuild = False
            host.refresher.refresh_services()
        now = dict(host.catalog.services or {})
        last, before = now, last
        # The local ambassadors follow the same catalog: an instance set that changed
        # is a reroute for each of them (an event; reading the store, so in a thread).
        host.ambassadors.reroutes(before, now)
        host.link_datapath.catalog_changed()   # the kernel path's backends (keep/drain/close of open flows)

    def on_services(services) -> None:
        # Catalog changes arrive on the event loop: the resolver gets them from here at
        # once (Refresher.apply_services); only when a full refresh is running does the
        # rebuild wait for it, in a thread. The reroute events follow in a thread, a
        # burst of changes costing one pass, not one each.
        nonlocal pending, rebuild
        host.catalog.services = services
        if not host.refresher.apply_services():
            rebuild = True
        if not pending:
            pending = True
            loop.run_in_executor(None, follow_up)

    interval = f"{cfg.consul_check_interval:g}s"
    sync = ConsulSync(cfg.consul, host.host_id, lambda: host.registrations(advertise), on_services,
                      CheckPolicy(interval=interval, timeout=f"{min(cfg.consul_check_interval, 2.0):g}s"),
                      cfg.consul_resync)
    await sync.start()
    # Set before the first await: the registrar's first pass has not run yet.
    sync.registrar.on_change = lambda action, sid, service: host.events.emit("consul", action, sid, service=service)
    host.refresher.subscribe(sync.poke)
    host.health.subscribe(sync.poke)   # a health transition: the instance's Consul check follows at once

    def withdraw(c) -> None:
        error = sync.withdraw_now(WITHDRAW_WAIT)
        if error:
            log.warning("consul: stopping %s without withdrawing it first (%s)", c.name, error)
        if host.servers is not None:
            # Consul's change reaches other hosts' client sides a moment later: until
            # then a dial to this server side is refused (they fail over), not
            # accepted and cut when the container goes.
            if host.servers.quiesce(c):
                time.sleep(QUIESCE_SETTLE)
    host.containers.withdraw = withdraw
    if host.forwarder is not None:
        host.forwarder.reachable = lambda: sync.reach.up   # what the hosted ambassadors' /stats say
    log.info("consul: %s as host %s, advertising %s", cfg.consul.url, host.host_id, advertise)
    if host.servers is not None:
        # Server sides publish on the advertise address: known only now.
        host.servers.advertise = advertise
        loop.run_in_executor(None, host.servers.sync)
    return sync


def ambassador_tokens(consul, key: str | None, method: str | None) -> AmbassadorTokens | None:
    """How ambassadors get their Consul token: None without --ambassador-key
    (an agent without ACLs). The key is read and checked now, before anything is made."""
    if key is None:
        if method is not None:
            raise InvalidArgument("--ambassador-auth-method is used with --ambassador-key PATH")
        return None
    if consul is None:
        raise InvalidArgument("--ambassador-key signs Consul logins: give --consul ADDR too")
    try:
        name = method or acl.auth_method_name(socket.gethostname().split(".")[0])
        return AmbassadorTokens(consul, Signer.load(key), name)
    except ValueError as e:
        raise InvalidArgument(str(e)) from None


GC_OLDEST = 100   # young-generation collections between full ones considered (CPython's default: 10)


def tune_gc() -> None:
    """The cyclic collector, once set up (issue 18). Its full collection walks every
    object the daemon holds, and CPython runs one every 10 collections of the
    middle generation once the objects promoted since the last reach a quarter of
    them. A `run` takes ~0.2 s: its objects outlived young collections, were
    promoted, counted and freed by their references, so that quarter came round
    every ~80 links while each full collection cost more with every container.
    Considered 10 times less often, they come about twice per 1,000 links; the
    young generation keeps its size, so its pauses stay short (the resolver's
    latency). What set-up made (modules, classes, the recovered state) is frozen
    out of every collection."""
    gc.collect()
    gc.freeze()
    young, older, _ = gc.get_threshold()
    gc.set_threshold(young, older, GC_OLDEST)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="portlinkd", description="the portlink daemon (one per host)")
    p.add_argument("--socket", default=os.environ.get("PORTLINK_HOST", DEFAULT_SOCKET).removeprefix("unix://"))
    p.add_argument("--state-dir", default=DEFAULT_STATE)
    p.add_argument("--firewall", choices=["nftables", "iptables"], default="nftables")
    p.add_argument("--default-subnet", default="10.77.0.0/16")
    p.add_argument("--dns", action="append", default=[],
                   help="upstream resolver for names portlink does not own: IP[:port] (repeatable)")
    p.add_argument("--dns-port", type=int, default=53, help="port of the resolver on each gateway address")
    p.add_argument("--dns-ttl", type=int, default=DEFAULT_TTL, help="TTL of portlink's own answers (seconds)")
    p.add_argument("--dns-timeout", type=_seconds, default=2.0, help="seconds to wait for each upstream")
    p.add_argument("--consul", metavar="ADDR", help="Consul agent HTTP address, host[:port] or http(s)://host:port "
                   "(default $CONSUL_HTTP_ADDR; unset: no Consul, a single host)")
    p.add_argument("--consul-token", help="ACL token; visible in ps: prefer --consul-token-file "
                   "(default $CONSUL_HTTP_TOKEN / $CONSUL_HTTP_TOKEN_FILE)")
    p.add_argument("--consul-token-file", metavar="PATH", help="file holding this daemon's ACL token")
    p.add_argument("--ambassador-key", metavar="PATH",
                   help="EC P-256 private key (PEM, mode 0600) this host signs its ambassadors' Consul logins "
                        "with (default: ambassadors get no token)")
    p.add_argument("--ambassador-auth-method", metavar="NAME",
                   help="Consul JWT auth method that trusts that key (default portlink-<hostname>)")
    p.add_argument("--secure-links", action="store_true",
                   help="cross-host links over mutual TLS (Consul Connect's CA) through server-side and "
                        "client-side ambassadors, each link allowed by an intention (needs --consul)")
    p.add_argument("--link-datapath", choices=["proxy", "kernel"], default="proxy",
                   help="plaintext client-side ambassadors forward in the forwarder process (proxy, default) "
                        "or by nftables DNAT inside the ambassador's namespace (kernel; README: kernel data path)")
    p.add_argument("--consul-datacenter", help="datacenter to register in and read from (default: the agent's)")
    p.add_argument("--consul-cacert", help="CA file for an https agent (default $CONSUL_CACERT)")
    p.add_argument("--advertise", metavar="IP", help="this host's address in Consul "
                   "(default: the local address of the route to Consul)")
    p.add_argument("--consul-check-interval", type=_seconds, default=5.0,
                   help="seconds between TCP health checks of each registered port")
    p.add_argument("--consul-resync", type=_seconds, default=30.0,
                   help="a full resync with Consul at least this often (seconds)")
    p.add_argument("--check-interval", type=_seconds, default=30.0,
                   help="seconds between drift checks (veths, bridges, firewall, Consul); 0: only on demand")
    p.add_argument("--metrics-addr", metavar="IP:PORT",
                   help="serve Prometheus metrics at http://IP:PORT/metrics (default: off)")
    p.add_argument("--docker-socket", metavar="PATH",
                   help="also serve the Docker Engine API (1.41) on this root-only UNIX socket "
                        "(DOCKER_HOST=unix://PATH; default: off)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=logsetup.FORMATS,
                   help="text (default) or json: one JSON object per line")
    p.add_argument("--log-max-size", default="10m",
                   help="containers' logs rotate at this size (10m, 512k, 1g; run --log-opt max-size= overrides)")
    p.add_argument("--log-max-files", default="3",
                   help="and keep at most this many files each (run --log-opt max-file= overrides)")
    a = p.parse_args(argv)
    logsetup.configure(a.log_level, a.log_format)
    if os.geteuid() != 0:
        sys.exit("portlinkd: must run as root (it manages namespaces, bridges and firewalls)")
    reaper.become_subreaper()
    protect_from_oom()
    try:
        if a.consul_token is not None:
            log.warning("--consul-token shows the token in the process list: use --consul-token-file PATH")
        consul = consul_config.from_sources(a.consul, a.consul_token, a.consul_datacenter, a.consul_cacert,
                                            token_file=a.consul_token_file)
        cfg = HostConfig(state_dir=Path(a.state_dir), firewall=a.firewall, default_subnet=a.default_subnet,
                         dns=a.dns, dns_port=a.dns_port, dns_ttl=a.dns_ttl, dns_timeout=a.dns_timeout,
                         consul=consul, ambassador_tokens=ambassador_tokens(consul, a.ambassador_key,
                                                                            a.ambassador_auth_method),
                         secure_links=a.secure_links, link_datapath=a.link_datapath,
                         advertise=a.advertise, consul_check_interval=a.consul_check_interval,
                         consul_resync=a.consul_resync,
                         log_limits=logfmt.LogLimits(logfmt.parse_size("--log-max-size", a.log_max_size),
                                                     logfmt.parse_files("--log-max-files", a.log_max_files)))
        if a.check_interval and not 1 <= a.check_interval <= 86400:
            raise InvalidArgument(f"invalid --check-interval {a.check_interval:g}: expected 1 to 86400 seconds, or 0")
        if a.metrics_addr:
            exporter.parse_addr(a.metrics_addr)   # a bad address fails before anything is made
        docker_socket = Path(a.docker_socket.removeprefix("unix://")) if a.docker_socket else None
        asyncio.run(serve(cfg, Path(a.socket), a.check_interval, a.metrics_addr, docker_socket))
    except PortlinkError as e:
        sys.exit(f"portlinkd: {e}")


if __name__ == "__main__":
    main()
