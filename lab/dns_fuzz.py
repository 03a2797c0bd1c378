"""Fuzzing the resolver: malformed and adversarial DNS packets, deterministic
by seed, and a driver that feeds them to a DnsServer in-process, through the
listener's real loop (the fast path) and the slow path, without sockets. Used
by tests/unit/test_dns_fuzz.py, tests/integration/test_dns_hostile.py and
bench/dns_fuzz.py.

Packets are built with struct, not dnslib, so they can be wrong in any way:
random bytes of every length up to past the 4096-byte query cap, truncations,
bit flips and byte edits of valid queries (A, AAAA, PTR, SRV, Consul names,
EDNS OPT), compression pointers that loop, point forwards or chain, labels
over 63, names over 255, header counts that lie, several questions, responses
(QR set), odd opcodes and classes, OPT records with bad versions, sizes,
options and rdata lengths. About one packet in twelve is a well-formed query
of any kind, and many edited ones still parse, so the code past the parser is
fuzzed too. No test-only imports (dnspython is not used here)."""

from __future__ import annotations

import asyncio
import functools
import random
import struct
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network

import dnslib
from dnslib import QTYPE, RCODE, RR, DNSHeader, DNSRecord

from portlink.dns.forward import ForwardConfig, Forwarder
from portlink.dns.server import DnsServer, ServerConfig, _UdpListener
from portlink.dns.zone import Member, NetworkZone, ServiceInstance, Snapshot, View

A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, OPT, TSIG, AXFR, ANY = 1, 2, 5, 6, 12, 15, 16, 28, 33, 41, 250, 252, 255
IN, CH, NONE, ANYCLASS = 1, 3, 254, 255
RD = 0x0100
QR = 0x8000

# Names snapshot() below knows, in every form it answers, plus strangers.
NAMES = ("web", "WEB.net", "db", "svc", "big", "nosuch", "up.example", "2.0.1.10.in-addr.arpa",
         "9.9.9.10.in-addr.arpa", "1.1.in-addr.arpa", "_80._tcp.web", "_80._tcp.svc", "_53._udp.big",
         "web.service.consul", "Web.Service.Consul.", "primary.web.service.consul", "_web._tcp.service.consul",
         "_web._primary.service.consul", "web.service", "0a000001.addr.consul", "zzzzzzzz.addr.consul",
         "node1.node.consul", "consul", "x.net", "", "a" * 63, ".".join(["b" * 63] * 3) + ".ccc")
QTYPES = (A, A, A, AAAA, PTR, SRV, ANY, TXT, MX, NS, SOA, CNAME, OPT, TSIG, AXFR, 0, 65535)
QCLASSES = (IN, IN, IN, IN, CH, NONE, ANYCLASS, 0, 2, 65535)
INTERESTING_BYTES = (0, 1, 0x3F, 0x40, 0x41, 0x7F, 0x80, 0xBF, 0xC0, 0xC1, 0xFE, 0xFF)
INTERESTING_U16 = (0, 1, 2, 3, 0x7F, 0xFF, 0x100, 0x1FF, 0x200, 0x3FFF, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)


# Well-formed pieces -----------------------------------------------------------------------

def name_wire(name: str | bytes) -> bytes:
    """Labels as given (no length checks: a 300-byte label gets length byte 300 % 256)."""
    raw = name.encode() if isinstance(name, str) else name
    raw = raw.rstrip(b".")
    out = b"".join(bytes([len(label) & 0xFF]) + label for label in raw.split(b".")) if raw else b""
    return out + b"\0"


