"""The forwarder on loopback with real sockets and real backends: bytes both ways,
half-close, fail-over, cooldown, load spreading, reroute policies, backpressure,
metrics, stop. Every wait is bounded; no root needed."""

import asyncio
import os
import socket
import struct
import time

import pytest
import uvloop

from portlink.ambassador.backends import Backend
from portlink.ambassador.forward import HIGH_WATER, Ambassador, Listener
from portlink.ambassador.backends import Pool

T = 5.0              # seconds any single wait may take
READ_CHUNK = 256 * 1024   # the most one data_received delivers (uvloop and asyncio)


CLIENTS = []          # test clients' writers, closed when the test's loop ends
SERVERS = []          # echo servers, stopped when the test's loop ends
AMBASSADORS = []      # ambassadors made by start(), stopped before the servers


def run(coro, kind="uvloop"):
    async def bounded():
        try:
            return await asyncio.wait_for(coro, 60)
        finally:
            for w in CLIENTS:
                w.close()
            CLIENTS.clear()
            # Every ambassador and server a test started is stopped here, also
            # when the test failed half-way (ambassadors first: they hold the
            # connections to the servers).
            for amb in AMBASSADORS:
                await amb.stop()
            for srv in SERVERS:
                await srv.stop()
            AMBASSADORS.clear()
            SERVERS.clear()
    factory = uvloop.new_event_loop if kind == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(bounded())


LOOPS = pytest.mark.parametrize("kind", ["uvloop", "asyncio"])


