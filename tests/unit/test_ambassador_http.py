"""The daemon reads ambassadors' /stats and /metrics no further than 1 MiB: an
oversized answer is an error for that ambassador alone. Local aiohttp servers
on 127.0.0.1 and 127.0.0.2 play a good and a hostile ambassador."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web

from portlink.runtime import ambassadors
from portlink.runtime.ambassador_http import MAX_BODY
from portlink.runtime.api import _ambassador_stats
from portlink.runtime.exporter import ambassador_texts

GOOD, EVIL = "127.0.0.1", "127.0.0.2"
STATS = {"metrics": {"connections_open": {"total": 1}, "connections_total": {"total": 2}}}
METRICS = "# TYPE x counter\nx_total 3\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((GOOD, 0))
        return s.getsockname()[1]


async def _chunked(request: web.Request, size: int) -> web.StreamResponse:
    """`size` bytes with no Content-Length: only counting what comes can stop it."""
    r = web.StreamResponse()
    r.enable_chunked_encoding()
    await r.prepare(request)
    for _ in range(size // 65536 + 1):
        await r.write(b"#" * 65536)
    await r.write_eof()
    return r


def _app(mode: str) -> web.Application:
    async def stats(request):
        if mode == "good":
            return web.json_response(STATS)
        if mode == "length":
            return web.Response(body=b" " * (MAX_BODY + 1) + b"{}", content_type="application/json")
        return await _chunked(request, 4 * MAX_BODY)

    async def metrics(request):
        if mode == "good":
            return web.Response(text=METRICS)
        if mode == "length":
            return web.Response(text="# x\n" * (MAX_BODY // 4 + 1))
        return await _chunked(request, 4 * MAX_BODY)

    app = web.Application()
    app.add_routes([web.get("/stats", stats), web.get("/metrics", metrics)])
    return app


def run_with_servers(evil_mode: str, fn):
    async def main():
        runners = []
        try:
            for ip, mode in ((GOOD, "good"), (EVIL, evil_mode)):
                runner = web.AppRunner(_app(mode), access_log=None)
                await runner.setup()
                runners.append(runner)
                await web.TCPSite(runner, ip, ambassadors.METRICS_PORT).start()
            return await asyncio.wait_for(fn(), 20)
        finally:
            for runner in runners:
                await runner.cleanup()
    return asyncio.run(main())


@pytest.fixture(autouse=True)
def port(monkeypatch):
    monkeypatch.setattr(ambassadors, "METRICS_PORT", free_port())


@pytest.mark.parametrize("mode", ["length", "chunked"])
def test_stats_over_the_cap_is_that_ambassadors_error(mode):
    async def both():
        return await asyncio.gather(_ambassador_stats(GOOD), _ambassador_stats(EVIL))
    good, evil = run_with_servers(mode, both)
    assert good == STATS
    assert set(evil) == {"error"} and "over the 1048576-byte limit" in evil["error"], evil
    assert evil["error"].startswith(f"no metrics from http://{EVIL}:{ambassadors.METRICS_PORT}/stats: ")


@pytest.mark.parametrize("mode", ["length", "chunked"])
def test_metrics_over_the_cap_is_that_ambassador_down(mode):
    got = run_with_servers(mode, lambda: ambassador_texts([("good", GOOD), ("evil", EVIL)], timeout=10))
    (good_text, good_labels), (evil_text, evil_labels) = got
    assert good_labels == {"ambassador": "good"} and good_text.endswith("portlink_ambassador_up 1\n" + METRICS)
    assert evil_labels == {"ambassador": "evil"} and evil_text.endswith("portlink_ambassador_up 0\n")


