"""The TCP forwarder: asyncio protocols (uvloop or the default loop), one pair of
sockets per client connection, never an unbounded buffer.

Backpressure: each transport has a write high-water mark; when a transport's
buffer goes over it (pause_writing) the *other* socket stops reading until it
drains (resume_writing). So a slow reader slows the fast writer on the other
side, through TCP, instead of filling our memory. Before the backend answers,
what the client sends is kept up to `prebuffer` bytes and then the client is
paused too; what a backend says before it is paired (a server-first protocol's
greeting) is held the same way.

Half-close: an EOF from one side becomes write_eof on the other; the pair is
closed once both directions have ended (or either socket is lost).

Bulk plaintext pairs leave this path: once one read brings `splice_min` bytes
(a stream, not a request/response exchange), both transports are paused and
ambassador/splice.py moves the bytes socket -> pipe -> socket in the kernel,
with the same counting, half-close, backpressure and close semantics (see
Connection._hand_to_kernel). Short exchanges stay here, where uvloop's
transports cost fewer system calls than setting up pipes; pairs over TLS
always do.

TLS (ambassador/tls.py) hooks in at two points and changes nothing else: a
listener's `tls_in` upgrades and authorizes an accepted client before any
backend is dialled; its `tls_out` gives the TLS options of each backend dial
and checks the backend's identity before pairing."""

from __future__ import annotations

import asyncio
import logging
import socket
import types
from collections.abc import Iterable, Mapping

from portlink.ambassador.backends import Backend, Pool
from portlink.ambassador.metrics import Metrics
from portlink.ambassador import splice as kernel
from portlink.ambassador.link import ClaimRefused
from portlink.ambassador.warm import WarmPool
from portlink.reroute import DEFAULT_POLICY, DRAIN_DEADLINE, POLICIES

log = logging.getLogger("portlink.ambassador")

HIGH_WATER = 64 * 1024
PREBUFFER = 64 * 1024
CONNECT_TIMEOUT = 2.0
# A closed pair still flushes what it buffered (at most the high-water mark);
# a peer that never reads it must not pin the pair forever.
LINGER = 30.0
# After a client's EOF that TLS cannot pass to the backend: how long the backend may
# stay silent before the pair is closed (each reply byte restarts it).
EOF_GRACE = 2.0


class Side(asyncio.Protocol):
    """One socket of a pair. Its reading is paused while any reason in `blocked`
    holds: "peer" (the other socket's write buffer is over the mark) or
    "connecting" (not paired yet and `prebuffer` bytes held)."""

    def __init__(self, conn: Connection, role: str, tls: bool = False) -> None:
        self.conn = conn
        self.role = role                  # "client" | "backend"
        self.tls = tls                    # over TLS: EOF is a full close (asyncio's TLS has no half-close)
        self.transport: asyncio.Transport | None = None
        self.blocked: set[str] = set()
        self.eof = False                  # the far end has sent EOF
        self.lost = False
        self.early: list[bytes] = []      # a backend's bytes before pairing
        self.early_size = 0
        self.stash: list[bytes] | None = None   # raw bytes before start_tls took the socket (TLS server)

    # -- asyncio callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=self.conn.high_water, low=self.conn.low_water)  # type: ignore[attr-defined]
        if self.role == "client":
            self.conn.listener.accepted(self.conn)

    def upgraded(self, transport: asyncio.Transport) -> None:
        """The TLS transport replaces the TCP one (loop.start_tls does not call connection_made)."""
        self.transport = transport
        self.tls = True
        transport.set_write_buffer_limits(high=self.conn.high_water, low=self.conn.low_water)
        if self.blocked:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if self.stash is not None:        # a ClientHello uvloop read before start_tls: held for TLS
            self.stash.append(data)
            self.transport.pause_reading()
            return
        self.conn.received(self, data)

    def eof_received(self) -> bool:
        keep = self.conn.eof(self)
        return keep and not self.tls      # a TLS transport closes after close_notify whatever we say

    def pause_writing(self) -> None:
        other = self.conn.other(self)
        if other is not None:
            other.block("peer")

    def resume_writing(self) -> None:
        other = self.conn.other(self)
        if other is not None:
            other.unblock("peer")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.conn.side_lost(self)

    # -- helpers -------------------------------------------------------------------

    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def block(self, reason: str) -> None:
        if not self.blocked and self.open():
            self.transport.pause_reading()
        self.blocked.add(reason)

    def unblock(self, reason: str) -> None:
        if reason not in self.blocked:
            return
        self.blocked.discard(reason)
        if not self.blocked and self.open():
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        t = self.transport                 # open(), inlined: once per message
        if t is not None and not t.is_closing():
            t.write(data)
            buffered = t.get_write_buffer_size()
            if buffered > self.conn.max_buffered:
                self.conn.max_buffered = buffered

    def write_eof(self) -> None:
        if not self.open():
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()
        elif self.role == "client":
            # TLS to a client cannot half-close: the backend is done, so close after
            # flushing (close_notify), as the peer would see the backend's FIN.
            self.transport.close()
        else:
            # TLS to a backend cannot half-close either: the client's EOF is not passed
            # on, so the reply still comes back; the pair ends when the backend closes,
            # or after EOF_GRACE seconds in which the backend sent nothing (a client that
            # closed fully would otherwise pin the pair and its backend connection forever).
            self.conn.eof_grace()

    def close(self) -> None:
        if self.open():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.abort()