async def until(cond, timeout=T, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def closed_port() -> int:
    """A loopback port nobody listens on: connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port() -> int:
    return closed_port()


class Blackhole:
    """A port whose connects hang: a listener with a full accept queue drops SYNs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.held = []
        for _ in range(8):
            c = socket.socket()
            c.settimeout(0.2)
            self.held.append(c)
            try:
                c.connect(("127.0.0.1", self.port))
            except (TimeoutError, socket.timeout):
                return             # the queue is full: connects now hang
        raise AssertionError("could not fill the accept queue")

    def close(self):
        for c in self.held:
            c.close()
        self.sock.close()


async def echo(r, w):
    while data := await r.read(65536):
        w.write(data)
        await w.drain()


class Server:
    """A test backend on 127.0.0.1 (echo unless told otherwise) that counts what it gets."""

    def __init__(self, handler=echo):
        self.handler = handler
        self.accepted = 0
        self.writers = []

    async def start(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.backend = Backend("127.0.0.1", self.port)
        SERVERS.append(self)
        return self

    async def _handle(self, r, w):
        self.accepted += 1
        self.writers.append(w)
        try:
            await self.handler(r, w)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    async def stop(self):
        self.server.close()
        for w in self.writers:
            w.close()
        await asyncio.wait_for(self.server.wait_closed(), T)


async def servers(n, handler=echo):
    return [await Server(handler).start() for _ in range(n)]


async def start(backends, **kw):
    """An ambassador with one listener (an ephemeral port) over `backends`."""
    kw.setdefault("host", "127.0.0.1")
    amb = Ambassador([0], **kw)
    amb.apply(0, backends)
    await amb.start()
    AMBASSADORS.append(amb)
    return amb, amb.listeners[0]


async def connect(listener):
    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", listener.port), T)
    CLIENTS.append(w)
    return r, w


async def roundtrip(r, w, data=b"ping"):
    w.write(data)
    got = await asyncio.wait_for(r.readexactly(len(data)), T)
    assert got == data


async def closed_by_peer(r, timeout=T) -> bool:
    """True once the other end has closed (EOF or reset), within `timeout`."""
    try:
        return await asyncio.wait_for(r.read(), timeout) == b""
    except ConnectionResetError:
        return True


def counter(amb, name, scope="total", key=None):
    s = amb.metrics[name]
    if scope == "total":
        return s.total
    return (s.backends if scope == "backend" else s.listeners).get(key, 0)


# -- bytes, EOF ---------------------------------------------------------------------

@LOOPS
def test_one_mib_round_trips_identical(kind):
    async def main():
        (srv,) = await servers(1)
        amb, lst = await start([srv.backend])
        r, w = await connect(lst)
        payload = os.urandom(1 << 20)

        async def send():
            w.write(payload)
            await w.drain()
        sender = asyncio.ensure_future(send())
        got = await asyncio.wait_for(r.readexactly(len(payload)), T)
        await sender
        assert got == payload
        w.close()
        await until(lambda: not lst.connections, what="the pair to close")
        assert counter(amb, "bytes_to_backend_total") == len(payload)
        assert counter(amb, "bytes_to_client_total") == len(payload)
    run(main(), kind)


@LOOPS
def test_half_close_client_eof_reaches_backend_and_reply_still_arrives(kind):
    async def count_then_reply(r, w):
        data = await r.read()                 # to EOF: only a forwarded write_eof ends this
        w.write(b"got %d bytes" % len(data))
        await w.drain()

    async def main():
        (srv,) = await servers(1, count_then_reply)
        amb, lst = await start([srv.backend])
        r, w = await connect(lst)
        w.write(b"x" * 100_000)
        w.write_eof()
        reply = await asyncio.wait_for(r.read(), T)
        assert reply == b"got 100000 bytes"
    run(main(), kind)


@LOOPS
def test_half_close_backend_first_and_client_still_sends(kind):
    late = []

    async def greet_then_listen(r, w):
        w.write(b"hello")                     # a server-first protocol: before the client says a word
        w.write_eof()
        late.append(await r.read())

    async def main():
        (srv,) = await servers(1, greet_then_listen)
        amb, lst = await start([srv.backend])
        r, w = await connect(lst)
        assert await asyncio.wait_for(r.read(), T) == b"hello"    # greeting, then EOF
        w.write(b"late data")
        w.write_eof()
        await until(lambda: late, what="the backend to read to EOF")
        assert late == [b"late data"]
        await until(lambda: not lst.connections, what="the pair to close")
    run(main(), kind)


# -- fail-over and cooldown -------------------------------------------------------------

def test_refused_backend_falls_over_to_next_client_sees_no_error():
    async def main():
        (srv,) = await servers(1)
        dead = Backend("127.0.0.1", closed_port())
        amb, lst = await start([dead, srv.backend])      # the first order() tries `dead` first
        r, w = await connect(lst)
        await roundtrip(r, w, b"still fine")
        assert counter(amb, "connect_failures_total", "backend", dead.label) == 1
        assert counter(amb, "connections_total", "backend", srv.backend.label) == 1
        assert lst.pool.cooling(dead)
        w.close()
    run(main())


def test_all_backends_down_client_is_closed():
    async def main():
        dead = [Backend("127.0.0.1", closed_port()) for _ in range(2)]
        amb, lst = await start(dead)
        r, w = await connect(lst)
        w.write(b"anyone?")
        assert await closed_by_peer(r)
        assert counter(amb, "connect_failures_total") == 2
        assert counter(amb, "rejected_total") == 1
        assert counter(amb, "connections_total") == 0
        await until(lambda: not lst.connections, what="the connection to be forgotten")
    run(main())


def test_no_backends_at_all_client_is_closed():
    async def main():
        amb, lst = await start([])
        r, _ = await connect(lst)
        assert await closed_by_peer(r)
        assert counter(amb, "rejected_total", "listener", lst.port) == 1
    run(main())


def test_cooldown_skips_refusing_backend_until_it_expires():
    now = [1000.0]

    async def main():
        (srv,) = await servers(1)
        dead = Backend("127.0.0.1", closed_port())
        amb, lst = await start([dead, srv.backend], cooldown=5.0, clock=lambda: now[0])
        async def one():
            r, w = await connect(lst)
            await roundtrip(r, w)
            w.close()
            await until(lambda: not lst.connections, what="the pair to close")

        await one()
        assert counter(amb, "connect_failures_total") == 1
        for _ in range(4):                 # cooling: tried last, so never reached
            await one()
        assert counter(amb, "connect_failures_total") == 1
        assert srv.accepted == 5
        now[0] += 5.1                      # the cooldown is over: back in the rotation
        for _ in range(2):
            await one()
        assert counter(amb, "connect_failures_total") == 2
        assert srv.accepted == 7
    run(main())


def test_connect_timeout_falls_over_and_client_bytes_are_bounded_meanwhile():
    async def main():
        hole = Blackhole()
        (srv,) = await servers(1)
        slow = Backend("127.0.0.1", hole.port)
        amb, lst = await start([slow, srv.backend], connect_timeout=0.8)
        try:
            r, w = await connect(lst)
            payload = os.urandom(1 << 20)
            w.write(payload)                   # all at once, before any backend answers
            w.write_eof()                      # an EOF while connecting is forwarded after the bytes
            await until(lambda: lst.connections, what="the connection")
            (conn,) = lst.connections
            await asyncio.sleep(0.4)           # still connecting to the black hole
            assert conn.upstream is None
            assert conn.pending_size <= lst.prebuffer + READ_CHUNK
            assert "connecting" in conn.client.blocked
            got = await asyncio.wait_for(r.readexactly(len(payload)), T)
            assert got == payload
            assert await asyncio.wait_for(r.read(), T) == b""   # the echo server saw our EOF and closed
            assert counter(amb, "connect_failures_total", "backend", slow.label) == 1
            assert conn.backend == srv.backend
        finally:
            await amb.stop()
            await srv.stop()
            hole.close()
    run(main())


def test_each_dial_times_out_at_its_own_deadline_from_one_listener_timer():
    """The listener bounds every dial with one timer (Listener.dialing): a dial started
    later is not cut short by an earlier one's deadline, and each still ends."""
    async def main():
        hole = Blackhole()
        amb, lst = await start([Backend("127.0.0.1", hole.port)], connect_timeout=0.6)
        try:
            ended = {}

            async def client(name):
                began = time.monotonic()
                r, w = await connect(lst)
                assert await asyncio.wait_for(r.read(), T) == b""    # no backend answered: closed
                ended[name] = time.monotonic() - began

            first = asyncio.ensure_future(client("first"))
            await asyncio.sleep(0.3)
            second = asyncio.ensure_future(client("second"))
            await asyncio.wait_for(asyncio.gather(first, second), T)
            # Never before its own deadline (uvloop's clock is milliseconds: a little slack).
            assert ended["first"] >= 0.55 and ended["second"] >= 0.55, ended
            assert counter(amb, "connect_failures_total") == 2
            assert counter(amb, "rejected_total") == 2
            assert not lst._dials
        finally:
            await amb.stop()
            hole.close()
    run(main())


def test_client_eof_while_connecting_is_forwarded_after_its_bytes():
    async def count_then_reply(r, w):
        data = await r.read()
        w.write(b"got %r" % data)
        await w.drain()

    async def main():
        hole = Blackhole()
        (srv,) = await servers(1, count_then_reply)
        amb, lst = await start([Backend("127.0.0.1", hole.port), srv.backend], connect_timeout=0.5)
        try:
            r, w = await connect(lst)
            w.write(b"short")
            w.write_eof()                      # read by the ambassador long before a backend answers
            await until(lambda: lst.connections and next(iter(lst.connections)).client.eof, what="the EOF")
            assert next(iter(lst.connections)).upstream is None
            assert await asyncio.wait_for(r.read(), T) == b"got b'short'"
        finally:
            await amb.stop()
            await srv.stop()
            hole.close()
    run(main())


def test_client_gone_while_connecting_leaves_nothing_behind():
    async def main():
        hole = Blackhole()
        amb, lst = await start([Backend("127.0.0.1", hole.port)], connect_timeout=10)
        try:
            r, w = await connect(lst)
            await until(lambda: lst.connections, what="the connection")
            (conn,) = lst.connections
            # A reset, not a FIN: a half-closed client may still wait for the reply.
            w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.close()
            await until(lambda: not lst.connections, timeout=2, what="the connection to be forgotten")
            assert conn.task.done()
            assert counter(amb, "connect_failures_total") == 0
            assert counter(amb, "rejected_total") == 0
        finally:
            await amb.stop()
            hole.close()
    run(main())


# -- load spreading --------------------------------------------------------------------

def test_load_spreads_over_two_backends():
    async def main():
        a, b = await servers(2)
        amb, lst = await start([a.backend, b.backend])
        held = []
        for _ in range(10):                # long-lived: least connections
            r, w = await connect(lst)
            await roundtrip(r, w)
            held.append(w)
        assert (a.accepted, b.accepted) == (5, 5)
        assert lst.pool.active == {a.backend: 5, b.backend: 5}
        assert counter(amb, "connections_open") == 10
        for w in held:
            w.close()
        await until(lambda: not lst.connections, what="every pair to close")
        assert lst.pool.active == {}
        assert counter(amb, "connections_open") == 0
        for _ in range(10):                # short, one at a time: every pick is a tie, round-robin
            r, w = await connect(lst)
            await roundtrip(r, w)
            w.close()
            await until(lambda: not lst.connections, what="the pair to close")
        assert (a.accepted, b.accepted) == (10, 10)
    run(main())


def test_two_listeners_have_their_own_pools():
    async def main():
        a, b = await servers(2)
        p1, p2 = free_port(), free_port()
        amb = Ambassador([p1, p2], host="127.0.0.1")
        amb.apply(p1, [a.backend])
        amb.apply(p2, [b.backend])
        await amb.start()
        try:
            for port in (p1, p1, p2):
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), T)
                await roundtrip(r, w)
                w.close()
            assert (a.accepted, b.accepted) == (2, 1)
            assert counter(amb, "connections_total", "listener", p1) == 2
            assert counter(amb, "connections_total", "listener", p2) == 1
            assert set(amb.snapshot()["listeners"]) == {str(p1), str(p2)}
        finally:
            await amb.stop()
            await a.stop()
            await b.stop()
    run(main())


