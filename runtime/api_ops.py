"""The API's small Docker commands on a container: kill, wait, top, port (runtime/
container_ops.py), and cp's archive endpoints (runtime/container_copy.py)."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path

from aiohttp import web

from portlink.errors import InvalidArgument
from portlink.runtime import container_copy, proc_table
from portlink.runtime.api_images import CHUNK, _spool_body
from portlink.runtime.container_ops import ContainerOps

WAIT_POLL = 0.05     # seconds between looks at a waited-for container (no thread held meanwhile)


def spool_archive(ops: ContainerOps, ref: str, p: container_copy.CopyPath) -> Path:
    """The tar of `p` spooled in the container's dir (a copy is read whole before the
    answer starts: an error is a status, not a cut stream)."""
    fd, name = tempfile.mkstemp(prefix=".cp-out-", dir=ops.cdir(ref))
    os.close(fd)
    try:
        ops.copy_archive(ref, p, Path(name))
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def routes(api) -> list:
    ops = ContainerOps(api.host)
    ok = web.json_response

    async def kill(r):
        return ok(await api.call(ops.kill, r.match_info["ref"], r.query.get("signal") or "KILL"))

    async def wait(r):
        point = await api.call(ops.wait_point, r.match_info["ref"])
        while (code := await api.call(ops.wait_poll, point)) is None:
            await asyncio.sleep(WAIT_POLL)
        return ok({"StatusCode": code})

    async def top(r):
        return ok(await api.call(ops.top, r.match_info["ref"], r.query.get("ps_args") or proc_table.DEFAULT_ARGS))

    async def port(r):
        return ok(await api.call(ops.ports, r.match_info["ref"]))

    def _path(r) -> container_copy.CopyPath:
        path = r.query.get("path")
        if not path:
            raise InvalidArgument("name the path in the container: ?path=/PATH")
        return container_copy.CopyPath(path)

    stat_path = ops.copy_stat
    extract_from = ops.copy_extract

    def archive_to(ref: str, p) -> Path:
        return spool_archive(ops, ref, p)

    async def cp_stat(r):
        return ok(await api.call(stat_path, r.match_info["ref"], _path(r)))

    async def cp_get(r):
        ref, p = r.match_info["ref"], _path(r)
        st = await api.call(stat_path, ref, p)
        spool = await api.call(archive_to, ref, p)
        try:
            resp = web.StreamResponse(headers={"Content-Type": "application/x-tar",
                                               "Content-Length": str(spool.stat().st_size),
                                               "X-Portlink-Path-Stat": json.dumps(st)})
            await resp.prepare(r)
            with open(spool, "rb") as f:
                while chunk := await api.call(f.read, CHUNK):
                    await resp.write(chunk)
            await resp.write_eof()
            return resp
        finally:
            spool.unlink(missing_ok=True)

    async def cp_put(r):
        ref, p = r.match_info["ref"], _path(r)
        # the container and the directory, before the upload (a link to a directory is followed)
        if (await api.call(stat_path, ref, container_copy.CopyPath(p.full + "/")))["kind"] != "dir":
            raise InvalidArgument(f"extraction point {p.full} is not a directory")
        spool = await _spool_body(api, r)
        try:
            placed = await api.call(extract_from, ref, p, spool)
        finally:
            spool.unlink(missing_ok=True)
        return ok({"path": p.full, "placed": placed})

    return [
        web.get("/containers/{ref}/archive/stat", cp_stat), web.get("/containers/{ref}/archive", cp_get),
        web.put("/containers/{ref}/archive", cp_put), web.post("/containers/{ref}/archive", cp_put),
        web.post("/containers/{ref}/kill", kill), web.post("/containers/{ref}/wait", wait),
        web.get("/containers/{ref}/top", top), web.get("/containers/{ref}/port", port),
    ]
