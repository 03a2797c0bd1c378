"""The Docker Engine API (1.41) front door: portlinkd --docker-socket PATH.

Each handler translates Docker's request (runtime.docker_request), calls the
same operations as portlink's own API (runtime.api's Api: its thread pool, the
host's Containers, Networks, Volumes, ImageStore, EventLog), and renders the
answer in Docker's shape (runtime.docker_views). No rule or check lives here.
What portlink does not have is `{"message": ...}` with 501, never a silent no-op."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import re
import signal
import socket
import time
from pathlib import Path

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from portlink import __version__
from portlink.errors import Conflict, InvalidArgument, NotFound, PortlinkError
from portlink.runtime import api_images, api_links, api_ops, cgroups, docker_attach, events, logfmt, proc_table, signals
from portlink.runtime import docker_views as dv
from portlink.runtime.api_ops import WAIT_POLL
from portlink.runtime.container_copy import CopyPath
from portlink.runtime.container_ops import UNKNOWN_CODE, ContainerOps
from portlink.runtime.docker_exec import Execs
from portlink.runtime.docker_views import STDERR, STDOUT, frame
from portlink.runtime.docker_request import DockerUnsupported, run_request
from portlink.runtime.records import RUNNING

log = logging.getLogger("portlink.docker")
API_VERSION = "1.41"
MIN_API_VERSION = "1.12"
KILL_WAIT = 10.0      # seconds a SIGKILL's answer waits for the container to be gone, at most
_IMAGE_ID = re.compile(r"(?:sha256:)?([0-9a-f]{12,64})")
HEADERS = {"Api-Version": API_VERSION, "Docker-Experimental": "false", "Ostype": "linux",
           "Server": f"portlink/{__version__} (linux)"}


class _Framer:
    """Log records as Docker's stream: stdout/stderr frames, or one raw stream for
    a TTY; the streams not asked for (and records after `until_ns`) left out. A
    line logged in fragments gets its timestamp once (state kept per stream)."""

    def __init__(self, want: set[str], tty: bool, stamps: bool = False, until_ns: int | None = None) -> None:
        self.want, self.tty, self.stamps, self.until_ns = want, tty, stamps, until_ns
        self.open_line: dict[str, bool] = {}

    def __call__(self, recs) -> bytes:
        out = []
        for rec in recs:
            first = not self.open_line.get(rec.stream)
            self.open_line[rec.stream] = rec.partial
            if rec.stream not in self.want or (self.until_ns is not None and rec.time_ns > self.until_ns):
                continue
            text = logfmt.render_text(rec, self.stamps, first)
            out.append(text if self.tty else frame(STDERR if rec.stream == "stderr" else STDOUT, text))
        return b"".join(out)


def _gone(r: web.Request) -> bool:
    """The client left: a wait or follow loop ends (aiohttp does not cancel the handler)."""
    return r.transport is None or r.transport.is_closing()


class _Raw(web.StreamResponse):
    """A hijacked connection's answer: no length and no chunks, the raw stream until it closes."""

    _length_check = False


def _error(status: int, message: str) -> web.Response:
    # exactly application/json (no charset): docker's client parses only that, else prints the body
    return web.Response(body=json.dumps({"message": message}).encode(), status=status,
                        headers={**HEADERS, "Content-Type": "application/json"})


def _flag(r: web.Request, key: str, default: bool = False) -> bool:
    v = r.query.get(key)
    return default if v is None else v.lower() in ("1", "true", "yes")


def _version(major: int, minor: int) -> None:
    if (major, minor) > (1, 41):
        raise InvalidArgument(f"client version {major}.{minor} is too new. Maximum supported API version is "
                              f"{API_VERSION}")
    if (major, minor) < (1, 12):
        raise InvalidArgument(f"client version {major}.{minor} is too old. Minimum supported API version is "
                              f"{MIN_API_VERSION}, please upgrade your client to a newer version")


# Whole API areas portlink does not have: every method and sub-path is a 501 naming it
# (not a 404, which clients read as "no such object").
_UNSUPPORTED_AREAS = {"swarm": "swarm", "services": "swarm services", "nodes": "swarm nodes", "tasks": "swarm tasks",
                      "secrets": "swarm secrets", "configs": "swarm configs", "plugins": "plugins",
                      "distribution": "registry distribution inspect", "session": "build sessions"}


