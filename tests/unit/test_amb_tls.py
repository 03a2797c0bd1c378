"""The forwarder's mutual-TLS path on loopback with real sockets and certificates
made by openssl (shaped like Connect's): a client-side and a server-side
ambassador in one loop, the agent's identity and authorize replaced by fakes.
Refusals are counted and reach no backend; rotation leaves established
connections alone; backpressure and EOF behave. No root needed."""

import asyncio
import ssl
import time

import pytest
import uvloop

from connect_certs import CA, uri
from portlink.ambassador.backends import Backend
from portlink.ambassador.forward import HIGH_WATER, Ambassador
from portlink.ambassador.tls import Authorizer, ClientTLS, ServerTLS
from portlink.ambassador.tls_context import build, private_dir
from portlink.catalog.connect import Decision

T = 5.0
READ_CHUNK = 256 * 1024
LOOPS = pytest.mark.parametrize("kind", ["uvloop", "asyncio"])


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, evil = CA.make(d, "ca"), CA.make(d, "evil")
    keys = private_dir(d / "keys")
    ctx = {name: build(ca.roots(), ca.leaf(name), keys) for name in ("web", "frontdb", "intruder")}
    ctx["frontdb-2"] = build(ca.roots(), ca.leaf("frontdb"), keys)       # a renewed leaf
    ctx["evil-web"] = build(evil.roots(), evil.leaf("web"), keys)        # another CA, same name
    return ctx


class FakeIdentity:
    """What ServerTLS/ClientTLS read of an Identity: the current contexts per service."""

    def __init__(self, contexts):
        self.contexts = dict(contexts)
        self.trust_domain = next(iter(self.contexts.values())).roots.trust_domain

    def current(self, service):
        return self.contexts.get(service)


class FakeAuthz:
    def __init__(self, deny=()):
        self.deny = set(deny)
        self.calls = []

    async def __call__(self, target, client_uri, serial):
        self.calls.append((target, client_uri, serial))
        return Decision(client_uri not in self.deny, "test intention")


def run(coro, kind="uvloop"):
    factory = uvloop.new_event_loop if kind == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(asyncio.wait_for(coro, 60))


async def until(cond, what, timeout=T):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def echo(r, w):
    while data := await r.read(65536):
        w.write(data)
        await w.drain()


class Pair:
    """backend <- server side (serves frontdb) <- client side (dials as web) <- test clients."""

    def __init__(self, pki, handler=echo, server_as="frontdb", deny=(), dial_as="web", warm=0):
        self.pki, self.handler = pki, handler
        self.accepted = 0
        self.server_ident = FakeIdentity({"frontdb": pki[server_as]})
        self.client_ident = FakeIdentity({dial_as: pki[dial_as]})
        self.authz = FakeAuthz(deny)
        self.dial_as = dial_as
        self.warm = warm
        self.writers = []

    async def _handle(self, r, w):
        self.accepted += 1
        self.writers.append(w)
        try:
            await self.handler(r, w)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    async def __aenter__(self):
        self.backend = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        bport = self.backend.sockets[0].getsockname()[1]
        self.server = Ambassador([0], host="127.0.0.1", tls_in={0: ServerTLS(
            self.server_ident, "frontdb", Authorizer(self.authz, ttl=0), handshake_timeout=T)})
        self.server.apply(0, [Backend("127.0.0.1", bport)])
        await self.server.start()
        self.sport = self.server.listeners[0].port
        self.client = Ambassador([0], host="127.0.0.1",
                                 tls_out=ClientTLS(self.client_ident, self.dial_as, "frontdb", T,
                                                   warm=self.warm))
        self.client.apply(0, [Backend("127.0.0.1", self.sport)])
        await self.client.start()
        self.cport = self.client.listeners[0].port
        return self

    async def __aexit__(self, *exc):
        await self.client.stop()
        await self.server.stop()
        self.backend.close()
        for w in self.writers:
            w.close()

    async def connect(self, port=None, ssl_ctx=None):
        return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port or self.cport, ssl=ssl_ctx,
                                                              server_hostname="frontdb" if ssl_ctx else None), T)


def server_counter(pair, name):
    return pair.server.metrics[name].total


async def refused(r, w) -> bool:
    """True if the peer ends the connection without sending anything."""
    try:
        w.write(b"marker")
        got = await asyncio.wait_for(r.read(), T)
        return got == b""
    except (ConnectionError, ssl.SSLError):
        return True
    finally:
        w.close()


