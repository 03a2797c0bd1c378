"""The API's image-archive endpoints: load (a path on the daemon's host, or the
archive itself as the request body), save (the archive as the answer), inspect
and tag. Names go in the query: a name like "example.com/team/app:1" has
slashes that a path segment cannot carry."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

from aiohttp import web

from portlink.errors import Conflict, InvalidArgument
from portlink.runtime.api_json import img_inspect, img_json
from portlink.runtime.images import canonical_name

CHUNK = 1 << 20


def _names(r: web.Request) -> list[str]:
    names = r.query.getall("name", [])
    if not names:
        raise InvalidArgument("name the image(s): ?name=NAME")
    return names


async def _spool_body(api, r: web.Request) -> Path:
    """The uploaded archive in a private file next to the store, at most the store's
    byte budget (a client sending forever is cut off, not the disk filled)."""
    images = api.host.images
    limit, why = images._byte_budget()
    fd, path = tempfile.mkstemp(prefix=".tmp-upload-", dir=images.root)
    done = 0
    try:
        with os.fdopen(fd, "wb") as f:
            while chunk := await r.content.read(CHUNK):
                done += len(chunk)
                if done > limit:
                    raise InvalidArgument(f"the uploaded archive is larger than {limit} bytes, {why}")
                await api.call(f.write, chunk)
    except BaseException:
        os.unlink(path)
        raise
    return Path(path)


async def remove_image(api, ref: str) -> str:
    """`image rm`: refused while a container (any status) uses it. Its canonical name."""
    name = (await api.call(api.host.images.get, ref)).name   # canonical: redis:latest is redis
    users = [x["name"] for x in await api.call(api.host.containers.list, True)
             if canonical_name(x["image"]) == name]
    if users:
        raise Conflict(f"image {name!r} is used by containers: {', '.join(users)}")
    await api.call(api.host.images.remove, name)
    return name


def routes(api) -> list:
    images = api.host.images

    async def load(r):
        if r.content_type == "application/json":
            b = await api.body(r)
            unknown = set(b) - {"path"}
            if unknown:
                raise InvalidArgument(f"unknown field(s): {', '.join(sorted(unknown))}")
            path = b.get("path")
            if not isinstance(path, str) or not os.path.isabs(path):
                raise InvalidArgument(f"invalid archive path {path!r}: give an absolute path")
            got = await api.call(images.load, path)
        else:
            spool = await _spool_body(api, r)
            try:
                got = await api.call(images.load, str(spool))
            finally:
                spool.unlink(missing_ok=True)
        return web.json_response({"images": [img_json(i) for i in got],
                                  "warnings": [w for i in got for w in i.warnings]})

    async def save(r):
        names = _names(r)
        for n in names:
            await api.call(images.get, n)      # NotFound before the answer's status is sent
        work = Path(await api.call(tempfile.mkdtemp, prefix=".tmp-save-", dir=images.root))
        try:
            out = work / "archive.tar"
            await api.call(images.save, names, out)
            resp = web.StreamResponse(headers={"Content-Type": "application/x-tar",
                                               "Content-Length": str(out.stat().st_size)})
            await resp.prepare(r)
            with open(out, "rb") as f:
                while chunk := await api.call(f.read, CHUNK):
                    await resp.write(chunk)
            await resp.write_eof()
            return resp
        finally:
            await asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, work, True)

    async def inspect(r):
        return web.json_response([img_inspect(await api.call(images.get, n)) for n in _names(r)])

    async def tag(r):
        b = await api.body(r)
        unknown = set(b) - {"source", "target"}
        if unknown:
            raise InvalidArgument(f"unknown field(s): {', '.join(sorted(unknown))}")
        return web.json_response(img_json(await api.call(images.tag, b.get("source"), b.get("target"))))

    return [web.post("/images/load", load), web.get("/images/save", save),
            web.get("/images/inspect", inspect), web.post("/images/tag", tag)]
