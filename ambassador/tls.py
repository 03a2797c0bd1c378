"""Mutual TLS for the two halves of the ambassador pattern; the forwarder calls
these at two points and keeps its own pairing, backpressure and metrics.

- `ServerTLS` ("I actually talk to frontdb"): an accepted socket is upgraded
  to TLS with the service's current server context (a client certificate
  signed by the roots is required), the client's SPIFFE identity is read from
  its certificate and `POST /v1/agent/connect/authorize` decides; only then is
  a backend dialled. Refused: closed, counted, nothing reaches a backend.
- `ClientTLS` ("I pretend I'm frontdb"): each backend (a server side) is
  dialled with the source identity's leaf and must present the target
  service's identity. With a linkers map (secure links) the identity is the
  linking container's, chosen by the client's address (`source_for`).
- A `portlink-warm/2` connection (ambassador/link.py) carries client after
  client: the server side turns it into a Link, and each claim on it becomes
  a Connection of its own, authorized by `_admit_stream`.

Authorization decisions are cached for `ttl` seconds (1 s: a connect per
request does not pay an agent round trip each time; a new deny applies within
a second). While the agent cannot be asked, the last decision for that client
stays valid for `stale` seconds, then the connection is refused (fail closed)."""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from portlink.ambassador.identity import Identity
from portlink.ambassador.spiffe import IdentityError, check_service, peer_identity, serial_hex
from portlink.ambassador.link import Link, Stream
from portlink.ambassador.warm import CLAIM, LINK_ALPN, SERVER_WAIT, negotiated, selected
from portlink.catalog.connect import Decision
from portlink.catalog.watch import describe

log = logging.getLogger("portlink.ambassador")

HANDSHAKE_TIMEOUT = 10.0
AUTHZ_TTL = 1.0
AUTHZ_STALE = 300.0
AUTHZ_MAX = 4096        # cached decisions; expired ones are dropped beyond this
LOG_EVERY = 60.0        # seconds between log lines about one refused source
MMAP_THRESHOLD = 1 << 20
TRIM_THRESHOLD = 16 << 20


