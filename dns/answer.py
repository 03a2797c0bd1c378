"""Answering a query from a snapshot: a pure function, no sockets.

`answer(request, client, snapshot)` returns either a Reply (local answer or
error) or a Forward (a name portlink does not own, to go upstream).

With Consul configured (snapshot.services is a dict) the names under its
domain are answered from the snapshot as Consul's own DNS would, and never
forwarded: `[tag.]svc.service.consul`, `_svc._tag.service.consul` (`_tcp` and
`_udp` filter nothing), `svc.connect.consul`, the short forms without
`.consul`, and `<8 hex>.addr.consul`. Container names still come first.

Connect-native instances (secure links' server sides: mutual TLS only) are
answered under `svc.connect` alone: a client asking `svc.service` is a plain
one, and would dial a TLS port. (Consul 1.16's own DNS lists them under both;
`.connect` only them, as here.)"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from dnslib import EDNS0, OPCODE, PTR, QTYPE, RCODE, RR, SRV, A, DNSHeader, DNSRecord

from portlink.dns.zone import Member, ServiceInstance, Snapshot, View, address_of_reverse

EDNS_PAYLOAD = 1232     # what we advertise (the DNS flag day 2020 size)
MAX_NAME = 253          # longest presentation name without the trailing dot


@dataclass
class Reply:
    record: DNSRecord
    variants: int = 1    # >1: the answer's order rotates; rotation k of n is another call


@dataclass
class Forward:
    upstreams: tuple[tuple[str, int], ...]


def edns(request: DNSRecord) -> EDNS0 | None:
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return rr
    return None


def udp_limit(request: DNSRecord) -> int:
    """Largest UDP reply the client accepts (RFC 6891: at least 512)."""
    opt = edns(request)
    return max(512, min(opt.edns_len, 4096)) if opt is not None else 512


QUERY_BITS = 0x7910     # opcode, RD and CD carry over to a reply; AD, TC, Z of a query do not


def packable(request: DNSRecord) -> bool:
    """dnslib parses names it cannot pack (over 253 characters, labels over 63)."""
    qname = request.q.qname
    return len(qname) <= MAX_NAME and all(len(label) <= 63 for label in qname.label)


def error(request: DNSRecord, rcode: int, aa: bool = False) -> DNSRecord:
    return DNSRecord(DNSHeader(id=request.header.id, bitmap=request.header.bitmap & QUERY_BITS, qr=1, ra=1,
                               aa=int(aa), rcode=rcode),
                     q=request.q if request.questions and packable(request) else None)


def header_error(data: bytes, rcode: int) -> bytes | None:
    """A header-only error reply for a packet dnslib could not parse; None if
    there is not even a header (such a packet gets no reply)."""
    if len(data) < 12:
        return None
    flags = (data[2] & 0x79) | 0x80    # QR on, keep opcode and RD
    return data[:2] + bytes([flags, 0x80 | rcode]) + b"\0" * 8


def answer(request: DNSRecord, client: str, snap: Snapshot, rotation: int = 0) -> Reply | Forward:
    opt = edns(request)
    result = _answer(request, client, snap, rotation, opt)
    if isinstance(result, Reply) and opt is not None:
        # OPT goes last in the additional section; version 1+ gets BADVERS (ext rcode 1).
        badvers = opt.edns_ver != 0 and result.record.header.rcode == RCODE.NOERROR
        result.record.add_ar(EDNS0(udp_len=EDNS_PAYLOAD, ext_rcode=1 if badvers else 0))
    return result


def _answer(request: DNSRecord, client: str, snap: Snapshot, rotation: int, opt) -> Reply | Forward:
    h = request.header
    if h.qr or len(request.questions) != 1:
        return Reply(error(request, RCODE.FORMERR))
    if h.opcode != OPCODE.QUERY:
        return Reply(error(request, RCODE.NOTIMP))
    if opt is not None and opt.edns_ver != 0:
        return Reply(error(request, RCODE.NOERROR))
    view = snap.views.get(client)
    if view is None:
        # Not one of our containers: never an open resolver.
        return Reply(error(request, RCODE.REFUSED))
    q = request.q
    name = str(q.qname).rstrip(".").lower()
    if len(name) > MAX_NAME or not packable(request):
        return Reply(error(request, RCODE.FORMERR))
    if snap.services is not None:
        consul = _consul(request, view, snap, name, rotation)
        if consul is not None:
            return consul
    if q.qclass not in (1, 255):   # IN, ANY
        return _forward_or_fail(request, view, snap, name, owned=False)
    if q.qtype == QTYPE.PTR:
        return _ptr(request, view, snap, name)
    if q.qtype == QTYPE.SRV and name.startswith("_"):
        return _srv(request, view, snap, name)
    members = view.lookup(name)
    if members is None and name.startswith("_") and view.lookup(name.split(".", 2)[-1]) is not None:
        return Reply(_reply(request, snap))   # `_80._tcp.web` asked as A: ours, NODATA
    if members is None:
        return _forward_or_fail(request, view, snap, name, owned=snap.owns_name(name))
    reply = _reply(request, snap)
    if q.qtype in (QTYPE.A, QTYPE.ANY):
        return _a_records(reply, snap, [m.address for m in members], rotation)
    # AAAA (IPv4-only networks) and every other type of a name we own: NODATA.
    return Reply(reply)


def _reply(request: DNSRecord, snap: Snapshot, rcode: int = RCODE.NOERROR) -> DNSRecord:
    return error(request, rcode, aa=True)


def _a_records(reply: DNSRecord, snap: Snapshot, addresses: list[str], rotation: int) -> Reply:
    """One A per address, rotation k of n starting at the k-th: every
    resolver that takes the first address lands on another one in turn."""
    n = len(addresses)
    for i in range(n):
        reply.add_answer(RR(reply.q.qname, QTYPE.A, rdata=A(addresses[(i + rotation) % n]), ttl=snap.ttl))
    return Reply(reply, variants=n)


def _forward_or_fail(request: DNSRecord, view: View, snap: Snapshot, name: str, owned: bool):
    if owned:
        return Reply(_reply(request, snap, RCODE.NXDOMAIN))
    if not view.forward or not view.upstreams:
        return Reply(error(request, RCODE.SERVFAIL))
    return Forward(view.upstreams)


def _ptr(request: DNSRecord, view: View, snap: Snapshot, name: str):
    address = address_of_reverse(name)
    if address is None:
        return _forward_or_fail(request, view, snap, name, owned=False)
    target = view.reverse(address)
    if target is None:
        return _forward_or_fail(request, view, snap, name, owned=snap.owns_reverse(address))
    reply = _reply(request, snap)
    reply.add_answer(RR(request.q.qname, QTYPE.PTR, rdata=PTR(target + "."), ttl=snap.ttl))
    return Reply(reply)


def _srv(request: DNSRecord, view: View, snap: Snapshot, name: str):
    """`_<port>._<proto>.<name>`: one record per container exposing that port."""
    labels = name.split(".", 2)
    if len(labels) < 3:
        return _forward_or_fail(request, view, snap, name, owned=snap.owns_name(name))
    port_l, proto_l, rest = labels
    members = view.lookup(rest)
    if members is None:
        return _forward_or_fail(request, view, snap, name, owned=snap.owns_name(rest))
    reply = _reply(request, snap)
    port = port_l[1:]
    if proto_l in ("_tcp", "_udp") and port.isascii() and port.isdigit():
        key = (int(port), proto_l[1:])
        hits: list[Member] = [m for m in members if key in m.ports]
        for m in hits:
            reply.add_answer(RR(request.q.qname, QTYPE.SRV,
                                rdata=SRV(priority=0, weight=0, port=key[0], target=m.name + "."),
                                ttl=snap.ttl))
        for m in hits:
            reply.add_ar(RR(m.name + ".", QTYPE.A, rdata=A(m.address), ttl=snap.ttl))
    return Reply(reply)


# Consul ----------------------------------------------------------------------------------

def _consul(request: DNSRecord, view: View, snap: Snapshot, name: str, rotation: int) -> Reply | None:
    """The answer for a Consul name; None for any other name, and for a name
    the client resolves locally (a container's name always wins, also over
    `x.service` when a network is called `service`)."""
    domain = snap.consul_domain.strip(".").lower()
    if name == domain or name.endswith("." + domain):
        labels = name[: -len(domain)].rstrip(".").split(".") if name != domain else []
    elif name.endswith((".service", ".connect")):
        labels = name.split(".")   # the short form, as if `.consul` came from a search list
    else:
        return None
    if _local(view, name):
        return None
    if len(labels) == 2 and labels[1] == "addr":
        return _addr(request, snap, labels[0])
    if len(labels) >= 2 and labels[-1] == "service":
        instances = [i for i in _instances(snap.services, labels[:-1]) if not i.native]
        if instances:
            return _service(request, snap, domain, instances, rotation)
    if len(labels) == 2 and labels[-1] == "connect":
        instances = [i for i in snap.services.get(labels[0], ()) if i.native]
        if instances:
            return _service(request, snap, domain, instances, rotation)
    # Everything else under the domain (nodes, datacenters, queries) is not served: never upstream.
    return Reply(_reply(request, snap, RCODE.NXDOMAIN))


def _local(view: View, name: str) -> bool:
    """A name the client has as a container, or `_port._proto.<container>`."""
    if view.lookup(name) is not None:
        return True
    return name.startswith("_") and view.lookup(name.split(".", 2)[-1]) is not None


def _instances(services: dict[str, tuple[ServiceInstance, ...]], labels: list[str]) -> list[ServiceInstance]:
    """The instances `svc`, `tag.svc` or `_svc._tag` (RFC 2782) asks for."""
    if len(labels) == 1:
        return list(services.get(labels[0], ()))
    if len(labels) != 2:
        return []
    first, second = labels
    if first.startswith("_") and second.startswith("_"):
        service, tag = first[1:], second[1:]
        if second in ("_tcp", "_udp"):   # a protocol, not a tag: Consul filters nothing
            return list(services.get(service, ()))
    else:
        tag, service = first, second
    return [i for i in services.get(service, ()) if any(t.lower() == tag for t in i.tags)]


def _service(request: DNSRecord, snap: Snapshot, domain: str, instances: list[ServiceInstance],
             rotation: int) -> Reply:
    q = request.q
    reply = _reply(request, snap)
    if q.qclass not in (1, 255):
        return Reply(reply)   # the service exists, but only in class IN
    if q.qtype in (QTYPE.A, QTYPE.ANY):
        return _a_records(reply, snap, list(dict.fromkeys(i.address for i in instances)), rotation)
    if q.qtype == QTYPE.SRV:
        # As Consul: the target is the address as a name, its A in the additional section.
        targets = {i.address: f"{int(IPv4Address(i.address)):08x}.addr.{domain}." for i in instances}
        for i in instances:
            reply.add_answer(RR(q.qname, QTYPE.SRV, ttl=snap.ttl,
                                rdata=SRV(priority=1, weight=1, port=i.port, target=targets[i.address])))
        for address, target in targets.items():
            reply.add_ar(RR(target, QTYPE.A, rdata=A(address), ttl=snap.ttl))
    return Reply(reply)   # AAAA and the rest: NODATA


def _addr(request: DNSRecord, snap: Snapshot, label: str) -> Reply:
    """`0a000001.addr.consul` -> 10.0.0.1, the name SRV answers point to."""
    if len(label) != 8 or any(c not in "0123456789abcdef" for c in label):
        return Reply(_reply(request, snap, RCODE.NXDOMAIN))
    reply = _reply(request, snap)
    q = request.q
    if q.qclass in (1, 255) and q.qtype in (QTYPE.A, QTYPE.ANY):
        reply.add_answer(RR(q.qname, QTYPE.A, rdata=A(str(IPv4Address(int(label, 16)))), ttl=snap.ttl))
    return Reply(reply)
