"""portlinkd's HTTP/JSON API (aiohttp, on a root-only UNIX socket).

Handlers are thin: they parse the request and run the host's (blocking) methods
in a thread pool; errors a user can act on become 4xx with {"error": message}."""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor

from aiohttp import ClientSession, ClientTimeout, web

from portlink import parse
from portlink.threads import name_os_thread
from portlink.catalog.services import META_CONTAINER_ID
from portlink.catalog.sync import ConsulSync
from portlink.catalog.watch import describe
from portlink.errors import InvalidArgument, InvalidValue, PortlinkError, RuntimeFailure
from portlink.runtime import (ambassadors, api_images, api_json, api_links, api_ops, api_streams, cgroups, drift,
                              stats, validate)
from portlink.runtime.ambassador_http import read_capped
from portlink.runtime.host import Host

log = logging.getLogger("portlink.daemon")
MAX_BODY = 1 << 20   # a container spec is small; a huge body is an error, not an allocation


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


# Requests run in threads (the store, the kernel); at most this many at once.
WORKERS = 16


class Api:
    def __init__(self, host: Host, consul: ConsulSync | None = None, workers: int = WORKERS) -> None:
        self.host = host
        self.consul = consul
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="api",
                                       initializer=name_os_thread)

    async def call(self, fn, *args, **kw):
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args, **kw))

    def _kernel_path(self, cid: str) -> dict | None:
        """A plaintext client side's kernel data path (runtime.link_datapath), or None."""
        c = self.host.records.get(cid)
        kl = self.host.link_datapath
        return kl.snapshot(c) if c is not None and kl.applies_to(c) else None

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
                                   "tags": list(g.tags), "check": "tcp" if g.tcp_check else None,
                                   "health": g.health_status}
                                  for g in regs if dict(g.meta).get(META_CONTAINER_ID) == info["id"]]
            info["links"] = await api_links.annotate(self, info)
            if info["config"].get("ambassador") and info["status"] == "running" and info["network"]["ip"]:
                info["ambassador"] = await _ambassador_stats(info["network"]["ip"])
                kernel = await self.call(self._kernel_path, info["id"])
                if kernel is not None:
                    info["ambassador"]["kernel"] = kernel
            return ok(info)

        async def start(r):
            return ok(await self.call(c.start, r.match_info["ref"]))

        async def stop(r):
            return ok(await self.call(c.stop, r.match_info["ref"], _timeout(q(r, "t", "10"))))

        async def restart(r):
            return ok(await self.call(c.restart, r.match_info["ref"], _timeout(q(r, "t", "10"))))

        async def rm(r):
            code = await self.call(c.remove, r.match_info["ref"], flag(r, "force"), flag(r, "volumes"))
            return ok({"removed": r.match_info["ref"], "exit_code": code})

        async def exec_argv(r):
            cmd, env, tty, workdir = validate.exec_body(await self.body(r))
            return ok({"argv": await self.call(c.exec_argv, r.match_info["ref"], cmd, env, tty, workdir)})

        async def logs(r):
            info = await self.call(c.inspect, r.match_info["ref"])
            return await api_streams.logs_stream(self, r, info)

        async def net_create(r):
            b = await self.body(r)
            unknown = set(b) - {"name", "subnet", "gateway", "internal", "icc"}
            if unknown:
                raise InvalidArgument(f"unknown field(s): {', '.join(sorted(unknown))}")
            spec = await self.call(n.create, b.get("name", ""), b.get("subnet"), b.get("gateway"),
                                   b.get("internal", False), b.get("icc", True))   # create checks the types
            return ok(api_json.net_json(spec))

        async def net_ls(r):
            return ok([api_json.net_json(s) for s in await self.call(n.list)])

        async def net_inspect(r):
            spec = await self.call(n.get, r.match_info["ref"])
            return ok({**api_json.net_json(spec), "containers": await self.call(n.users, spec.name)})

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
                return await api_streams.import_with_progress(self, r, b.get("path"), b.get("name"))
            img = await self.call(h.images.import_tar, b.get("path"), b.get("name"))
            return ok({**api_json.img_json(img), "warnings": list(img.warnings)})

        async def img_ls(r):
            return ok([api_json.img_json(i) for i in await self.call(h.images.list)])

        async def img_rm(r):
            return ok({"removed": await api_images.remove_image(self, r.match_info["name"])})

        async def prune(r):
            result = await self.call(h.prune, flag(r, "volumes"))
            if self.consul:
                result["errors"] += await self.consul.deregister_all()
            return ok(result)

        # volumes (runtime.volumes) -------------------------------------------------------
        async def vol_create(r):
            b = await self.body(r)
            unknown = set(b) - {"name", "labels"}
            if unknown:
                raise InvalidArgument(f"unknown field(s): {', '.join(sorted(unknown))}")
            name = b.get("name") or ""
            if not isinstance(name, str):
                raise InvalidArgument("field 'name' must be a string")
            return ok(await self.call(h.volumes.create, name, b.get("labels")))

        async def vol_ls(r):
            d = q(r, "dangling")
            return ok(await self.call(h.volumes.list, None if d is None else d in ("1", "true")))

        async def vol_inspect(r):
            return ok(await self.call(h.volumes.get, r.match_info["name"]))

        async def vol_rm(r):
            done = await self.call(h.volumes.remove, r.match_info["name"], flag(r, "force"))
            return ok({"removed": r.match_info["name"] if done else None})

        async def vol_prune(r):
            return ok({"removed": await self.call(h.volumes.prune, flag(r, "all"))})

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
            return await api_streams.events_stream(self, r)

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
            *api_ops.routes(self),         # kill, wait, top, port, cp's archive
            web.get("/stats", stats_all), web.get("/containers/{ref}/stats", stats_one),
            web.post("/networks", net_create), web.get("/networks", net_ls),
            web.get("/networks/{ref}", net_inspect), web.delete("/networks/{ref}", net_rm),
            web.post("/images", img_import), web.get("/images", img_ls),
            *api_images.routes(self),      # load, save, inspect, tag
            *api_links.routes(self),       # link ls
            web.delete("/images/{name:.+}", img_rm),
            web.post("/volumes", vol_create), web.get("/volumes", vol_ls), web.post("/volumes/prune", vol_prune),
            web.get("/volumes/{name}", vol_inspect), web.delete("/volumes/{name}", vol_rm),
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


async def _ambassador_stats(ip: str) -> dict:
    """An ambassador's live metrics, from its /stats on the bridge (the daemon is
    in the host's namespace, so the container's address is on a local link)."""
    url = f"http://{ip}:{ambassadors.METRICS_PORT}/stats"
    try:
        async with ClientSession(timeout=ClientTimeout(total=2)) as s, s.get(url) as r:
            got = json.loads(await read_capped(r))
        if not isinstance(got, dict):
            raise ValueError("not a JSON object")
        return got
    except Exception as e:
        return {"error": f"no metrics from {url}: {e or type(e).__name__}"}


def _timeout(text: str) -> float:
    """Seconds: 10, 2.5, or a duration like 500ms or 1m."""
    try:
        t = parse.duration("stop timeout", text)
    except InvalidValue:
        raise InvalidArgument(f"invalid stop timeout {text!r}: expected seconds") from None
    if not 0 <= t <= 3600:
        raise InvalidArgument(f"invalid stop timeout {t}: expected 0 to 3600 seconds")
    return t