@functools.cache
def keep_big_blocks() -> bool:
    """The TLS data path allocates and frees blocks of 256 KiB and more (record
    reads, the outgoing BIO's bytes); glibc serves those with mmap or trims them
    off the heap top, so each one is faulted in again: about a fifth of the pair's
    CPU at full throughput (perf). Raise both glibc thresholds, once per process
    (the heap keeps at most TRIM_THRESHOLD free). False where there is no mallopt."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(-3, MMAP_THRESHOLD)) and bool(mallopt(-1, TRIM_THRESHOLD))   # M_MMAP_, M_TRIM_THRESHOLD


@dataclass
class Authorizer:
    """Ask the agent whether `uri` may reach `target`, with a short cache."""
    call: Callable[[str, str, str], Awaitable[Decision]]
    ttl: float = AUTHZ_TTL
    stale: float = AUTHZ_STALE
    clock: Callable[[], float] = time.monotonic
    cache: dict[tuple[str, str, str], tuple[Decision, float]] = field(default_factory=dict)
    errors: int = 0

    async def check(self, target: str, uri: str, serial: str) -> Decision:
        key = (target, uri, serial)
        hit = self.cache.get(key)
        if hit is not None and self.clock() - hit[1] < self.ttl:
            return hit[0]
        try:
            decision = await self.call(target, uri, serial)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.errors += 1
            if hit is not None and self.clock() - hit[1] < self.stale:
                return hit[0]            # the agent is away: the last word holds for a while
            return Decision(False, f"cannot ask the consul agent ({describe(e)})")
        now = self.clock()
        if len(self.cache) >= AUTHZ_MAX:
            for k in [k for k, (_, at) in self.cache.items() if now - at >= self.stale]:
                del self.cache[k]
            if len(self.cache) >= AUTHZ_MAX:
                self.cache.clear()
        self.cache[key] = (decision, now)
        return decision


class ServerTLS:
    """A listener serving `service` to mutually authenticated, authorized clients."""

    def __init__(self, identity: Identity, service: str, authorizer: Authorizer,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT, wait: float = SERVER_WAIT) -> None:
        self.identity = identity
        self.service = service
        self.authorizer = authorizer
        self.handshake_timeout = handshake_timeout
        self.wait = wait                  # how long a warm connection may stay unclaimed
        keep_big_blocks()
        self.links: set[Link] = set()     # warm/2 connections from client sides (ambassador/link.py)
        self.quiescing = False

    async def admit(self, conn) -> bool:
        """Handshake, identify, authorize. False: `conn` is closed and counted."""
        listener = conn.listener
        if isinstance(conn.client.transport, Stream):
            return await self._admit_stream(conn, conn.client.transport)
        ctxs = self.identity.current(self.service)
        if ctxs is None:
            log.warning("port %d: no connect certificate for %s yet: refusing a client", listener.port, self.service)
            listener.metrics.handshake_failed(listener.port)
            conn.close()
            return False
        try:
            await conn.upgrade(ctxs.server, self.handshake_timeout)
        except (OSError, asyncio.TimeoutError) as e:
            # a plain TCP client, no certificate, another CA, an expired one, too slow
            listener.metrics.handshake_failed(listener.port)
            log.debug("port %d: TLS handshake failed: %s", listener.port, describe(e))
            return False
        cert = conn.client.transport.get_extra_info("peercert") if conn.client.transport else None
        try:
            peer = peer_identity(cert, ctxs.roots.trust_domain)
            serial = serial_hex(cert)
        except IdentityError as e:
            return self._deny(conn, str(e))
        early = None
        if selected(conn.client.transport) == LINK_ALPN:
            self._serve_link(conn, peer, serial)
            return False
        if negotiated(conn.client.transport):
            # A warm connection: the backend is dialled only once the client side claims
            # it, and it is authorized then (a deny made meanwhile applies). Asked at the
            # handshake already, in the background: a claim that comes while the agent
            # answers takes that answer; a later one finds it cached (within the TTL).
            early = asyncio.ensure_future(self.authorizer.check(self.service, peer.uri, serial))
            try:
                claimed = await conn.preamble(CLAIM, self.wait)
            except BaseException:
                early.cancel()
                raise
            if not claimed:
                early.cancel()
                log.debug("port %d: a warm connection ended unclaimed", listener.port)
                conn.close()
                return False
        if early is not None and not early.done():
            decision = await early
        else:
            decision = await self.authorizer.check(self.service, peer.uri, serial)
        if not decision.authorized:
            return self._deny(conn, f"{peer.service} -> {self.service} not authorized: {decision.reason}")
        return True

    # -- warm/2: one TLS connection, a stream per client (ambassador/link.py) -----------

    def _serve_link(self, holder, peer, serial: str) -> None:
        """The handshaken connection becomes a link: each claim on it starts a new
        Connection (a stream), admitted by _admit_stream. `holder`, the Connection
        that accepted it, stays in the listener's connections while the link
        lives, so stopping the listener closes idle links too."""
        listener, tls = holder.listener, holder.client.transport

        def claimed(st: Stream) -> None:
            if link.timer is not None:
                link.timer.cancel()
                link.timer = None
            conn = type(holder)(listener)
            st.set_protocol(conn.client)
            conn.client.connection_made(st)     # the listener runs its connect(): admit, dial, pair

        def lost(_link: Link) -> None:
            self.links.discard(link)
            if link.early is not None:
                link.early.cancel()
            holder.client.connection_lost(None)

        link = Link(tls, on_claim=claimed, on_idle=self._link_idle, on_lost=lost)
        link.peer = (peer, serial)
        # Asked now, in the background: the first claim, if it comes while the agent
        # answers, takes that answer; a later one finds it cached (within the TTL).
        link.early = asyncio.ensure_future(self.authorizer.check(self.service, peer.uri, serial))
        self.links.add(link)
        early, holder.pending, holder.pending_size = holder.pending, [], 0
        if holder.client.blocked:
            holder.client.blocked.clear()
            tls.resume_reading()
        self._link_idle(link)
        if early:                               # decrypted before the link took over
            link.data_received(b"".join(early))

    def _link_idle(self, link: Link) -> None:
        if self.quiescing:
            link.close()
        elif not link.lost:
            link.timer = asyncio.get_running_loop().call_later(self.wait, link.close)

    async def _admit_stream(self, conn, st: Stream) -> bool:
        """A claim on a link: authorized per claim (a deny made since applies now)."""
        link = st.link
        peer, serial = link.peer
        early, link.early = link.early, None
        if early is not None and not early.done():
            decision = await early
        else:
            decision = await self.authorizer.check(self.service, peer.uri, serial)
        if not decision.authorized:
            st.refuse()               # final for the client side: no retry elsewhere
            return self._deny(conn, f"{peer.service} -> {self.service} not authorized: {decision.reason}")
        return True

    def quiesce(self) -> None:
        """Stopping: idle links close (their client sides dial elsewhere), busy ones
        close once their stream ends."""
        self.quiescing = True
        for link in list(self.links):
            if link.stream is None:
                link.close()

    def _deny(self, conn, why: str) -> bool:
        conn.listener.metrics.denied(conn.listener.port)
        log.info("port %d: refused a client: %s", conn.listener.port, why)
        conn.close()
        return False


class ClientTLS:
    """Dial backends as `source`, accepting only servers that are `target`."""

    def __init__(self, identity: Identity, source: str, target: str,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT, warm: int = 0, linkers=None,
                 refuse_unlinked: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        """`linkers`: ambassador.secure.Linkers (address -> the linker's identity);
        `refuse_unlinked`: a client at no linker's address is refused rather than
        dialled as `source` (an ambassador made for links)."""
        self.identity = identity
        self.source = source
        self.linkers = linkers
        self.refuse_unlinked = refuse_unlinked
        self.clock = clock
        self._logged: dict[str, float] = {}   # source ip -> when a refusal was last logged
        self.target = target
        self.handshake_timeout = handshake_timeout
        self.warm = warm                  # warm connections per backend (ambassador/warm.py); 0: none
        self.handshakes = {"full": 0, "resumed": 0}
        keep_big_blocks()

    def choose(self, ip: str | None) -> tuple[str | None, str]:
        """(the identity to dial as for a client at `ip`, or None: refuse; why)."""
        linked = self.linkers.identity_of(ip) if self.linkers is not None and ip else None
        if linked is not None:
            if self.identity.current(linked) is None:
                return None, f"linker {ip} ({linked}) has no certificate yet"
            return linked, ""
        if self.refuse_unlinked:
            return None, f"source {ip} is not a linker of this ambassador"
        return self.source, ""

    def source_for(self, conn) -> str | None:
        """The identity `conn`'s backend is dialled as; None: `conn` is refused,
        closed and counted, before any dial."""
        transport = conn.client.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        ip = peer[0] if isinstance(peer, tuple) and peer else None
        source, why = self.choose(ip)
        if source is not None:
            return source
        listener = conn.listener
        if self.linkers is not None and ip and self.linkers.identity_of(ip) is not None:
            listener.metrics.rejected(listener.port)      # a linker whose certificate is not in yet
        else:
            listener.metrics.unlinked(listener.port)
        now = self.clock()
        if now - self._logged.get(ip or "?", -LOG_EVERY) >= LOG_EVERY:   # a flood is one line a minute per source
            if len(self._logged) >= AUTHZ_MAX:
                self._logged.clear()
            self._logged[ip or "?"] = now
            log.warning("port %d: refused a client: %s", listener.port, why)
        conn.close()
        return None

    def dial(self, warm: bool = False, source: str | None = None) -> dict:
        """Keyword arguments for loop.create_connection; `warm`: a warm connection's
        (its context offers the warm protocol, ambassador/warm.py); `source`: the
        identity presented (default: this ambassador's own)."""
        ctxs = self.identity.current(source or self.source)
        if ctxs is None:
            raise ConnectionError(f"no connect certificate for {source or self.source} yet")
        # SNI names the service: one server-side port could serve several (not used yet).
        return {"ssl": ctxs.warm if warm and ctxs.warm is not None else ctxs.client, "server_hostname": self.target, "ssl_handshake_timeout": self.handshake_timeout}

    def check(self, transport) -> None:
        """The server must be the target service of our trust domain."""
        try:
            check_service(transport.get_extra_info("peercert"), self.identity.trust_domain or "", self.target)
        except IdentityError as e:
            raise ssl.SSLCertVerificationError(str(e)) from None
        obj = transport.get_extra_info("ssl_object")
        if obj is None:
            return
        self.handshakes["resumed" if obj.session_reused else "full"] += 1
        remember = getattr(obj.context, "remember", None)
        if remember is not None:
            remember(obj)             # only a checked server's session is offered again
