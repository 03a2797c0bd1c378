"""Warm mutual-TLS connections between a client side and its server sides
(ambassador/warm.py) on loopback with real sockets and openssl-made certificates:
backends never see an unclaimed connection, a claim carries the client's bytes,
authorization happens at the claim, and the warm set follows reroutes and
certificate rotations. No root needed."""

import asyncio
import dataclasses
import ssl

import pytest

from portlink.ambassador.backends import Backend
from portlink.ambassador.forward import Ambassador
from portlink.ambassador.tls import Authorizer, ServerTLS
from portlink.ambassador.tls_context import _new, private_dir
from test_amb_tls import LOOPS, T, FakeIdentity, Pair, pki, run, until  # noqa: F401 (pki: the fixture)


async def exchange(p, data: bytes) -> bytes:
    r, w = await p.connect()
    try:
        w.write(data)
        return await asyncio.wait_for(r.readexactly(len(data)), T)
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        return b""
    finally:
        w.close()


def warm_of(p):
    return p.client.listeners[0].warm


def server_conns(amb):
    return len(amb.listeners[0].connections)


@LOOPS
def test_warm_connections_wait_without_a_backend_connection_and_a_claim_carries_the_bytes(pki, kind):
    async def main():
        async with Pair(pki, warm=2) as p:
            warm = warm_of(p)
            await until(lambda: warm.snapshot()["ready"] == 2, "two warm connections")
            await until(lambda: server_conns(p.server) == 2, "the server side holding them")
            await asyncio.sleep(0.2)
            assert p.accepted == 0                       # no phantom connection at the backend
            assert p.server.metrics["connections_total"].total == 0
            assert await exchange(p, b"claimed-1") == b"claimed-1"
            assert warm.claimed == 1 and p.accepted == 1
            assert p.server.metrics["connections_total"].total == 1
            await until(lambda: warm.snapshot()["ready"] == 2, "the pool topped up")
            # each claim authorizes with web's identity
            assert p.authz.calls and all(c[1].endswith("/svc/web") for c in p.authz.calls)
            for i in range(3):
                assert await exchange(p, b"again-%d" % i) == b"again-%d" % i
            assert warm.claimed == 4 and p.accepted == 4
    run(main(), kind)


@LOOPS
def test_a_deny_made_after_warming_applies_at_the_claim(pki, kind):
    async def main():
        async with Pair(pki, warm=1) as p:
            await until(lambda: warm_of(p).snapshot()["ready"] == 1 and p.authz.calls,
                        "a warm connection, asked about at its handshake")
            p.authz.deny.add(p.authz.calls[-1][1])            # web is denied from now on
            denied = p.server.metrics["tls_denied_total"].total
            assert await exchange(p, b"x") == b""
            assert p.accepted == 0
            assert p.server.metrics["tls_denied_total"].total > denied
    run(main(), kind)


@LOOPS
def test_a_reroute_drops_warm_connections_to_the_gone_backend_and_warms_the_new_one(pki, kind):
    async def main():
        async with Pair(pki, warm=2) as p:
            await until(lambda: server_conns(p.server) == 2, "warm connections at server side 1")
            other = Ambassador([0], host="127.0.0.1", tls_in={0: ServerTLS(
                p.server_ident, "frontdb", Authorizer(p.authz, ttl=0), handshake_timeout=T)})
            other.apply(0, [Backend("127.0.0.1", p.backend.sockets[0].getsockname()[1])])
            await other.start()
            try:
                new = Backend("127.0.0.1", other.listeners[0].port)
                p.client.apply(0, [new])
                await until(lambda: server_conns(p.server) == 0, "server side 1's warm connections closed")
                await until(lambda: server_conns(other) == 2, "warm connections at server side 2")
                await until(lambda: {b for b, q in warm_of(p).ready.items() if q} == {new}, "warm only to the new one")
                assert await exchange(p, b"moved") == b"moved"
                assert other.metrics["connections_total"].total == 1
                assert p.server.metrics["connections_total"].total == 0
            finally:
                await p.client.stop()
                await other.stop()
    run(main(), kind)


@LOOPS
def test_warm_connections_from_before_a_rotation_of_the_client_leaf_are_not_used(pki, kind):
    async def main():
        async with Pair(pki, warm=2) as p:
            warm = warm_of(p)
            await until(lambda: warm.snapshot()["ready"] == 2, "two warm connections")
            p.client_ident.contexts["web"] = pki["frontdb"]    # a different leaf (and contexts) now
            dropped = warm.dropped
            got = await exchange(p, b"after-rotation")
            # the old ones were dropped; the connection went over a fresh dial with the new leaf
            assert warm.dropped >= dropped + 2
            assert got == b"after-rotation"
            assert p.authz.calls[-1][1].endswith("/svc/frontdb")
    run(main(), kind)


def test_a_server_side_without_the_warm_protocol_is_dialled_per_client(pki, tmp_path):
    async def main():
        ctxs = pki["frontdb"]
        # an older server side: its context does not select the warm protocol
        old = _new(ssl.PROTOCOL_TLS_SERVER, ctxs.roots, ctxs.leaf, private_dir(tmp_path / "keys"))
        p = Pair(pki, warm=2)
        p.server_ident.contexts["frontdb"] = dataclasses.replace(ctxs, server=old)
        async with p:
            warm = warm_of(p)
            await until(lambda: warm.refused, "the refusal noticed")
            assert warm.snapshot()["ready"] == 0
            for i in range(3):
                assert await exchange(p, b"per-client-%d" % i) == b"per-client-%d" % i
            assert warm.claimed == 0
    run(main())
