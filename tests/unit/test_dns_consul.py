"""Consul names answered from the snapshot: services, tags, RFC 2782 names, SRV
with the address as target, `<hex>.addr.consul`, and what stays local."""

from ipaddress import IPv4Network

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from portlink.dns.answer import Forward, Reply, answer
from portlink.dns.zone import Member, NetworkZone, ServiceInstance, Snapshot, View

NET = IPv4Network("10.1.0.0/24")
CLIENT = "10.1.0.9"
UP = (("192.0.2.53", 53),)
WEB = Member("web", "10.1.0.2")

W1 = ServiceInstance("10.0.0.1", 8080, "n1", ("primary", "V1"))
W2 = ServiceInstance("10.0.0.2", 8081, "n2", ("v1",))
W3 = ServiceInstance("10.0.0.3", 8082, "n3")
W1_AGAIN = ServiceInstance("10.0.0.1", 9090, "n1", ("v1",))   # a second instance on the same address
DB = ServiceInstance("10.0.5.1", 5432, "n4", ("primary",))
SERVICES = {"web": (W1, W2, W3), "db": (DB,), "gone": (), "api": (W1, W1_AGAIN)}


def snapshot(services=SERVICES, networks=("net",), links=None, **kw) -> Snapshot:
    zone = NetworkZone(networks[0], NET)
    zone.add(WEB, ["web", f"web.{networks[0]}"])
    view = View(zone=zone, links=links or {}, upstreams=UP)
    return Snapshot(views={CLIENT: view}, networks=frozenset(networks), subnets=(NET,), ttl=7,
                    services=services, **kw)


def ask(name, qtype="A", snap=None, client=CLIENT, rotation=0, edns=False):
    query = DNSRecord.question(name, qtype)
    if edns:
        query.add_ar(EDNS0(udp_len=4096))
    return answer(DNSRecord.parse(query.pack()), client, snap or snapshot(), rotation)


def reply(name, qtype="A", **kw) -> DNSRecord:
    """The local reply, through the wire (so it must pack)."""
    result = ask(name, qtype, **kw)
    assert isinstance(result, Reply), result
    return DNSRecord.parse(result.record.pack())


def addresses(r: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in r.rr if rr.rtype == QTYPE.A]


def srv(r: DNSRecord) -> list[tuple[int, int, int, str]]:
    return [(rr.rdata.priority, rr.rdata.weight, rr.rdata.port, str(rr.rdata.target)) for rr in r.rr]


def glue(r: DNSRecord) -> list[tuple[str, str]]:
    return [(str(rr.rname), str(rr.rdata)) for rr in r.ar if rr.rtype == QTYPE.A]


# Services ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["web.service.consul", "web.service", "WEB.Service.CONSUL.", "Web.SERVICE."])
def test_service_answers_every_healthy_address(name):
    r = reply(name)
    assert (r.header.rcode, r.header.aa) == (RCODE.NOERROR, 1)
    assert sorted(addresses(r)) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert [rr.ttl for rr in r.rr] == [7, 7, 7]
    assert str(r.q.qname).lower() == name.lower().rstrip(".") + "."


def test_service_addresses_rotate_across_calls():
    orders = []
    for k in range(3):
        result = ask("web.service.consul", rotation=k)
        assert result.variants == 3
        orders.append(addresses(result.record))
    assert orders[0] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert orders[1] == orders[0][1:] + orders[0][:1] and orders[2] == orders[1][1:] + orders[1][:1]
    assert addresses(ask("web.service.consul", rotation=3).record) == orders[0]


def test_one_address_per_host_even_with_several_instances_on_it():
    result = ask("api.service.consul")
    assert (addresses(result.record), result.variants) == (["10.0.0.1"], 1)


def test_any_is_answered_like_a():
    assert sorted(addresses(reply("db.service.consul", "ANY"))) == ["10.0.5.1"]


