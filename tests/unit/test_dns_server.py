"""A real DnsServer on 127.0.0.1 (no namespaces, no root): UDP fast path,
rotation, snapshot swaps, truncation, garbage, TCP, and forwarding to a tiny
upstream run by the test."""

import logging
import random
import selectors
import socket
import struct
import threading
import time
from ipaddress import IPv4Network

import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from portlink.dns.forward import ForwardConfig
from portlink.dns.server import DnsServer, ServerConfig
from portlink.dns.zone import Member, NetworkZone, Snapshot, View

LOCAL = "127.0.0.1"
WAIT = 2.0   # seconds: every wait is bounded by this


def free_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
            u.bind((LOCAL, 0))
            port = u.getsockname()[1]
            try:
                t.bind((LOCAL, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def snapshot(web="10.1.0.2", upstreams=()) -> Snapshot:
    zone = NetworkZone("net", IPv4Network("10.1.0.0/24"))
    zone.add(Member("web", web), ["web", "svc"])
    zone.add(Member("db", "10.1.0.3"), ["db", "svc"])
    zone.add(Member("api", "10.1.0.4"), ["api", "svc"])
    for i in range(60):
        zone.add(Member(f"big{i}", f"10.1.0.{100 + i}"), ["big"])
    return Snapshot(views={LOCAL: View(zone=zone, upstreams=upstreams)}, networks=frozenset({"net"}),
                    subnets=(zone.subnet,))


@pytest.fixture
def server():
    srv = DnsServer(ServerConfig(port=free_port(), forward=ForwardConfig(timeout=0.3)))
    srv.start()
    try:
        assert srv.listen([LOCAL]) == []
        srv.update(snapshot())
        yield srv
    finally:
        srv.stop()


# Clients -------------------------------------------------------------------------------

def query(name, qtype="A", **kw) -> dns.message.Message:
    return dns.message.make_query(name, qtype, **kw)


def udp(srv, q) -> dns.message.Message:
    return dns.query.udp(q, LOCAL, port=srv.cfg.port, timeout=WAIT)   # TC is not raised


def tcp(srv, q) -> dns.message.Message:
    return dns.query.tcp(q, LOCAL, port=srv.cfg.port, timeout=WAIT)


def addresses(resp) -> list[str]:
    return [rr.address for rrset in resp.answer for rr in rrset]


def udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(WAIT)
    return s


def raw_udp(srv, data: bytes) -> bytes:
    with udp_socket() as s:
        s.sendto(data, (LOCAL, srv.cfg.port))
        return s.recv(65535)


def with_id(q, qid) -> bytes:
    q.id = qid
    return q.to_wire()


def tcp_frame(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def read_frame(f) -> bytes:
    """One length-prefixed message from a socket's makefile("rb") (buffered: use one per connection)."""
    n = int.from_bytes(f.read(2), "big")
    return f.read(n)


# Local answers --------------------------------------------------------------------------

def test_a_over_udp_and_tcp(server):
    for send in (udp, tcp):
        q = query("web")
        r = send(server, q)
        assert (r.id, r.rcode(), addresses(r)) == (q.id, dns.rcode.NOERROR, ["10.1.0.2"])
        assert r.flags & dns.flags.AA


def test_repeated_queries_take_the_fast_path(server):
    wire = query("web")
    first = raw_udp(server, with_id(wire, 1))
    assert len(server.packed) == 1
    slow = server.stats["queries_slow"]
    second, third = raw_udp(server, with_id(wire, 2)), raw_udp(server, with_id(wire, 3))
    assert server.stats["queries_slow"] == slow   # neither reached the event loop
    assert (first[:2], second[:2], third[:2]) == (b"\0\1", b"\0\2", b"\0\3")
    assert first[2:] == second[2:] == third[2:]


def test_repeated_queries_rotate_the_answer(server):
    orders = [tuple(addresses(udp(server, query("svc")))) for _ in range(3)]
    assert all(sorted(o) == ["10.1.0.2", "10.1.0.3", "10.1.0.4"] for o in orders)
    assert len(set(orders)) == 3


def test_update_changes_the_answer_at_once(server):
    q = query("web")
    assert addresses(udp(server, q)) == addresses(udp(server, q)) == ["10.1.0.2"]
    assert server.packed
    server.update(snapshot(web="10.1.0.5"))
    assert not server.packed
    assert addresses(udp(server, q)) == ["10.1.0.5"]


def test_the_latest_snapshot_given_stays_whichever_swap_runs_last(server):
    # An offer waits for the resolver's thread; an update swaps at once in the
    # caller's. An older offer that runs after a newer update is dropped.
    hold = threading.Event()
    server.loop.call_soon_threadsafe(hold.wait, WAIT)   # the resolver's thread busy
    server.offer(snapshot(web="10.1.0.7"))              # queued behind it
    newer = snapshot(web="10.1.0.8")
    server.update(newer)                                # in place at once, on this thread
    assert server.snapshot is newer
    hold.set()
    ran = threading.Event()
    server.loop.call_soon_threadsafe(ran.set)           # after the queued offer
    assert ran.wait(WAIT) and server.snapshot is newer
    assert addresses(udp(server, query("web"))) == ["10.1.0.8"]


def test_an_answer_of_a_swapped_out_snapshot_is_sent_not_kept(server):
    # The slow path answered from the snapshot it read; a swap between that read
    # and the answer's entry in the table must leave no entry of the old one.
    real = server.snapshot
    swap_during = snapshot(web="10.1.0.9")

    class Swapping:
        """The old snapshot, swapped out the moment the answer is being made."""
        def __getattr__(self, name):
            if name == "views":
                server.update(swap_during)
            return getattr(real, name)

    server.snapshot = Swapping()
    server._swapped = -1
    first = udp(server, query("web"))
    assert addresses(first) == ["10.1.0.2"]       # answered from what it read
    assert server.snapshot is swap_during and not server.packed
    assert addresses(udp(server, query("web"))) == ["10.1.0.9"]


def test_big_answer_truncated_over_udp_complete_over_tcp_or_edns(server):
    r = udp(server, query("big"))
    assert r.flags & dns.flags.TC and not r.answer
    assert len(addresses(tcp(server, query("big")))) == 60
    r = udp(server, query("big", use_edns=0, payload=4096))
    assert not r.flags & dns.flags.TC and len(addresses(r)) == 60


# Robustness -------------------------------------------------------------------------------

def _header(qdcount=1) -> bytes:
    return struct.pack("!6H", 0xBEEF, 0x0100, qdcount, 0, 0, 0)


_rand = random.Random(1)
GARBAGE = {
    **{f"random-{n}": _rand.randbytes(n) for n in (1, 11, 12, 13, 64, 512, 4096)},
    "3-bytes": b"\x12\x34\x01",
    "header-only-qdcount-1": _header(),
    "5000-bytes": (_header() + b"\x07example\x00" * 600)[:5000],
    "200-labels": _header() + b"\x01a" * 200 + b"\0" + struct.pack("!HH", 1, 1),
    "label-of-100": _header() + b"\x64" + b"a" * 100 + b"\0" + struct.pack("!HH", 1, 1),
    "pointer-to-itself": _header() + b"\xc0\x0c" + struct.pack("!HH", 1, 1),
    "pointer-loop": _header() + b"\xc0\x0d" + b"a" * 13 + b"\xc0\x0c" + struct.pack("!HH", 1, 1),
}


@pytest.mark.parametrize("name", GARBAGE)
def test_garbage_gets_formerr_or_nothing(server, name, caplog):
    caplog.set_level(logging.ERROR)
    q = query("web")
    with udp_socket() as s:
        s.sendto(GARBAGE[name], (LOCAL, server.cfg.port))
        s.sendto(q.to_wire(), (LOCAL, server.cfg.port))
        # Both take the slow path (the table starts empty), so replies come in order.
        for _ in range(3):
            data = s.recv(65535)
            if data[:2] == q.id.to_bytes(2, "big"):
                break
            assert data[2] & 0x80 and data[3] & 0xF == RCODE.FORMERR, data[:12]
        else:
            pytest.fail("no answer to the query after the garbage")
    assert addresses(dns.message.from_wire(data)) == ["10.1.0.2"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_flood_of_garbage_then_a_query_answers(server):
    junk = [random.Random(i).randbytes(40) for i in range(16)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        for i in range(5000):
            try:
                s.sendto(junk[i % len(junk)], (LOCAL, server.cfg.port))
            except BlockingIOError:
                pass
    # The server's queue may still be full: resend as a stub resolver does, within WAIT.
    q = query("web")
    deadline = time.monotonic() + WAIT
    with udp_socket() as s:
        while time.monotonic() < deadline:
            s.sendto(q.to_wire(), (LOCAL, server.cfg.port))
            s.settimeout(0.2)
            try:
                while True:
                    data = s.recv(65535)
                    if data[:2] == q.id.to_bytes(2, "big"):
                        assert addresses(dns.message.from_wire(data)) == ["10.1.0.2"]
                        return
            except TimeoutError:
                continue
    pytest.fail(f"no answer within {WAIT} s after the flood")


def test_tcp_oversized_length_then_close(server):
    with socket.create_connection((LOCAL, server.cfg.port), timeout=WAIT) as c:
        c.sendall(b"\xff\xff")
    assert addresses(tcp(server, query("web"))) == ["10.1.0.2"]


def test_tcp_silent_client_does_not_block_others(server):
    with socket.create_connection((LOCAL, server.cfg.port), timeout=WAIT):
        assert addresses(tcp(server, query("web"))) == ["10.1.0.2"]
        assert addresses(udp(server, query("db"))) == ["10.1.0.3"]


def test_stop_closes_tcp_clients():
    srv = DnsServer(ServerConfig(port=free_port()))
    srv.start()
    try:
        srv.listen([LOCAL])
        srv.update(snapshot())
        with socket.create_connection((LOCAL, srv.cfg.port), timeout=WAIT) as c, c.makefile("rb") as f:
            c.sendall(tcp_frame(query("web").to_wire()))
            assert read_frame(f)        # answered: the connection is being served
            srv.stop()
            assert c.recv(1) == b""     # closed by the server, not left to the idle timeout
        assert srv._tcp_clients == 0  # its task ended rather than being destroyed pending
    finally:
        srv.stop()


def test_tcp_pipelined_queries_all_answered(server):
    qs = [query(name) for name in ("web", "db", "api", "nosuch", "web")]
    with socket.create_connection((LOCAL, server.cfg.port), timeout=WAIT) as c:
        c.sendall(b"".join(tcp_frame(q.to_wire()) for q in qs))
        with c.makefile("rb") as f:
            replies = [dns.message.from_wire(read_frame(f)) for _ in qs]
    assert [r.id for r in replies] == [q.id for q in qs]
    assert [addresses(r) for r in replies] == [["10.1.0.2"], ["10.1.0.3"], ["10.1.0.4"], [], ["10.1.0.2"]]
    assert replies[3].rcode() == dns.rcode.NXDOMAIN


# Forwarding ---------------------------------------------------------------------------------

class Upstream:
    """A minimal resolver on 127.0.0.1, UDP and TCP, in one thread: A records
    with TTL 30, SERVFAIL for `servfail` names, TC over UDP for `truncate`
    names, NXDOMAIN otherwise; `silent` answers nothing. Counts what it sees."""

    def __init__(self, records=None, servfail=("bad.example.",), truncate=("tc.example.",)):
        self.records = {"up.example.": "192.0.2.7", "tc.example.": "192.0.2.9", **(records or {})}
        self.servfail, self.truncate = set(servfail), set(truncate)
        self.silent = False
        self.seen: list[tuple[str, str]] = []   # (transport, qname)
        self.port = free_port()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tcp = socket.socket()
        self.udp.bind((LOCAL, self.port))
        self.tcp.bind((LOCAL, self.port))
        self.tcp.listen(8)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def addr(self) -> tuple[str, int]:
        return (LOCAL, self.port)

    def _reply(self, data: bytes, transport: str) -> bytes | None:
        req = DNSRecord.parse(data)
        name = str(req.q.qname).lower()
        self.seen.append((transport, name))
        if self.silent:
            return None
        out = req.reply()
        if name in self.servfail:
            out.header.rcode = RCODE.SERVFAIL
        elif transport == "udp" and name in self.truncate:
            out.header.tc = 1
        elif name in self.records and req.q.qtype == QTYPE.A:
            out.add_answer(RR(req.q.qname, QTYPE.A, rdata=A(self.records[name]), ttl=30))
        else:
            out.header.rcode = RCODE.NXDOMAIN
        return out.pack()

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.udp, selectors.EVENT_READ)
            sel.register(self.tcp, selectors.EVENT_READ)
            while not self.stopping.is_set():
                for key, _ in sel.select(0.05):
                    if key.fileobj is self.udp:
                        data, peer = self.udp.recvfrom(65535)
                        out = self._reply(data, "udp")
                        if out:
                            self.udp.sendto(out, peer)
                    else:
                        conn, _ = self.tcp.accept()
                        with conn, conn.makefile("rb") as f:
                            conn.settimeout(WAIT)
                            try:
                                out = self._reply(read_frame(f), "tcp")
                                if out:
                                    conn.sendall(tcp_frame(out))
                            except OSError:
                                pass

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(WAIT)
        self.udp.close()
        self.tcp.close()


@pytest.fixture
def upstreams():
    started = []

    def start(**kw) -> Upstream:
        started.append(Upstream(**kw))
        return started[-1]

    yield start
    for u in started:
        u.stop()
    assert not any(u.thread.is_alive() for u in started)


def forward_to(server, *ups: Upstream) -> None:
    server.update(snapshot(upstreams=tuple(u.addr for u in ups)))


def test_forwarded_answer_then_cache(server, upstreams):
    up = upstreams()
    forward_to(server, up)
    for _ in range(2):
        q = query("up.example")
        r = udp(server, q)
        assert (r.id, r.rcode(), addresses(r)) == (q.id, dns.rcode.NOERROR, ["192.0.2.7"])
        assert 0 < r.answer[0].ttl <= 30
    assert up.seen == [("udp", "up.example.")]
    assert server.forwarder.stats["cache_hits"] == 1
    q = query("up.example")
    assert tcp(server, q).id == q.id and up.seen == [("udp", "up.example.")]   # TCP shares the cache


def test_truncated_upstream_answer_is_fetched_over_tcp(server, upstreams):
    up = upstreams()
    forward_to(server, up)
    assert addresses(udp(server, query("tc.example"))) == ["192.0.2.9"]
    assert up.seen == [("udp", "tc.example."), ("tcp", "tc.example.")]


def test_silent_upstream_falls_back_to_the_next(server, upstreams):
    first, second = upstreams(), upstreams()
    first.silent = True
    forward_to(server, first, second)
    assert addresses(udp(server, query("up.example"))) == ["192.0.2.7"]
    assert len(first.seen) == len(second.seen) == 1


def test_all_upstreams_silent_is_servfail(server, upstreams):
    ups = [upstreams(), upstreams()]
    for u in ups:
        u.silent = True
    forward_to(server, *ups)
    q = query("up.example")
    r = udp(server, q)
    assert (r.id, r.rcode()) == (q.id, dns.rcode.SERVFAIL)
    assert [len(u.seen) for u in ups] == [1, 1]


def test_servfail_upstream_falls_back_to_the_next(server, upstreams):
    first, second = upstreams(), upstreams(records={"bad.example.": "192.0.2.8"}, servfail=())
    forward_to(server, first, second)
    assert addresses(udp(server, query("bad.example"))) == ["192.0.2.8"]
    assert (first.seen, second.seen) == ([("udp", "bad.example.")], [("udp", "bad.example.")])


def test_replies_to_strangers_are_never_kept(server):
    server.update(Snapshot(views={"10.9.9.9": View(zone=None)}))   # 127.0.0.1 is nobody
    notify = query("web")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert udp(server, notify).rcode() == dns.rcode.NOTIMP          # decided before the view lookup
    assert udp(server, query("web")).rcode() == dns.rcode.REFUSED
    assert not server.packed


def test_cached_answer_echoes_the_askers_spelling(server, upstreams):
    up = upstreams()
    forward_to(server, up)
    udp(server, query("up.example"))
    r = udp(server, query("Up.ExAmple"))
    assert up.seen == [("udp", "up.example.")]          # served from the cache
    assert r.question[0].name.to_text() == "Up.ExAmple." and r.answer[0].name.to_text() == "Up.ExAmple."


def test_a_response_is_never_answered(server):
    q = query("web")
    q.flags |= dns.flags.QR
    with udp_socket() as s:
        s.settimeout(0.5)
        s.sendto(q.to_wire(), (LOCAL, server.cfg.port))
        with pytest.raises(socket.timeout):
            s.recv(65535)
    assert addresses(udp(server, query("web")))          # still serving


def test_tcp_answer_over_64k_is_truncated_not_an_overflow():
    """An alias with 5000 members packs to about 80 kB: TCP cannot frame it, so
    the answer is header and question with TC rather than an unhandled error."""
    zone = NetworkZone("net", IPv4Network("10.8.0.0/16"))
    for i in range(5000):
        zone.add(Member(f"m{i}", f"10.8.{i // 250}.{i % 250 + 1}"), [f"m{i}", "huge"])
    snap = Snapshot(views={LOCAL: View(zone=zone)}, networks=frozenset({"net"}), subnets=(zone.subnet,))
    srv = DnsServer(ServerConfig(port=free_port()))
    srv.start()
    try:
        srv.listen([LOCAL])
        srv.update(snap)
        resp = tcp(srv, query("huge"))
        assert resp.flags & dns.flags.TC and resp.answer == []
        assert addresses(tcp(srv, query("m7"))) == ["10.8.0.8"], "the connection and server still work"
    finally:
        srv.stop()


def test_one_client_cannot_take_every_tcp_slot(server):
    from portlink.dns import server as srvmod
    held = []
    try:
        for _ in range(srvmod.MAX_TCP_PER_CLIENT):
            c = socket.create_connection((LOCAL, server.cfg.port), timeout=WAIT)
            c.sendall(tcp_frame(query("web").to_wire()))
            assert read_frame(c.makefile("rb"))    # served: the slot is taken
            held.append(c)
        extra = socket.create_connection((LOCAL, server.cfg.port), timeout=WAIT)
        held.append(extra)
        extra.sendall(tcp_frame(query("web").to_wire()))
        # EOF, or a reset when the server closed before reading our query: refused either way
        assert _closed(extra), "the client's 17th connection is closed at once"
    finally:
        for c in held:
            c.close()


def _tcp_from(srv, source: str) -> socket.socket:
    c = socket.socket()
    c.settimeout(WAIT)
    c.bind((source, 0))
    c.connect((LOCAL, srv.cfg.port))
    return c


def _closed(c: socket.socket) -> bool:
    try:
        return c.recv(65536) == b""
    except ConnectionResetError:
        return True


def test_strangers_take_no_tcp_slot(server, monkeypatch):
    """Addresses that are no container's are closed before they take a slot:
    many of them holding connections cannot lock the containers out."""
    from portlink.dns import server as srvmod
    monkeypatch.setattr(srvmod, "MAX_TCP", 4)
    monkeypatch.setattr(srvmod, "MAX_TCP_PER_CLIENT", 2)
    held = []
    try:
        for source in ("127.0.0.2", "127.0.0.3"):
            for _ in range(2):
                c = _tcp_from(server, source)
                held.append(c)
                c.sendall(tcp_frame(query("web").to_wire()))
                assert _closed(c), "a stranger's connection is closed at once"
        assert server._tcp_clients == 0
        assert addresses(tcp(server, query("web"))) == ["10.1.0.2"]
    finally:
        for c in held:
            c.close()


def test_tcp_client_that_never_reads_loses_its_slot(server, monkeypatch):
    from portlink.dns import server as srvmod
    monkeypatch.setattr(srvmod, "TCP_WRITE", 0.3)
    # Small buffers both ends (accepted sockets inherit the listener's), so a
    # client that does not read stalls the server's writes within ~100 answers.
    server._listeners[LOCAL][1].sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.settimeout(0.5)
    c.connect((LOCAL, server.cfg.port))
    try:
        frames = tcp_frame(query("big").to_wire()) * 200   # ~200 kB of answers per batch
        deadline = time.monotonic() + 10
        freed = False
        while time.monotonic() < deadline and not freed:
            try:
                c.sendall(frames)
            except (socket.timeout, OSError):
                pass   # the server stopped reading: its writes are stuck
            freed = server._tcp_clients == 0
            time.sleep(0.05)
        assert freed, "the stuck write was given up and the slot freed"
        assert addresses(tcp(server, query("web"))) == ["10.1.0.2"]
    finally:
        c.close()


def test_tcp_connection_life_is_bounded(server, monkeypatch):
    from portlink.dns import server as srvmod
    monkeypatch.setattr(srvmod, "TCP_LIFE", 0.5)
    with socket.create_connection((LOCAL, server.cfg.port), timeout=WAIT) as c, c.makefile("rb") as f:
        answered = 0
        for _ in range(60):   # a busy client, never idle: 0.05 s between queries
            try:
                c.sendall(tcp_frame(query("web").to_wire()))
                if not read_frame(f):
                    break
            except (ConnectionError, OSError):
                break
            answered += 1
            time.sleep(0.05)
    # 60 queries take at least 3 s: the server ended the connection well before.
    assert 3 <= answered < 60, answered
