"""DNS answering as a pure function of (query, snapshot), and the snapshot,
/etc/hosts and resolv.conf the runtime builds from its recorded state."""

import struct
from ipaddress import IPv4Address, IPv4Network

import pytest
from dnslib import EDNS0, OPCODE, QTYPE, RCODE, DNSHeader, DNSRecord

from portlink.dns.answer import Forward, Reply, answer, header_error
from portlink.dns.zone import Member, NetworkZone, Snapshot, View
from portlink.errors import InvalidArgument
from portlink.netns.model import NetworkSpec
from portlink.runtime.discovery import Seen, build_snapshot, hosts_file, resolv_conf, upstream_list
from portlink.runtime.links import LinkRequest

NET = IPv4Network("10.1.0.0/24")
WEB = Member("web", "10.1.0.2", ((80, "tcp"),))
DB = Member("db", "10.1.0.3")
API = Member("api", "10.1.0.4", ((80, "tcp"), (53, "udp")))
OLD_DB = Member("db-old", "10.1.0.7")     # reached only through a link
CLIENT = "10.1.0.9"
UP = (("192.0.2.53", 53),)


def snapshot(**view) -> Snapshot:
    zone = NetworkZone("net", NET)
    zone.add(WEB, ["web", "webhost", "0123456789ab", "web.net", "svc"])
    zone.add(DB, ["db", "db.net", "svc"])
    zone.add(API, ["api", "api.net", "svc"])
    return Snapshot(views={CLIENT: View(zone=zone, **{"upstreams": UP, **view})},
                    networks=frozenset({"net"}), subnets=(NET,), ttl=7)


def ask(query, snap=None, client=CLIENT, rotation=0):
    """answer() for a query (a name, a DNSRecord or wire bytes), parsed from the wire as the server does."""
    if isinstance(query, str):
        query = DNSRecord.question(query)
    wire = query if isinstance(query, bytes) else query.pack()
    return answer(DNSRecord.parse(wire), client, snap or snapshot(), rotation)


def reply(query, **kw) -> DNSRecord:
    """The local reply to `query`, through the wire (so it must pack)."""
    result = ask(query, **kw)
    assert isinstance(result, Reply), result
    return DNSRecord.parse(result.record.pack())


def q(name, qtype="A", version=None) -> DNSRecord:
    r = DNSRecord.question(name, qtype)
    if version is not None:
        r.add_ar(EDNS0(udp_len=4096, version=version))
    return r


def addresses(r: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in r.rr if rr.rtype == QTYPE.A]


def wire_query(labels: list[bytes], qdcount=1) -> bytes:
    name = b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
    return struct.pack("!6H", 0xBEEF, 0x0100, qdcount, 0, 0, 0) + name + struct.pack("!HH", 1, 1)


# Local names ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["web", "webhost", "0123456789ab", "web.net", "WEB.Net."])
def test_a_for_each_name_of_a_container(name):
    r = reply(name)
    assert (r.header.rcode, r.header.aa, addresses(r)) == (RCODE.NOERROR, 1, ["10.1.0.2"])
    assert [rr.ttl for rr in r.rr] == [7]   # the snapshot's TTL


def test_network_alias_answers_every_member_in_rotating_order():
    orders = []
    for k in range(3):
        result = ask("svc", rotation=k)
        assert result.variants == 3
        orders.append(addresses(result.record))
    assert all(sorted(o) == ["10.1.0.2", "10.1.0.3", "10.1.0.4"] for o in orders)
    assert orders[1] == orders[0][1:] + orders[0][:1] and len(set(map(tuple, orders))) == 3


def test_link_alias_shadows_a_network_name():
    snap = snapshot(links={"db": (OLD_DB,)})
    assert addresses(reply("db", snap=snap)) == ["10.1.0.7"]
    assert addresses(reply("db.net", snap=snap)) == ["10.1.0.3"]


def test_aaaa_of_a_known_name_is_nodata():
    r = reply(q("web", "AAAA"))
    assert (r.header.rcode, r.header.aa, r.rr) == (RCODE.NOERROR, 1, [])


@pytest.mark.parametrize("name", ["x.net", "nosuch"])
def test_unknown_names_we_own_are_nxdomain(name):
    r = reply(name)
    assert (r.header.rcode, r.header.aa) == (RCODE.NXDOMAIN, 1)


def test_other_names_go_upstream_or_fail():
    assert ask("example.com") == Forward(UP)
    assert ask(".") == Forward(UP)   # the root exists: not ours to deny
    assert reply("example.com", snap=snapshot(upstreams=())).header.rcode == RCODE.SERVFAIL
    internal = snapshot(forward=False)
    assert reply("example.com", snap=internal).header.rcode == RCODE.SERVFAIL
    assert addresses(reply("web", snap=internal)) == ["10.1.0.2"]


