"""The plaintext kernel path (ambassador/splice.py) on loopback with real sockets:
a stream is handed to it mid-way (small exchanges are not), at pairing with
splice_min=0; it carries bytes both ways intact,
passes half-closes in either order, counts bytes, holds at most one pipe's worth
when a side does not read, and hears a peer's reset on uvloop (whose add_reader
drops an fd that reports an error). The pure Poller against real sockets too.
Every wait is bounded; no root needed."""

import asyncio
import os
import socket
import struct

from test_amb_forward import LOOPS, Server, closed_by_peer, connect, counter, run, servers, start, until

from portlink.ambassador import splice as kernel

T = 5.0


async def paired(lst):
    await until(lambda: lst.connections and next(iter(lst.connections)).upstream is not None, what="pairing")
    (conn,) = lst.connections
    return conn


@LOOPS
def test_a_plaintext_pair_is_spliced_and_carries_a_mib_both_ways(kind):
    async def main():
        (srv,) = await servers(1)
        amb, lst = await start([srv.backend])
        r, w = await connect(lst)
        data = os.urandom(1 << 20)
        w.write(data)
        got = await asyncio.wait_for(r.readexactly(len(data)), T)
        assert got == data
        conn = await paired(lst)
        assert conn.splice is not None and not conn.splice.released
        assert amb.snapshot()["listeners"][str(lst.port)]["spliced"] == 1
        assert (conn.to_backend, conn.to_client) == (len(data), len(data))
        assert counter(amb, "bytes_to_backend_total") == counter(amb, "bytes_to_client_total") == len(data)
        w.close()
        await until(lambda: not lst.connections, what="the pair to close")
        assert conn.splice.released
        assert counter(amb, "connections_open") == 0
    run(main(), kind)


def test_small_exchanges_stay_on_the_transport_path():
    async def main():
        (srv,) = await servers(1)
        amb, lst = await start([srv.backend])
        r, w = await connect(lst)
        for _ in range(20):
            w.write(b"q" * 100)
            assert await asyncio.wait_for(r.readexactly(100), T) == b"q" * 100
        conn = await paired(lst)
        assert conn.splice is None
        w.write(os.urandom(256 * 1024))        # a stream now: handed over mid-connection, in order
        await asyncio.wait_for(r.readexactly(256 * 1024), T)
        assert conn.splice is not None
        w.write(b"after")
        assert await asyncio.wait_for(r.readexactly(5), T) == b"after"
        assert counter(amb, "bytes_to_client_total") == 2000 + 256 * 1024 + 5
    run(main())


@LOOPS
def test_client_half_close_on_the_splice_path(kind):
    got = []

    async def upper_after_eof(r, w):
        got.append(await r.read())           # to EOF: the client's half-close must arrive
        w.write(got[-1].upper())
        await w.drain()

    async def main():
        (srv,) = await servers(1, upper_after_eof)
        amb, lst = await start([srv.backend], splice_min=0)
        r, w = await connect(lst)
        w.write(b"hello ")
        conn = await paired(lst)
        await until(lambda: conn.splice is not None and conn.to_backend == 6, what="the first bytes spliced")
        w.write(b"world")
        w.write_eof()
        assert await asyncio.wait_for(r.read(), T) == b"HELLO WORLD"   # the reply after our EOF, then EOF
        assert got == [b"hello world"]
        assert conn.client.eof and conn.upstream.eof
        await until(lambda: not lst.connections, what="the pair to close")
        assert counter(amb, "bytes_to_backend_total") == counter(amb, "bytes_to_client_total") == 11
    run(main(), kind)


