"""portlinkd: one per host. HTTP/JSON API on a root-only UNIX socket.

Handlers are thin: they parse the request and run the host's (blocking) methods
in a thread pool; errors a user can act on become 4xx with {"error": message}."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from ipaddress import ip_address
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import ClientSession, ClientTimeout, web

from portlink.dns.zone import DEFAULT_TTL
from portlink.catalog import config as consul_config
from portlink.catalog.services import META_CONTAINER_ID, CheckPolicy
from portlink.catalog.sync import ConsulSync, route_source
from portlink.catalog.watch import describe
from portlink import logsetup
from portlink import parse
from portlink.errors import Conflict, InvalidArgument, InvalidValue, PortlinkError, RuntimeFailure
from portlink.runtime import ambassadors, drift, events, logfmt, reaper, validate
from portlink.runtime.client import DEFAULT_SOCKET  # the CLI's default too
from portlink.runtime.host import Host, HostConfig
from portlink.runtime import cgroups, exporter, stats

log = logging.getLogger("portlink.daemon")
MAX_BODY = 1 << 20   # a container spec is small; a huge body is an error, not an allocation
API_BACKLOG = 1024    # pending API connections (aiohttp's default is 128)

DEFAULT_STATE = "/var/lib/portlink"


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _check_unicode(data: object) -> None:
    """JSON can carry lone surrogates ("\\ud800") that no file, database or kernel
    interface can encode: refuse them here rather than fail halfway through a run."""
    todo = [data]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            todo += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            todo += item
        elif isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                raise InvalidArgument(f"invalid text {item!r} in the request body: "
                                      "a lone UTF-16 surrogate is not a character") from None


class Api:
    def __init__(self, host: Host, consul: ConsulSync | None = None, workers: int = 16) -> None:
        self.host = host
        self.consul = consul
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="api")

    async def call(self, fn, *args, **kw):
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args, **kw))

    @staticmethod
    async def body(request: web.Request) -> dict:
        if not request.can_read_body:
            return {}
        try:
            data = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"malformed JSON in the request body: {e}") from None
        except RecursionError:
            raise InvalidArgument("malformed JSON in the request body: nested too deeply") from None
        if not isinstance(data, dict):
            raise InvalidArgument("the request body must be a JSON object")
        _check_unicode(data)
        return data

    @web.middleware
    async def errors(self, request: web.Request, handler):
        try:
            return await handler(request)
        except PortlinkError as e:
            return _json_error(e.status, str(e))
        except web.HTTPRequestEntityTooLarge:
            return _json_error(413, f"request body too large (limit {MAX_BODY} bytes)")
        except web.HTTPException as e:
            if e.status < 400:
                raise
            # unknown path, wrong method: JSON like every other error, so clients parse one shape
            return _json_error(e.status, f"{e.reason}: {request.method} {request.path}")
        except Exception as e:
            log.exception("internal error on %s %s", request.method, request.path)
            return _json_error(500, f"internal error: {e}")

    def routes(self) -> list:
        c, n, h = self.host.containers, self.host.networks, self.host
        q = lambda r, k, d=None: r.query.get(k, d)
        flag = lambda r, k: q(r, k, "0") in ("1", "true", "yes")
        ok = lambda data: web.json_response(data)

        async def ping(r):
            return ok({"ok": True, "firewall": h.fw.name, "state_dir": str(h.cfg.state_dir)})

        async def run(r):
            return ok(await self.call(c.run, await self.body(r)))

        async def ps(r):
            return ok(await self.call(c.list, flag(r, "all")))

        async def inspect(r):
            info = await self.call(c.inspect, r.match_info["ref"])
            if self.consul:
                regs = await self.call(self.consul.desired)
                info["consul"] = [{"id": g.id, "service": g.name, "address": g.address, "port": g.port,
                                   "tags": list(g.tags), "check": "tcp" if g.tcp_check else None}
                                  for g in regs if dict(g.meta).get(META_CONTAINER_ID) == info["id"]]
            if info["config"].get("ambassador") and info["status"] == "running" and info["network"]["ip"]:
                info["ambassador"] = await _ambassador_stats(info["network"]["ip"])
            return ok(info)

        async def start(r):
            return ok(await self.call(c.start, r.match_info["ref"]))

        async def stop(r):
            return ok(await self.call(c.stop, r.match_info["ref"], _timeout(q(r, "t", "10"))))

        async def restart(r):
            return ok(await self.call(c.restart, r.match_info["ref"], _timeout(q(r, "t", "10"))))

        async def rm(r):
            await self.call(c.remove, r.match_info["ref"], flag(r, "force"))
            return ok({"removed": r.match_info["ref"]})

        async def exec_argv(r):
            cmd, env, tty, workdir = validate.exec_body(await self.body(r))
            return ok({"argv": await self.call(c.exec_argv, r.match_info["ref"], cmd, env, tty, workdir)})

        async def logs(r):
            info = await self.call(c.inspect, r.match_info["ref"])
            return await self._logs(r, info, c)

        async def net_create(r):
            b = await self.body(r)
            unknown = set(b) - {"name", "subnet", "gateway", "internal", "icc"}
            if unknown:
                raise InvalidArgument(f"unknown field(s): {', '.join(sorted(unknown))}")
            spec = await self.call(n.create, b.get("name", ""), b.get("subnet"), b.get("gateway"),
                                   b.get("internal", False), b.get("icc", True))   # create checks the types
            return ok(_net_json(spec))

        async def net_ls(r):
            return ok([_net_json(s) for s in await self.call(n.list)])

        async def net_inspect(r):
            spec = await self.call(n.get, r.match_info["ref"])
            return ok({**_net_json(spec), "containers": await self.call(n.users, spec.name)})

        async def net_rm(r):
            spec = await self.call(n.get, r.match_info["ref"])
            errors = await self.call(n.remove, spec.name)
            return ok({"removed": spec.name, "errors": errors})

        async def img_import(r):
            b = await self.body(r)
            unknown = set(b) - {"path", "name"}
            if unknown:
                raise InvalidArgument(f"unknown field(s): {', '.join(sorted(unknown))}")
            # the store checks both (types too) before it touches anything
            if flag(r, "progress"):
                return await self._import_with_progress(r, b.get("path"), b.get("name"))
            img = await self.call(h.images.import_tar, b.get("path"), b.get("name"))
            return ok({**_img_json(img), "warnings": list(img.warnings)})

        async def img_ls(r):
            return ok([_img_json(i) for i in await self.call(h.images.list)])

        async def img_rm(r):
            name = r.match_info["name"]
            users = [x["name"] for x in await self.call(c.list, True) if x["image"] == name]
            if users:
                raise Conflict(f"image {name!r} is used by containers: {', '.join(users)}")
            await self.call(h.images.remove, name)
            return ok({"removed": name})

        async def prune(r):
            result = await self.call(h.prune)
            if self.consul:
                result["errors"] += await self.consul.deregister_all()
            return ok(result)

        async def consul_status(r):
            if not self.consul:
                return ok({"enabled": False})
            return ok({"enabled": True, **self.consul.status()})

        async def consul_sync(r):
            if not self.consul:
                raise InvalidArgument("Consul is not configured on this host (portlinkd --consul ADDR)")
            try:
                done = await self.consul.registrar.sync_once()
            except Exception as e:
                raise RuntimeFailure(f"resync with Consul at {self.consul.cfg.url} failed: {describe(e)}") from None
            return ok({"registered": done.registered, "deregistered": done.deregistered})

        async def firewall(r):
            return ok({"driver": h.fw.name, "rules": await self.call(h.fw.dump)})

        async def check(r):
            return ok({"findings": [f.to_json() for f in await self.check()]})

        async def event_stream(r):
            return await self._events(r)

        async def stats_all(r):
            return ok(await self._stats(await self.call(c.list, flag(r, "all"))))

        async def stats_one(r):
            return ok((await self._stats([await self.call(c.inspect, r.match_info["ref"])]))[0])

        return [
            web.get("/_ping", ping),
            web.post("/containers", run), web.get("/containers", ps),
            web.get("/containers/{ref}", inspect), web.post("/containers/{ref}/start", start),
            web.post("/containers/{ref}/stop", stop), web.post("/containers/{ref}/restart", restart),
            web.delete("/containers/{ref}", rm), web.post("/containers/{ref}/exec", exec_argv),
            web.get("/containers/{ref}/logs", logs),
            web.get("/stats", stats_all), web.get("/containers/{ref}/stats", stats_one),
            web.post("/networks", net_create), web.get("/networks", net_ls),
            web.get("/networks/{ref}", net_inspect), web.delete("/networks/{ref}", net_rm),
            web.post("/images", img_import), web.get("/images", img_ls),
            web.delete("/images/{name}", img_rm),
            web.post("/system/prune", prune), web.get("/system/firewall", firewall),
            web.get("/system/consul", consul_status), web.post("/system/consul/sync", consul_sync),
            web.post("/system/check", check), web.get("/events", event_stream),
        ]

    async def _stats(self, infos: list[dict]) -> list[dict]:
        """One sample per container: raw counters and when they were read (runtime/stats.py);
        ambassadors' connection counts from their /stats, fetched concurrently."""
        samples = await self.call(cgroups.read_samples, infos)
        ambs = [(s, i["network"]["ip"]) for s, i in zip(samples, infos)
                if s["ambassador"] and s["status"] == "running" and i["network"]["ip"]]
        for (s, _), got in zip(ambs, await asyncio.gather(*(_ambassador_stats(ip) for _, ip in ambs))):
            s["conns"] = stats.ambassador_conns(got)
        return samples

    async def check(self) -> list[drift.Finding]:
        """Drift check and repair: the kernel side, then this host's Consul entries."""
        found = await self.call(drift.check, self.host)
        if self.consul:
            try:
                done = await self.consul.registrar.sync_once()
                found += [drift.Finding(f"consul {sid}", "entry missing or changed behind portlink's back", True)
                          for sid in done.registered]
                found += [drift.Finding(f"consul {sid}", "entry of this host that nothing accounts for", True)
                          for sid in done.deregistered]
            except Exception as e:
                found.append(drift.Finding("consul", f"resync with {self.consul.cfg.url}", False, describe(e)))
        for f in found:
            self.host.events.emit("drift", "repaired" if f.repaired else "unrepaired", f.subject,
                                  problem=f.problem, error=f.error)
        return found

    async def check_every(self, interval: float) -> None:
        """The periodic reconcile: drift is repaired within `interval` seconds."""
        while True:
            await asyncio.sleep(interval)
            try:
                for f in await self.check():
                    if f.subject.startswith("consul"):
                        log.warning("drift %s", f)   # the kernel's findings are logged by drift.check
            except Exception:
                log.exception("drift check failed")

    async def _import_with_progress(self, r: web.Request, path, name) -> web.StreamResponse:
        """JSON lines: {"progress": [bytes read, total]} as the import goes, then
        {"image": ...} or {"error": ...} (the status is sent before the outcome is known)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        report = lambda done, total: loop.call_soon_threadsafe(queue.put_nowait, {"progress": [done, total]})
        job = asyncio.ensure_future(self.call(self.host.images.import_tar, path, name, progress=report))
        job.add_done_callback(lambda _: queue.put_nowait(None))
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(r)
        while (item := await queue.get()) is not None:
            await resp.write((json.dumps(item) + "\n").encode())
        try:
            img = job.result()
            last = {"image": {**_img_json(img), "warnings": list(img.warnings)}}
        except PortlinkError as e:
            last = {"error": str(e)}
        await resp.write((json.dumps(last) + "\n").encode())
        await resp.write_eof()
        return resp

    async def _events(self, r: web.Request) -> web.StreamResponse:
        """JSON lines: the recorded events from --since to --until; with follow=1
        (and no until) then the new ones as they happen, until the client leaves."""
        log_ = self.host.events
        filters = events.parse_filters(r.query.getall("filter", []))
        since = events.parse_time(r.query.get("since"))
        until = events.parse_time(r.query.get("until"))
        follow = r.query.get("follow") in ("1", "true") and until is None
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(r)
        seen = log_.seq      # read first: an event emitted meanwhile is followed, not lost
        past = await self.call(lambda: list(log_.read(since, until, filters)))
        for e in past:
            await resp.write((json.dumps(e.to_json()) + "\n").encode())
        while follow:
            await asyncio.sleep(0.1)
            seen, new = log_.after(seen)
            for e in new:
                if events.matches(e, filters):
                    await resp.write((json.dumps(e.to_json()) + "\n").encode())
        await resp.write_eof()
        return resp

    async def _logs(self, r: web.Request, info: dict, c) -> web.StreamResponse:
        """The container's log (runtime/logfmt.py). Query: tail=N|all, since=(Unix
        time | duration like 10m | RFC 3339), follow=1 (until the container stops),
        timestamps=1, format=text|cri.

        format=text (the default): the lines' text, stdout and stderr merged, as a
        foreground `run` prints them. format=cri: one record per line,
        `<RFC3339Nano> <stdout|stderr> <F|P> <text>`, fragments joined back (P:
        the line has no newline yet; when following, its rest comes as more
        records of that stream): byte-exact, so the CLI can split the streams."""
        tail = logfmt.parse_tail(r.query.get("tail"))
        since = logfmt.parse_since(r.query.get("since"))
        follow = r.query.get("follow") in ("1", "true")
        stamps = r.query.get("timestamps") in ("1", "true")
        fmt = r.query.get("format", "text")
        if fmt not in ("text", "cri"):
            raise InvalidArgument(f"invalid log format {fmt!r}: expected text or cri")
        open_line: dict[str, bool] = {}   # stream -> a fragment was sent, the line goes on (text)

        def render(recs) -> bytes:
            if fmt == "cri":
                return b"".join(map(logfmt.format_record, recs))
            out = []
            for rec in recs:
                out.append(logfmt.render_text(rec, stamps, not open_line.get(rec.stream)))
                open_line[rec.stream] = rec.partial
            return b"".join(out)

        reader = logfmt.Reader(Path(info["paths"]["log"]))
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(r)
        try:
            data = await self.call(lambda: render(reader.read_existing(tail, since)))   # off the event loop
            for i in range(0, len(data), 1 << 20):
                await resp.write(data[i:i + (1 << 20)])
            while follow:
                now = self.host.records.get(info["id"])
                running = now is not None and now.status == "running"
                # Read after the status check: a stopped container's shim has written all
                # (Runc.delete waits for it before the status changes), so nothing is lost.
                new = await self.call(reader.read_new)
                if new:
                    await resp.write(render(new))
                if not running:
                    break
                await asyncio.sleep(0.05)
        finally:
            reader.close()
        await resp.write_eof()
        return resp


async def _ambassador_stats(ip: str) -> dict:
    """An ambassador's live metrics, from its /stats on the bridge (the daemon is
    in the host's namespace, so the container's address is on a local link)."""
    url = f"http://{ip}:{ambassadors.METRICS_PORT}/stats"
    try:
        async with ClientSession(timeout=ClientTimeout(total=2)) as s, s.get(url) as r:
            return await r.json()
    except Exception as e:
        return {"error": f"no metrics from {url}: {e or type(e).__name__}"}


def _seconds(text: str) -> float:
    """A duration flag: seconds (2.5) or a duration like 500ms, 10s, 1m (portlink.parse)."""
    return parse.duration("duration", text)


_seconds.__name__ = "duration"   # argparse: "invalid duration value: 'x'"


def _timeout(text: str) -> float:
    """Seconds: 10, 2.5, or a duration like 500ms or 1m."""
    try:
        t = parse.duration("stop timeout", text)
    except InvalidValue:
        raise InvalidArgument(f"invalid stop timeout {text!r}: expected seconds") from None
    if not 0 <= t <= 3600:
        raise InvalidArgument(f"invalid stop timeout {t}: expected 0 to 3600 seconds")
    return t


def _net_json(s) -> dict:
    return {"id": s.id, "name": s.name, "subnet": str(s.subnet), "gateway": str(s.gateway),
            "bridge": s.bridge, "internal": s.internal, "icc": s.icc}


def _img_json(i) -> dict:
    return {"name": i.name, "rootfs": str(i.rootfs), "cmd": i.config.cmd, "created": i.created, "size": i.size}


async def serve(cfg: HostConfig, socket_path: Path, check_interval: float = 30.0,
                metrics_addr: str | None = None) -> None:
    host = Host(cfg)
    repaired = await asyncio.get_running_loop().run_in_executor(None, host.setup)
    if repaired:
        log.warning("reconciled after restart: %s", "; ".join(repaired))
    consul = await start_consul(host) if cfg.consul else None
    api = Api(host, consul)
    app = web.Application(middlewares=[api.errors], client_max_size=MAX_BODY)
    app.add_routes(api.routes())
    checker = asyncio.create_task(api.check_every(check_interval)) if check_interval else None
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
    log.info("portlinkd ready on %s (state %s, firewall %s)", socket_path, cfg.state_dir, host.fw.name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    await stop.wait()
    if checker:
        checker.cancel()
    # Containers keep running across a daemon stop; the next start reconciles.
    await runner.cleanup()
    if metrics:
        await metrics.cleanup()
    if consul:
        await consul.stop()   # entries stay: the containers keep running
    host.close()


async def start_consul(host: Host) -> ConsulSync:
    """Register this host's published ports and follow the catalog for DNS."""
    cfg = host.cfg
    advertise = cfg.advertise or route_source(cfg.consul.host, cfg.consul.port)
    if ip_address(advertise).is_loopback and not cfg.advertise:
        raise InvalidArgument(f"the route to Consul at {cfg.consul.url} is over loopback, so this host has no "
                              "address other hosts or containers could use: give --advertise IP")
    loop = asyncio.get_running_loop()
    pending = False

    last: dict = dict(host.catalog.services or {})

    def refresh() -> None:
        nonlocal pending, last
        pending = False          # cleared first: a change during the rebuild schedules another
        host.refresher.refresh_services()
        now = dict(host.catalog.services or {})
        last, before = now, last
        # The local ambassadors follow the same catalog: an instance set that changed
        # is a reroute for each of them.
        host.ambassadors.reroutes(before, now)

    def on_services(services) -> None:
        # Catalog changes arrive on the event loop; the rebuild reads the store, so it
        # runs in a thread, and a burst of changes costs one rebuild, not one each.
        nonlocal pending
        host.catalog.services = services
        if not pending:
            pending = True
            loop.run_in_executor(None, refresh)

    interval = f"{cfg.consul_check_interval:g}s"
    sync = ConsulSync(cfg.consul, host.host_id, lambda: host.registrations(advertise), on_services,
                      CheckPolicy(interval=interval, timeout=f"{min(cfg.consul_check_interval, 2.0):g}s"),
                      cfg.consul_resync)
    await sync.start()
    # Set before the first await: the registrar's first pass has not run yet.
    sync.registrar.on_change = lambda action, sid, service: host.events.emit("consul", action, sid, service=service)
    host.refresher.subscribe(sync.poke)
    log.info("consul: %s as host %s, advertising %s", cfg.consul.url, host.host_id, advertise)
    return sync


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
    p.add_argument("--consul-token", help="ACL token (default $CONSUL_HTTP_TOKEN / $CONSUL_HTTP_TOKEN_FILE)")
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
    try:
        cfg = HostConfig(state_dir=Path(a.state_dir), firewall=a.firewall, default_subnet=a.default_subnet,
                         dns=a.dns, dns_port=a.dns_port, dns_ttl=a.dns_ttl, dns_timeout=a.dns_timeout,
                         consul=consul_config.from_sources(a.consul, a.consul_token, a.consul_datacenter,
                                                           a.consul_cacert),
                         advertise=a.advertise, consul_check_interval=a.consul_check_interval,
                         consul_resync=a.consul_resync,
                         log_limits=logfmt.LogLimits(logfmt.parse_size("--log-max-size", a.log_max_size),
                                                     logfmt.parse_files("--log-max-files", a.log_max_files)))
        if a.check_interval and not 1 <= a.check_interval <= 86400:
            raise InvalidArgument(f"invalid --check-interval {a.check_interval:g}: expected 1 to 86400 seconds, or 0")
        if a.metrics_addr:
            exporter.parse_addr(a.metrics_addr)   # a bad address fails before anything is made
        asyncio.run(serve(cfg, Path(a.socket), a.check_interval, a.metrics_addr))
    except PortlinkError as e:
        sys.exit(f"portlinkd: {e}")


if __name__ == "__main__":
    main()