class DockerApi:
    def __init__(self, api) -> None:
        self.api = api            # portlink's own API: its pool and its host
        self.host = api.host
        self.headers = HEADERS
        self.execs = Execs(self)
        self.monitors = docker_attach.Monitors()   # attach relays, for resizes
        self.ops = ContainerOps(api.host)     # kill, wait, top, cp: the same as portlink's own API

    def call(self, fn, *args, **kw):
        return self.api.call(fn, *args, **kw)

    # the app ------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.errors], client_max_size=1 << 20)
        app.add_routes(self.routes())
        return app

    @web.middleware
    async def errors(self, request: web.Request, handler):
        log.debug("docker API: %s %s", request.method, request.path_qs)
        try:
            resp = await handler(request)
        except PortlinkError as e:
            return _error(e.status, str(e))
        except web.HTTPException as e:
            if e.status < 400:
                raise
            if e.status == 404:
                return _error(404, "page not found")
            return _error(e.status, f"{e.reason}: {request.method} {request.path}")
        except ConnectionError:
            return web.Response()    # the client left mid-stream: nothing to answer
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("internal error on %s %s", request.method, request.path)
            return _error(500, f"internal error: {e}")
        if not resp.prepared:
            resp.headers.update(HEADERS)
        return resp

    def routes(self) -> list:
        """Each route twice: unversioned, and under /v1.NN/ (any version up to 1.41)."""
        plain = self._routes()
        heads = {path for method, path, _ in plain if method == "HEAD"}
        out = []
        for method, path, handler in plain:
            # a GET answers HEAD too (aiohttp's default), unless HEAD has its own handler (archive stat)
            kw = {"allow_head": False} if method == "GET" and path in heads else {}
            out.append(web.route(method, path, handler, **kw))
            out.append(web.route(method, r"/v{major:\d+}.{minor:\d+}" + path, self._versioned(handler), **kw))
        return out

    @staticmethod
    def _versioned(handler):
        async def h(r):
            _version(int(r.match_info["major"]), int(r.match_info["minor"]))
            return await handler(r)
        return h

    def _routes(self) -> list:
        unsupported = lambda what: self._unsupported(what)
        return [
            ("GET", "/_ping", self.ping), ("GET", "/version", self.version), ("GET", "/info", self.info),
            ("POST", "/containers/create", self.create), ("GET", "/containers/json", self.ps),
            ("POST", "/containers/prune", self.ctr_prune),
            ("GET", "/containers/{ref}/json", self.inspect), ("POST", "/containers/{ref}/start", self.start),
            ("POST", "/containers/{ref}/stop", self.stop), ("POST", "/containers/{ref}/restart", self.restart),
            ("POST", "/containers/{ref}/kill", self.kill), ("POST", "/containers/{ref}/wait", self.wait),
            ("DELETE", "/containers/{ref}", self.rm),
            ("DELETE", "/containers/{ref}/{link:.+}", unsupported("removing a link (rm --link)")),
            ("GET", "/containers/{ref}/logs", self.logs),
            ("POST", "/containers/{ref}/attach", self.attach),
            ("GET", "/containers/{ref}/attach/ws", unsupported("attach")),
            ("POST", "/containers/{ref}/exec", self.execs.create),
            ("GET", "/containers/{ref}/stats", self.stats),
            ("GET", "/containers/{ref}/top", self.top),
            ("GET", "/containers/{ref}/changes", unsupported("changes")),
            ("GET", "/containers/{ref}/export", unsupported("export")),
            ("GET", "/containers/{ref}/archive", self.archive_get),
            ("PUT", "/containers/{ref}/archive", self.archive_put),
            ("HEAD", "/containers/{ref}/archive", self.archive_head),
            ("POST", "/containers/{ref}/pause", unsupported("pause")),
            ("POST", "/containers/{ref}/unpause", unsupported("unpause")),
            ("POST", "/containers/{ref}/update", unsupported("update")),
            ("POST", "/containers/{ref}/rename", unsupported("rename")),
            ("POST", "/containers/{ref}/resize", self.resize),
            ("GET", "/networks", self.net_ls), ("POST", "/networks/create", self.net_create),
            ("POST", "/networks/prune", self.net_prune),
            ("GET", "/networks/{ref}", self.net_inspect), ("DELETE", "/networks/{ref}", self.net_rm),
            ("POST", "/networks/{ref}/connect", unsupported("network connect (a container is on one network)")),
            ("POST", "/networks/{ref}/disconnect", unsupported("network disconnect")),
            ("GET", "/volumes", self.vol_ls), ("POST", "/volumes/create", self.vol_create),
            ("POST", "/volumes/prune", self.vol_prune),
            ("GET", "/volumes/{name}", self.vol_inspect), ("DELETE", "/volumes/{name}", self.vol_rm),
            ("GET", "/images/json", self.img_ls), ("POST", "/images/load", self.img_load),
            ("GET", "/images/get", self.img_save),
            ("POST", "/images/create", unsupported("pulling or importing images (load a docker-save archive "
                                                   "with `docker load`)")),
            ("POST", "/images/prune", self.img_prune), ("POST", "/build/prune", self.build_prune),
            ("GET", "/images/search", unsupported("image search")),
            ("POST", "/build", unsupported("build")),
            ("GET", "/system/df", unsupported("system df")),
            ("GET", "/images/{name:.+}/json", self.img_inspect),
            ("GET", "/images/{name:.+}/history", unsupported("image history")),
            ("POST", "/images/{name:.+}/push", unsupported("push")),
            ("POST", "/images/{name:.+}/tag", self.img_tag),
            ("GET", "/images/{name:.+}/get", self.img_save_one),
            ("DELETE", "/images/{name:.+}", self.img_rm),
            ("GET", "/events", self.events),
            ("POST", "/exec/{ref}/start", self.execs.start), ("GET", "/exec/{ref}/json", self.execs.inspect),
            ("POST", "/exec/{ref}/resize", self.execs.resize),
            ("POST", "/auth", unsupported("registry login")), ("POST", "/commit", unsupported("commit")),
            ("POST", "/swarm/leave", self.swarm_leave),
            *[(m, f"/{area}{tail}", unsupported(what)) for area, what in _UNSUPPORTED_AREAS.items()
              for m in ("GET", "POST", "DELETE") for tail in ("", "/{tail:.+}")], ("GET", "/services", unsupported("swarm services")),
            ("GET", "/nodes", unsupported("swarm nodes")), ("GET", "/plugins", unsupported("plugins")),
            ("GET", "/secrets", unsupported("swarm secrets")), ("GET", "/configs", unsupported("swarm configs")),
        ]

    async def swarm_leave(self, r):
        # dockerd's answer off a swarm (503): `leave --force` clients take it as done
        return _error(503, "This node is not part of a swarm")

    @staticmethod
    def _unsupported(what: str):
        async def h(r):
            raise DockerUnsupported(f"{what} is not supported by portlink's Docker API")
        return h

    @staticmethod
    async def body(r: web.Request) -> dict:
        if not r.can_read_body:
            return {}
        raw = await r.read()
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise InvalidArgument(f"malformed JSON in the request body: {e}") from None
        if not isinstance(data, dict):
            raise InvalidArgument("the request body must be a JSON object")
        return data

    # system ------------------------------------------------------------------------------------
    async def ping(self, r):
        return web.Response(text="OK", headers={**HEADERS, "Cache-Control": "no-cache, no-store, must-revalidate",
                                                "Pragma": "no-cache"})

    async def version(self, r):
        kernel = platform.release()
        return web.json_response({
            "Platform": {"Name": "portlink"},
            "Components": [{"Name": "Engine", "Version": __version__,
                            "Details": {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
                                        "Os": "linux", "Arch": "amd64", "KernelVersion": kernel}}],
            "Version": __version__, "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "portlink", "GoVersion": "python" + platform.python_version(), "Os": "linux",
            "Arch": "amd64", "KernelVersion": kernel, "BuildTime": ""})

    async def info(self, r):
        views = await self.call(self.host.containers.list, True)
        images = await self.call(self.host.images.list)
        running = sum(v["status"] == RUNNING for v in views)
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return web.json_response({
            "ID": self.host.host_id, "Containers": len(views), "ContainersRunning": running,
            "ContainersPaused": 0, "ContainersStopped": len(views) - running,
            "Images": len({i.id for i in images}),    # images, not names: portlink keeps a record per name
            "Driver": "overlay", "DriverStatus": [], "SystemStatus": None,
            "Plugins": {"Volume": ["local"], "Network": ["bridge"], "Authorization": None, "Log": ["json-file"]},
            "MemoryLimit": True, "SwapLimit": True, "KernelMemory": False, "CpuCfsPeriod": True,
            "CpuCfsQuota": True, "CPUShares": False, "CPUSet": False, "PidsLimit": True, "OomKillDisable": False,
            "IPv4Forwarding": True, "BridgeNfIptables": False, "BridgeNfIp6tables": False, "Debug": False,
            "NFd": 0, "NGoroutines": 0, "SystemTime": dv.iso(time.time()), "LoggingDriver": "json-file",
            "CgroupDriver": "cgroupfs", "CgroupVersion": "1", "NEventsListener": 0,
            "KernelVersion": platform.release(), "OperatingSystem": "portlink", "OSVersion": __version__,
            "OSType": "linux", "Architecture": platform.machine(), "IndexServerAddress": "",
            "RegistryConfig": {"AllowNondistributableArtifactsCIDRs": [],
                               "AllowNondistributableArtifactsHostnames": [], "InsecureRegistryCIDRs": [],
                               "IndexConfigs": {}, "Mirrors": []},
            "NCPU": os.cpu_count(), "MemTotal": mem, "GenericResources": None,
            "DockerRootDir": str(self.host.cfg.state_dir), "HttpProxy": "", "HttpsProxy": "", "NoProxy": "",
            "Name": socket.gethostname(), "Labels": [], "ExperimentalBuild": False, "ServerVersion": __version__,
            "Runtimes": {"runc": {"path": "runc"}}, "DefaultRuntime": "runc",
            "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": False,
                      "Error": "", "RemoteManagers": None},
            "LiveRestoreEnabled": True, "Isolation": "", "InitBinary": "",
            "ContainerdCommit": {"ID": "", "Expected": ""}, "RuncCommit": {"ID": "", "Expected": ""},
            "InitCommit": {"ID": "", "Expected": ""},
            "SecurityOptions": ["name=seccomp,profile=default"], "Warnings": None})

    # containers -------------------------------------------------------------------------------
    async def _view(self, ref: str) -> dict:
        try:
            return await self.call(self.host.containers.inspect, ref)
        except NotFound:
            raise NotFound(f"No such container: {ref}") from None

    async def _ids(self, views: list[dict]) -> tuple[dict, dict]:
        """Image name -> image ID and network name -> network ID, for the views' shapes."""
        def read():
            imgs, nets = {}, {n.name: n.id for n in self.host.networks.list()}
            for name in {v["config"]["image"] for v in views}:
                try:
                    imgs[name] = self.host.images.get(name).id
                except NotFound:
                    imgs[name] = ""
            return imgs, nets
        return await self.call(read)

    async def create(self, r):
        body = await self.body(r)
        image = body.get("Image")
        exposed: list[str] = []
        if isinstance(image, str) and image:
            try:
                exposed = (await self.call(self.host.images.get, image)).config.exposed
            except NotFound:
                raise NotFound(f"No such image: {image}") from None
        data = run_request(body, r.query.get("name", ""), exposed)
        try:
            v = await self.call(self.host.containers.create, data)
        except NotFound as e:
            # Docker's clients read a 404 from create as "no such image" and try to pull it:
            # anything else missing (a link's target, a network) is a bad parameter (400).
            raise InvalidArgument(str(e)) from None
        return web.json_response({"Id": v["id"], "Warnings": []}, status=201)

    async def ps(self, r):
        f = dv.parse_filters(r.query.get("filters"), dv.CONTAINER_FILTERS)
        everything = _flag(r, "all") or "status" in f or "exited" in f
        views = await self.call(self.host.containers.list, everything)
        views = sorted((v for v in views if dv.container_matches(v, f)), key=lambda v: -v["created"])
        try:
            limit = int(r.query.get("limit") or -1)
        except ValueError:
            raise InvalidArgument(f"invalid limit {r.query['limit']!r}: expected a number") from None
        if limit > 0:
            views = views[:limit]
        imgs, nets = await self._ids(views)
        now = time.time()
        return web.json_response([dv.container_summary(v, imgs.get(v["config"]["image"], ""),
                                                       nets.get(v["network"]["name"], ""), now) for v in views])

    async def inspect(self, r):
        v = await self._view(r.match_info["ref"])
        v["links"] = await api_links.annotate(self.api, v)    # each link's target (a remote service, not its ambassador)
        imgs, nets = await self._ids([v])
        return web.json_response(dv.container_inspect(v, imgs[v["config"]["image"]], nets.get(v["network"]["name"], "")))

    async def start(self, r):
        v = await self._view(r.match_info["ref"])
        if v["status"] == RUNNING:
            return web.Response(status=304)
        await self.call(self.host.containers.start, v["id"])
        return web.Response(status=204)

    def _timeout(self, r) -> float:
        t = r.query.get("t")
        try:
            return 10.0 if t in (None, "") else max(0.0, float(t))
        except ValueError:
            raise InvalidArgument(f"invalid timeout {t!r}: expected seconds") from None

    async def stop(self, r):
        v = await self._view(r.match_info["ref"])
        if v["status"] != RUNNING:
            return web.Response(status=304)
        await self.call(self.host.containers.stop, v["id"], self._timeout(r))
        return web.Response(status=204)

    async def restart(self, r):
        v = await self._view(r.match_info["ref"])
        await self.call(self.host.containers.restart, v["id"], self._timeout(r))
        return web.Response(status=204)

    async def kill(self, r):
        v = await self._view(r.match_info["ref"])
        sig = r.query.get("signal") or "KILL"
        await self.call(self.ops.kill, v["id"], sig)
        if signals.parse_signal(sig) == signal.SIGKILL:
            # dockerd's kill -9 answers once the container has stopped: a client's next
            # inspect sees it exited (137) and its rm needs no force
            point = await self.call(self.ops.wait_point, v["id"], "not-running")
            deadline = time.monotonic() + KILL_WAIT
            while time.monotonic() < deadline and not _gone(r):
                try:
                    if await self.call(self.ops.wait_poll, point) is not None:
                        break
                except NotFound:
                    break
                await asyncio.sleep(WAIT_POLL)
        return web.Response(status=204)

    async def wait(self, r):
        """Blocks until the condition: not-running (default), next-exit or removed
        (portlink's wait: runtime.container_ops)."""
        v = await self._view(r.match_info["ref"])
        point = await self.call(self.ops.wait_point, v["id"], r.query.get("condition") or "not-running")
        # The status goes first, as dockerd does: the client waits for it before it starts the container.
        resp = web.StreamResponse(headers={**HEADERS, "Content-Type": "application/json"})
        await resp.prepare(r)
        error = None
        while True:
            try:
                code = await self.call(self.ops.wait_poll, point)
            except NotFound as e:
                code, error = UNKNOWN_CODE, {"Message": str(e)}
            if code is not None:
                break
            if _gone(r):
                return resp
            await asyncio.sleep(WAIT_POLL)
        await resp.write(json.dumps({"StatusCode": code, "Error": error}).encode() + b"\n")
        return resp   # aiohttp ends it (a client gone meanwhile is no error)

    async def rm(self, r):
        if _flag(r, "link"):
            raise DockerUnsupported("removing a link (rm --link) is not supported by portlink")
        v = await self._view(r.match_info["ref"])
        if v["status"] in (RUNNING, "restarting") and not _flag(r, "force"):
            # dockerd's words: clients (docker-py's tests, scripts) look for them
            raise Conflict(f"You cannot remove a {v['status']} container {v['id']}. Stop the container before "
                           "attempting removal or force remove")
        await self.call(self.host.containers.remove, v["id"], _flag(r, "force"), _flag(r, "v"))
        return web.Response(status=204)

    async def logs(self, r):
        """The multiplexed stream (raw for a container with a TTY): stdout and/or
        stderr, tail, since/until, timestamps, follow (until the container stops)."""
        v = await self._view(r.match_info["ref"])
        want = {s for s in ("stdout", "stderr") if _flag(r, s)}
        if not want:
            raise InvalidArgument("Bad parameters: you must choose at least one stream")
        tail = logfmt.parse_tail(r.query.get("tail"))
        since = r.query.get("since")
        since_ns = logfmt.parse_since(since) if since not in (None, "", "0") else None
        until = r.query.get("until")
        until_ns = logfmt.parse_since(until) if until not in (None, "", "0") else None
        stamps, follow = _flag(r, "timestamps"), _flag(r, "follow")
        tty = bool(v["config"].get("tty"))      # a TTY's log is one raw stream, as dockerd sends it
        render = _Framer(want, tty, stamps, until_ns)

        reader = logfmt.Reader(Path(v["paths"]["log"]))
        resp = web.StreamResponse(headers={**HEADERS, "Content-Type": "application/vnd.docker.raw-stream"})
        await resp.prepare(r)
        try:
            await resp.write(await self.call(lambda: render(reader.read_existing(tail, since_ns))))
            while follow and until_ns is None:
                now = await self.call(self.host.records.get, v["id"])
                running = now is not None and now.status == RUNNING
                new = await self.call(reader.read_new)   # after the status: a stopped one's log is whole
                if new:
                    await resp.write(render(new))
                if not running or _gone(r):
                    break
                await asyncio.sleep(0.05)
        finally:
            reader.close()
        return resp   # aiohttp ends it (a client gone meanwhile is no error)

    async def top(self, r):
        v = await self._view(r.match_info["ref"])
        return web.json_response(await self.call(self.ops.top, v["id"], r.query.get("ps_args") or
                                                 proc_table.DEFAULT_ARGS))

    # cp: portlink's copy (runtime.container_copy; a stopped container's by copy_offline) ---------
    async def _cp_path(self, r) -> tuple[str, CopyPath]:
        v = await self._view(r.match_info["ref"])
        path = r.query.get("path")
        if not path:
            raise InvalidArgument("Bad parameters: path is required")
        return v["id"], CopyPath(path)

    async def archive_head(self, r):
        cid, p = await self._cp_path(r)
        st = await self.call(self.ops.copy_stat, cid, p)
        if p.contents:
            st = {**st, "name": "."}
        return web.Response(status=200, headers={**HEADERS, "X-Docker-Container-Path-Stat": dv.path_stat_header(st),
                                                 "Content-Type": "application/json"})

    async def archive_get(self, r):
        cid, p = await self._cp_path(r)
        st = await self.call(self.ops.copy_stat, cid, p)
        spool = await self.call(api_ops.spool_archive, self.ops, cid, p)
        if p.contents:         # as dockerd names it: "." and what is under it
            st = {**st, "name": "."}
            whole, spool = spool, spool.with_name(spool.name + ".rebased")
            try:
                await self.call(dv.rebase_tar, whole, spool, ".")
            finally:
                whole.unlink(missing_ok=True)
        try:
            resp = web.StreamResponse(headers={**HEADERS, "Content-Type": "application/x-tar",
                                               "Content-Length": str(spool.stat().st_size),
                                               "X-Docker-Container-Path-Stat": dv.path_stat_header(st)})
            await resp.prepare(r)
            with open(spool, "rb") as f:
                while chunk := await self.call(f.read, api_images.CHUNK):
                    await resp.write(chunk)
            await resp.write_eof()
            return resp
        finally:
            spool.unlink(missing_ok=True)

    async def archive_put(self, r):
        """The tar extracted into the directory `path` (never a directory replaced by
        a file or the reverse: Docker's noOverwriteDirNonDir, always)."""
        if _flag(r, "copyUIDGID"):
            raise DockerUnsupported("cp -a (copyUIDGID) is not supported by portlink: files get the owner "
                                    "the archive gives")
        cid, p = await self._cp_path(r)
        st = await self.call(self.ops.copy_stat, cid, CopyPath(p.full.rstrip("/") + "/"))
        if st["kind"] != "dir":
            raise InvalidArgument(f"extraction point {p.full} is not a directory")
        spool = await api_images._spool_body(self.api, r)
        try:
            await self.call(self.ops.copy_extract, cid, p, spool)
        finally:
            spool.unlink(missing_ok=True)
        return web.Response(status=200)

    async def resize(self, r):
        """The TTY's size: sent through this API's attach relay to the container's
        monitor (a size given while none is attached goes with the next one)."""
        v = await self._view(r.match_info["ref"])
        if not v["config"].get("tty"):
            raise Conflict(f"container {v['name']!r} has no TTY to resize (run it with -t)")
        rows, cols = docker_attach.size(r)
        self.monitors.resize(v["id"], rows, cols)
        return web.Response(status=200)

    async def raw_stream(self, r: web.Request) -> web.StreamResponse:
        """The answer of a hijacked connection (attach, exec start), prepared: 101 when
        the client asks to upgrade to tcp, else 200; the stream ends with the connection."""
        upgrade = r.headers.get("Upgrade", "").lower() == "tcp"
        resp = _Raw(status=101 if upgrade else 200, reason="UPGRADED" if upgrade else None,
                    headers={**HEADERS, "Content-Type": "application/vnd.docker.raw-stream",
                             **({"Connection": "Upgrade", "Upgrade": "tcp"} if upgrade else {})})
        resp.force_close()
        await resp.prepare(r)
        return resp

    async def attach(self, r):
        """The hijacked connection. A container with a TTY, or stdin asked of one
        made with -i: live through the container's monitor (runtime.docker_attach),
        both ways, the TTY's raw stream if it has one. Otherwise the output from the
        log: from now (logs=1: from its start) until the container's next exit (a
        foreground `docker run`, `docker start -a`, docker-py's attach)."""
        v = await self._view(r.match_info["ref"])
        keys = docker_attach.detach_keys(r.query.get("detachKeys"))
        tty = bool(v["config"].get("tty"))
        # stdin asked of a container made without -i: none, as dockerd does
        use_stdin = _flag(r, "stdin") and bool(v["config"].get("interactive"))
        want = {s for s in ("stdout", "stderr") if _flag(r, s)}
        reader = logfmt.Reader(Path(v["paths"]["log"]))
        render = _Framer(want, tty)

        try:
            # Attached before the start (a foreground run): the log is made and opened
            # before the client hears the attach succeeded (then it starts the container),
            # so the reader holds the file the monitor appends to, even if --rm removes it at once.
            await self.call(_touch, Path(v["paths"]["log"]))
            old = await self.call(reader.read_existing, None if _flag(r, "logs") else 0)
            resp = await self.raw_stream(r)
            stdin = docker_attach.take_stdin(r) if use_stdin else None
            await resp.write(render(old))
            if (tty or use_stdin) and _flag(r, "stream"):
                if not await self.monitors.relay(self, r, v, resp, stdin, tty, keys):
                    # the run ended before its monitor could be reached: its output from the log
                    await resp.write(render(await self.call(reader.read_new)))
                return resp
            finished, ran = v["finished"], v["status"] == RUNNING
            while _flag(r, "stream") and not _gone(r):
                c = await self.call(self.host.records.get, v["id"])
                running = c is not None and c.status == RUNNING
                new = await self.call(reader.read_new)    # after the status: a stopped one's log is whole
                if new:
                    await resp.write(render(new))
                if c is None or (not running and (ran or c.finished != finished)):
                    break
                ran = ran or running
                await asyncio.sleep(0.05)
        finally:
            reader.close()
        return resp   # aiohttp ends it (a client gone meanwhile is no error)

    @staticmethod
    def _prune_filters(r, allowed: tuple[str, ...] = ()) -> dict:
        f = dv.parse_filters(r.query.get("filters"), ("until", "label", "label!", *allowed))
        given = sorted(k for k in f if k not in allowed)
        if given:
            raise DockerUnsupported(f"prune filter {given[0]!r} is not supported by portlink")
        return f

    async def ctr_prune(self, r):
        """Every container that is not running (exited or created) goes."""
        self._prune_filters(r)
        gone = []
        for v in await self.call(self.host.containers.list, True):
            if v["status"] in ("exited", "created") and not v.get("restarting"):
                try:
                    await self.call(self.host.containers.remove, v["id"])
                    gone.append(v["id"])
                except NotFound:
                    pass           # removed meanwhile (an ambassador with its last linker)
        return web.json_response({"ContainersDeleted": gone or None, "SpaceReclaimed": 0})

    async def net_prune(self, r):
        """Every network no container is on, except the default one."""
        self._prune_filters(r)
        gone = []
        for s in await self.call(self.host.networks.list):
            if s.name != "bridge" and not await self.call(self.host.networks.users, s.name):
                errors = await self.call(self.host.networks.remove, s.name)
                if errors:
                    raise PortlinkError(f"network {s.name} removed, but cleanup failed: " + "; ".join(errors))
                gone.append(s.name)
        return web.json_response({"NetworksDeleted": gone or None})

    async def img_prune(self, r):
        """Dangling images: portlink has none (every image has a name). dangling=false
        (`image prune -a`): every image no container uses."""
        f = self._prune_filters(r, ("dangling",))
        deleted = []
        if any(x.lower() in ("0", "false") for x in f.get("dangling", [])):
            for img in await self.call(self.host.images.list):
                try:
                    name = await api_images.remove_image(self.api, img.name)
                except Conflict:
                    continue          # in use: kept
                deleted.append({"Untagged": dv.repo_tag(name)})
        return web.json_response({"ImagesDeleted": deleted or None, "SpaceReclaimed": 0})

    async def build_prune(self, r):
        return web.json_response({"CachesDeleted": None, "SpaceReclaimed": 0})   # no builder, no cache

    async def stats(self, r):
        """A sample a second (the same samples as `portlink stats`), each with the one
        before as precpu_stats; stream=false: one, after a second (so it has a
        CPU figure); one-shot=true: one at once."""
        v = await self._view(r.match_info["ref"])
        stream, one_shot = _flag(r, "stream", True), _flag(r, "one-shot")
        cpus = os.cpu_count() or 1
        clk = os.sysconf("SC_CLK_TCK")

        async def sample():
            info = await self.call(self.host.containers.inspect, v["id"])
            got = (await self.call(cgroups.read_samples, [info]))[0]
            proc_stat = await self.call(Path("/proc/stat").read_text)
            return got, dv.system_cpu_ns(proc_stat, clk)

        prev, sys_prev = None, 0
        if not stream and not one_shot:
            prev, sys_prev = await sample()
            await asyncio.sleep(1)
        cur, sys_now = await sample()
        if not stream:
            return web.json_response(dv.stats_json(cur, prev, sys_now, sys_prev, cpus, v["name"]), headers=HEADERS)
        resp = web.StreamResponse(headers={**HEADERS, "Content-Type": "application/json"})
        await resp.prepare(r)
        while not _gone(r):
            await resp.write((json.dumps(dv.stats_json(cur, prev, sys_now, sys_prev, cpus, v["name"])) + "\n").encode())
            await asyncio.sleep(1)
            prev, sys_prev = cur, sys_now
            try:
                cur, sys_now = await sample()
            except NotFound:
                break              # removed meanwhile
        return resp   # aiohttp ends it (a client gone meanwhile is no error)

    # networks -------------------------------------------------------------------------------------
    async def _net(self, ref: str):
        try:
            return await self.call(self.host.networks.get, ref)
        except NotFound:
            raise NotFound(f"network {ref} not found") from None

    async def _endpoints(self, name: str) -> dict:
        views = await self.call(self.host.containers.list, False)
        return {v["id"]: dv.network_endpoint(v) for v in views if v["network"]["name"] == name and v["network"]["ip"]}

    async def net_ls(self, r):
        f = dv.parse_filters(r.query.get("filters"), ("name", "id", "driver", "type", "scope", "label"))
        out = []
        for s in await self.call(self.host.networks.list):
            labels = await self.call(self.host.networks.labels, s.id)
            if "label" in f and not all(dv.label_match(labels, x) for x in f["label"]):
                continue
            if "name" in f and not any(x in s.name for x in f["name"]):
                continue
            if "id" in f and not any(s.id.startswith(x) for x in f["id"]):
                continue
            if "driver" in f and "bridge" not in f["driver"]:
                continue
            if "scope" in f and "local" not in f["scope"]:
                continue
            if "type" in f and not any(("builtin" if s.name == "bridge" else "custom") == x for x in f["type"]):
                continue
            out.append(dv.network_json(s, labels=labels))
        return web.json_response(out)

    async def net_inspect(self, r):
        s = await self._net(r.match_info["ref"])
        return web.json_response(dv.network_json(s, await self._endpoints(s.name),
                                                 await self.call(self.host.networks.labels, s.id)))

    async def net_create(self, r):
        b = await self.body(r)
        known = {"Name", "CheckDuplicate", "Driver", "Internal", "IPAM", "Options", "Labels", "EnableIPv6",
                 "Attachable", "Ingress", "ConfigOnly", "ConfigFrom", "Scope"}
        unknown = sorted(k for k, val in b.items() if k not in known and val)
        if unknown:
            raise DockerUnsupported(f"network create: {', '.join(unknown)} is not supported by portlink")
        if b.get("Driver") not in (None, "", "bridge"):
            raise DockerUnsupported(f"network driver {b['Driver']!r} is not supported by portlink (bridge is)")
        # Attachable is for swarm networks: any container may join a local bridge network
        # anyway (dockerd accepts it there too, with no effect), so compose's true is kept as given.
        for k in ("EnableIPv6", "Ingress", "ConfigOnly", "ConfigFrom"):
            if b.get(k):
                raise DockerUnsupported(f"network create: {k} is not supported by portlink")
        ipam = b.get("IPAM") or {}
        if (ipam.get("Driver") or "default") != "default" or ipam.get("Options"):
            raise DockerUnsupported("network create: only the default IPAM driver, without options")
        configs = ipam.get("Config") or []
        if len(configs) > 1:
            raise DockerUnsupported("network create: one subnet per network")
        cfg = configs[0] if configs else {}
        if set(k for k, val in cfg.items() if val) - {"Subnet", "Gateway"}:
            raise DockerUnsupported("network create: IPAM Config takes Subnet and Gateway only")
        opts = dict(b.get("Options") or {})
        icc = opts.pop("com.docker.network.bridge.enable_icc", "true")
        if opts:
            raise DockerUnsupported(f"network options {', '.join(sorted(opts))} are not supported by portlink")
        if icc not in ("true", "false"):
            raise InvalidArgument(f"invalid com.docker.network.bridge.enable_icc {icc!r}: expected true or false")
        name = b.get("Name")
        if not isinstance(name, str) or not name:
            raise InvalidArgument("network create: Name is required")
        spec = await self.call(self.host.networks.create, name, cfg.get("Subnet"), cfg.get("Gateway"),
                               bool(b.get("Internal")), icc == "true", b.get("Labels") or {})
        return web.json_response({"Id": spec.id, "Warning": ""}, status=201)

    async def net_rm(self, r):
        s = await self._net(r.match_info["ref"])
        errors = await self.call(self.host.networks.remove, s.name)
        if errors:
            raise PortlinkError(f"network {s.name} removed, but cleanup failed: " + "; ".join(errors))
        return web.Response(status=204)

    # volumes ------------------------------------------------------------------------------------------
    async def vol_ls(self, r):
        f = dv.parse_filters(r.query.get("filters"), ("name", "dangling", "label", "driver"))
        dangling = None
        if "dangling" in f:
            dangling = f["dangling"][-1].lower() in ("1", "true")
        vols = await self.call(self.host.volumes.list, dangling)
        vols = [v for v in vols
                if ("name" not in f or any(x in v["Name"] for x in f["name"]))
                and ("label" not in f or all(dv.label_match(v["Labels"], x) for x in f["label"]))
                and ("driver" not in f or "local" in f["driver"])]
        return web.json_response({"Volumes": [dv.volume_json(v) for v in vols], "Warnings": []})

    async def vol_create(self, r):
        b = await self.body(r)
        if b.get("Driver") not in (None, "", "local"):
            raise DockerUnsupported(f"volume driver {b['Driver']!r} is not supported by portlink (local is)")
        if b.get("DriverOpts"):
            raise DockerUnsupported("volume driver options are not supported by portlink")
        name = b.get("Name") or ""
        if not isinstance(name, str):
            raise InvalidArgument("volume create: Name must be a string")
        vol = await self.call(self.host.volumes.create, name, b.get("Labels") or {})
        return web.json_response(dv.volume_json(vol), status=201)

    async def vol_inspect(self, r):
        return web.json_response(dv.volume_json(await self.call(self.host.volumes.get, r.match_info["name"])))

    async def vol_rm(self, r):
        await self.call(self.host.volumes.remove, r.match_info["name"], _flag(r, "force"))
        return web.Response(status=204)

    async def vol_prune(self, r):
        f = dv.parse_filters(r.query.get("filters"), ("all", "label"))
        if "label" in f:
            raise DockerUnsupported("volume prune --filter label is not supported by portlink")
        # API 1.41 prunes every unused volume; 1.42 only anonymous ones unless all=true
        everything = _requested_version(r) <= (1, 41) or any(x in ("1", "true") for x in f.get("all", []))
        removed = await self.call(self.host.volumes.prune, everything)
        return web.json_response({"VolumesDeleted": removed, "SpaceReclaimed": 0})

    # images --------------------------------------------------------------------------------------------
    async def _image(self, ref: str):
        try:
            return await self.call(self.host.images.get, ref)
        except (NotFound, InvalidArgument):
            pass
        # an image ID (sha256:<hex>) or its prefix, as dockerd resolves them (docker-py saves and tags by ID)
        m = _IMAGE_ID.fullmatch(ref)
        if m:
            hexid = m.group(1)
            hits = sorted((i for i in await self.call(self.host.images.list)
                           if i.id.removeprefix("sha256:").startswith(hexid)), key=lambda i: i.name)
            if len({i.id for i in hits}) == 1:
                return hits[0]
        raise NotFound(f"No such image: {ref}")

    async def _tags(self) -> dict[str, list[str]]:
        """Image ID -> its names (portlink keeps one record per name)."""
        out: dict[str, list[str]] = {}
        for img in await self.call(self.host.images.list):
            out.setdefault(img.id, []).append(dv.repo_tag(img.name))
        return out

    async def img_ls(self, r):
        f = dv.parse_filters(r.query.get("filters"), ("reference", "dangling", "label"))
        tags = await self._tags()
        seen, out = set(), []
        for img in await self.call(self.host.images.list):
            if img.id in seen:
                continue
            if "reference" in f and not any(re.fullmatch(x.replace("*", "[^/]*"), t) or x == t.removesuffix(":latest")
                                            for x in f["reference"] for t in tags[img.id]):
                continue
            if "label" in f and not all(dv.label_match(img.config.labels or {}, x) for x in f["label"]):
                continue
            if "dangling" in f and any(x in ("1", "true") for x in f["dangling"]):
                continue   # every portlink image has a name
            seen.add(img.id)
            out.append(dv.image_summary(img, tags[img.id]))
        return web.json_response(out)

    async def img_inspect(self, r):
        img = await self._image(r.match_info["name"])
        return web.json_response(dv.image_inspect(img, (await self._tags()).get(img.id, [])))

    async def img_tag(self, r):
        src = await self._image(r.match_info["name"])
        repo, tag = r.query.get("repo"), r.query.get("tag") or "latest"
        if not repo:
            raise InvalidArgument("image tag: repo is required")
        await self.call(self.host.images.tag, src.name, f"{repo}:{tag}")
        return web.Response(status=201)

    async def img_rm(self, r):
        img = await self._image(r.match_info["name"])
        name = await api_images.remove_image(self.api, img.name)
        left = [i for i in await self.call(self.host.images.list) if i.id == img.id]
        out = [{"Untagged": dv.repo_tag(name)}] + ([] if left else [{"Deleted": img.id}])
        return web.json_response(out)

    async def img_load(self, r):
        """`docker load`: the archive is the body (spooled as portlink's own load does)."""
        spool = await api_images._spool_body(self.api, r)
        try:
            got = await self.call(self.host.images.load, str(spool))
        except InvalidArgument as e:
            # a bad archive is an error in the stream (200), as dockerd's: clients read it
            # there (docker-py's ImageLoadError, the CLI's message and exit 1)
            return web.Response(body=(json.dumps({"errorDetail": {"message": str(e)}, "error": str(e)}) + "\n").encode(),
                                headers={**HEADERS, "Content-Type": "application/json"})
        finally:
            spool.unlink(missing_ok=True)
        lines = [{"stream": f"Loaded image: {dv.repo_tag(i.name)}\n"} for i in got]
        lines += [{"stream": f"warning: {w}\n"} for i in got for w in i.warnings]
        return web.Response(body="".join(json.dumps(x) + "\n" for x in lines).encode(),
                            headers={**HEADERS, "Content-Type": "application/json"})

    async def img_save(self, r):
        names = r.query.getall("names", [])
        if not names:
            raise InvalidArgument("image save: name at least one image (?names=NAME)")
        return await self._save(r, names)

    async def img_save_one(self, r):
        return await self._save(r, [r.match_info["name"]])

    async def _save(self, r, names):
        # an ID saves the image it names (portlink's save takes names)
        names = [(await self._image(n)).name for n in names]
        sub = r.clone(rel_url=r.rel_url.with_query([("name", n) for n in names]))
        for route in api_images.routes(self.api):
            if route.path == "/images/save":
                return await route.handler(sub)
        raise DockerUnsupported("image save")

    # events ---------------------------------------------------------------------------------------------
    async def events(self, r):
        """Docker's event stream: the recorded events from since to until; without
        until, then the new ones as they happen, until the client leaves."""
        f = dv.parse_filters(r.query.get("filters"), dv.EVENT_FILTERS)
        filters = events.parse_filters(dv.event_filters(f))
        since = events.parse_time(r.query.get("since") or None)
        until = events.parse_time(r.query.get("until") or None)
        log_ = self.host.events
        resp = web.StreamResponse(headers={**HEADERS, "Content-Type": "application/json"})
        await resp.prepare(r)
        seen = log_.seq
        if since is not None:
            past = await self.call(lambda: list(log_.read(since, until, filters)))
            for e in past:
                await resp.write((json.dumps(dv.event_json(e.to_json())) + "\n").encode())
        while (until is None or time.time() < until) and not _gone(r):
            await asyncio.sleep(0.1)
            seen, new = log_.after(seen)
            for e in new:
                if events.matches(e, filters) and (until is None or e.time <= until):
                    await resp.write((json.dumps(dv.event_json(e.to_json())) + "\n").encode())
        return resp   # aiohttp ends it (a client gone meanwhile is no error)


