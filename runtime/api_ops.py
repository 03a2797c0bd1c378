"""The API's small Docker commands on a container: kill, wait, top, port (runtime/
container_ops.py), and cp's archive endpoints (runtime/container_copy.py)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from portlink.runtime import proc_table
from portlink.runtime.container_ops import ContainerOps

WAIT_POLL = 0.05     # seconds between looks at a waited-for container (no thread held meanwhile)


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

    return [
        web.post("/containers/{ref}/kill", kill), web.post("/containers/{ref}/wait", wait),
        web.get("/containers/{ref}/top", top), web.get("/containers/{ref}/port", port),
    ]
