"""Warm mutual-TLS connections from a client side to its server sides: a few
handshakes made ahead of clients, so a new client connection skips the TCP and
TLS set-up (most of a connect-per-request's added latency), and, with
`portlink-warm/2`, TLS connections reused client after client (`Link`).

The two sides agree on it with ALPN (`ALPNS`, offered by every dial of a client
side with warm connections, selected by a server side that knows them). On a
`portlink-warm/1` connection the server side dials its backend only after a
one-line preamble (`CLAIM`), which the client side writes when a client takes
the connection. So a backend never
sees an idle phantom connection, and a server side that does not know the
protocol simply does not select it (the client side then never keeps warm
connections to it). The server side authorizes at the claim (its cache makes
that free when a handshake-time check was recent), so a new deny still applies
to warm connections.

A warm connection is dropped, never handed out, when: its backend left the
pool (a reroute), the client side's certificates rotated since it was made, it
was idle `idle` seconds (the server side waits `SERVER_WAIT`, longer), or the
server side closed it (a quiescing server side closes its idle ones). Warm connections are not client connections: they are
not in the pool's active counts nor in the connection metrics until claimed.

`portlink-warm/2` (preferred by both ends; `portlink-warm/1` is still spoken
with an older peer) frames both directions, so a backend's bytes can never be
taken for a control message: a 5-byte header (kind, 4-byte big-endian length)
then the payload. Kinds: `C` a client's stream starts (the claim; the server
side authorizes it and dials its backend), `A` the server side's answer once
its backend answered (`N`: not authorized; until `A` the client side holds the
client's bytes, so a claim the server side could not take fails over like a
connect), `D` data, `E` this direction's EOF
(a real half-close: each end passes it on with write_eof). A stream ends
cleanly once both ends have sent `E`: the connection then carries the next
client's stream with no handshake (the client side keeps it in the pool, the
server side waits for the next claim). Anything else ends the whole TLS
connection, as a client or backend closing early did before."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from portlink.ambassador.backends import Backend
from portlink.ambassador.link import Link

log = logging.getLogger("portlink.ambassador")

WARM_ALPN = "portlink-warm/1"
LINK_ALPN = "portlink-warm/2"
ALPNS = [LINK_ALPN, WARM_ALPN]     # offered and selected in this order of preference
CLAIM = b"portlink-claim\n"
DEFAULT_SIZE = 2          # warm connections per backend of a listener
IDLE = 20.0               # a client side replaces a warm connection idle this long
SERVER_WAIT = 60.0        # a server side closes a warm connection not claimed within this


KEEP = 8                  # reusable connections kept idle per backend beyond `size`
MAX_DIALS = 2             # warm dials under way per backend for waiting clients (handshakes share the CPU)


def selected(transport) -> str | None:
    """The warm protocol this TLS connection speaks (WARM_ALPN, LINK_ALPN) or None."""
    obj = transport.get_extra_info("ssl_object") if transport is not None else None
    return obj.selected_alpn_protocol() if obj is not None else None


def negotiated(transport) -> bool:
    """True if this TLS connection speaks warm/1 (a claim preamble comes first)."""
    return selected(transport) == WARM_ALPN


class Idle(asyncio.Protocol):
    """A warm connection's protocol until it is claimed: anything the server side
    does (data, EOF, close) makes it unusable."""

    def __init__(self, warm: WarmPool, backend: Backend) -> None:
        self.warm = warm
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.contexts = None          # the client side's Contexts it was made with
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.warm.drop(self)

    def eof_received(self) -> bool:
        self.warm.drop(self)
        return False

    def connection_lost(self, exc) -> None:
        self.warm.drop(self, closed=True)

    def attach(self, side: asyncio.Protocol) -> asyncio.Transport:
        """Hand the connection to a client's `side`: the claim line makes the server side dial."""
        self.transport.set_protocol(side)
        self.transport.write(CLAIM)
        return self.transport