def header(qid: int, flags: int = RD, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!6H", qid & 0xFFFF, flags & 0xFFFF, qd & 0xFFFF, an & 0xFFFF, ns & 0xFFFF, ar & 0xFFFF)


def opt_record(udp_size: int = 1232, version: int = 0, do: bool = False, options: bytes = b"",
               rdlen: int | None = None, owner: bytes = b"\0") -> bytes:
    ttl = (version & 0xFF) << 16 | (0x8000 if do else 0)
    return owner + struct.pack("!HHIH", OPT, udp_size & 0xFFFF, ttl, len(options) if rdlen is None else rdlen) \
        + options


def option(code: int, data: bytes, length: int | None = None) -> bytes:
    return struct.pack("!HH", code, len(data) if length is None else length) + data


def query(name: str | bytes, qtype: int = A, qclass: int = IN, qid: int = 0x1234, flags: int = RD,
          opt: bytes | None = None) -> bytes:
    """A well-formed query (if the name is): one question, OPT if given."""
    return header(qid, flags, ar=1 if opt else 0) + name_wire(name) + struct.pack("!HH", qtype, qclass) \
        + (opt or b"")


# Generators: each takes a Random and returns one packet --------------------------------------

def _opt(rng: random.Random) -> bytes:
    """A usually-sane OPT: sizes around the edges, sometimes a cookie, ECS or padding."""
    opts = b""
    roll = rng.random()
    if roll < 0.3:
        opts = option(10, rng.randbytes(8))                             # client cookie
    elif roll < 0.4:
        opts = option(8, struct.pack("!HBB", 1, 24, 0) + bytes([10, 1, 0]))   # ECS 10.1.0.0/24
    elif roll < 0.5:
        opts = option(12, bytes(rng.randrange(0, 300)))                 # padding
    size = rng.choice((512, 1232, 1232, 4096, 0, 1, 511, 65535, rng.randrange(65536)))
    return opt_record(size, 0 if rng.random() < 0.85 else rng.randrange(256), rng.random() < 0.2, opts)


def valid_query(rng: random.Random, names=NAMES) -> bytes:
    name = rng.choice(names)
    if rng.random() < 0.2:   # 0x20-style mixed case: a random stretch swapped
        a, b = sorted((rng.randrange(len(name) + 1), rng.randrange(len(name) + 1)))
        name = name[:a] + name[a:b].swapcase() + name[b:]
    opt = _opt(rng) if rng.random() < 0.4 else None
    return query(name, rng.choice(QTYPES), rng.choice(QCLASSES), rng.randrange(65536),
                 rng.choice((RD, RD, 0, RD | 0x0010, RD | 0x0020, RD | 0x0040)), opt)


def random_bytes(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.5:
        n = rng.randrange(0, 64)
    elif roll < 0.85:
        n = rng.randrange(64, 1500)
    else:
        n = rng.randrange(1500, 4300)
    return rng.randbytes(n)


def header_then_random(rng: random.Random) -> bytes:
    """A plausible query header (qd=1) followed by noise: gets past the first checks."""
    return header(rng.randrange(65536), RD, 1, 0, 0, rng.choice((0, 0, 1))) + rng.randbytes(rng.randrange(0, 300))


def truncated(rng: random.Random, names=NAMES) -> bytes:
    q = valid_query(rng, names)
    return q[: rng.randrange(0, len(q))]


def _mutate_once(rng: random.Random, b: bytearray, names) -> None:
    n = len(b)
    op = rng.randrange(11)
    if n == 0 or op == 0:       # insert random bytes
        pos = rng.randrange(n + 1)
        b[pos:pos] = rng.randbytes(rng.randrange(1, 9))
    elif op == 1:               # flip bits
        for _ in range(rng.randrange(1, 5)):
            b[rng.randrange(n)] ^= 1 << rng.randrange(8)
    elif op == 2:               # an interesting byte
        b[rng.randrange(n)] = rng.choice(INTERESTING_BYTES)
    elif op == 3:               # an interesting 16-bit value (a count, a type, a length, a pointer)
        pos = rng.randrange(n)
        b[pos:pos + 2] = struct.pack("!H", rng.choice(INTERESTING_U16))
    elif op == 4:               # delete a range
        pos = rng.randrange(n)
        del b[pos:pos + rng.randrange(1, 16)]
    elif op == 5:               # repeat a range
        pos = rng.randrange(n)
        piece = b[pos:pos + rng.randrange(1, 32)]
        b[pos:pos] = piece * rng.randrange(1, 20)
    elif op == 6:               # a compression pointer anywhere: backwards, itself, forwards, past the end
        pos = rng.randrange(n)
        target = rng.choice((pos, pos + 2, rng.randrange(0x4000), rng.randrange(max(1, pos)), 12, 0))
        b[pos:pos + 2] = struct.pack("!H", 0xC000 | (target & 0x3FFF))
    elif op == 7:               # a header count lies
        field = rng.choice((4, 6, 8, 10))
        b[field:field + 2] = struct.pack("!H", rng.choice((0, 1, 2, 3, 255, 65535)))
    elif op == 8:               # flags: QR, opcode, AA/TC, Z, AD/CD, rcode
        flags = rng.randrange(65536) if rng.random() < 0.3 else rng.choice(
            (QR | RD, (rng.randrange(1, 16) << 11) | RD, RD | 0x0400, RD | 0x0200, RD | 0x0040, RD | 0x0020,
             RD | rng.randrange(1, 16)))
        b[2:4] = struct.pack("!H", flags)
    elif op == 9:               # splice with another query
        other = valid_query(rng, names)
        cut = rng.randrange(n + 1)
        b[cut:] = other[rng.randrange(len(other)):]
    else:                       # truncate
        del b[rng.randrange(n):]


def mutated(rng: random.Random, names=NAMES) -> bytes:
    b = bytearray(valid_query(rng, names))
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 8))):
        _mutate_once(rng, b, names)
    return bytes(b)


