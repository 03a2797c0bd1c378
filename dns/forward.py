"""Forwarding names portlink does not own to upstream resolvers.

Upstreams are tried in order, each with a timeout; SERVFAIL, REFUSED, a
timeout or a garbled reply moves on to the next. A truncated UDP answer is
fetched again over TCP. Answers are cached briefly (their own TTL, capped),
keyed by question and upstream list, so a busy container does not turn into
a flood upstream. When no upstream answers: SERVFAIL."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from dnslib import EDNS0, QTYPE, RCODE, DNSHeader, DNSRecord

from portlink.dns.answer import error

UPSTREAM_PAYLOAD = 1232
MAX_CACHE_TTL = 300
NEGATIVE_TTL = 5     # NXDOMAIN/NODATA without an SOA to say otherwise


@dataclass
class ForwardConfig:
    timeout: float = 2.0        # per upstream (Docker: 4 s; a container waiting 12 s is worse)
    cache_entries: int = 1000
    max_upstreams: int = 3


class _UdpOnce(asyncio.DatagramProtocol):
    def __init__(self, want_id: int) -> None:
        self.want_id = want_id
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr) -> None:
        # Ignore anything but the answer to our own id (spoofed or late packets).
        if len(data) >= 2 and int.from_bytes(data[:2], "big") == self.want_id and not self.done.done():
            self.done.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


def _ttl_of(response: DNSRecord) -> int:
    rrs = response.rr + response.auth
    if response.header.rcode == RCODE.NXDOMAIN or not response.rr:
        soa = [r for r in response.auth if r.rtype == QTYPE.SOA]
        return min(soa[0].ttl, soa[0].rdata.times[-1], MAX_CACHE_TTL) if soa else NEGATIVE_TTL
    return min(min(r.ttl for r in rrs), MAX_CACHE_TTL)


class Forwarder:
    def __init__(self, cfg: ForwardConfig | None = None) -> None:
        self.cfg = cfg or ForwardConfig()
        self._cache: OrderedDict[tuple, tuple[float, float, DNSRecord]] = OrderedDict()
        self.stats = {"forwarded": 0, "cache_hits": 0, "upstream_failures": 0}

    async def resolve(self, request: DNSRecord, upstreams: tuple[tuple[str, int], ...]) -> DNSRecord:
        """The upstream answer to `request` (id and EDNS fitted to it), or SERVFAIL."""
        q = request.q
        key = (str(q.qname).lower(), q.qtype, q.qclass, upstreams)
        hit = self._cached(key)
        if hit is None:
            hit = await self._ask(request, upstreams[: self.cfg.max_upstreams])
            if hit is not None:
                self._store(key, hit)
        else:
            self.stats["cache_hits"] += 1
        if hit is None:
            out = error(request, RCODE.SERVFAIL)
        else:
            out = hit
            out.header.id = request.header.id
            out.header.rd = request.header.rd
            # Echo the asker's spelling of the name (the cache key is lower-case;
            # clients that randomise case, 0x20, check the echo).
            for rr in out.rr:
                if rr.rname == q.qname:   # dnslib compares names case-insensitively
                    rr.rname = q.qname
            out.questions = [q]
        out.ar = [r for r in out.ar if r.rtype != QTYPE.OPT]
        if any(r.rtype == QTYPE.OPT for r in request.ar):
            out.add_ar(EDNS0(udp_len=UPSTREAM_PAYLOAD))
        return out

    def _cached(self, key: tuple) -> DNSRecord | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        stored, expires, packed = entry
        now = time.monotonic()
        if now >= expires:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        rec = DNSRecord.parse(packed)
        age = int(now - stored)
        for r in rec.rr + rec.auth + rec.ar:
            if r.rtype != QTYPE.OPT:
                r.ttl = max(0, r.ttl - age)
        return rec

    def _store(self, key: tuple, response: DNSRecord) -> None:
        ttl = _ttl_of(response)
        if ttl <= 0:
            return
        now = time.monotonic()
        self._cache[key] = (now, now + ttl, response.pack())
        while len(self._cache) > self.cfg.cache_entries:
            self._cache.popitem(last=False)

    async def _ask(self, request: DNSRecord, upstreams) -> DNSRecord | None:
        for host, port in upstreams:
            qid = secrets.randbelow(65536)
            query = DNSRecord(DNSHeader(id=qid, rd=1), q=request.q)
            query.add_ar(EDNS0(udp_len=UPSTREAM_PAYLOAD))
            try:
                resp = await asyncio.wait_for(self._udp(query.pack(), qid, host, port), self.cfg.timeout)
                if resp.header.tc:
                    resp = await asyncio.wait_for(self._tcp(query.pack(), qid, host, port), self.cfg.timeout)
            except (OSError, asyncio.TimeoutError, ValueError, EOFError, asyncio.IncompleteReadError) as e:
                del e
                self.stats["upstream_failures"] += 1
                continue
            if resp.q != request.q or resp.header.rcode in (RCODE.SERVFAIL, RCODE.REFUSED):
                self.stats["upstream_failures"] += 1
                continue
            self.stats["forwarded"] += 1
            return resp
        return None

    @staticmethod
    async def _udp(packet: bytes, qid: int, host: str, port: int) -> DNSRecord:
        loop = asyncio.get_running_loop()
        proto = _UdpOnce(qid)
        transport, _ = await loop.create_datagram_endpoint(lambda: proto, remote_addr=(host, port))
        try:
            transport.sendto(packet)
            return _parse(await proto.done)
        finally:
            transport.close()

    @staticmethod
    async def _tcp(packet: bytes, qid: int, host: str, port: int) -> DNSRecord:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(len(packet).to_bytes(2, "big") + packet)
            await writer.drain()
            n = int.from_bytes(await reader.readexactly(2), "big")
            data = await reader.readexactly(n)
            if int.from_bytes(data[:2], "big") != qid:
                raise ValueError("upstream answered another query id over TCP")
            return _parse(data)
        finally:
            writer.close()


def _parse(data: bytes) -> DNSRecord:
    try:
        return DNSRecord.parse(data)
    except Exception as e:   # dnslib raises several types on garbage
        raise ValueError(f"garbled upstream reply: {e}") from None
