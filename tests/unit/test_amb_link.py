"""Reused mutual-TLS links between a client side and its server sides
(`portlink-warm/2`, ambassador/link.py) on loopback with real sockets and
openssl-made certificates: one handshake carries client after client, each
claim is authorized, a client's EOF crosses as a real half-close, a backend's
bytes are never taken for frames, and rotations and stopping server sides
retire links. No root needed."""

import asyncio
import os
import socket
import struct

from portlink.ambassador.link import CLAIM_FRAME, END_FRAME
from portlink.ambassador.warm import KEEP, LINK_ALPN
from test_amb_tls import LOOPS, T, Pair, pki, run, until  # noqa: F401 (pki: the fixture)


def warm_of(p):
    return p.client.listeners[0].warm


def handshakes(p):
    tls_out = p.client.listeners[0].tls_out
    return tls_out.handshakes["full"] + tls_out.handshakes["resumed"]


async def exchange(p, data: bytes) -> bytes:
    r, w = await p.connect()
    try:
        w.write(data)
        return await asyncio.wait_for(r.readexactly(len(data)), T)
    except (asyncio.IncompleteReadError, ConnectionError):
        return b""
    finally:
        w.close()


async def settled(p):
    """The last client's link is back in the pool (or gone)."""
    await until(lambda: warm_of(p).snapshot()["busy"] == 0, "the link back from its client")


@LOOPS
def test_one_handshake_carries_client_after_client_each_authorized(pki, kind):
    async def main():
        async with Pair(pki, warm=1) as p:
            warm = warm_of(p)
            await until(lambda: warm.snapshot()["ready"] == 1, "a warm link")
            link = next(iter(warm.ready.values()))[0]
            assert link.transport.get_extra_info("ssl_object").selected_alpn_protocol() == LINK_ALPN
            for i in range(5):
                assert await exchange(p, b"client-%d" % i) == b"client-%d" % i
                await settled(p)
            assert handshakes(p) == 1 and warm.made == 1
            assert warm.reused == 5 and link.streams == 5
            assert p.accepted == 5                                  # a backend connection per client
            assert p.server.metrics["connections_total"].total == 5
            claims = [c for c in p.authz.calls if c[1].endswith("/svc/web")]
            assert len(claims) >= 5                                 # the cache is off (ttl 0): asked per claim
    run(main(), kind)


@LOOPS
def test_a_clients_eof_reaches_the_backend_as_a_half_close_and_the_reply_comes_back(pki, kind):
    async def count_then_reply(r, w):
        got = await r.read()                         # until the client's EOF
        w.write(b"got %d" % len(got))
        await w.drain()

    async def main():
        async with Pair(pki, handler=count_then_reply, warm=1) as p:
            await until(lambda: warm_of(p).snapshot()["ready"] == 1, "a warm link")
            for _ in range(2):                       # the second over the same link
                r, w = await p.connect()
                w.write(b"12345")
                w.write_eof()
                assert await asyncio.wait_for(r.read(), T) == b"got 5"
                w.close()
                await settled(p)
            assert handshakes(p) == 1 and warm_of(p).reused == 2
    run(main(), kind)


@LOOPS
def test_bytes_that_look_like_frames_cross_intact_both_ways(pki, kind):
    async def main():
        async with Pair(pki, warm=1) as p:
            await until(lambda: warm_of(p).snapshot()["ready"] == 1, "a warm link")
            payload = CLAIM_FRAME + END_FRAME + b"D\0\0\0\x05hello" + os.urandom(300_000) + END_FRAME
            assert await exchange(p, payload) == payload
            await settled(p)
            assert await exchange(p, END_FRAME) == END_FRAME
            await settled(p)
            assert handshakes(p) == 1
    run(main(), kind)


@LOOPS
def test_a_deny_applies_at_the_next_claim_on_a_reused_link(pki, kind):
    async def main():
        async with Pair(pki, warm=1) as p:
            await until(lambda: warm_of(p).snapshot()["ready"] == 1, "a warm link")
            assert await exchange(p, b"allowed") == b"allowed"
            await settled(p)
            assert warm_of(p).snapshot()["ready"] >= 1
            p.authz.deny.add(p.authz.calls[-1][1])
            denied = p.server.metrics["tls_denied_total"].total
            assert await exchange(p, b"denied") == b""
            assert p.accepted == 1
            assert p.server.metrics["tls_denied_total"].total == denied + 1
    run(main(), kind)