def pointer_chain(rng: random.Random) -> bytes:
    """Question i's name is a pointer to question i-1's: each question walks all
    earlier ones, so a 4 KB packet costs a naive parser N^2/2 pointer hops."""
    n, body = _chain(rng.choice((200, 1000, 4090)))
    if rng.random() < 0.3:    # the same chain as answer records after one question
        return header(rng.randrange(65536), RD, 1, n - 1, 0, 0) + body
    return header(rng.randrange(65536), RD, n, 0, 0, 0) + body


@functools.cache
def _chain(size: int) -> tuple[int, bytes]:
    body = name_wire("a") + struct.pack("!HH", A, IN)
    starts = [12]
    while 12 + len(body) + 6 <= size:
        starts.append(12 + len(body))
        body += struct.pack("!HHH", 0xC000 | starts[-2], A, IN)
    return len(starts), body


def pointer_trick(rng: random.Random) -> bytes:
    """Loops, self references, forward pointers, pointers past the end."""
    qid = rng.randrange(65536)
    name = rng.choice((
        b"\xc0\x0c",                         # to itself
        b"\x01a\xc0\x0c",                    # to its own start: a loop
        b"\x01a\xc0\x0e",                    # forwards, to itself
        b"\xc0\x0e\xc0\x0c",                 # forwards, to a pointer back
        b"\xc0\xff",                         # past the end
        b"\xff\xff",                         # to the top of the 14-bit range
        b"\x01a\xc0\x00",                    # into the header
        b"\x80\x0c",                         # the reserved 10 label type
        b"\x40\x0c",                         # the extended (01) label type
        b"\x01a\xc0",                        # half a pointer
    ))
    return header(qid, RD, rng.choice((1, 1, 2))) + name + struct.pack("!HH", A, IN)


