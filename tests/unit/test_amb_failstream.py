"""A backend killed mid-stream, on loopback with the real forwarder: the client's
stream ends (EOF or a reset, never a hang), the ambassador's counters account
for it, and the next connections all go to the other backend and get its
answers. Killed three ways: its socket reset (SO_LINGER 0), its socket closed,
and its process SIGKILLed; plus the backend dying while the pair is held by
backpressure. Every wait is bounded; no root needed."""

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest
import uvloop

from portlink.ambassador.backends import Backend
from portlink.ambassador.forward import Ambassador

T = 5.0            # any single wait
HANG = 10.0        # a stream that has not ended by then is hung (a hang detector, not a timing claim)
COOLDOWN = 600.0   # the dead backend stays "tried last" for the whole test: counts are exact
NEXT = 6           # connections made after the kill

LOOPS = pytest.mark.parametrize("kind", ["uvloop", "asyncio"])


def run(coro, kind="uvloop"):
    factory = uvloop.new_event_loop if kind == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(asyncio.wait_for(coro, 60))


async def until(cond, timeout=T, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class TickServer:
    """A backend on 127.0.0.1: a line "tick" starts an endless stream of
    "<name> tick N" lines; "firehose" an endless stream of bulk bytes; any other
    line is answered "<name>:<line>"; "sink" reads nothing more. `kill` stops
    it abruptly."""

    def __init__(self, name: str):
        self.name = name
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task] = set()

    async def start(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.backend = Backend("127.0.0.1", self.port)
        return self

    async def _handle(self, r, w):
        self.writers.append(w)
        self.tasks.add(asyncio.current_task())
        try:
            while line := await r.readline():
                cmd = line.decode().strip()
                if cmd == "tick":
                    for n in range(100_000):
                        w.write(f"{self.name} tick {n}\n".encode())
                        await w.drain()
                        await asyncio.sleep(0.01)
                elif cmd == "sink":
                    await asyncio.sleep(3600)     # reads nothing more
                elif cmd == "firehose":
                    while True:
                        w.write(self.name.encode() * 65536)
                        await w.drain()
                else:
                    w.write(f"{self.name}:{cmd}\n".encode())
                    await w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    async def kill(self, reset: bool) -> None:
        """Stop listening and drop every connection at once, as a crash does:
        `reset` sends an RST (SO_LINGER 0), otherwise the kernel's FIN."""
        self.server.close()
        for w in self.writers:
            sock = w.get_extra_info("socket")
            if reset and sock is not None and sock.fileno() >= 0:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.wait_for(self.server.wait_closed(), T)

    async def stop(self) -> None:
        if self.server.is_serving():
            await self.kill(reset=False)


PROC_BACKEND = r"""
import socket, sys, threading, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
print(s.getsockname()[1], flush=True)
def tick(c):
    n = 0
    try:
        while True:
            c.sendall(f"proc tick {n}\n".encode()); n += 1; time.sleep(0.01)
    except OSError:
        pass
while True:
    c, _ = s.accept()
    threading.Thread(target=tick, args=(c,), daemon=True).start()
"""


class ProcBackend:
    """A backend in its own process, ticking to every connection, for SIGKILL."""

    def start(self):
        self.proc = subprocess.Popen([sys.executable, "-c", PROC_BACKEND], stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())
        self.backend = Backend("127.0.0.1", self.port)
        return self

    def kill(self):
        os.kill(self.proc.pid, signal.SIGKILL)     # our own child, by pid
        self.proc.wait(T)
        self.proc.stdout.close()


async def ambassador(backends):
    amb = Ambassador([0], host="127.0.0.1", cooldown=COOLDOWN)
    amb.apply(0, backends)
    await amb.start()
    return amb, amb.listeners[0]


async def read_to_end(r, timeout=HANG) -> tuple[bytes, str]:
    """Everything the client gets until the stream ends: (bytes, "eof" | "reset").
    Fails if it has not ended within `timeout`."""
    got = bytearray()

    async def drain():
        while True:
            try:
                chunk = await r.read(65536)
            except ConnectionResetError:
                return "reset"
            if not chunk:
                return "eof"
            got.extend(chunk)
    try:
        how = await asyncio.wait_for(drain(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"the client's stream did not end within {timeout}s after its backend died "
                             f"(a hang); got {len(got)} bytes") from None
    return bytes(got), how


def ticks_of(name: str, data: bytes) -> list[int]:
    """The tick numbers in `data`, checking every line is `name`'s, in order, none lost
    (the last line may be cut short by the kill)."""
    lines = data.decode().split("\n")
    whole, last = lines[:-1], lines[-1]
    nums = [int(l.removeprefix(f"{name} tick ")) for l in whole]
    assert nums == list(range(len(nums))), nums[:20]
    assert f"{name} tick {len(nums)}".startswith(last), last
    return nums


async def next_connections_go_to(amb, lst, survivor: str, dead: Backend, n: int = NEXT) -> None:
    """`n` fresh connections each get the survivor's answer; the dead backend is
    tried at most once (then it cools down) and no client is turned away."""
    before = amb.metrics["connections_total"].backends.get(
        next(b.label for b in lst.pool.backends if b != dead), 0)
    for i in range(n):
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", lst.port), T)
        w.write(f"hello {i}\n".encode())
        assert await asyncio.wait_for(r.readline(), T) == f"{survivor}:hello {i}\n".encode()
        w.close()
    await until(lambda: not lst.connections, what="the pairs to close")
    m = amb.metrics
    alive = next(b.label for b in lst.pool.backends if b != dead)
    assert m["connections_total"].backends.get(alive, 0) - before == n
    assert m["connections_total"].backends.get(dead.label, 0) == 1          # only the killed stream
    assert m["connect_failures_total"].backends.get(dead.label, 0) <= 1     # tried once at most, then last
    assert m["rejected_total"].total == 0
    assert m["connections_open"].total == 0


async def stream_then_kill(kind_of_kill: str) -> None:
    a, b = await TickServer("A").start(), await TickServer("B").start()
    proc = ProcBackend().start() if kind_of_kill == "sigkill" else None
    first = proc.backend if proc else a.backend
    amb, lst = await ambassador([first, b.backend])     # the first order() tries `first` first
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", lst.port), T)
        if proc is None:
            w.write(b"tick\n")
        name = "proc" if proc else "A"
        got = await asyncio.wait_for(r.readuntil(f"{name} tick 3\n".encode()), T)
        (conn,) = lst.connections
        assert conn.backend == first
        assert amb.metrics["connections_open"].backends[first.label] == 1

        if proc:
            proc.kill()
        else:
            await a.kill(reset=kind_of_kill == "reset")
        rest, how = await read_to_end(r)
        ticks_of(name, got + rest)            # a clean prefix of the dead backend's stream
        assert how in ("eof", "reset")
        w.close()
        await until(lambda: not lst.connections, what="the broken pair to be forgotten")
        assert amb.metrics["connections_open"].backends[first.label] == 0
        assert lst.pool.active == {}

        await next_connections_go_to(amb, lst, "B", first)
        # The killed backend, when tried, was refused and is now tried last.
        if amb.metrics["connect_failures_total"].backends.get(first.label):
            assert lst.pool.cooling(first)
    finally:
        await amb.stop()
        await a.stop()
        await b.stop()
        if proc and proc.proc.poll() is None:
            proc.kill()


@LOOPS
@pytest.mark.parametrize("how", ["reset", "close", "sigkill"])
def test_backend_killed_mid_stream_ends_the_stream_and_the_next_go_elsewhere(kind, how):
    run(stream_then_kill(how), kind)


@LOOPS
def test_backend_reset_while_the_client_uploads_ends_the_upload(kind):
    """The client is sending (the backend never reads: the client is held by
    backpressure) when the backend dies: the client's writes or reads fail, no hang."""
    async def main():
        a, b = await TickServer("A").start(), await TickServer("B").start()
        amb, lst = await ambassador([a.backend, b.backend])
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", lst.port), T)
            stop = asyncio.Event()

            w.write(b"sink\n")

            async def upload():
                chunk = b"u" * 65536
                try:
                    while not stop.is_set():
                        w.write(chunk)
                        await w.drain()
                except ConnectionError:
                    return "reset"
                return "stopped"
            up = asyncio.ensure_future(upload())
            await until(lambda: lst.connections and next(iter(lst.connections)).upstream is not None,
                        what="pairing")
            conn = next(iter(lst.connections))
            await until(lambda: "peer" in conn.client.blocked, what="the client to be held by backpressure")

            await a.kill(reset=True)
            _, how = await read_to_end(r)
            assert how in ("eof", "reset")
            stop.set()
            assert await asyncio.wait_for(up, HANG) in ("reset", "stopped")
            w.close()
            await until(lambda: not lst.connections, what="the broken pair to be forgotten")
            await next_connections_go_to(amb, lst, "B", a.backend)
        finally:
            await amb.stop()
            await a.stop()
            await b.stop()
    run(main(), kind)


@LOOPS
def test_backend_dies_while_a_slow_client_holds_the_pair_then_it_ends(kind):
    """The backend fills the client's buffer (its reading is paused by
    backpressure) and dies: once the client reads, it gets what was already
    forwarded and then the end of the stream, not a hang."""
    async def main():
        a, b = await TickServer("A").start(), await TickServer("B").start()
        amb, lst = await ambassador([a.backend, b.backend])
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", lst.port), T)
            w.write(b"firehose\n")
            await until(lambda: lst.connections and next(iter(lst.connections)).upstream is not None,
                        what="pairing")
            conn = next(iter(lst.connections))
            await until(lambda: "peer" in conn.upstream.blocked, what="the backend to be held by backpressure")

            await a.kill(reset=True)
            data, how = await read_to_end(r)
            assert how in ("eof", "reset")
            assert set(data) <= {ord("A")}
            w.close()
            await until(lambda: not lst.connections, what="the broken pair to be forgotten")
            await next_connections_go_to(amb, lst, "B", a.backend)
        finally:
            await amb.stop()
            await a.stop()
            await b.stop()
    run(main(), kind)