class WarmPool:
    """Up to `size` warm connections to each current backend of one listener;
    warm/2 links (ambassador/link.py) also come back after each client."""

    def __init__(self, listener, tls_out, size: int = DEFAULT_SIZE, idle: float = IDLE,
                 source: str | None = None) -> None:
        """`source`: the identity its connections present (default: the ambassador's
        own); a link made as one linker never carries another's client."""
        self.listener = listener
        self.tls_out = tls_out
        self.source = source or tls_out.source
        self.size = size
        self.idle_seconds = idle
        self.ready: dict[Backend, deque[Idle]] = {}
        self.dialling: dict[Backend, int] = {}
        self.busy: dict[Backend, int] = {}    # warm/2 links carrying a client now (they come back)
        self.refused: set[Backend] = set()    # server sides that did not select WARM_ALPN
        self.failing: set[Backend] = set()    # the last warm dial to it failed (clients dial, and count it)
        self.waiters: dict[Backend, deque[asyncio.Future]] = {}   # claim_wait()s, woken per dial ended
        self.closed = False
        self.made = 0                         # counters for /stats
        self.claimed = 0
        self.dropped = 0
        self.reused = 0                       # warm/2 links back in the pool after a client

    # -- the forwarder's side ------------------------------------------------------

    async def claim_wait(self, b: Backend, timeout: float) -> Idle | Link | None:
        """claim(), but with none ready, wait up to `timeout` for a warm dial to `b`
        or a link coming back from its client, rather than start one more handshake
        per client (a backend just added, a burst: each full handshake costs both
        sides CPU the others wait for). Dials are started for waiters, at most
        MAX_DIALS at once per backend. None: dial per client (the server side does
        not take warm connections, a warm dial failed, or the time is up)."""
        got = self.claim(b)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while got is None:
            waiting = len(self.waiters.get(b, ())) + 1
            while self.dialling.get(b, 0) < min(waiting, MAX_DIALS) and self._dial_one(b):
                pass
            if not self.dialling.get(b) or b in self.failing:
                return None
            fut = loop.create_future()
            self.waiters.setdefault(b, deque()).append(fut)
            try:
                async with asyncio.timeout_at(deadline):
                    await fut
            except asyncio.TimeoutError:
                return None
            finally:
                q = self.waiters.get(b)
                if q is not None and fut in q:
                    q.remove(fut)
                if q is not None and not q:
                    del self.waiters[b]
            got = self.claim(b)
        return got

    def claim(self, b: Backend) -> Idle | None:
        """A warm connection to `b` made with the current certificates, or None;
        either way the pool is topped up again."""
        q = self.ready.get(b)
        current = self._current()
        got = None
        while q and got is None:
            w = q.popleft()
            if w.timer is not None:
                w.timer.cancel()
            if w.contexts is current and w.transport is not None and not w.transport.is_closing():
                got = w
            else:
                self.dropped += 1
                w.transport.close()
        if isinstance(got, Link):
            self._busy(got)           # before fill(): it comes back, no need to dial another
        self.fill(b)
        if got is not None:
            self.claimed += 1
        return got

    def give_back(self, w: Idle) -> None:
        """A claimed connection that was not used after all: kept if still usable."""
        self.claimed -= 1
        if isinstance(w, Link):
            self._unbusy(w)
        b = w.backend
        if self.closed or b not in self.listener.pool or w.transport.is_closing():
            self.dropped += 1
            w.transport.close()
            return
        w.timer = asyncio.get_running_loop().call_later(self.idle_seconds, self._expire, w)
        self.ready.setdefault(b, deque()).appendleft(w)

    def update(self) -> None:
        """Follow the listener's pool: drop warm connections to backends that left,
        warm the current ones."""
        pool = self.listener.pool
        for b in [b for b in self.ready if b not in pool]:
            for w in self.ready.pop(b):
                if w.timer is not None:
                    w.timer.cancel()
                self.dropped += 1
                w.transport.close()
        self.refused &= set(pool.backends)
        self.failing &= set(pool.backends)
        for b in pool.backends:
            self.fill(b)

    def close(self) -> None:
        self.closed = True
        for q in self.ready.values():
            for w in q:
                if w.timer is not None:
                    w.timer.cancel()
                w.transport.close()
        self.ready.clear()

    def attach(self, w: Idle | Link, side: asyncio.Protocol) -> asyncio.Transport:
        """The transport a client's `side` gets for a claimed warm connection."""
        if isinstance(w, Link):
            return w.open(side)
        return w.attach(side)

    def adopt(self, b: Backend, transport: asyncio.Transport, side: asyncio.Protocol,
              contexts) -> asyncio.Transport:
        """A connection dialled for one client (none was ready), with the warm
        context: on warm/2 it becomes a link that comes back to the pool after
        the client; on warm/1 the server side waits for the claim line."""
        self.failing.discard(b)
        proto = selected(transport)
        if proto == LINK_ALPN:
            link = self._link(b, transport, contexts)
            self._busy(link)
            return link.open(side)
        if proto == WARM_ALPN:
            transport.write(CLAIM)
        return transport

    def _link(self, b: Backend, transport: asyncio.Transport, contexts) -> Link:
        link = Link(transport, on_idle=self._released, on_lost=self._lost)
        link.backend, link.contexts = b, contexts
        return link

    def _released(self, link: Link) -> None:
        """A link's client is done: kept for the next one unless its backend left,
        the certificates rotated, or enough are idle."""
        b = link.backend
        self._unbusy(link)
        q = self.ready.setdefault(b, deque())
        if (self.closed or b not in self.listener.pool or len(q) >= self.size + KEEP
                or link.contexts is not self._current()):
            self.dropped += 1
            link.close()
            return
        self.reused += 1
        link.timer = asyncio.get_running_loop().call_later(self.idle_seconds, self._expire, link)
        q.appendleft(link)          # the most recently used first: its peer is the warmest
        self._wake_one(b)

    def _lost(self, link: Link) -> None:
        if not self._unbusy(link):
            self.drop(link, closed=True)

    def _busy(self, link: Link) -> None:
        link.in_use = True
        self.busy[link.backend] = self.busy.get(link.backend, 0) + 1

    def _unbusy(self, link: Link) -> bool:
        """True if `link` was carrying a client (and is counted no longer)."""
        if not link.in_use:
            return False
        link.in_use = False
        n = self.busy.get(link.backend, 0) - 1
        if n > 0:
            self.busy[link.backend] = n
        else:
            self.busy.pop(link.backend, None)
        return True

    # -- keeping it full -------------------------------------------------------------

    def _current(self):
        return self.tls_out.identity.current(self.source)

    def fill(self, b: Backend) -> None:
        if self._current() is None:
            return                    # a linker that left: no more dials as it
        if self.closed or b in self.refused or b not in self.listener.pool or self.listener.pool.cooling(b):
            return
        missing = self.size - len(self.ready.get(b, ())) - self.dialling.get(b, 0) - self.busy.get(b, 0)
        for _ in range(max(0, missing)):
            self._dial_one(b)

    def _dial_one(self, b: Backend) -> bool:
        if self.closed or b in self.refused or b not in self.listener.pool or self.listener.pool.cooling(b):
            return False
        self.dialling[b] = self.dialling.get(b, 0) + 1
        asyncio.get_running_loop().create_task(self._dial(b))
        return True

    async def _dial(self, b: Backend) -> None:
        loop = asyncio.get_running_loop()
        w = Idle(self, b)
        try:
            w.contexts = self._current()
            dial = self.tls_out.dial(warm=True, source=self.source)
            async with asyncio.timeout(self.listener.connect_timeout):
                transport, _ = await loop.create_connection(lambda: w, b.address, b.port, **dial)
            self.tls_out.check(transport)
        except (OSError, asyncio.TimeoutError) as e:
            # Not counted as a client's connect failure; the next claim tries again.
            log.debug("port %d: warming a connection to %s failed: %s", self.listener.port, b.label, e)
            self.failing.add(b)
            if w.transport is not None:
                w.transport.abort()
            return
        finally:
            self.dialling[b] = self.dialling.get(b, 1) - 1
            if self.dialling[b] <= 0:
                del self.dialling[b]
            loop.call_soon(self._wake, b)      # after the connection is filed (or not)
        self.failing.discard(b)
        proto = selected(transport)
        if proto is None:
            self.refused.add(b)
            log.info("port %d: %s does not take warm connections; dialling it per client",
                     self.listener.port, b.label)
            transport.close()
            return
        if self.closed or b not in self.listener.pool or transport.is_closing():
            transport.close()
            return
        self.made += 1
        if proto == LINK_ALPN:
            w = self._link(b, transport, w.contexts)
        w.timer = loop.call_later(self.idle_seconds, self._expire, w)
        self.ready.setdefault(b, deque()).append(w)

    def _wake(self, b: Backend) -> None:
        """One waiter per dial that ended; all of them once no dial is left."""
        q = self.waiters.get(b)
        while q:
            fut = q.popleft()
            if not fut.done():
                fut.set_result(None)
                if self.dialling.get(b):
                    break
        if q is not None and not q:
            del self.waiters[b]

    def _wake_one(self, b: Backend) -> None:
        """A link came back: the first waiter takes it."""
        q = self.waiters.get(b)
        while q:
            fut = q.popleft()
            if not fut.done():
                fut.set_result(None)
                break

    def _expire(self, w: Idle | Link) -> None:
        w.timer = None
        self.drop(w)
        self.fill(w.backend)

    def drop(self, w: Idle | Link, closed: bool = False) -> None:
        q = self.ready.get(w.backend)
        if q is not None and w in q:
            q.remove(w)
            if w.timer is not None:
                w.timer.cancel()
            self.dropped += 1
        if not closed and w.transport is not None:
            w.transport.close()

    def snapshot(self) -> dict:
        return {"per_backend": self.size, "ready": sum(len(q) for q in self.ready.values()),
                "busy": sum(self.busy.values()), "made": self.made, "claimed": self.claimed,
                "reused": self.reused, "dropped": self.dropped}