# Tags and RFC 2782 names ------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("primary.web.service.consul", ["10.0.0.1"]),
    ("v1.web.service.consul", ["10.0.0.1", "10.0.0.2"]),   # tags match case-insensitively ("V1")
    ("V1.web.service", ["10.0.0.1", "10.0.0.2"]),
    ("primary.db.service", ["10.0.5.1"]),
    ("_web._primary.service.consul", ["10.0.0.1"]),
    ("_web._tcp.service.consul", ["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
    ("_web._udp.service", ["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
])
def test_tag_filters_and_rfc2782_names(name, expected):
    assert sorted(addresses(reply(name))) == expected


@pytest.mark.parametrize("name", ["canary.web.service.consul", "_web._canary.service.consul", "canary.web.service"])
def test_a_tag_no_instance_carries_is_nxdomain(name):
    r = reply(name)
    assert (r.header.rcode, r.header.aa, r.rr) == (RCODE.NXDOMAIN, 1, [])


# SRV --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["web.service.consul", "_web._tcp.service.consul", "web.service", "_web._tcp.service"])
def test_srv_has_one_record_per_instance_and_the_targets_a(name):
    r = reply(name, "SRV")
    assert r.header.rcode == RCODE.NOERROR
    assert srv(r) == [(1, 1, 8080, "0a000001.addr.consul."), (1, 1, 8081, "0a000002.addr.consul."),
                      (1, 1, 8082, "0a000003.addr.consul.")]
    assert glue(r) == [("0a000001.addr.consul.", "10.0.0.1"), ("0a000002.addr.consul.", "10.0.0.2"),
                       ("0a000003.addr.consul.", "10.0.0.3")]
    assert {rr.ttl for rr in r.rr + r.ar} == {7}


def test_srv_with_a_tag_and_shared_address_has_glue_once():
    r = reply("primary.api.service.consul", "SRV")
    assert srv(r) == [(1, 1, 8080, "0a000001.addr.consul.")]
    r = reply("_api._tcp.service.consul", "SRV")
    assert [p for _, _, p, _ in srv(r)] == [8080, 9090]
    assert glue(r) == [("0a000001.addr.consul.", "10.0.0.1")]
    assert srv(reply("_web._primary.service", "SRV")) == [(1, 1, 8080, "0a000001.addr.consul.")]


def test_srv_with_edns_keeps_opt_last():
    r = reply("db.service.consul", "SRV", edns=True)
    assert [rr.rtype for rr in r.ar] == [QTYPE.A, QTYPE.OPT]


def test_srv_of_a_service_without_instances_is_nxdomain():
    assert reply("gone.service.consul", "SRV").header.rcode == RCODE.NXDOMAIN


# addr names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, address", [("0a000001.addr.consul", "10.0.0.1"),
                                           ("C0A80A0B.ADDR.consul.", "192.168.10.11"),
                                           ("ffffffff.addr.consul", "255.255.255.255")])
def test_addr_name_answers_its_address(name, address):
    r = reply(name)
    assert (r.header.rcode, addresses(r), [rr.ttl for rr in r.rr]) == (RCODE.NOERROR, [address], [7])


@pytest.mark.parametrize("name", ["0a00001.addr.consul", "0a0000011.addr.consul", "0a00000g.addr.consul",
                                  "addr.consul", "x.0a000001.addr.consul"])
def test_bad_addr_names_are_nxdomain(name):
    assert reply(name).header.rcode == RCODE.NXDOMAIN


def test_addr_name_of_another_type_is_nodata():
    r = reply("0a000001.addr.consul", "AAAA")
    assert (r.header.rcode, r.rr) == (RCODE.NOERROR, [])


# NODATA, NXDOMAIN, never forwarded ------------------------------------------------------------

@pytest.mark.parametrize("qtype", ["AAAA", "TXT", "MX", "PTR"])
@pytest.mark.parametrize("name", ["web.service.consul", "web.service", "primary.db.service.consul"])
def test_existing_service_asked_as_another_type_is_nodata(name, qtype):
    r = reply(name, qtype)
    assert (r.header.rcode, r.header.aa, r.rr, r.ar) == (RCODE.NOERROR, 1, [], [])


@pytest.mark.parametrize("qtype", ["A", "AAAA", "SRV", "TXT"])
@pytest.mark.parametrize("name", [
    "nosuch.service.consul", "nosuch.service", "gone.service.consul", "_gone._tcp.service",
    "x.node.consul", "consul", "service.consul", "web.service.dc1.consul", "a.b.web.service.consul",
    "a.b.web.service", "_web.service.consul",
])
def test_other_consul_names_are_nxdomain_never_forwarded(name, qtype):
    r = reply(name, qtype)
    assert (r.header.rcode, r.header.aa, r.rr) == (RCODE.NXDOMAIN, 1, [])


