"""Reading an ambassador's /stats and /metrics. An ambassador is a container:
what it answers is read no further than MAX_BODY, and an oversized or broken
answer is an error for that ambassador alone."""

from __future__ import annotations

from aiohttp import ClientResponse

from portlink.errors import RuntimeFailure

MAX_BODY = 1 << 20   # 1 MiB: a real /metrics is a few kB
_CHUNK = 64 * 1024


class BodyTooLarge(RuntimeFailure):
    pass


async def read_capped(r: ClientResponse, limit: int = MAX_BODY) -> bytes:
    """The whole body, or BodyTooLarge once more than `limit` bytes came (or were
    announced): never more than `limit` + one chunk held."""
    if r.content_length is not None and r.content_length > limit:
        raise BodyTooLarge(f"body of {r.content_length} bytes is over the {limit}-byte limit")
    body = bytearray()
    while chunk := await r.content.read(_CHUNK):
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"body is over the {limit}-byte limit")
    return bytes(body)