def _touch(path: Path) -> None:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640))
    except FileNotFoundError:
        pass        # the container's dir is gone: removed meanwhile


def _requested_version(r: web.Request) -> tuple[int, int]:
    if "major" in r.match_info:
        return int(r.match_info["major"]), int(r.match_info["minor"])
    return 1, 41


class _HalfOpen(RequestHandler):
    """A connection that stays open for writing when the client closes its sending
    half: docker's client does that at once on an attach without stdin."""

    __slots__ = ()

    def eof_received(self) -> bool:
        if isinstance(self._payload_parser, docker_attach.Stdin):
            self._payload_parser.end_of_input()     # the end of a hijacked stream's stdin
        return True


class Server:
    """The Docker API on its own root-only UNIX socket."""

    def __init__(self, runner: web.AppRunner, server: asyncio.AbstractServer) -> None:
        self.runner, self.server = runner, server

    async def cleanup(self) -> None:
        self.server.close()
        await self.runner.cleanup()


async def serve(api, path: Path) -> Server:
    runner = web.AppRunner(DockerApi(api).app(), access_log=None)
    await runner.setup()
    handlers = runner.server

    def connection() -> RequestHandler:
        proto = handlers()
        proto.__class__ = _HalfOpen     # the same object, with the one method changed
        return proto

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists() or path.is_symlink():
        path.unlink()
    old = os.umask(0o177)   # root-only from its first moment, as portlink's own socket
    try:
        server = await asyncio.get_running_loop().create_unix_server(connection, str(path), backlog=1024)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    log.info("Docker API %s on %s", API_VERSION, path)
    return Server(runner, server)