def test_unknown_service_is_nxdomain_even_when_nothing_is_registered():
    assert reply("web.service.consul", snap=snapshot(services={})).header.rcode == RCODE.NXDOMAIN


def test_consul_names_are_ours_even_with_upstreams_off():
    snap = snapshot()
    snap.views[CLIENT].forward = False
    assert addresses(reply("db.service.consul", snap=snap)) == ["10.0.5.1"]


# Without Consul, nothing changes ----------------------------------------------------------------

@pytest.mark.parametrize("name, qtype", [("web.service.consul", "A"), ("_web._tcp.service.consul", "SRV"),
                                         ("0a000001.addr.consul", "A"), ("x.node.consul", "A"),
                                         ("web.service", "A")])
def test_without_consul_its_names_go_upstream(name, qtype):
    assert ask(name, qtype, snap=snapshot(services=None)) == Forward(UP)


def test_without_consul_a_single_label_consul_is_still_ours():
    assert reply("consul", snap=snapshot(services=None)).header.rcode == RCODE.NXDOMAIN


def test_other_names_are_still_forwarded_with_consul():
    assert ask("example.com") == Forward(UP)
    assert ask("web.service.example.com") == Forward(UP)
    assert ask("consul.example.com") == Forward(UP)


# Precedence -------------------------------------------------------------------------------------

def test_local_names_answer_as_before_with_consul():
    assert addresses(reply("web")) == ["10.1.0.2"]      # not the Consul service `web`
    assert addresses(reply("web.net")) == ["10.1.0.2"]
    assert reply("nosuch").header.rcode == RCODE.NXDOMAIN


def test_a_network_called_service_wins_for_its_names():
    snap = snapshot(networks=("service",))
    assert addresses(reply("web.service", snap=snap)) == ["10.1.0.2"]
    assert sorted(addresses(reply("db.service", snap=snap))) == ["10.0.5.1"]   # not a container: Consul
    assert sorted(addresses(reply("web.service.consul", snap=snap))) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_a_link_alias_wins_over_consul():
    old = Member("db-old", "10.1.0.7")
    snap = snapshot(links={"db.service": (old,), "db.service.consul": (old,)})
    assert addresses(reply("db.service", snap=snap)) == ["10.1.0.7"]
    assert addresses(reply("db.service.consul", snap=snap)) == ["10.1.0.7"]
    assert addresses(reply("primary.db.service", snap=snap)) == ["10.0.5.1"]


def test_a_container_named_service_keeps_its_srv_style_names():
    snap = snapshot(links={"service": (Member("service", "10.1.0.8", ((80, "tcp"),)),)})
    r = reply("_80._tcp.service", "SRV", snap=snap)
    assert srv(r) == [(0, 0, 80, "service.")]
    assert reply("_web._tcp.service", "SRV", snap=snap).rr == []   # the container's name, no such port


# Domain, clients ---------------------------------------------------------------------------------

def test_another_consul_domain():
    snap = snapshot(consul_domain="Mesh.Internal.")
    assert sorted(addresses(reply("db.service.mesh.internal", snap=snap))) == ["10.0.5.1"]
    assert srv(reply("db.service.mesh.internal", "SRV", snap=snap)) == [(1, 1, 5432, "0a000501.addr.mesh.internal.")]
    assert addresses(reply("0a000501.addr.mesh.internal", snap=snap)) == ["10.0.5.1"]
    assert addresses(reply("db.service", snap=snap)) == ["10.0.5.1"]
    assert reply("x.node.mesh.internal", snap=snap).header.rcode == RCODE.NXDOMAIN
    assert ask("db.service.consul", snap=snap) == Forward(UP)   # `consul` is nothing special now


@pytest.mark.parametrize("name", ["web.service.consul", "0a000001.addr.consul", "x.node.consul"])
def test_strangers_are_refused(name):
    assert reply(name, client="10.9.9.9").header.rcode == RCODE.REFUSED