def test_strangers_are_refused():
    assert reply("web", client="10.9.9.9").header.rcode == RCODE.REFUSED


# PTR and SRV --------------------------------------------------------------------------

@pytest.mark.parametrize("address, target", [("10.1.0.2", "web."), ("10.1.0.7", "db-old.")])
def test_ptr_of_a_member_and_of_a_link(address, target):
    name = ".".join(reversed(address.split("."))) + ".in-addr.arpa"
    r = reply(q(name, "PTR"), snap=snapshot(links={"olddb": (OLD_DB,)}))
    assert [str(rr.rdata) for rr in r.rr] == [target]


def test_ptr_inside_a_served_subnet_is_ours_outside_goes_upstream():
    r = reply(q("50.0.1.10.in-addr.arpa", "PTR"))
    assert (r.header.rcode, r.header.aa) == (RCODE.NXDOMAIN, 1)
    assert ask(q("1.2.0.192.in-addr.arpa", "PTR")) == Forward(UP)


def test_srv_for_an_exposed_port_with_glue():
    r = reply(q("_80._tcp.web", "SRV"))
    assert [(rr.rdata.priority, rr.rdata.weight, rr.rdata.port, str(rr.rdata.target)) for rr in r.rr] == \
        [(0, 0, 80, "web.")]
    assert [(str(rr.rname), str(rr.rdata)) for rr in r.ar] == [("web.", "10.1.0.2")]
    assert sorted(str(rr.rdata.target) for rr in reply(q("_80._tcp.svc", "SRV")).rr) == ["api.", "web."]


@pytest.mark.parametrize("name", ["_443._tcp.web", "_80._udp.web", "_x._tcp.web"])
def test_srv_for_a_port_not_exposed_is_nodata(name):
    r = reply(q(name, "SRV"))
    assert (r.header.rcode, r.rr, r.ar) == (RCODE.NOERROR, [], [])



@pytest.mark.parametrize("qtype", ["A", "AAAA", "TXT"])
def test_srv_style_name_of_ours_asked_as_another_type_is_nodata_not_forwarded(qtype):
    r = reply(q("_80._tcp.web", qtype))
    assert (r.header.rcode, r.rr) == (RCODE.NOERROR, [])


# EDNS and malformed queries -------------------------------------------------------------

def test_edns_query_gets_opt_last():
    r = reply(q("_80._tcp.web", "SRV", version=0))
    assert [rr.rtype for rr in r.ar] == [QTYPE.A, QTYPE.OPT]
    assert (r.ar[-1].edns_ver, r.ar[-1].edns_rcode) == (0, 0)
    assert reply("web").ar == []   # no OPT without one in the query


def test_edns_version_1_is_badvers():
    r = reply(q("web", version=1))
    assert (r.header.rcode, r.rr) == (0, [])
    assert (r.ar[-1].rtype, r.ar[-1].edns_rcode) == (QTYPE.OPT, 1)   # BADVERS = 16 = ext 1, rcode 0


def test_another_error_with_edns_version_1_keeps_its_rcode():
    query = q("web", version=1)
    query.header.opcode = OPCODE.NOTIFY
    r = reply(query)
    assert (r.header.rcode, r.ar[-1].edns_rcode) == (RCODE.NOTIMP, 0)


def test_malformed_queries():
    notify = q("web")
    notify.header.opcode = OPCODE.NOTIFY
    assert reply(notify).header.rcode == RCODE.NOTIMP
    assert reply(DNSRecord(DNSHeader(id=7))).header.rcode == RCODE.FORMERR    # qdcount 0
    long_name = wire_query([b"a" * 63] * 4)                                   # 255 characters
    assert reply(long_name).header.rcode == RCODE.FORMERR
    assert reply(long_name, client="10.9.9.9").header.rcode == RCODE.REFUSED  # must still pack
    assert reply(wire_query([b"a" * 64, b"net"])).header.rcode == RCODE.FORMERR   # label > 63


def test_reply_flags_do_not_echo_query_only_bits():
    query = q("web")
    query.header.ad = query.header.tc = 1
    r = reply(query)
    assert (r.header.qr, r.header.rd, r.header.ad, r.header.tc) == (1, 1, 0, 0)


