"""The API's link listing (`GET /links`, `portlink link ls`) and what `inspect`
adds to each of a container's `links` entries (runtime.link_views)."""

from __future__ import annotations

from aiohttp import web

ADDED = ("target", "resolves", "via", "intention")   # the keys inspect adds; the others stay as they were


def routes(api) -> list:
    async def link_ls(r):
        all = r.query.get("all", "0") in ("1", "true", "yes")
        return web.json_response(await api.call(api.host.links.list, all))

    return [web.get("/links", link_ls)]


async def annotate(api, info: dict) -> list[dict]:
    """`info["links"]` with each link's target service, where it resolves and its intention."""
    rows = await api.call(api.host.links.of, info["name"])
    return [{**entry, **{k: rows[entry["alias"]][k] for k in ADDED}} if entry.get("alias") in rows else entry
            for entry in info.get("links") or []]