@LOOPS
def test_one_mib_crosses_the_mtls_pair_identical(pki, kind):
    async def main():
        async with Pair(pki) as p:
            r, w = await p.connect()
            data = bytes(range(256)) * 4096
            w.write(data)
            got = await asyncio.wait_for(r.readexactly(len(data)), T)
            assert got == data
            assert p.server.metrics["connections_total"].total == 1
            assert p.client.metrics["bytes_to_backend_total"].total == len(data)
            ((target, client_uri, serial),) = p.authz.calls
            assert (target, client_uri) == ("frontdb", uri("web"))
            assert serial == p.pki["web"].leaf.serial
            w.close()
    run(main(), kind)


@LOOPS
def test_plain_tcp_client_to_the_server_side_gets_nothing_and_is_counted(pki, kind):
    async def main():
        async with Pair(pki) as p:
            r, w = await p.connect(p.sport)
            w.write(b"GET / HTTP/1.0\r\n\r\n")
            assert await refused(r, w)
            await until(lambda: server_counter(p, "tls_handshake_failures_total") == 1, "the count")
            assert p.accepted == 0 and not p.authz.calls
            await until(lambda: not p.server.listeners[0].connections, "the connection forgotten")
    run(main(), kind)


def test_tls_client_without_a_certificate_gets_nothing(pki):
    async def main():
        async with Pair(pki) as p:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.load_verify_locations(cadata=pki["web"].roots.bundle)
            try:
                r, w = await p.connect(p.sport, ctx)
            except (ConnectionError, ssl.SSLError):
                pass                      # TLS 1.2 would fail here; 1.3 fails at the first read
            else:
                assert await refused(r, w)
            await until(lambda: server_counter(p, "tls_handshake_failures_total") == 1, "the count")
            assert p.accepted == 0 and not p.authz.calls
    run(main())


def test_certificate_of_another_ca_gets_nothing(pki, tmp_path):
    async def main():
        async with Pair(pki) as p:
            evil = pki["evil-web"].leaf                 # "web", but signed by another CA
            (tmp_path / "evil.pem").write_text(evil.key_pem + evil.cert_pem)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE             # it does not even check us
            ctx.load_cert_chain(tmp_path / "evil.pem")
            try:
                r, w = await p.connect(p.sport, ctx)
            except (ConnectionError, ssl.SSLError):
                pass                      # TLS 1.2 would fail here; 1.3 fails at the first read
            else:
                assert await refused(r, w)
            await until(lambda: server_counter(p, "tls_handshake_failures_total") == 1, "the count")
            assert p.accepted == 0 and not p.authz.calls
    run(main())


@LOOPS
def test_valid_leaf_whose_intention_is_denied_gets_nothing(pki, kind):
    async def main():
        async with Pair(pki, deny={uri("intruder")}) as p:
            r, w = await p.connect(p.sport, pki["intruder"].client)
            assert await refused(r, w)
            await until(lambda: server_counter(p, "tls_denied_total") == 1, "the count")
            assert p.authz.calls[0][:2] == ("frontdb", uri("intruder"))
            assert p.accepted == 0
            # web is still allowed through the same listener
            r, w = await p.connect()
            w.write(b"marker")
            assert await asyncio.wait_for(r.readexactly(6), T) == b"marker"
            w.close()
    run(main(), kind)


def test_client_side_refuses_a_server_that_is_not_the_target(pki):
    async def main():
        async with Pair(pki, server_as="intruder") as p:    # the server side presents intruder's leaf
            r, w = await p.connect()
            assert await refused(r, w)
            await until(lambda: p.client.metrics["rejected_total"].total == 1, "the client refused")
            assert p.client.metrics["connect_failures_total"].total == 1
            assert p.accepted == 0
    run(main())


@LOOPS
def test_new_leaf_is_used_by_new_connections_and_established_ones_go_on(pki, kind):
    async def main():
        async with Pair(pki) as p:
            r1, w1 = await p.connect()
            w1.write(b"before")
            assert await asyncio.wait_for(r1.readexactly(6), T) == b"before"
            old_serial = pki["frontdb"].leaf.serial
            p.server_ident.contexts["frontdb"] = pki["frontdb-2"]          # rotation on the server side
            # a new connection straight to the server side sees the new certificate
            r2, w2 = await p.connect(p.sport, pki["web"].client)
            got = w2.get_extra_info("peercert")["serialNumber"].lower().lstrip("0")
            assert got == pki["frontdb-2"].leaf.serial.lstrip("0") != old_serial.lstrip("0")
            w2.write(b"new")
            assert await asyncio.wait_for(r2.readexactly(3), T) == b"new"
            w2.close()
            # the established stream is untouched
            w1.write(b"after")
            assert await asyncio.wait_for(r1.readexactly(5), T) == b"after"
            w1.close()
    run(main(), kind)