# -- reroutes ----------------------------------------------------------------------------

def test_new_connections_go_to_the_new_set():
    async def main():
        a, b = await servers(2)
        amb, lst = await start([a.backend])
        r, w = await connect(lst)
        await roundtrip(r, w)
        assert amb.apply(0, [b.backend]) is True
        assert amb.apply(0, [b.backend]) is False          # no change, no reroute
        for _ in range(3):
            r2, w2 = await connect(lst)
            await roundtrip(r2, w2)
            w2.close()
        assert (a.accepted, b.accepted) == (1, 3)
        assert counter(amb, "reroutes_total") == 1
        assert counter(amb, "reroutes_total", "backend", a.backend.label) == 1
        assert counter(amb, "reroutes_total", "listener", lst.port) == 1
        w.close()
    run(main())


def test_first_set_is_not_a_reroute_and_unknown_port_is_refused():
    amb = Ambassador([8080])
    assert amb.apply(8080, [Backend("10.0.0.1", 80)]) is True
    assert amb.metrics["reroutes_total"].total == 0
    with pytest.raises(ValueError, match="9090"):
        amb.apply(9090, [])
    with pytest.raises(ValueError, match="policy"):
        Ambassador([1], policy="sometimes")


def test_policy_keep_leaves_established_connection_working():
    async def main():
        a, b = await servers(2)
        amb, lst = await start([a.backend], policy="keep")
        r, w = await connect(lst)
        await roundtrip(r, w)
        amb.apply(0, [b.backend])
        await asyncio.sleep(0.3)
        await roundtrip(r, w, b"after the change")
        (conn,) = lst.connections
        assert conn.backend == a.backend and not conn.closing
        w.close()
    run(main())