class Connection:
    """A client connection and, once one answers, its backend connection."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.high_water = listener.high_water
        self.low_water = listener.low_water
        self.client = Side(self, "client")
        self.upstream: Side | None = None     # the paired backend socket
        self.backend: Backend | None = None
        self.pending: list[bytes] = []        # client bytes before pairing
        self.pending_size = 0
        self.task: asyncio.Task | None = None
        self.connecting = False               # connect() has not returned yet
        self.closing = False
        self.finished = False
        self.max_buffered = 0                 # the largest write buffer seen on either socket
        self.to_backend = 0
        self.to_client = 0
        # Bytes not yet added to the listener's Metrics: added in batches (Listener.flush,
        # before any read of the metrics, and when the pair ends), not per read, which
        # cost a tenth of the per-message time of a request/response stream.
        self.unflushed = [0, 0]               # to backend, to client
        self._drain: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._preamble: tuple[int, asyncio.Future] | None = None   # (bytes awaited, future) before pairing
        self._grace: asyncio.TimerHandle | None = None   # see EOF_GRACE
        self.splice: kernel.Spliced | None = None         # the plaintext kernel path, once handed over
        self._dial_expired = False                         # the listener's dial timer cancelled our dial

    def __repr__(self) -> str:
        return f"<Connection :{self.listener.port} -> {self.backend or '?'}>"

    @property
    def draining(self) -> bool:
        return self._drain is not None

    def other(self, side: Side) -> Side | None:
        if side is self.client:
            return self.upstream
        return self.client if side is self.upstream else None

    # -- data and EOF ------------------------------------------------------------

    def received(self, side: Side, data: bytes) -> None:
        up = self.upstream
        if side is self.client:
            if up is None:
                self.pending.append(data)
                self.pending_size += len(data)
                if self.pending_size >= self.listener.prebuffer:
                    side.block("connecting")
                if self._preamble is not None and self.pending_size >= self._preamble[0] \
                        and not self._preamble[1].done():
                    self._preamble[1].set_result(None)
                return
            self.to_backend += len(data)
            if not (self.unflushed[0] or self.unflushed[1]):
                self.listener.unflushed.add(self)
            self.unflushed[0] += len(data)
            up.write(data)
            if len(data) >= self.listener.splice_min and self.listener.splice:
                self._hand_to_kernel()
        elif side is up:
            if self._grace is not None:
                self._grace.cancel()
                self._grace = asyncio.get_running_loop().call_later(self.listener.eof_grace, self.close)
            self.to_client += len(data)
            if not (self.unflushed[0] or self.unflushed[1]):
                self.listener.unflushed.add(self)
            self.unflushed[1] += len(data)
            self.client.write(data)
            if len(data) >= self.listener.splice_min and self.listener.splice:
                self._hand_to_kernel()
        else:   # a backend that answered but is not paired yet
            side.early.append(data)
            side.early_size += len(data)
            if side.early_size >= self.listener.prebuffer:
                side.block("connecting")

    def eof(self, side: Side) -> bool:
        side.eof = True
        other = self.other(side)
        if other is not None:
            other.write_eof()
            if self.client.eof and other.eof:
                self.close()           # both directions done
        return True                    # keep the socket open: the other direction may go on

    def flush_counts(self) -> None:
        up, down = self.unflushed
        if up or down:
            metrics, port, label = self.listener.metrics, self.listener.port, self.backend.label
            if up:
                metrics.to_backend(port, label, up)
            if down:
                metrics.to_client(port, label, down)
            self.unflushed[0] = self.unflushed[1] = 0

    # -- connecting ----------------------------------------------------------------

    async def upgrade(self, ctx, timeout: float) -> None:
        """Server-side TLS on the accepted socket. Until it completes the client side
        has no transport (bytes decrypted early are held as before pairing); if it
        fails the socket is aborted and the client side counts as lost, since the
        TLS layer, not this protocol, saw the socket end."""
        side, raw = self.client, self.client.transport
        stash, side.stash = side.stash or [], None
        side.transport = None
        loop = asyncio.get_running_loop()

        def feed() -> None:
            # Runs after start_tls's own connection_made/resume_reading callbacks and
            # before the loop reads again: the held bytes come first, in order.
            proto = raw.get_protocol()
            for data in stash:
                view = memoryview(data)
                while view:
                    buf = proto.get_buffer(len(view))
                    n = min(len(buf), len(view))
                    buf[:n] = view[:n]
                    proto.buffer_updated(n)
                    view = view[n:]
        try:
            starting = loop.start_tls(raw, side, ctx, server_side=True, ssl_handshake_timeout=timeout)
            tls = await _after_first_step(starting, lambda: stash and loop.call_soon(feed))
            if tls is None:
                raise ConnectionResetError("the client left during the TLS handshake")
        except BaseException:
            side.lost = True
            raw.abort()
            raise
        side.upgraded(tls)

    async def preamble(self, expect: bytes, timeout: float) -> bool:
        """Wait for the client's first bytes to be `expect` (a warm connection's claim,
        ambassador/warm.py) and take them off what goes to the backend. False: they
        did not come within `timeout`, or were something else."""
        if self.pending_size < len(expect):
            fut = asyncio.get_running_loop().create_future()
            self._preamble = (len(expect), fut)
            try:
                async with asyncio.timeout(timeout):
                    await fut
            except asyncio.TimeoutError:
                return False
            finally:
                self._preamble = None
        data = b"".join(self.pending)
        if not data.startswith(expect):
            return False
        rest = data[len(expect):]
        self.pending, self.pending_size = ([rest] if rest else []), len(rest)
        if self.pending_size < self.listener.prebuffer:
            self.client.unblock("connecting")
        return True

    async def connect(self) -> None:
        """Try backends in the pool's order until one answers, before the client
        sees anything; none answers: close the client."""
        listener, pool = self.listener, self.listener.pool
        loop = asyncio.get_running_loop()
        if listener.tls_in is not None and not await listener.tls_in.admit(self):
            return
        tls_out = listener.tls_out
        # The identity dialled as: the linking container's, by its address (secure links).
        source = tls_out.source_for(self) if tls_out is not None else None
        if tls_out is not None and source is None:
            return                     # no linker's address: refused, closed and counted
        # Warm connections and reused links present one identity: this client's pool.
        links = listener.warm_for(source) if tls_out is not None else None
        tried: set[Backend] = set()
        lost_claims = 0
        while not self.closing:
            # Ordered afresh for each attempt, so a set changed meanwhile is honoured.
            b = next((b for b in pool.order() if b not in tried), None)
            if b is None:
                break
            tried.add(b)
            side = Side(self, "backend", tls=tls_out is not None)
            warm = await links.claim_wait(b, listener.connect_timeout) if links is not None else None
            if warm is not None and (self.closing or b not in pool):
                links.give_back(warm)     # the client left, or the backend, while we waited
                continue
            if warm is not None:
                # Handshaken and checked already: the claim makes the server side dial.
                side.connection_made(links.attach(warm, side))
                try:
                    await self._acked(side)
                except ClaimRefused:
                    self.close()               # denied: counted by the server side; nothing to retry
                    return
                except (OSError, asyncio.TimeoutError) as e:
                    side.transport.abort()
                    lost_claims += 1
                    if isinstance(e, ConnectionError) and lost_claims == 1:
                        tried.discard(b)   # maybe a link the server side was closing: dial it afresh, once
                    else:
                        listener.backend_failed(b, e)   # no answer in time: its backend is away
                    continue
                self.pair(b, side)
                return
            try:
                contexts = tls_out.identity.current(source) if links is not None else None
                dial = tls_out.dial(warm=links is not None, source=source) if tls_out is not None else {}
                # Bounded by the listener's one dial timer, not a timer per connection
                # (asyncio.timeout's showed in connect-per-request latency): Listener.dialing.
                listener.dialing(self)
                try:
                    transport, _ = await loop.create_connection(lambda: side, b.address, b.port, **dial)
                except asyncio.CancelledError:
                    if not self._dial_expired:
                        raise
                    self._dial_expired = False
                    asyncio.current_task().uncancel()
                    raise asyncio.TimeoutError() from None
                finally:
                    listener.dialed(self)
                if tls_out is not None:
                    tls_out.check(transport)
                    if links is not None:   # a reusable link (warm/2), if the server side speaks it
                        side.connection_made(links.adopt(b, transport, side, contexts))
                        try:
                            await self._acked(side)     # its backend answered
                        except ClaimRefused:
                            self.close()
                            return
            except (OSError, asyncio.TimeoutError) as e:
                if side.transport is not None:
                    side.transport.abort()
                listener.backend_failed(b, e)
                continue
            if self.closing or b not in pool:
                side.transport.close()   # the client left, or the backend was dropped while we connected
                continue
            self.pair(b, side)
            return
        if not self.closing:
            listener.metrics.rejected(listener.port)
            log.debug("port %d: no backend answered, closing the client", listener.port)
            self.close()

    async def _acked(self, side: Side) -> None:
        """A claim on a reused link (ambassador/link.py) is a connect: it is done when
        the server side says its backend answered (ConnectionError if the link went)."""
        ready = getattr(side.transport, "ready", None)
        if ready is not None:
            async with asyncio.timeout(self.listener.connect_timeout):
                await ready

    def pair(self, b: Backend, side: Side) -> None:
        ack = getattr(self.client.transport, "ack", None)
        if ack is not None:
            ack()                      # a server side's link stream: its client side may go on
        self.backend, self.upstream = b, side
        port, label = self.listener.port, b.label
        self.listener.pool.connected(b)
        self.listener.metrics.opened(port, label)
        pending, self.pending, self.pending_size = self.pending, [], 0
        for data in pending:
            self.to_backend += len(data)
            self.listener.metrics.to_backend(port, label, len(data))
            side.write(data)
        early, side.early, side.early_size = side.early, [], 0
        for data in early:
            self.to_client += len(data)
            self.listener.metrics.to_client(port, label, len(data))
            self.client.write(data)
        # The writes above may have paused a side ("peer"); "connecting" is over.
        self.client.unblock("connecting")
        side.unblock("connecting")
        if self.client.eof:
            side.write_eof()
        if side.eof:
            self.client.write_eof()
        if side.lost or self.client.lost or (self.client.eof and side.eof):
            self.close()
        elif self.listener.splice and self.listener.splice_min == 0:
            self._hand_to_kernel()

    def _hand_to_kernel(self) -> None:
        """Move a paired plaintext connection to ambassador/splice.py. Only with both
        write buffers empty, so bytes keep their order (a bulk stream often has one
        full: the next big read tries again), and before either side's EOF; if the
        sockets cannot be duplicated the pair stays here."""
        client, up = self.client, self.upstream
        if (self.splice is not None or self.closing or client.tls or up.tls or client.eof or up.eof
                or client.stash is not None):
            return
        if client.transport.get_write_buffer_size() or up.transport.get_write_buffer_size():
            return
        if any(side.transport.get_extra_info("ssl_object") is not None for side in (client, up)):
            return       # a reused TLS link's stream (ambassador/link.py): its socket carries TLS records
        socks = []
        try:
            for side in (client, up):
                raw = side.transport.get_extra_info("socket")
                socks.append(socket.fromfd(raw.fileno(), raw.family, socket.SOCK_STREAM))
        except (OSError, AttributeError) as e:
            for s in socks:
                s.close()
            log.debug("port %d: staying on the transport path: %s", self.listener.port, e)
            return
        client.transport.pause_reading()
        up.transport.pause_reading()
        metrics, port, label = self.listener.metrics, self.listener.port, self.backend.label

        def count_up(n: int) -> None:
            self.to_backend += n
            metrics.to_backend(port, label, n)

        def count_down(n: int) -> None:
            self.to_client += n
            metrics.to_client(port, label, n)

        def high(n: int) -> None:
            if n > self.max_buffered:
                self.max_buffered = n

        def eof(i: int) -> None:
            (client if i == 0 else up).eof = True

        def closed() -> None:        # the pipes are written: the transports go (connection_lost follows)
            client.close()
            up.close()

        self.splice = kernel.Spliced(self.listener.poller(), socks[0], socks[1], count_up, count_down,
                                     (client.blocked, up.blocked), pipe_size=self.listener.pipe_size,
                                     on_high=high, on_eof=eof, on_done=self.close,
                                     on_error=lambda _e: self.abort(), on_closed=closed)
        self.splice.start()

    # -- ending ----------------------------------------------------------------------

    def start_drain(self, deadline: float) -> None:
        if self._drain is None and not self.closing:
            self._drain = asyncio.get_running_loop().call_later(deadline, self.close)

    def eof_grace(self) -> None:
        if self._grace is None and not self.closing:
            self._grace = asyncio.get_running_loop().call_later(self.listener.eof_grace, self.close)

    def cancel_drain(self) -> None:
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None

    def close(self) -> None:
        """Close both sockets after flushing what they hold (bounded by LINGER)."""
        if not self.closing:
            self.closing = True
            self._linger = asyncio.get_running_loop().call_later(self.listener.linger, self.abort)
        if self.task is not None and not self.task.done() and self.task is not asyncio.current_task():
            self.task.cancel()
        if self.splice is not None and not self.splice.released:
            self.splice.close()        # its on_closed closes the transports once the pipes are written
            return
        self.client.close()
        if self.upstream is not None:
            self.upstream.close()
        self._maybe_finish()

    def abort(self) -> None:
        self.closing = True
        if self.splice is not None:
            self.splice.release()
        if self.task is not None and not self.task.done() and self.task is not asyncio.current_task():
            self.task.cancel()
        self.client.abort()
        if self.upstream is not None:
            self.upstream.abort()
        self._maybe_finish()

    def side_lost(self, side: Side) -> None:
        if side.role == "backend" and side is not self.upstream:
            return                     # an attempt that was never paired: connect() handles it
        self.close()

    def _maybe_finish(self) -> None:
        if self.finished or not self.client.lost:
            return
        if self.upstream is not None and not self.upstream.lost:
            return
        if self.connecting:
            return                     # connect() is unwinding; its `finally` comes back here
        self.finished = True
        self.cancel_drain()
        if self._grace is not None:
            self._grace.cancel()
        if self._linger is not None:
            self._linger.cancel()
        if self.backend is not None:
            self.flush_counts()
            self.listener.unflushed.discard(self)
            self.listener.pool.released(self.backend)
            self.listener.metrics.closed(self.listener.port, self.backend.label)
        self.listener.forget(self)


class Listener:
    """Accepts on host:port and forwards each client to a backend of `pool`.
    Port 0 binds an ephemeral port; `port` is the bound one after start()."""

    def __init__(self, port: int, pool: Pool, *, host: str = "0.0.0.0", metrics: Metrics | None = None,
                 policy: str = DEFAULT_POLICY, drain_deadline: float = DRAIN_DEADLINE,
                 connect_timeout: float = CONNECT_TIMEOUT, high_water: int = HIGH_WATER,
                 low_water: int | None = None, prebuffer: int = PREBUFFER, linger: float = LINGER,
                 tls_in=None, tls_out=None, eof_grace: float = EOF_GRACE,
                 splice: bool | None = None, pipe_size: int = kernel.PIPE_SIZE,
                 splice_min: int = kernel.SPLICE_MIN) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown reroute policy {policy!r}: expected one of {', '.join(POLICIES)}")
        self.port = port
        self.pool = pool
        self.host = host
        self.metrics = metrics if metrics is not None else Metrics()
        self.policy = policy
        self.drain_deadline = drain_deadline
        self.connect_timeout = connect_timeout
        self.high_water = high_water
        self.low_water = high_water // 4 if low_water is None else low_water
        self.prebuffer = prebuffer
        self.linger = linger
        self.eof_grace = eof_grace
        self.tls_in = tls_in       # ambassador.tls.ServerTLS: clients must speak mutual TLS
        self.tls_out = tls_out     # ambassador.tls.ClientTLS: backends are dialled over mutual TLS
        # Plaintext pairs go to the kernel path (ambassador/splice.py) unless told otherwise.
        self.splice = kernel.available() if splice is None else (splice and kernel.available())
        self.pipe_size = pipe_size
        self.splice_min = splice_min      # one read this big moves a pair to the kernel path; 0: at pairing
        self._poller: kernel.Poller | None = None
        # Warm connections (ambassador/warm.py) per identity presented: the ambassador's
        # own, made ahead of clients (not by one that refuses non-linkers: it never
        # dials as itself), and each linker's (secure links), made at its first client.
        self.warm_size = getattr(tls_out, "warm", 0)
        self.warm = WarmPool(self, tls_out, self.warm_size) \
            if self.warm_size and not getattr(tls_out, "refuse_unlinked", False) else None
        self.linker_warm: dict[str, WarmPool] = {}
        self.connections: set[Connection] = set()
        self.unflushed: set[Connection] = set()     # connections with byte counts not in metrics yet
        # Connections dialling a backend -> their deadline (loop time), oldest first (one
        # connect_timeout for all), and the one timer that enforces them.
        self._dials: dict[Connection, float] = {}
        self._dial_timer: asyncio.TimerHandle | None = None
        self.metrics.on_read(self.flush)
        self.server: asyncio.AbstractServer | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self, sock: socket.socket | None = None) -> None:
        """`sock`: a listening socket made elsewhere (the host forwarder's: made by
        portlinkd inside the ambassador's namespace) instead of binding host:port."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            self.server = await loop.create_server(lambda: Connection(self).client, sock=sock, backlog=512)
        else:
            self.server = await loop.create_server(lambda: Connection(self).client, self.host, self.port,
                                                   reuse_address=True, backlog=512)
        if self.port == 0:
            self.port = self.server.sockets[0].getsockname()[1]
        self.update_warm()

    def warm_for(self, source: str | None) -> WarmPool | None:
        """The warm pool of connections presenting `source`; None: dial per client."""
        if not self.warm_size or source is None:
            return None
        if source == self.tls_out.source:
            return self.warm
        pool = self.linker_warm.get(source)
        if pool is None:
            pool = self.linker_warm[source] = WarmPool(self, self.tls_out, self.warm_size, source=source)
        return pool

    def warm_pools(self) -> list[WarmPool]:
        return ([self.warm] if self.warm is not None else []) + list(self.linker_warm.values())

    def update_warm(self) -> None:
        """Follow the backends; a linker whose certificate is gone (it left) loses its pool."""
        for source, pool in list(self.linker_warm.items()):
            if self.tls_out.identity.current(source) is None:
                pool.close()
                del self.linker_warm[source]
        for pool in self.warm_pools():
            pool.update()

    # -- called by connections -------------------------------------------------------

    def accepted(self, conn: Connection) -> None:
        if self.tls_in is not None and not hasattr(conn.client.transport, "link"):
            # Not a byte before start_tls (a stream on a warm/2 link is past it). asyncio
            # honours this pause; uvloop starts reading after connection_made anyway, so
            # what it reads is stashed.
            conn.client.stash = []
            conn.client.transport.pause_reading()
        self.connections.add(conn)
        self._idle.clear()
        conn.connecting = True
        conn.task = asyncio.get_running_loop().create_task(self._connect(conn))

    async def _connect(self, conn: Connection) -> None:
        try:
            await conn.connect()
        except asyncio.CancelledError:
            pass                       # closed while connecting
        except Exception:
            log.exception("port %d: forwarding a connection failed", self.port)
            conn.abort()
        finally:
            conn.connecting = False
            conn._maybe_finish()

    def dialing(self, conn: Connection) -> None:
        """`conn`'s task dials a backend: cancelled if it has not returned within
        connect_timeout. One timer serves every dial of the listener: it is armed for
        the oldest dial's deadline and, when it fires, expires what is due and re-arms
        for the oldest left (the dict is in deadline order), so a connection that dials
        and pairs in microseconds arms and cancels nothing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        self._dials[conn] = deadline
        if self._dial_timer is None:
            self._dial_timer = loop.call_at(deadline, self._expire_dials)

    def dialed(self, conn: Connection) -> None:
        self._dials.pop(conn, None)

    def _expire_dials(self) -> None:
        self._dial_timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._dials:
            conn, deadline = next(iter(self._dials.items()))
            if deadline > now:
                self._dial_timer = loop.call_at(deadline, self._expire_dials)
                return
            del self._dials[conn]
            if conn.task is not None and not conn.task.done():
                conn._dial_expired = True
                conn.task.cancel()

    def flush(self) -> None:
        """Add the connections' batched byte counts to the metrics."""
        for conn in self.unflushed:
            conn.flush_counts()
        self.unflushed.clear()

    def poller(self) -> kernel.Poller:
        if self._poller is None:
            self._poller = kernel.Poller(asyncio.get_running_loop())
        return self._poller

    def forget(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self._idle.set()

    def backend_failed(self, b: Backend, err: BaseException) -> None:
        # Logged when a cooldown starts, not on every client that hits it.
        quiet = self.pool.cooling(b)
        self.pool.failed(b)
        self.metrics.connect_failed(self.port, b.label)
        if not quiet:
            why = "timed out" if isinstance(err, asyncio.TimeoutError) else (
                f"{type(err).__name__}: {err.strerror or err}" if isinstance(err, OSError) else str(err))
            log.warning("port %d: backend %s failed (%s): tried last for %gs",
                        self.port, b.label, why, self.pool.cooldown)

    # -- reroutes and stopping ---------------------------------------------------------

    def reroute(self) -> int:
        """Apply the policy to connections whose backend left the pool (one whose
        backend came back stops draining). Returns how many are on a gone backend."""
        n = 0
        for conn in list(self.connections):
            if conn.backend is None or conn.closing:
                continue
            if conn.backend in self.pool:
                conn.cancel_drain()
                continue
            n += 1
            if self.policy == "close":
                conn.close()
            elif self.policy == "drain":
                conn.start_drain(self.drain_deadline)
        return n

    def quiesce(self) -> None:
        """Stop accepting; the open connections carry on. A server side whose
        container is being stopped: a new client's dial is refused at once, so
        its client side fails over to another host, while open streams drain."""
        if self.server is not None:
            self.server.close()
        for pool in self.warm_pools():
            pool.close()
        if self.tls_in is not None:
            self.tls_in.quiesce()        # idle warm/2 links too

    async def stop(self, grace: float = 2.0) -> None:
        """Stop accepting, close every connection, wait up to `grace` for them to
        flush, then abort what is left. Bounded."""
        if self.server is not None:
            self.server.close()
        for pool in self.warm_pools():
            pool.close()
        for conn in list(self.connections):
            conn.close()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except asyncio.TimeoutError:
            for conn in list(self.connections):
                conn.abort()
            try:
                await asyncio.wait_for(self._idle.wait(), 1.0)
            except asyncio.TimeoutError:
                log.warning("port %d: %d connections did not close", self.port, len(self.connections))
        if self.server is not None:
            try:
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            except asyncio.TimeoutError:
                pass
        if self._poller is not None and not self.connections:
            self._poller.close()
            self._poller = None
        if self._dial_timer is not None and not self._dials:
            self._dial_timer.cancel()
            self._dial_timer = None


@types.coroutine
def _after_first_step(coro, hook):
    """Await `coro`, calling hook() once its synchronous start has run (before its
    first suspension): `yield from` with a hook, cancellation passed through."""
    it = coro.__await__()
    send, exc, hooked = None, None, False
    while True:
        try:
            out = it.throw(exc) if exc is not None else it.send(send)
        except StopIteration as e:
            if not hooked:
                hook()
            return e.value
        if not hooked:
            hooked = True
            hook()
        try:
            send, exc = (yield out), None
        except BaseException as e:         # cancellation and the like go into the coroutine
            send, exc = None, e


def _names(backends: Iterable[Backend]) -> str:
    return "[" + ", ".join(b.label for b in backends) + "]"


class Ambassador:
    """Listeners for several ports, each with its own pool, sharing one Metrics."""

    def __init__(self, ports: Iterable[int], *, host: str = "0.0.0.0", policy: str = DEFAULT_POLICY,
                 drain_deadline: float = DRAIN_DEADLINE, connect_timeout: float = CONNECT_TIMEOUT,
                 cooldown: float = 5.0, metrics: Metrics | None = None, clock=None,
                 tls_in: Mapping[int, object] | None = None, **listener_options) -> None:
        ports = list(ports)
        if len(set(ports)) != len(ports):
            raise ValueError(f"listener ports repeat: {ports}")
        self.policy = policy
        self.metrics = metrics if metrics is not None else Metrics()
        pool_options = {"cooldown": cooldown} | ({"clock": clock} if clock is not None else {})
        self.pools: dict[int, Pool] = {p: Pool(**pool_options) for p in ports}
        self.listeners: dict[int, Listener] = {
            p: Listener(p, self.pools[p], host=host, metrics=self.metrics, policy=policy,
                        drain_deadline=drain_deadline, connect_timeout=connect_timeout,
                        tls_in=(tls_in or {}).get(p), **listener_options)
            for p in ports}
        self._applied: set[int] = set()

    def apply(self, port: int, backends: Iterable[Backend]) -> bool:
        """Make `backends` the set behind listener `port`; True if it changed.
        The first set a port gets is its start, not a reroute."""
        if port not in self.pools:
            raise ValueError(f"{port} is not a listener port of this ambassador")
        pool = self.pools[port]
        old = pool.backends
        added, removed = pool.update(backends)
        first = port not in self._applied
        self._applied.add(port)
        listener = self.listeners[port]
        if listener.warm_size and listener.server is not None and (added or removed):
            listener.update_warm()       # before the reroute: no warm connection to a gone backend
        if first:
            log.info("port %d: backends %s", self.listeners[port].port, _names(pool.backends))
            return bool(added or removed)
        if not (added or removed):
            return False
        self.metrics.rerouted(listener.port, [b.label for b in removed])
        affected = listener.reroute()
        what = {"keep": "kept", "drain": "draining", "close": "closed"}[self.policy]
        log.warning("port %d: reroute %s -> %s (%d connections on gone backends %s)",
                    listener.port, _names(old), _names(pool.backends), affected, what)
        return True

    async def start(self, socks: Mapping[int, socket.socket] | None = None) -> None:
        """`socks`: listening sockets by port, made elsewhere (see Listener.start)."""
        started = []
        try:
            for port, listener in self.listeners.items():
                await listener.start((socks or {}).get(port))
                started.append(listener)
        except BaseException:
            for listener in started:
                await listener.stop(0.5)
            raise

    def quiesce(self) -> None:
        for listener in self.listeners.values():
            listener.quiesce()

    async def stop(self, grace: float = 2.0) -> None:
        await asyncio.gather(*(listener.stop(grace) for listener in self.listeners.values()))

    def snapshot(self) -> dict:
        """Pools and counters as a JSON-able dict (GET /stats, `portlink inspect`)."""
        listeners = {}
        for listener in self.listeners.values():
            pool = listener.pool
            listeners[str(listener.port)] = {
                "backends": [b.label for b in pool.backends],
                "cooling": [b.label for b in pool.backends if pool.cooling(b)],
                "active": {b.label: n for b, n in sorted(pool.active.items(), key=lambda i: i[0].label)},
                "connections": len(listener.connections),
                # of them, on the kernel path (ambassador/splice.py)
                "spliced": sum(1 for c in listener.connections if c.splice is not None and not c.splice.released),
            }
            if listener.tls_in is not None:
                listeners[str(listener.port)]["tls_serves"] = listener.tls_in.service
            if listener.tls_out is not None:
                listeners[str(listener.port)]["tls_dials"] = {"as": listener.tls_out.source,
                                                             "expect": listener.tls_out.target}
            if listener.warm_size:
                listeners[str(listener.port)]["warm"] = warm_snapshot(listener)
        return {"policy": self.policy, "listeners": listeners, "metrics": self.metrics.snapshot()}


def warm_snapshot(listener: Listener) -> dict:
    """/stats' `warm` of a listener: its pools' counters summed, and how many
    identities (the ambassador's own, each linker's) have a pool."""
    pools = listener.warm_pools()
    out = {"per_backend": listener.warm_size, "identities": len(pools)}
    for pool in pools:
        for k, v in pool.snapshot().items():
            if k != "per_backend":
                out[k] = out.get(k, 0) + v
    for k in ("ready", "busy", "made", "claimed", "reused", "dropped"):
        out.setdefault(k, 0)
    return out