def long_label(rng: random.Random) -> bytes:
    n = rng.choice((63, 64, 100, 127, 128, 191, 200, 255))
    label = bytes([n]) + b"x" * min(n, rng.choice((n, n, n // 2)))
    return header(rng.randrange(65536)) + label + b"\0" + struct.pack("!HH", A, IN)


def long_name(rng: random.Random) -> bytes:
    """Names around 253/255 bytes and far beyond (up to the whole packet)."""
    total = rng.choice((250, 253, 254, 255, 256, 300, 1000, 4000))
    width = rng.choice((1, 2, 10, 63))
    return header(rng.randrange(65536)) + _long_name(total, width) + struct.pack("!HH", A, IN)


@functools.cache
def _long_name(total: int, width: int) -> bytes:
    return name_wire(b".".join([b"y" * width] * -(-total // (width + 1))))


def odd_labels(rng: random.Random) -> bytes:
    """Label bytes that are not hostname characters: dots, backslashes, NUL, non-UTF-8."""
    label = rng.choice((b"a.b", b"\\", b"\x00\x00", b"\xff\xfe", b"\xc3\x28", b"\xe2\x82", b" ", b"\"$()",
                        b"*", b"@", rng.randbytes(rng.randrange(1, 40))))
    wire = bytes([len(label)]) + label + name_wire(rng.choice(("web", "net", "service.consul", "")))
    return header(rng.randrange(65536)) + wire + struct.pack("!HH", rng.choice(QTYPES), IN)


def count_lies(rng: random.Random, names=NAMES) -> bytes:
    qd, an, ns, ar = (rng.choice((0, 1, 2, 3, 255, 65535)) for _ in range(4))
    q = valid_query(rng, names)
    return q[:4] + struct.pack("!4H", qd, an, ns, ar) + q[12:]


def several_questions(rng: random.Random, names=NAMES) -> bytes:
    k = rng.choice((0, 2, 3, 10))
    qs = b"".join(name_wire(rng.choice(names)) + struct.pack("!HH", rng.choice(QTYPES), IN) for _ in range(k))
    return header(rng.randrange(65536), RD, k) + qs


def response(rng: random.Random, names=NAMES) -> bytes:
    """A response sent to the server (a reflection attempt): QR set, answers included."""
    name = rng.choice(names)
    rr = b"\xc0\x0c" + struct.pack("!HHIH", A, IN, 60, 4) + bytes([10, 1, 0, rng.randrange(256)])
    return header(rng.randrange(65536), QR | RD | 0x80 | rng.randrange(6), 1, 1) + name_wire(name) \
        + struct.pack("!HH", A, IN) + rr


def odd_opcode(rng: random.Random, names=NAMES) -> bytes:
    flags = (rng.randrange(1, 16) << 11) | RD | rng.choice((0, 0x0400, 0x0040, 0x000F))
    return query(rng.choice(names), rng.choice(QTYPES), rng.choice(QCLASSES), rng.randrange(65536), flags)


def odd_class(rng: random.Random) -> bytes:
    name, qtype = rng.choice((("version.bind", TXT), ("hostname.bind", TXT), ("web", A), ("svc", ANY),
                              ("web.service.consul", SRV), ("2.0.1.10.in-addr.arpa", PTR)))
    return query(name, qtype, rng.choice((CH, ANYCLASS, NONE, 0, 4, 65535)), rng.randrange(65536))


def bad_opt(rng: random.Random, names=NAMES) -> bytes:
    """OPT records that lie: versions, sizes, option lengths, rdata lengths, owner names, two of them."""
    kind = rng.randrange(9)
    if kind == 0:
        opt = opt_record(rng.randrange(65536), rng.randrange(1, 256))
    elif kind == 1:
        opt = opt_record(options=option(10, rng.randbytes(8), length=rng.choice((0, 7, 9, 40, 65535))))
    elif kind == 2:
        opt = opt_record(options=rng.randbytes(rng.randrange(1, 60)))                # options that are noise
    elif kind == 3:
        opt = opt_record(rdlen=rng.choice((1, 100, 4000, 65535)), options=rng.randbytes(rng.randrange(0, 20)))
    elif kind == 4:
        opt = opt_record(owner=name_wire(rng.choice(("web", "x"))))                 # OPT with a name
    elif kind == 5:
        q = query(rng.choice(names), A, IN, rng.randrange(65536))
        return q[:10] + struct.pack("!H", 2) + q[12:] + opt_record() + opt_record(4096, 1)
    elif kind == 6:
        q = query(rng.choice(names), A, IN, rng.randrange(65536))                   # OPT as an answer
        return q[:6] + struct.pack("!H", 1) + q[8:] + opt_record()
    elif kind == 7:
        opt = opt_record(options=option(12, bytes(rng.choice((1000, 2000, 3900)))))  # huge padding
    else:
        opt = opt_record(rng.choice((0, 1, 511, 512, 513, 65535)), 0, True,
                         b"".join(option(rng.randrange(65536), rng.randbytes(rng.randrange(0, 12)))
                                  for _ in range(rng.randrange(1, 6))))
    return query(rng.choice(names), rng.choice(QTYPES), IN, rng.randrange(65536), RD, opt)


def rr_garbage(rng: random.Random, names=NAMES) -> bytes:
    """A question followed by records of any type with random rdata, in any section."""
    recs = []
    for _ in range(rng.randrange(1, 6)):
        rdata = rng.randbytes(rng.randrange(0, 40))
        rdlen = len(rdata) if rng.random() < 0.7 else rng.choice((0, 1, 255, 65535))
        recs.append(rng.choice((b"\0", b"\xc0\x0c", name_wire("x.y"))) + struct.pack(
            "!HHIH", rng.choice(QTYPES + (SOA, 99, 65280)), rng.choice(QCLASSES), rng.randrange(1 << 32), rdlen)
            + rdata)
    an = rng.randrange(len(recs) + 1)
    ns = rng.randrange(len(recs) - an + 1)
    return header(rng.randrange(65536), RD, 1, an, ns, len(recs) - an - ns) + name_wire(rng.choice(names)) \
        + struct.pack("!HH", A, IN) + b"".join(recs)


# (weight, generator, takes names)
KINDS: tuple[tuple[float, Callable, bool], ...] = (
    (20, random_bytes, False),
    (25, mutated, True),
    (8, truncated, True),
    (8, valid_query, True),
    (5, header_then_random, False),
    (4, count_lies, True),
    (4, bad_opt, True),
    (4, rr_garbage, True),
    (3, pointer_trick, False),
    (3, long_label, False),
    (3, long_name, False),
    (3, odd_labels, False),
    (3, several_questions, True),
    (3, response, True),
    (2, odd_opcode, True),
    (2, odd_class, False),
    (0.2, pointer_chain, False),
)


def packets(seed: int, count: int | None = None, names=NAMES) -> Iterator[bytes]:
    """`count` hostile packets (endless if None), the same ones for the same seed."""
    rng = random.Random(seed)
    gens = [(lambda r, g=g: g(r, names)) if takes else g for _, g, takes in KINDS]
    weights = [w for w, _, _ in KINDS]
    i = 0
    while True:
        # choices() in batches of a fixed size (so a shorter run is a prefix of a longer one):
        # one call per packet would cost more than most generators.
        for gen in rng.choices(gens, weights, k=1024):
            if i == count:
                return
            i += 1
            yield gen(rng)


def tcp_stream(rng: random.Random, names=NAMES) -> list[bytes]:
    """The chunks one hostile TCP client writes before it closes: frames whose
    length prefix lies, half prefixes, zero lengths, garbage, valid queries."""
    kind = rng.randrange(7)
    pkt = next(packets(rng.randrange(1 << 30), 1, names))
    if kind == 0:
        return [b"\x00"]                                            # half a length prefix
    if kind == 1:
        return [b"\x00\x00"]                                        # a zero-length message
    if kind == 2:
        return [struct.pack("!H", len(pkt) + rng.randrange(1, 200)) + pkt]   # longer than what follows
    if kind == 3:
        return [struct.pack("!H", rng.choice((4097, 30000, 65535))) + pkt]   # over the query cap
    if kind == 4:                                                   # a valid frame in small pieces
        frame = struct.pack("!H", len(pkt)) + pkt
        cuts = sorted({0, len(frame), *(rng.randrange(len(frame) + 1) for _ in range(4))})
        return [frame[a:b] for a, b in zip(cuts, cuts[1:])]
    if kind == 5:                                                   # several frames, the last one short
        frames = [valid_query(rng, names), pkt, pkt]
        data = b"".join(struct.pack("!H", len(f)) + f for f in frames)
        return [data[: len(data) - rng.randrange(1, 4)]]
    return [rng.randbytes(rng.randrange(1, 600))]                  # no framing at all


# Driving a server in-process ------------------------------------------------------------------

CLIENT = "10.1.0.9"        # a container on `net`, with a link and an upstream
NEIGHBOUR = "10.1.0.8"     # one on `net` without upstreams: SERVFAIL for other names (cheaper than forwards)
INTERNAL = "10.2.0.9"      # a container on an --internal network: nothing forwarded
STRANGER = "10.9.9.9"      # not a container: REFUSED
CLIENTS = (CLIENT,) * 6 + (NEIGHBOUR,) * 8 + (INTERNAL,) * 3 + (STRANGER,) * 3   # packet i comes from [i % 20]
UPSTREAM = ("192.0.2.53", 53)


def snapshot() -> Snapshot:
    """What the resolver knows in a fuzz run: the names NAMES asks about."""
    net = NetworkZone("net", IPv4Network("10.1.0.0/24"))
    net.add(Member("web", "10.1.0.2", ((80, "tcp"),)), ["web", "svc"])
    net.add(Member("db", "10.1.0.3"), ["db", "svc"])
    net.add(Member("api", "10.1.0.4", ((80, "tcp"), (53, "udp"))), ["api", "svc"])
    for i in range(60):
        net.add(Member(f"big{i}", f"10.1.0.{100 + i}", ((53, "udp"),)), ["big"])   # over 512 bytes
    inner = NetworkZone("inner", IPv4Network("10.2.0.0/24"))
    inner.add(Member("vault", "10.2.0.2"), ["vault"])
    services = {"web": (ServiceInstance("10.0.0.1", 8080, "n1", ("primary",)),
                        ServiceInstance("10.0.0.2", 8081, "n2")),
                "db": (ServiceInstance("10.0.5.1", 5432, "n3"),), "gone": ()}
    views = {CLIENT: View(zone=net, links={"sql": (Member("db", "10.1.0.3"),)}, upstreams=(UPSTREAM,)),
             NEIGHBOUR: View(zone=net),
             INTERNAL: View(zone=inner, upstreams=(UPSTREAM,), forward=False)}
    return Snapshot(views=views, networks=frozenset({"net", "inner"}), subnets=(net.subnet, inner.subnet),
                    services=services)


class CannedUpstream(Forwarder):
    """The forwarder with its network replaced: `*.example` A is 192.0.2.7, the rest NXDOMAIN."""

    async def _ask(self, request: DNSRecord, upstreams) -> DNSRecord:
        q = request.q
        out = DNSRecord(DNSHeader(id=request.header.id, qr=1, ra=1), q=q)
        if str(q.qname).lower().endswith("example.") and q.qtype == QTYPE.A:
            out.add_answer(RR(q.qname, QTYPE.A, rdata=dnslib.A("192.0.2.7"), ttl=30))
        else:
            out.header.rcode = RCODE.NXDOMAIN
        return out


def in_process() -> "InProcess":
    """A fresh server on snapshot(), forwarding to CannedUpstream, driven in-process."""
    server = DnsServer(ServerConfig(forward=ForwardConfig()))
    server.forwarder = CannedUpstream(server.cfg.forward)
    server.snapshot = snapshot()
    return InProcess(server)


class _Feed:
    """Stands in for a listener's UDP socket: one datagram per turn, then it
    stops the listener's loop; what the server sends is collected."""

    def __init__(self) -> None:
        self.listener: _UdpListener | None = None
        self.item: tuple[bytes, tuple[str, int]] | None = None
        self.sent: list[bytes] = []

    def recvfrom(self, _size: int):
        item, self.item = self.item, None
        if item is None:
            self.listener.stopping = True
            raise OSError("no more datagrams this turn")
        return item

    def sendto(self, data: bytes, _addr) -> None:
        self.sent.append(bytes(data))

    def close(self) -> None:
        pass


class _InlineLoop:
    """What the listener hands a miss to: here the slow path runs at once, in
    the driver's task (so asyncio.get_running_loop() is the driver's loop)."""

    @staticmethod
    def call_soon_threadsafe(fn, *args) -> None:
        fn(*args)


class _Transport:
    """The part of a transport the server looks at when a client goes: nothing is
    ever left unsent here (every write is collected at once)."""

    def __init__(self, writer: "_Writer") -> None:
        self.writer = writer

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        self.writer.closed = True


class _Writer:
    """Stands in for a TCP client's StreamWriter: collects what the server writes."""

    def __init__(self, client: str) -> None:
        self.peer = (client, 5353)
        self.out: list[bytes] = []
        self.closed = False
        self.transport = _Transport(self)

    def get_extra_info(self, key: str):
        return self.peer if key == "peername" else None

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class InProcess:
    """A DnsServer fed without sockets, from a coroutine on a running loop.

    UDP goes through the listener's own receive loop (`_UdpListener._run`: the
    packed-answer table, then the slow path) one datagram per turn; forwards the
    slow path starts run as tasks on the driver's loop and are awaited. TCP goes
    through the per-connection handler with a StreamReader fed the client's bytes.
    The server must not have been started (its loop is replaced)."""

    def __init__(self, server: DnsServer, listen_addr: str = "10.1.0.1") -> None:
        self.server = server
        self.feed = _Feed()
        self.listener = _UdpListener.__new__(_UdpListener)   # its receive loop, not its thread
        self.listener.server, self.listener.sock, self.listener.addr = server, self.feed, listen_addr
        self.listener.queued = self.listener.taken = self.listener.dropped = 0
        self.listener.cached = [0] * 16
        self.feed.listener = self.listener
        server.loop = _InlineLoop()

    async def udp(self, data: bytes, client: str) -> list[bytes]:
        """Every datagram the server sends back to `client` for `data`."""
        self.feed.item = (data, (client, 5353))
        self.feed.sent = sent = []
        self.listener.stopping = False
        self.listener._run()
        while self.server._forwards:   # an upstream question in flight: its answer is sent to `sent`
            await asyncio.sleep(0)
        return sent

    async def tcp(self, data: bytes, client: str) -> bytes | None:
        """The TCP answer to one message (no framing), or None when the connection would end."""
        return await self.server._answer_tcp(data, client)

    async def tcp_stream(self, chunks: list[bytes], client: str) -> bytes:
        """Everything the server writes to a TCP client that sends `chunks`, then closes."""
        reader = asyncio.StreamReader()
        for chunk in chunks:
            reader.feed_data(chunk)
        reader.feed_eof()
        writer = _Writer(client)
        await self.server._tcp_client(reader, writer)
        if not writer.closed:
            raise AssertionError("the server left a TCP connection open after the client's EOF")
        return b"".join(writer.out)


def udp_limit(query: bytes) -> int:
    """The largest UDP reply the asker accepts: its EDNS size (512..4096) if it sent OPT, else 512."""
    try:
        opts = [rr for rr in DNSRecord.parse(query).ar if rr.rtype == QTYPE.OPT]
    except Exception:
        return 512
    return max(512, min(opts[0].rclass, 4096)) if opts else 512