def test_policy_drain_works_until_the_deadline_then_closes():
    async def main():
        a, b = await servers(2)
        amb, lst = await start([a.backend], policy="drain", drain_deadline=0.5)
        r, w = await connect(lst)
        await roundtrip(r, w)
        t0 = time.monotonic()
        amb.apply(0, [b.backend])
        await roundtrip(r, w, b"still draining")
        assert await closed_by_peer(r, timeout=3)
        assert time.monotonic() - t0 >= 0.45
    run(main())


def test_policy_drain_is_cancelled_when_the_backend_returns():
    async def main():
        a, b = await servers(2)
        amb, lst = await start([a.backend], policy="drain", drain_deadline=0.3)
        r, w = await connect(lst)
        await roundtrip(r, w)
        amb.apply(0, [b.backend])
        amb.apply(0, [a.backend, b.backend])   # back before the deadline
        await asyncio.sleep(0.6)
        await roundtrip(r, w, b"never closed")
        w.close()
    run(main())


def test_policy_close_closes_at_once():
    async def main():
        a, b = await servers(2)
        amb, lst = await start([a.backend], policy="close", drain_deadline=30)
        r, w = await connect(lst)
        await roundtrip(r, w)
        r_other, w_other = await connect(lst)
        await roundtrip(r_other, w_other)
        amb.apply(0, [b.backend])
        assert await closed_by_peer(r, timeout=1)
        assert await closed_by_peer(r_other, timeout=1)
        r2, w2 = await connect(lst)            # new ones go to the new set
        await roundtrip(r2, w2)
        assert b.accepted == 1
        w2.close()
    run(main())


