"""GET /metrics (Prometheus) and GET /stats (JSON) of one ambassador: a few lines of
HTTP/1.x on asyncio streams instead of aiohttp's server, which cost a plaintext
ambassador about 10 MiB of its memory for two read-only pages.

One request per connection (answered with `Connection: close`), the request head
at most 16 KiB and read within 10 s; anything else than GET/HEAD of the two
paths gets 404/405."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

HEAD_LIMIT = 16 * 1024
READ_TIMEOUT = 10.0
PROM = "text/plain; version=0.0.4; charset=utf-8"
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def answer(stats: Callable[[], tuple[str, dict]], head: bytes) -> tuple[int, str, bytes, bool]:
    """(status, content type, body, head only) for a request head; pure."""
    parts = head.split(b"\r\n", 1)[0].split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return 400, "text/plain", b"bad request\n", False
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if target not in (b"/metrics", b"/stats"):
        return 404, "text/plain", b"not found\n", method == b"HEAD"
    if method not in (b"GET", b"HEAD"):
        return 405, "text/plain", b"only GET\n", False
    text, snap = stats()
    if target == b"/metrics":
        return 200, PROM, text.encode(), method == b"HEAD"
    return 200, "application/json", json.dumps(snap, indent=1).encode(), method == b"HEAD"


class StatsServer:
    def __init__(self, stats: Callable[[], tuple[str, dict]]) -> None:
        self.stats = stats
        self.server: asyncio.AbstractServer | None = None

    async def start(self, host: str | None = None, port: int | None = None, sock=None) -> None:
        """On host:port, or on a listening socket made elsewhere (`sock`)."""
        if sock is not None:
            self.server = await asyncio.start_server(self._handle, sock=sock, limit=HEAD_LIMIT)
        else:
            self.server = await asyncio.start_server(self._handle, host, port, reuse_address=True,
                                                     limit=HEAD_LIMIT)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            status, ctype, body, head_only = answer(self.stats, head)
            writer.write(f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
            if not head_only:
                writer.write(body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
            pass                       # a client that left, sent too much or too slowly: nothing to answer
        finally:
            writer.close()

    async def cleanup(self) -> None:
        if self.server is not None:
            self.server.close()
            try:
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            except asyncio.TimeoutError:
                pass