@LOOPS
def test_backend_half_close_first_and_the_client_still_sends(kind):
    async def greet_then_listen(r, w):
        w.write(b"banner\n")
        w.write_eof()                       # the backend is done talking, still listening
        data = await r.read()
        assert data == b"late bytes"

    async def main():
        srv = await Server(greet_then_listen).start()
        amb, lst = await start([srv.backend], splice_min=0)
        r, w = await connect(lst)
        assert await asyncio.wait_for(r.read(), T) == b"banner\n"       # then EOF
        conn = await paired(lst)
        assert conn.splice is not None
        await until(lambda: conn.upstream.eof, what="the backend's EOF")
        assert lst.connections                  # half-closed, not closed
        w.write(b"late bytes")
        w.write_eof()
        await until(lambda: not lst.connections, what="the pair to close")
        assert counter(amb, "bytes_to_backend_total") == 10
        assert counter(amb, "bytes_to_client_total") == 7
    run(main(), kind)


def test_a_stalled_client_holds_at_most_one_pipe():
    sent = [0]

    async def firehose(r, w):
        chunk = b"f" * 65536
        while sent[0] < 32 * 2**20:
            w.write(chunk)
            sent[0] += len(chunk)
            await w.drain()
        w.write_eof()
        await r.read()

    async def main():
        (srv,) = await servers(1, firehose)
        amb, lst = await start([srv.backend])
        r, w = await connect(lst)
        conn = await paired(lst)
        await until(lambda: "peer" in conn.upstream.blocked, what="the backend side to be held")
        capacity = conn.splice.flows[1].capacity
        assert 0 < conn.splice.held <= capacity
        n = 0
        while data := await asyncio.wait_for(r.read(1 << 20), T):
            n += len(data)
        assert n == sent[0]
        assert conn.max_buffered <= capacity
        assert counter(amb, "bytes_to_client_total") == n
    run(main())


@LOOPS
def test_backend_reset_ends_a_spliced_pair(kind):
    writers = []

    async def hold(r, w):
        writers.append(w)
        await r.read()

    async def main():
        srv = await Server(hold).start()
        amb, lst = await start([srv.backend], splice_min=0)
        r, w = await connect(lst)
        w.write(b"x")
        conn = await paired(lst)
        await until(lambda: writers and conn.splice is not None, what="the backend to accept")
        sock = writers[0].get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writers[0].transport.abort()        # an RST to the ambassador
        assert await closed_by_peer(r)
        await until(lambda: not lst.connections, what="the broken pair to be forgotten")
        assert conn.splice.released
    run(main(), kind)


def test_no_splice_keeps_the_transport_path():
    async def main():
        (srv,) = await servers(1)
        amb, lst = await start([srv.backend], splice=False)
        r, w = await connect(lst)
        w.write(b"ping")
        assert await asyncio.wait_for(r.readexactly(4), T) == b"ping"
        conn = await paired(lst)
        assert conn.splice is None
        assert amb.snapshot()["listeners"][str(lst.port)]["spliced"] == 0
    run(main())


# -- the Poller alone ---------------------------------------------------------------------

def tcp_pair():
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        a = socket.create_connection(lsock.getsockname())
        b, _ = lsock.accept()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


@LOOPS
def test_poller_reports_readable_writable_and_a_reset(kind):
    async def main():
        poller = kernel.Poller(asyncio.get_running_loop())
        a, b = tcp_pair()
        try:
            seen = []
            poller.watch(a.fileno(), None, lambda: seen.append("w"))
            await until(lambda: "w" in seen, what="writable")
            poller.watch(a.fileno(), lambda: seen.append("r"), None)
            await asyncio.sleep(0.05)
            assert "r" not in seen               # nothing to read yet
            b.send(b"x")
            await until(lambda: "r" in seen, what="readable")
            a.recv(1)
            seen.clear()
            b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            b.close()                            # RST: EPOLLERR|EPOLLHUP on a
            await until(lambda: "r" in seen, what="the reset to be reported")
            poller.watch(a.fileno(), None, None)
            assert a.fileno() not in poller.watched
        finally:
            poller.close()
            a.close()
            b.close()
        assert poller.ep.closed
    run(main(), kind)


def test_make_pipe_has_the_asked_capacity_or_the_default():
    r, w, cap = kernel.make_pipe(256 * 1024)
    try:
        assert cap >= 256 * 1024 or cap == 65536
        assert os.get_blocking(r) is False and os.get_blocking(w) is False
    finally:
        os.close(r)
        os.close(w)