def test_answers_depend_only_on_query_client_snapshot_and_rotation():
    # The server keeps packed replies per (client, query): a second call must pack the same bytes.
    snap = snapshot()
    for name, qtype in [("web.service.consul", "A"), ("web.service", "SRV"), ("0a000001.addr.consul", "A")]:
        wire = DNSRecord.question(name, qtype).pack()
        first = answer(DNSRecord.parse(wire), CLIENT, snap, 1).record.pack()
        assert answer(DNSRecord.parse(wire), CLIENT, snap, 1).record.pack() == first
        assert len(DNSRecord.parse(first).rr) > 0


# Connect-native instances (secure links' server sides) -------------------------------------

F_PLAIN = ServiceInstance("10.0.7.1", 5432, "n1")
F_TLS1 = ServiceInstance("10.0.7.1", 21000, "n1", ("v1",), native=True)
F_TLS3 = ServiceInstance("10.0.7.3", 21003, "n3", native=True)
MESH = {**SERVICES, "frontdb": (F_PLAIN, F_TLS1, F_TLS3), "secure": (F_TLS3,)}


@pytest.mark.parametrize("name", ["frontdb.service.consul", "frontdb.service", "_frontdb._tcp.service.consul"])
def test_a_plain_service_name_never_answers_a_connect_native_instance(name):
    snap = snapshot(services=MESH)
    assert addresses(reply(name, snap=snap)) == ["10.0.7.1"]
    r = reply(name, "SRV", snap=snap)
    assert srv(r) == [(1, 1, 5432, "0a000701.addr.consul.")]   # the plain port, never a TLS one


@pytest.mark.parametrize("name", ["secure.service.consul", "secure.service", "_secure._tcp.service",
                                  "v1.frontdb.service.consul"])
def test_a_service_with_only_connect_native_instances_is_nxdomain_as_plain(name):
    assert reply(name, snap=snapshot(services=MESH)).header.rcode == RCODE.NXDOMAIN
    assert reply(name, "SRV", snap=snapshot(services=MESH)).header.rcode == RCODE.NXDOMAIN


@pytest.mark.parametrize("name", ["frontdb.connect.consul", "frontdb.connect", "FrontDB.Connect.CONSUL."])
def test_connect_names_answer_only_the_connect_native_instances(name):
    snap = snapshot(services=MESH)
    r = reply(name, snap=snap)
    assert (r.header.rcode, r.header.aa, sorted(addresses(r))) == (RCODE.NOERROR, 1, ["10.0.7.1", "10.0.7.3"])
    r = reply(name, "SRV", snap=snap)
    assert sorted(srv(r)) == [(1, 1, 21000, "0a000701.addr.consul."), (1, 1, 21003, "0a000703.addr.consul.")]
    assert sorted(glue(r)) == [("0a000701.addr.consul.", "10.0.7.1"), ("0a000703.addr.consul.", "10.0.7.3")]
    assert reply(name, "AAAA", snap=snap).header.rcode == RCODE.NOERROR     # NODATA: the name exists


@pytest.mark.parametrize("name", ["web.connect.consul", "nosuch.connect.consul", "gone.connect",
                                  "connect.consul", "_frontdb._tcp.connect.consul", "a.frontdb.connect.consul"])
def test_connect_names_without_connect_native_instances_are_nxdomain_never_forwarded(name):
    r = reply(name, snap=snapshot(services=MESH))
    assert (r.header.rcode, r.header.aa, r.rr) == (RCODE.NXDOMAIN, 1, [])


def test_a_container_named_like_a_connect_name_wins():
    zone = NetworkZone("net", NET)
    zone.add(Member("x", "10.1.0.5"), ["frontdb.connect"])
    snap = Snapshot(views={CLIENT: View(zone=zone, upstreams=UP)}, networks=frozenset({"net"}),
                    subnets=(NET,), services=MESH)
    assert addresses(reply("frontdb.connect", snap=snap)) == ["10.1.0.5"]


def test_without_consul_connect_names_go_upstream():
    assert ask("frontdb.connect.consul", snap=snapshot(services=None)) == Forward(UP)


def test_the_snapshot_keeps_which_catalog_instances_are_connect_native():
    from portlink.catalog.services import Instance
    from portlink.runtime.discovery import consul_services
    got = consul_services({"frontdb": (Instance("a", "frontdb", "10.0.7.1", 5432),
                                       Instance("b", "frontdb", "10.0.7.1", 21000, native=True))})
    assert [(i.port, i.native) for i in got["frontdb"]] == [(5432, False), (21000, True)]