# -- backpressure ------------------------------------------------------------------------

@LOOPS
def test_slow_client_fast_backend_is_not_buffered_unboundedly(kind):
    total = 50 * 2**20
    sent = [0]

    async def firehose(r, w):
        chunk = bytes(range(256)) * 256        # 64 KiB
        while sent[0] < total:
            w.write(chunk)
            sent[0] += len(chunk)
            await w.drain()
        w.write_eof()
        await r.read()

    async def main():
        (srv,) = await servers(1, firehose)
        amb, lst = await start([srv.backend])
        r, w = await connect(lst)          # a StreamReader stops reading past 128 KiB: a stalled client
        await until(lambda: lst.connections and next(iter(lst.connections)).upstream, what="pairing")
        (conn,) = lst.connections
        # Wait until the backend cannot send any more: everything in between is full.
        # (A pause of the machine alone also stops the sender a while: not the backpressure.)
        last, still = -1, 0
        deadline = time.monotonic() + 10
        while not (still >= 30 and "peer" in conn.upstream.blocked) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            still = still + 1 if sent[0] == last else 0
            last = sent[0]
        assert still >= 30, "the backend never stopped sending"
        bound = HIGH_WATER + READ_CHUNK        # the mark plus one read on top of it
        assert conn.client.transport.get_write_buffer_size() <= bound
        assert conn.max_buffered <= bound
        assert "peer" in conn.upstream.blocked  # the backend side is not being read
        # Now read it all: nothing lost, still bounded.
        n = 0
        while data := await asyncio.wait_for(r.read(1 << 20), T):
            n += len(data)
        assert n == total
        assert conn.max_buffered <= bound
        assert counter(amb, "bytes_to_client_total") == total
    run(main(), kind)


