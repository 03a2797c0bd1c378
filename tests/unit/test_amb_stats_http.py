"""The ambassador's /metrics and /stats answers (ambassador/stats_http.py): the pure
request -> answer mapping, and the server on loopback: one request per connection,
an oversized head is dropped without an answer. No root needed."""

import asyncio
import json

from portlink.ambassador.stats_http import HEAD_LIMIT, StatsServer, answer


def stats():
    return "portlink_ambassador_connections_open 3\n", {"policy": "keep"}


def test_answers_by_method_and_path():
    status, ctype, body, head_only = answer(stats, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, head_only) == (200, False) and ctype.startswith("text/plain; version=0.0.4")
    assert body == b"portlink_ambassador_connections_open 3\n"
    status, ctype, body, _ = answer(stats, b"GET /stats?pretty HTTP/1.0\r\n\r\n")
    assert (status, ctype, json.loads(body)) == (200, "application/json", {"policy": "keep"})
    assert answer(stats, b"HEAD /metrics HTTP/1.1\r\n\r\n")[::3] == (200, True)
    assert answer(stats, b"POST /metrics HTTP/1.1\r\n\r\n")[0] == 405
    assert answer(stats, b"GET /nope HTTP/1.1\r\n\r\n")[0] == 404
    assert answer(stats, b"GET /metrics\r\n\r\n")[0] == 400
    assert answer(stats, b"hello\r\n\r\n")[0] == 400


def test_server_answers_once_and_drops_an_oversized_head():
    async def main():
        srv = StatsServer(stats)
        await srv.start("127.0.0.1", 0)
        port = srv.server.sockets[0].getsockname()[1]
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            raw = await asyncio.wait_for(r.read(), 5)         # to EOF: Connection: close
            head, _, body = raw.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 39" in head
            assert body == b"portlink_ambassador_connections_open 3\n"
            w.close()
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (HEAD_LIMIT + 10))
            try:
                got = await asyncio.wait_for(r.read(), 5)
            except ConnectionResetError:     # closed with our bytes unread: a reset is as good
                got = b""
            assert got == b""                  # closed, nothing answered
            w.close()
        finally:
            await srv.cleanup()
    asyncio.run(main())
