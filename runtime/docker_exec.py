"""Docker's exec (create, start, inspect, resize) over portlink's own exec: the
argv is Containers.exec_argv's (the same checks as `portlink exec`), run by the
daemon with the output framed as Docker's multiplexed stream on the hijacked
connection (or detached); with Tty, on a pty of the daemon's, its raw stream
(runtime.docker_attach); with AttachStdin, the client's stdin to it."""

from __future__ import annotations

import asyncio
import collections
import secrets
from dataclasses import dataclass, field

from aiohttp import web

from portlink.errors import Conflict, InvalidArgument, NotFound
from portlink.runtime import docker_attach, validate
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
    tty: bool = False
    stdin: bool = False
    running: bool = False
    started: bool = False
    exit_code: int | None = None
    pid: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    master: int | None = None          # its pty (Tty), while it runs
    size: tuple[int, int] | None = None

    def view(self) -> dict:
        return {"ID": self.id, "Running": self.running, "ExitCode": self.exit_code, "ProcessConfig": {
                    "tty": self.tty, "entrypoint": self.cmd[0], "arguments": self.cmd[1:], "privileged": False,
                    "user": ""},
                "OpenStdin": self.stdin, "OpenStderr": self.stderr, "OpenStdout": self.stdout, "CanRemove": False,
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
                               "Container", "Tty", "AttachStdin"}, "ExecConfig")
        if b.get("DetachKeys"):
            raise DockerUnsupported("exec detach keys are not supported by portlink")
        # portlink's own exec checks, on portlink's field names
        cmd, env, _, workdir = validate.exec_body({"cmd": b.get("Cmd") or [], "env": b.get("Env") or [],
                                                  "workdir": b.get("WorkingDir") or None})
        if not cmd:
            raise InvalidArgument("No exec command specified")
        # portlink's exec refuses now what it would refuse at start (a container not running)
        tty = bool(b.get("Tty"))
        await self.d.call(self.d.host.containers.exec_argv, v["id"], cmd, env, tty, workdir)
        e = Exec(secrets.token_hex(32), v["id"], cmd, env, workdir, bool(b.get("AttachStdout")),
                 bool(b.get("AttachStderr")), tty, bool(b.get("AttachStdin")))
        self._keep(e)
        return web.json_response({"Id": e.id}, status=201)

    async def inspect(self, r: web.Request) -> web.Response:
        return web.json_response(self._get(r.match_info["ref"]).view())

    async def start(self, r: web.Request) -> web.StreamResponse:
        e = self._get(r.match_info["ref"])
        b = await self.d.body(r)
        # As dockerd: create's Tty gives the process a terminal, start's Tty the stream's
        # form: raw, or the terminal's output in stdout frames (docker-py's exec_start
        # sends Tty false unless told, and reads frames then).
        if e.started:
            raise Conflict(f"exec {e.id} has already been started")
        argv = await self.d.call(self.d.host.containers.exec_argv, e.container, e.cmd, e.env, e.tty, e.workdir)
        e.started = True
        if e.tty and not b.get("Detach"):
            resp = await self.d.raw_stream(r)
            stdin = docker_attach.take_stdin(r) if e.stdin else None
            e.running = True

            def on_master(fd):
                e.master = fd
                if fd is not None and e.size:
                    docker_attach.set_winsize(fd, *e.size)
            try:
                out = resp if b.get("Tty") is not False else _Framed(resp)
                e.exit_code = await docker_attach.pty_exec(argv, stdin, out, on_master)
            finally:
                e.running = False
                e.done.set()
            return resp
        want = (e.stdout, e.stderr)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if e.stdin and not b.get("Detach") else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if want[0] else asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE if want[1] else asyncio.subprocess.DEVNULL)
        e.running, e.pid = True, proc.pid
        if b.get("Detach"):
            asyncio.ensure_future(self._finish(e, proc))
            return web.Response(status=200, headers=self.d.headers)
        resp = await self.d.raw_stream(r)
        feeding = asyncio.ensure_future(self._feed(docker_attach.take_stdin(r), proc.stdin)) if proc.stdin else None

        async def pump(stream, kind: int) -> None:
            while chunk := await stream.read(CHUNK):
                try:
                    await resp.write(frame(kind, chunk))
                except ConnectionError:
                    return          # the client left: the process runs on
        pumps = [pump(s, k) for s, k in ((proc.stdout, STDOUT), (proc.stderr, STDERR)) if s is not None]
        await asyncio.gather(*pumps)
        if feeding is not None:
            feeding.cancel()
        await self._finish(e, proc)
        return resp

    @staticmethod
    async def _feed(stdin, pipe) -> None:
        """The client's stdin to the process; its end closes the process's stdin."""
        try:
            while data := await stdin.read():     # b"": its end; None: the client is gone
                pipe.write(data)
                await pipe.drain()
        except (ConnectionError, BrokenPipeError):
            pass
        finally:
            pipe.close()

    async def resize(self, r: web.Request) -> web.Response:
        e = self._get(r.match_info["ref"])
        if not e.tty:
            raise Conflict(f"exec {e.id} has no TTY to resize")
        e.size = docker_attach.size(r)
        if e.master is not None:
            docker_attach.set_winsize(e.master, *e.size)
        return web.Response(status=200)   # aiohttp ends it (a client gone meanwhile is no error)

    @staticmethod
    async def _finish(e: Exec, proc) -> None:
        code = await proc.wait()
        e.running, e.exit_code = False, code
        e.done.set()


class _Framed:
    """A terminal's output as stdout frames, for a start that asked for no TTY."""

    def __init__(self, resp) -> None:
        self.resp = resp

    async def write(self, data: bytes) -> None:
        await self.resp.write(frame(STDOUT, data))
