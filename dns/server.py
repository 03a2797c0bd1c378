"""The resolver's sockets: asyncio UDP and TCP on each network's gateway
address, in a thread of its own (uvloop where installed) inside the daemon.

The common question is answered without parsing: a local answer is kept
packed, keyed by (client address, the query bytes after the id), and sent
with only the id patched. Everything else takes the slow path: dnslib parse,
`answer()` on the snapshot, and forwarding upstream for names we do not own.
A new snapshot empties that table, so answers follow the containers at once."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dnslib import EDNS0, RCODE, DNSHeader, DNSRecord

from portlink import threads
from portlink.dns.answer import EDNS_PAYLOAD, Forward, answer, error, edns, header_error, udp_limit
from portlink.dns.forward import ForwardConfig, Forwarder
from portlink.dns.zone import Snapshot
from portlink.prom import Histogram

try:
    import uvloop
except ImportError:   # the asyncio default loop works, only slower
    uvloop = None

log = logging.getLogger("portlink.dns")

MAX_QUERY = 4096          # a query is a question and an OPT record; anything bigger is hostile
MAX_PACKED = 50_000       # packed answers kept; the table is emptied when it fills
MAX_PACKED_BYTES = 32 << 20   # ... or when keys and answers reach this (4 KB queries: 200 MB at 50,000)
MAX_FORWARDS = 1024       # upstream queries in flight; beyond that SERVFAIL at once
MAX_BACKLOG = 512         # datagrams a listener has handed to the slow path and not yet seen taken
MAX_TCP = 256             # concurrent TCP clients
MAX_TCP_PER_CLIENT = 16   # of them from one address: one container cannot take them all
MAX_TCP_ANSWER = 65535    # a TCP message's length is 16 bits
TCP_IDLE = 10.0           # seconds a TCP client may sit silent
TCP_WRITE = 5.0           # seconds an answer may wait for a client that does not read
TCP_LIFE = 60.0           # seconds one TCP connection may last, however busy
IP_FREEBIND = 15


@dataclass
class ServerConfig:
    port: int = 53
    forward: ForwardConfig | None = None


class _Rotor:
    """Several packed orders of one answer, handed out in turn; the turn is
    shared by every spelling of the question (EDNS cookies differ per client).

    Each order is packed when it is first handed out: packing all n orders of
    an n-address answer up front costs n^2 records, 64 ms at 60 addresses, for
    every new spelling of the name a client cares to send (0x20 case, flags)."""

    __slots__ = ("variants", "turn", "build")

    def __init__(self, first: bytes, n: int, build: Callable[[int], bytes], turn: list[int]) -> None:
        self.variants: list[bytes | None] = [first] + [None] * (n - 1)
        self.turn, self.build = turn, build

    def next(self) -> bytes:
        t = self.turn
        t[0] += 1
        k = t[0] % len(self.variants)
        v = self.variants[k]
        if v is None:
            try:   # in a listener's thread: the snapshot is immutable, answer() pure
                v = self.variants[k] = self.build(k)
            except Exception:   # never let a listener's thread die: the first order will do
                log.exception("packing answer order %d failed", k)
                v = self.variants[0]
        return v


class _UdpListener:
    """One UDP socket served by a thread of its own in a blocking loop: about
    twice the rate of an event-loop callback per datagram. Misses go to the
    event loop's slow path."""

    def __init__(self, server: "DnsServer", sock: socket.socket, addr: str) -> None:
        self.server, self.sock, self.addr = server, sock, addr
        self.stopping = False
        # Each counter has one writer (this thread, the loop's), so no lock: queued - taken
        # is the backlog. Past MAX_BACKLOG a miss is dropped, as a full socket buffer would
        # drop it: the blocking loop reads faster than the slow path answers, and a flood
        # of misses would otherwise queue without bound (memory, and minutes of delay for
        # every other container's first question) while hits keep flowing.
        self.queued = self.taken = self.dropped = 0
        self.cached = [0] * 16   # answers from the packed table, by rcode (metrics)
        self.thread = threads.Thread(target=self._run, name=f"dns-udp-{addr}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        recv, send, table, cached = self.sock.recvfrom, self.sock.sendto, self.server.packed, self.cached
        loop, slow = self.server.loop, self._slow
        while True:
            try:
                data, peer = recv(MAX_QUERY + 1)
            except OSError:
                if self.stopping:
                    break
                continue
            if self.stopping:
                break
            hit = table.get((peer[0], data[2:]))
            if hit is not None:
                cached[hit[1] & 15 if hit.__class__ is bytes else 0] += 1   # rotors are NOERROR
                try:
                    send(data[:2] + (hit if hit.__class__ is bytes else hit.next()), peer)
                except OSError:
                    pass   # the client's socket is gone: nothing to do
                continue
            if self.queued - self.taken >= MAX_BACKLOG:
                self.dropped += 1
                continue
            self.queued += 1
            loop.call_soon_threadsafe(slow, data, peer)
        self.sock.close()

    def _slow(self, data: bytes, peer) -> None:
        self.taken += 1
        self.server.slow_udp(data, peer, self.sock)

    def close(self) -> None:
        self.stopping = True
        # shutdown() wakes a blocked recvfrom even on an unconnected UDP socket (it
        # reports ENOTCONN, and wakes the readers anyway); closing would not, and a
        # datagram to itself cannot arrive once the bridge and its address are gone.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(5)


class DnsServer:
    def __init__(self, cfg: ServerConfig | None = None) -> None:
        self.cfg = cfg or ServerConfig()
        self.snapshot = Snapshot()
        self.packed: dict[tuple[str, bytes], bytes | _Rotor] = {}
        self._packed_bytes = 0   # of keys and answers, a rotation counted as all its orders
        self.forwarder = Forwarder(self.cfg.forward)
        self.stats = {"queries_slow": 0, "malformed": 0, "refused": 0, "dropped_forwards": 0}
        # Metrics of the slow path: answers by (path, rcode) and latency by path, where path is
        # "local" (parsed and answered here) or "forward"; the table's hits are counted per
        # listener (`cached`) and not timed: they cost microseconds in the listener thread.
        self.answered: dict[tuple[str, int], int] = {}
        self.latency = {"local": Histogram(), "forward": Histogram()}
        self._listeners: dict[str, tuple[_UdpListener, asyncio.AbstractServer]] = {}
        self._turns: dict[tuple[str, str], list[int]] = {}
        # Swaps come from any thread: the lock keeps one from coming between the
        # slow path's check that its answer is of the current snapshot and its
        # entry in the table (a stale answer kept would outlive the swap).
        self._swap_lock = threading.Lock()
        self._offers = itertools.count()   # order of the snapshots given
        self._swapped = -1                 # the order of the one in place
        self._forwards = 0
        self._tcp_clients = 0
        self._tcp_by_client: dict[str, int] = {}
        self._tcp_tasks: set[asyncio.Task] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # Control, from any thread ----------------------------------------------------
    def start(self) -> None:
        self.loop = uvloop.new_event_loop() if uvloop else asyncio.new_event_loop()
        self._thread = threads.Thread(target=self.loop.run_forever, name="dns", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self.loop is None:
            return
        self._call(self._close_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()
        self.loop = None

    def update(self, snapshot: Snapshot) -> None:
        """Swap in a new snapshot, in the caller's thread; queries after this
        return see only it. (It was handed to the resolver's thread and waited
        for: two thread switches, each waiting for the GIL, 20+ ms per change on
        a busy daemon.)"""
        self._swap(snapshot, next(self._offers))

    def offer(self, snapshot: Snapshot) -> None:
        """Swap in a new snapshot soon, from the resolver's thread (callers on an
        event loop of their own, which must not wait). Of the snapshots offered
        or updated, the latest given stays, whichever swap runs last."""
        self.loop.call_soon_threadsafe(self._swap, snapshot, next(self._offers))

    def _swap(self, snapshot: Snapshot, seq: int) -> None:
        with self._swap_lock:
            if seq < self._swapped:
                return
            self._swapped = seq
            self.snapshot = snapshot
            self.packed.clear()
            self._packed_bytes = 0
            self._turns.clear()

    def listen(self, addresses: Iterable[str]) -> list[str]:
        """Serve exactly these addresses (port cfg.port); returns bind errors."""
        return self._call(self._set_listeners(set(addresses)))

    def listening(self) -> list[str]:
        return sorted(self._listeners)

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    # In the loop's thread ---------------------------------------------------------
    async def _set_listeners(self, wanted: set[str]) -> list[str]:
        errors = []
        for addr in sorted(set(self._listeners) - wanted):
            udp, tcp = self._listeners.pop(addr)
            udp.close()
            tcp.close()
        for addr in sorted(wanted - set(self._listeners)):
            try:
                self._listeners[addr] = await self._bind(addr)
            except OSError as e:
                errors.append(f"cannot serve DNS on {addr}:{self.cfg.port}: {e.strerror or e}")
        return errors

    async def _bind(self, addr: str):
        us = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ts = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            for s in (us, ts):
                # FREEBIND: a bridge's address may still be tentative right after creation.
                s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((addr, self.cfg.port))
            us.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            ts.listen(128)
            tcp = await asyncio.start_server(self._tcp_client, sock=ts)
        except BaseException:
            us.close()
            ts.close()
            raise
        return _UdpListener(self, us, addr), tcp

    async def _close_all(self) -> None:
        await self._set_listeners(set())
        # Connected TCP clients too: their tasks would be destroyed pending, transports unclosed.
        for task in self._tcp_tasks:
            task.cancel()
        await asyncio.gather(*self._tcp_tasks, return_exceptions=True)

    # The slow path -----------------------------------------------------------------
    def _parse(self, data: bytes) -> DNSRecord | bytes | None:
        """The parsed query, or the bytes of an error reply, or None (drop)."""
        if len(data) < 3 or data[2] & 0x80:
            return None   # a response (QR set) is never answered: no reflection loops
        if len(data) > MAX_QUERY:
            self.stats["malformed"] += 1
            return header_error(data, RCODE.FORMERR)
        if len(data) >= 12 and (data[4:11] != b"\0\1\0\0\0\0\0" or data[11] > 1):
            # Not one question, no answer or authority records, at most OPT: FORMERR
            # from the header (as unbound), before dnslib follows compression pointers.
            # Each name may point at the one before it and dnslib walks every chain
            # again: 680 questions in 4 KB cost it a second of CPU.
            self.stats["malformed"] += 1
            return header_error(data, RCODE.FORMERR)
        try:
            return DNSRecord.parse(data)
        except Exception:   # dnslib raises assorted types on garbage: all mean FORMERR
            self.stats["malformed"] += 1
            return header_error(data, RCODE.FORMERR)

    def _done(self, path: str, rcode: int, t0: float) -> None:
        key = (path, rcode)
        self.answered[key] = self.answered.get(key, 0) + 1
        self.latency[path].observe(time.perf_counter() - t0)

    def cached_counts(self) -> list[int]:
        """Answers from the packed tables of every listener, by rcode."""
        out = [0] * 16
        for listener, _ in list(self._listeners.values()):
            for rc, n in enumerate(listener.cached):
                out[rc] += n
        return out

    def slow_udp(self, data: bytes, addr, sock: socket.socket) -> None:
        t0 = time.perf_counter()
        try:
            self._slow_udp(data, addr, sock, t0)
        except OSError:
            pass   # the reply could not be sent: the client is gone

    def _slow_udp(self, data: bytes, addr, sock: socket.socket, t0: float) -> None:
        self.stats["queries_slow"] += 1
        req = self._parse(data)
        if not isinstance(req, DNSRecord):
            if req is not None:
                self._done("local", req[3] & 15, t0)
                sock.sendto(req, addr)
            return
        limit = udp_limit(req)
        snap = self.snapshot
        result = answer(req, addr[0], snap)
        if isinstance(result, Forward):
            self._start_forward(req, result, lambda out: sock.sendto(_fit(out, req, limit), addr), t0)
            return
        self._done("local", result.record.header.rcode, t0)
        if result.record.header.rcode == RCODE.REFUSED:
            self.stats["refused"] += 1
        if addr[0] not in snap.views:   # REFUSED, or FORMERR/NOTIMP/BADVERS decided before the view
            sock.sendto(result.record.pack(), addr)
            return   # never kept: a flood from strangers must not fill the table
        body = _fit(result.record, req, limit)[2:]
        with self._swap_lock:
            if self.snapshot is snap:   # not swapped out meanwhile: the answer may be kept
                if len(self.packed) >= MAX_PACKED or self._packed_bytes >= MAX_PACKED_BYTES:
                    self.packed.clear()
                    self._packed_bytes = 0
                self._packed_bytes += len(data) + len(body) * result.variants
                if result.variants == 1:
                    self.packed[(addr[0], data[2:])] = body
                else:
                    turn = self._turns.setdefault((addr[0], str(req.q.qname).lower()), [-1])
                    rotor = self.packed[(addr[0], data[2:])] = _Rotor(
                        body, result.variants, functools.partial(_order, data, addr[0], snap, limit), turn)
                    body = rotor.next()
        sock.sendto(data[:2] + body, addr)

    def _start_forward(self, req: DNSRecord, fwd: Forward, send, t0: float) -> None:
        if self._forwards >= MAX_FORWARDS:
            self.stats["dropped_forwards"] += 1
            self._done("forward", RCODE.SERVFAIL, t0)
            send(error(req, RCODE.SERVFAIL))
            return
        self._forwards += 1

        async def run() -> None:
            try:
                out = await self.forwarder.resolve(req, fwd.upstreams)
                self._done("forward", out.header.rcode, t0)
                send(out)
            except Exception:
                log.exception("forwarding %s failed", req.q.qname)
            finally:
                self._forwards -= 1

        asyncio.get_running_loop().create_task(run())

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")[0]
        # The source first: a stranger (no container's address) would only be
        # REFUSED, so it gets no slot at all; addresses that never read must not
        # pin the slots the containers need.
        if (client not in self.snapshot.views or self._tcp_clients >= MAX_TCP
                or self._tcp_by_client.get(client, 0) >= MAX_TCP_PER_CLIENT):
            writer.close()
            return
        self._tcp_clients += 1
        self._tcp_by_client[client] = self._tcp_by_client.get(client, 0) + 1
        task = asyncio.current_task()
        self._tcp_tasks.add(task)
        try:
            await self._serve_tcp(reader, writer, client, asyncio.get_running_loop().time() + TCP_LIFE)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            self._tcp_clients -= 1
            left = self._tcp_by_client.pop(client) - 1
            if left:
                self._tcp_by_client[client] = left
            self._tcp_tasks.discard(task)
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()   # close() would wait for a client that does not read
            else:
                writer.close()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str,
                         deadline: float) -> None:
        """One client's queries in turn, until `deadline` (loop time); every read
        and write is bounded in time. The life is checked here rather than by
        cancelling from outside: Python 3.11's wait_for can swallow an outer
        cancellation that lands as its inner read completes, and a busy client
        then kept its connection past the bound."""
        loop = asyncio.get_running_loop()

        def left(limit: float) -> float:
            rest = deadline - loop.time()
            if rest <= 0:
                raise asyncio.TimeoutError
            return min(limit, rest)

        while True:
            n = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), left(TCP_IDLE)), "big")
            if n > MAX_QUERY:
                head = await asyncio.wait_for(reader.readexactly(min(n, 12)), left(TCP_IDLE))
                err = header_error(head, RCODE.FORMERR)
                if err:
                    writer.write(len(err).to_bytes(2, "big") + err)
                return   # the stream is out of step now: end it
            data = await asyncio.wait_for(reader.readexactly(n), left(TCP_IDLE))
            out = await self._answer_tcp(data, client)
            if out is None:
                return
            writer.write(len(out).to_bytes(2, "big") + out)
            await asyncio.wait_for(writer.drain(), left(TCP_WRITE))   # a client that never reads

    async def _answer_tcp(self, data: bytes, client: str) -> bytes | None:
        self.stats["queries_slow"] += 1
        t0 = time.perf_counter()
        req = self._parse(data)
        if not isinstance(req, DNSRecord):
            if req is not None:
                self._done("local", req[3] & 15, t0)
            return req
        result = answer(req, client, self.snapshot)
        if isinstance(result, Forward):
            out = await self.forwarder.resolve(req, result.upstreams)
            self._done("forward", out.header.rcode, t0)
            return _fit(out, req, MAX_TCP_ANSWER)
        self._done("local", result.record.header.rcode, t0)
        return _fit(result.record, req, MAX_TCP_ANSWER)


def _order(data: bytes, client: str, snap: Snapshot, limit: int, rotation: int) -> bytes:
    """Rotation k of a local answer, packed after the id (the query is parsed
    again rather than kept: the bytes are smaller than dnslib's objects)."""
    req = DNSRecord.parse(data)
    return _fit(answer(req, client, snap, rotation=rotation).record, req, limit)[2:]


def _fit(record: DNSRecord, req: DNSRecord, limit: int) -> bytes:
    """Pack for UDP: too big for the client means header and question with TC."""
    data = bytes(record.pack())   # dnslib packs to a bytearray
    if len(data) <= limit:
        return data
    h = record.header
    cut = DNSRecord(DNSHeader(id=h.id, bitmap=h.bitmap, tc=1), q=req.q)
    if edns(req) is not None:
        cut.add_ar(EDNS0(udp_len=EDNS_PAYLOAD))
    return bytes(cut.pack())