def test_slow_backend_fast_client_is_bounded_too():
    release = None

    async def late_reader(r, w):
        await release.wait()
        while await r.read(1 << 20):
            pass
        w.write(b"done")

    async def main():
        nonlocal release
        release = asyncio.Event()
        (srv,) = await servers(1, late_reader)
        amb, lst = await start([srv.backend])
        r, w = await connect(lst)
        await until(lambda: lst.connections and next(iter(lst.connections)).upstream, what="pairing")
        (conn,) = lst.connections
        total = 40 * 2**20

        async def send():
            chunk = b"y" * (1 << 20)
            for _ in range(total // len(chunk)):
                w.write(chunk)
                await w.drain()
            w.write_eof()
        sender = asyncio.ensure_future(send())
        await until(lambda: "peer" in conn.client.blocked, what="the client side to be paused")
        await asyncio.sleep(0.2)
        assert conn.max_buffered <= HIGH_WATER + READ_CHUNK
        assert not sender.done()
        release.set()
        await asyncio.wait_for(sender, 20)
        assert await asyncio.wait_for(r.read(), T) == b"done"
        assert counter(amb, "bytes_to_backend_total") == total
        assert conn.max_buffered <= HIGH_WATER + READ_CHUNK
    run(main())


# -- metrics and stop --------------------------------------------------------------------

def test_metrics_match_the_traffic():
    async def main():
        a, b = await servers(2)
        amb, lst = await start([a.backend, b.backend])
        sizes = [100, 2000, 30000, 7]
        per_backend = {}
        for n in sizes:
            r, w = await connect(lst)
            await roundtrip(r, w, os.urandom(n))
            (conn,) = lst.connections
            per_backend[conn.backend.label] = per_backend.get(conn.backend.label, 0) + n
            assert (conn.to_backend, conn.to_client) == (n, n)
            w.close()
            await until(lambda: not lst.connections, what="the pair to close")
        snap = amb.snapshot()["metrics"]
        port = str(lst.port)
        assert snap["connections_total"] == {
            "total": 4, "backends": {a.backend.label: 2, b.backend.label: 2}, "listeners": {port: 4}}
        assert snap["connections_open"]["total"] == 0
        for key in ("bytes_to_backend_total", "bytes_to_client_total"):
            assert snap[key] == {"total": sum(sizes), "backends": per_backend, "listeners": {port: sum(sizes)}}
        assert snap["connect_failures_total"]["total"] == 0
        text = amb.metrics.render()
        assert f"portlink_ambassador_bytes_to_client_total {sum(sizes)}\n" in text
        assert f'portlink_ambassador_listener_connections_total{{listener="{lst.port}"}} 4\n' in text
    run(main())


def test_byte_counts_are_current_while_the_connection_is_open():
    """Counts are batched per connection (not added per read): every way of reading
    the metrics still sees each byte forwarded so far."""
    async def main():
        (srv,) = await servers(1)
        amb, lst = await start([srv.backend])
        r, w = await connect(lst)
        for n in (10, 300):
            await roundtrip(r, w, b"m" * n)
        assert lst.connections                   # still open
        assert counter(amb, "bytes_to_backend_total") == 310
        assert amb.snapshot()["metrics"]["bytes_to_client_total"]["total"] == 310
        await roundtrip(r, w, b"m" * 5)
        assert "portlink_ambassador_bytes_to_client_total 315\n" in amb.metrics.render()
        assert f'portlink_ambassador_listener_bytes_to_backend_total{{listener="{lst.port}"}} 315\n' \
            in amb.metrics.render()
    run(main())


def test_stop_closes_everything_and_is_bounded_even_with_a_stuck_client():
    async def firehose(r, w):
        while True:
            w.write(b"z" * 65536)
            await w.drain()

    async def main():
        (srv,) = await servers(1, firehose)
        amb, lst = await start([srv.backend])
        r, w = await connect(lst)          # never reads: closing cannot flush to it
        await until(lambda: lst.connections and next(iter(lst.connections)).upstream, what="pairing")
        await until(lambda: "peer" in next(iter(lst.connections)).upstream.blocked, what="backpressure")
        t0 = time.monotonic()
        await amb.stop(grace=0.3)
        assert time.monotonic() - t0 < 2.0
        assert not lst.connections
        with pytest.raises(OSError):
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", lst.port), T)
        w.close()
    run(main())


def test_listener_alone_with_ephemeral_port():
    async def main():
        (srv,) = await servers(1)
        lst = Listener(0, Pool([srv.backend]), host="127.0.0.1")
        await lst.start()
        try:
            assert lst.port != 0
            r, w = await connect(lst)
            await roundtrip(r, w)
            w.close()
        finally:
            await lst.stop()
            await srv.stop()
    run(main())


def test_quiesce_refuses_new_clients_and_open_connections_carry_on():
    """A server side before its container stops (SIGUSR2): a new dial is refused at
    once (its client side fails over), the open connection keeps working."""
    async def main():
        (a,) = await servers(1)
        amb, lst = await start([a.backend])
        r, w = await connect(lst)
        await roundtrip(r, w)
        amb.quiesce()
        await asyncio.sleep(0.05)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", lst.port), T)
        await roundtrip(r, w, b"still open after quiesce")
        assert len(lst.connections) == 1
        w.close()
    run(main())
