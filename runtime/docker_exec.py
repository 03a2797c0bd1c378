"""Docker's exec (create, start, inspect) without a TTY or stdin, over
portlink's own exec: the argv is Containers.exec_argv's (the same checks as
`portlink exec`), run by the daemon with the output framed as Docker's
multiplexed stream on the hijacked connection (or detached)."""

from __future__ import annotations

import asyncio
import collections
import secrets
from dataclasses import dataclass, field

from aiohttp import web

from portlink.errors import Conflict, InvalidArgument, NotFound
from portlink.runtime import validate
from portlink.runtime.docker_request import DockerUnsupported, refuse_unsupported
from portlink.runtime.docker_views import STDERR, STDOUT, frame

MAX_EXECS = 1024      # records kept for inspect; the oldest finished ones go first
CHUNK = 32 * 1024


@dataclass
class Exec:
    id: str
    container: str                 # the container's id
    cmd: list[str]
    env: list[str]
    workdir: str | None
    stdout: bool
    stderr: bool
    running: bool = False
    started: bool = False
    exit_code: int | None = None
    pid: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def view(self) -> dict:
        return {"ID": self.id, "Running": self.running, "ExitCode": self.exit_code, "ProcessConfig": {
                    "tty": False, "entrypoint": self.cmd[0], "arguments": self.cmd[1:], "privileged": False,
                    "user": ""},
                "OpenStdin": False, "OpenStderr": self.stderr, "OpenStdout": self.stdout, "CanRemove": False,
                "ContainerID": self.container, "DetachKeys": "", "Pid": self.pid}


class Execs:
    def __init__(self, dapi) -> None:
        self.d = dapi
        self.execs: collections.OrderedDict[str, Exec] = collections.OrderedDict()

    def _get(self, eid: str) -> Exec:
        e = self.execs.get(eid)
        if e is None:
            raise NotFound(f"No such exec instance: {eid}")
        return e

    def _keep(self, e: Exec) -> None:
        self.execs[e.id] = e
        while len(self.execs) > MAX_EXECS:
            old = next((k for k, x in self.execs.items() if not x.running), None)
            if old is None:
                break
            del self.execs[old]

    async def create(self, r: web.Request) -> web.Response:
        v = await self.d._view(r.match_info["ref"])
        b = await self.d.body(r)
        # "Container": docker-py repeats the path's container there
        refuse_unsupported(b, {"Cmd", "Env", "WorkingDir", "AttachStdout", "AttachStderr", "Detach", "DetachKeys",
                               "Container"}, "ExecConfig")
        if b.get("DetachKeys"):
            raise DockerUnsupported("exec detach keys are not supported by portlink (no stdin)")
        # portlink's own exec checks, on portlink's field names
        cmd, env, _, workdir = validate.exec_body({"cmd": b.get("Cmd") or [], "env": b.get("Env") or [],
                                                  "workdir": b.get("WorkingDir") or None})
        if not cmd:
            raise InvalidArgument("No exec command specified")
        # portlink's exec refuses now what it would refuse at start (a container not running)
        await self.d.call(self.d.host.containers.exec_argv, v["id"], cmd, env, False, workdir)
        e = Exec(secrets.token_hex(32), v["id"], cmd, env, workdir, bool(b.get("AttachStdout")),
                 bool(b.get("AttachStderr")))
        self._keep(e)
        return web.json_response({"Id": e.id}, status=201)

    async def inspect(self, r: web.Request) -> web.Response:
        return web.json_response(self._get(r.match_info["ref"]).view())

    async def start(self, r: web.Request) -> web.StreamResponse:
        e = self._get(r.match_info["ref"])
        b = await self.d.body(r)
        if b.get("Tty"):
            raise DockerUnsupported("exec with a TTY (-t) is not supported by portlink")
        if e.started:
            raise Conflict(f"exec {e.id} has already been started")
        argv = await self.d.call(self.d.host.containers.exec_argv, e.container, e.cmd, e.env, False, e.workdir)
        e.started = True
        want = (e.stdout, e.stderr)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if want[0] else asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE if want[1] else asyncio.subprocess.DEVNULL)
        e.running, e.pid = True, proc.pid
        if b.get("Detach"):
            asyncio.ensure_future(self._finish(e, proc))
            return web.Response(status=200, headers=self.d.headers)
        resp = await self.d.raw_stream(r)

        async def pump(stream, kind: int) -> None:
            while chunk := await stream.read(CHUNK):
                try:
                    await resp.write(frame(kind, chunk))
                except ConnectionError:
                    return          # the client left: the process runs on
        pumps = [pump(s, k) for s, k in ((proc.stdout, STDOUT), (proc.stderr, STDERR)) if s is not None]
        await asyncio.gather(*pumps)
        await self._finish(e, proc)
        return resp   # aiohttp ends it (a client gone meanwhile is no error)

    @staticmethod
    async def _finish(e: Exec, proc) -> None:
        code = await proc.wait()
        e.running, e.exit_code = False, code
        e.done.set()