@LOOPS
def test_client_side_resumes_sessions_each_still_authorized_and_not_across_a_rotation(pki, kind):
    async def exchange(p, data):
        r, w = await p.connect()
        w.write(data)
        got = await asyncio.wait_for(r.readexactly(len(data)), T)
        w.close()
        return got

    async def main():
        async with Pair(pki) as p:
            tls_out = p.client.listeners[0].tls_out
            assert await exchange(p, b"warm") == b"warm"                    # a session to resume
            before = dict(tls_out.handshakes)
            for i in range(5):
                assert await exchange(p, b"r%d" % i) == b"r%d" % i
            assert tls_out.handshakes == {"full": before["full"], "resumed": before["resumed"] + 5}
            # authorize ran for every connection, with web's identity from the resumed session
            assert len(p.authz.calls) == 6
            assert set(p.authz.calls) == {("frontdb", uri("web"), p.pki["web"].leaf.serial)}
            # the server side rotates: its new context cannot resume the old session
            p.server_ident.contexts["frontdb"] = pki["frontdb-2"]
            assert await exchange(p, b"rotated") == b"rotated"
            assert tls_out.handshakes["full"] == before["full"] + 1
    run(main(), kind)


def test_backend_reply_and_eof_reach_the_client_over_tls(pki):
    async def reply_then_eof(r, w):
        line = await r.readline()
        w.write(b"got " + line)
        await w.drain()
        w.write_eof()
        await r.read()

    async def main():
        async with Pair(pki, handler=reply_then_eof) as p:
            r, w = await p.connect()
            w.write(b"hello\n")
            assert await asyncio.wait_for(r.read(), T) == b"got hello\n"     # and then EOF
            w.close()
            await until(lambda: not p.server.listeners[0].connections and not p.client.listeners[0].connections,
                        "both pairs closed")
    run(main())


def test_a_client_that_closed_does_not_pin_the_pair_after_the_eof_grace(pki):
    """The echo backend never closes by itself; TLS cannot pass the client's EOF on, so
    the client side closes the pair once the backend stayed silent for eof_grace."""
    async def main():
        async with Pair(pki) as p:
            p.client.listeners[0].eof_grace = 0.3
            r, w = await p.connect()
            w.write(b"once")
            assert await asyncio.wait_for(r.readexactly(4), T) == b"once"
            w.close()
            await until(lambda: not p.client.listeners[0].connections and not p.server.listeners[0].connections,
                        "both pairs closed")
            await until(lambda: all(x.is_closing() for x in p.writers), "the backend connection closed")
    run(main())


def test_client_eof_still_gets_the_reply(pki):
    """TLS here has no half-close: the client's EOF is not passed on, the reply still comes."""
    async def main():
        async with Pair(pki) as p:
            r, w = await p.connect()
            w.write(b"question")
            w.write_eof()
            assert await asyncio.wait_for(r.readexactly(8), T) == b"question"
            w.close()
    run(main())


@LOOPS
def test_slow_tls_client_fast_backend_is_bounded(pki, kind):
    total = 20 * 2**20
    sent = [0]

    async def firehose(r, w):
        chunk = bytes(range(256)) * 256
        while sent[0] < total:
            w.write(chunk)
            sent[0] += len(chunk)
            await w.drain()
        w.write_eof()
        await r.read()

    async def main():
        async with Pair(pki, handler=firehose) as p:
            r, w = await p.connect()                  # a StreamReader that is not read: a stalled client
            lst = p.server.listeners[0]
            await until(lambda: lst.connections and next(iter(lst.connections)).upstream, "pairing")
            (conn,) = lst.connections
            last, still = -1, 0
            deadline = time.monotonic() + 30      # a loaded 2-core machine fills the buffers slowly
            # Still for 0.3 s while the proxy holds the backend's reading: a pause of the
            # machine alone also stops the sender a while, and is not the backpressure.
            while not (still >= 30 and "peer" in conn.upstream.blocked) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
                still = still + 1 if sent[0] == last else 0
                last = sent[0]
            assert still >= 30, "the backend never stopped sending"
            assert sent[0] < total
            bound = HIGH_WATER + READ_CHUNK
            assert conn.max_buffered <= bound
            assert "peer" in conn.upstream.blocked
            n = 0
            while data := await asyncio.wait_for(r.read(1 << 20), T):
                n += len(data)
            assert n == total
            w.close()
    run(main(), kind)