@LOOPS
def test_a_link_made_before_a_rotation_is_not_reused(pki, kind):
    async def main():
        async with Pair(pki, warm=1) as p:
            warm = warm_of(p)
            await until(lambda: warm.snapshot()["ready"] == 1, "a warm link")
            r, w = await p.connect()
            w.write(b"before")
            assert await asyncio.wait_for(r.readexactly(6), T) == b"before"
            p.client_ident.contexts["web"] = p.pki["frontdb"]      # rotated while the client is on
            dropped = warm.dropped
            w.close()
            await settled(p)
            assert warm.dropped > dropped and warm.reused == 0
            assert await exchange(p, b"after") == b"after"
            assert p.authz.calls[-1][1].endswith("/svc/frontdb")
    run(main(), kind)


@LOOPS
def test_a_client_reset_mid_stream_ends_the_link_and_its_backend_connection(pki, kind):
    async def main():
        async with Pair(pki, warm=1) as p:
            warm = warm_of(p)
            await until(lambda: warm.snapshot()["ready"] == 1, "a warm link")
            r, w = await p.connect()
            w.write(b"half")
            assert await asyncio.wait_for(r.readexactly(4), T) == b"half"
            sock = w.get_extra_info("socket")        # a reset, not a FIN (that would end the stream cleanly)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
            await until(lambda: p.writers and p.writers[0].is_closing(), "the backend connection closed")
            await settled(p)
            assert warm.reused == 0
            assert await exchange(p, b"next") == b"next"
    run(main(), kind)


@LOOPS
def test_a_quiescing_server_side_closes_its_idle_links(pki, kind):
    async def main():
        async with Pair(pki, warm=2) as p:
            warm = warm_of(p)
            await until(lambda: warm.snapshot()["ready"] == 2, "two warm links")
            await until(lambda: len(p.server.listeners[0].connections) == 2, "the server side holding them")
            p.server.quiesce()
            await until(lambda: len(p.server.listeners[0].connections) == 0, "idle links closed")
            await until(lambda: warm.snapshot()["ready"] == 0, "the client side noticed")
    run(main(), kind)


@LOOPS
def test_a_burst_of_clients_all_get_through_and_the_links_come_back(pki, kind):
    async def main():
        async with Pair(pki, warm=1) as p:
            warm = warm_of(p)
            await until(lambda: warm.snapshot()["ready"] == 1, "a warm link")
            got = await asyncio.gather(*(exchange(p, b"burst-%d" % i) for i in range(20)))
            assert got == [b"burst-%d" % i for i in range(20)]
            await settled(p)
            assert p.accepted == 20
            assert 1 <= warm.snapshot()["ready"] <= warm.size + KEEP
            assert await exchange(p, b"after") == b"after"
    run(main(), kind)


@LOOPS
def test_a_claim_the_server_side_cannot_serve_fails_over_and_loses_no_client(pki, kind):
    """The server side answers a claim only once its backend answered (`A`): a
    pooled link to a server side whose backend died is a failed connect, and the
    client goes to the other server side with its bytes, never a lost request."""
    from portlink.ambassador.backends import Backend
    from portlink.ambassador.forward import Ambassador
    from portlink.ambassador.tls import Authorizer, ClientTLS, ServerTLS
    from test_amb_tls import FakeAuthz, FakeIdentity, echo

    async def main():
        backends, servers = [], []
        for _ in range(2):
            be = await asyncio.start_server(echo, "127.0.0.1", 0)
            srv = Ambassador([0], host="127.0.0.1", tls_in={0: ServerTLS(
                FakeIdentity({"frontdb": pki["frontdb"]}), "frontdb", Authorizer(FakeAuthz(), ttl=0),
                handshake_timeout=T)})
            srv.apply(0, [Backend("127.0.0.1", be.sockets[0].getsockname()[1])])
            await srv.start()
            backends.append(be)
            servers.append(srv)
        client = Ambassador([0], host="127.0.0.1", tls_out=ClientTLS(
            FakeIdentity({"web": pki["web"]}), "web", "frontdb", T, warm=1))
        client.apply(0, [Backend("127.0.0.1", s.listeners[0].port) for s in servers])
        await client.start()
        lst = client.listeners[0]
        try:
            await until(lambda: lst.warm.snapshot()["ready"] == 2, "a warm link to each server side")
            backends[0].close()                       # the first server side's backend is gone
            await backends[0].wait_closed()
            for i in range(8):
                r, w = await asyncio.open_connection("127.0.0.1", lst.port)
                w.write(b"req-%d" % i)
                assert await asyncio.wait_for(r.readexactly(5), T) == b"req-%d" % i
                w.close()
            assert client.metrics["rejected_total"].total == 0
        finally:
            await client.stop()
            for s in servers:
                await s.stop()
            for be in backends:
                be.close()
    run(main(), kind)