def test_header_error():
    assert header_error(b"\x12\x34\x01", RCODE.FORMERR) is None
    assert header_error(b"\0" * 11, RCODE.FORMERR) is None
    garbage = b"\xab\xcd\x29\x7f" + bytes(range(200, 220))      # opcode 5, RD
    out = header_error(garbage, RCODE.FORMERR)
    assert out[:2] == b"\xab\xcd" and len(out) == 12 and out[4:] == b"\0" * 8
    h = DNSRecord.parse(out).header
    assert (h.qr, h.opcode, h.rd, h.rcode) == (1, 5, 1, RCODE.FORMERR)


# runtime/discovery ------------------------------------------------------------------------

def network(name, subnet, internal=False) -> NetworkSpec:
    net = IPv4Network(subnet)
    return NetworkSpec(id=name * 4, name=name, subnet=net, gateway=IPv4Address(int(net.network_address) + 1),
                       bridge=f"pl-{name}", internal=internal)


def seen(name, network, ip, **kw) -> Seen:
    return Seen(id=f"{name:0<12}" + "f" * 52, name=name, hostname=f"{name}-host", network=network, ip=ip, **kw)


NETS = [network("front", "10.1.0.0/24"), network("back", "10.2.0.0/24"), network("vault", "10.3.0.0/24", True)]


def test_build_snapshot():
    running = [
        seen("web", "front", "10.1.0.2", aliases=("www",), exposed=("80/tcp",),
             links=(LinkRequest("db", "database"), LinkRequest("cache", "cache"))),
        seen("cache", "front", "10.1.0.3", dns=("9.9.9.9:5353",)),
        seen("starting", "front", None),
        seen("db", "back", "10.2.0.2"),
        seen("secret", "vault", "10.3.0.2"),
    ]
    snap = build_snapshot(NETS, running, ["1.1.1.1"], ttl=3)
    assert sorted(snap.views) == ["10.1.0.2", "10.1.0.3", "10.2.0.2", "10.3.0.2"]
    assert (snap.networks, snap.subnets, snap.ttl) == ({"front", "back", "vault"}, tuple(n.subnet for n in NETS), 3)
    web = snap.views["10.1.0.2"]
    for name in ["web", "web-host", "web000000000", "web.front", "www", "cache"]:
        assert web.lookup(name) is not None, name
    assert web.lookup("web")[0] == Member("web", "10.1.0.2", ((80, "tcp"),))
    assert web.lookup("starting") is None
    assert web.lookup("database") is None and web.lookup("db") is None   # db is on another network
    assert "cache" in web.links
    assert (web.upstreams, web.forward) == ((("1.1.1.1", 53),), True)
    assert snap.views["10.1.0.3"].upstreams == (("9.9.9.9", 5353),)     # --dns beats the daemon's
    assert snap.views["10.3.0.2"].forward is False                      # internal network
    assert addresses(reply("web.front", snap=snap, client="10.1.0.3")) == ["10.1.0.2"]
    assert reply("web.front", snap=snap, client="10.2.0.2").header.rcode == RCODE.NXDOMAIN


def test_upstream_list():
    assert upstream_list(["1.1.1.1", "9.9.9.9:5353", "2001:db8::1"]) == \
        (("1.1.1.1", 53), ("9.9.9.9", 5353), ("2001:db8::1", 53))
    for bad in ["dns.google", "1.2.3.4:", "1.2.3.4:0", "1.2.3.4:65536", "1.2.3.4:x", "1.2.3.4:５３", "", "[::1]:53"]:
        with pytest.raises(InvalidArgument):
            upstream_list([bad])
    with pytest.raises(InvalidArgument):
        build_snapshot(NETS, [], ["1.1.1.1", "nope"])


def test_hosts_file():
    me = seen("web", "front", "10.1.0.2", links=(LinkRequest("db", "database"), LinkRequest("cache", "cache"),
                                                LinkRequest("gone", "gone")))
    by_name = {c.name: c for c in [me, seen("db", "front", "10.1.0.3"), seen("cache", "front", "10.1.0.4")]}
    assert hosts_file(me, by_name) == (
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "10.1.0.2\tweb-host web\n"
        "10.1.0.3\tdatabase db-host db\n"
        "10.1.0.4\tcache cache-host\n")


def test_resolv_conf():
    assert resolv_conf("10.1.0.1", ["8.8.8.8"]) == "nameserver 10.1.0.1\noptions ndots:0\n"
    assert resolv_conf(None, ["8.8.8.8", "bad", "1.1.1.1:5353", "2001:db8::1"]) == \
        "nameserver 8.8.8.8\nnameserver 2001:db8::1\n"
    assert resolv_conf(None, []).startswith("# no DNS server configured")
