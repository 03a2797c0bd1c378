"""netns.rtnl's requests, read back by pyroute2's own decoders (the library
attach used before): what the kernel is asked is what pyroute2 would have sent."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from portlink.netns import rtnl

REQUEST_ACK = 0x1 | 0x4
CREATE_EXCL = 0x400 | 0x200


def decoded(cls, data: bytes):
    m = cls(data)
    m.decode()
    assert m["header"]["length"] == len(data)
    return m


def test_a_veth_pair_is_made_on_the_bridge_with_its_peer_in_the_namespace():
    m = decoded(ifinfmsg, rtnl.new_veth("plv-0123abcd", 7, "eth0", 42, 2, "02:42:0a:00:00:02"))
    assert m["header"]["type"] == 16 and m["header"]["flags"] == REQUEST_ACK | CREATE_EXCL
    assert m.get_attr("IFLA_IFNAME") == "plv-0123abcd" and m.get_attr("IFLA_MASTER") == 7
    info = m.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "veth"
    peer = info.get_attr("IFLA_INFO_DATA").get_attr("VETH_INFO_PEER")
    assert peer["index"] == 2
    assert peer.get_attr("IFLA_IFNAME") == "eth0" and peer.get_attr("IFLA_NET_NS_FD") == 42
    assert peer.get_attr("IFLA_ADDRESS") == "02:42:0a:00:00:02"


def test_no_ipv6_addresses_sets_the_generation_mode_to_none():
    m = decoded(ifinfmsg, rtnl.no_ipv6_addresses(5))
    assert m["index"] == 5 and m["flags"] == 0 and m["change"] == 0
    inet6 = m.get_attr("IFLA_AF_SPEC").get_attr("AF_INET6")
    assert inet6.get_attr("IFLA_INET6_ADDR_GEN_MODE") == 1


def test_link_up_changes_only_the_up_flag():
    m = decoded(ifinfmsg, rtnl.link_up(9))
    assert (m["index"], m["flags"], m["change"]) == (9, 1, 1) and m["header"]["flags"] == REQUEST_ACK


def test_hairpin_is_a_bridge_port_setting_nested_as_the_bridge_reads_it():
    data = rtnl.hairpin(5)
    m = decoded(ifinfmsg, data)
    assert m["header"]["type"] == 19 and m["family"] == 7 and m["index"] == 5
    assert m.get_attr("IFLA_PROTINFO").get_attr("IFLA_BRPORT_MODE") == 1
    # unflagged, the bridge would take it for the old one-byte port state
    assert struct.unpack_from("=H", data, 16 + 16 + 2)[0] == 12 | 0x8000


def test_an_address_and_a_default_route():
    a = decoded(ifaddrmsg, rtnl.add_address(2, IPv4Address("10.1.2.3"), 24))
    assert (a["family"], a["prefixlen"], a["index"]) == (2, 24, 2)
    assert a.get_attr("IFA_LOCAL") == a.get_attr("IFA_ADDRESS") == "10.1.2.3"
    r = decoded(rtmsg, rtnl.add_default_route(IPv4Address("10.1.2.1"), 2))
    assert (r["dst_len"], r["table"], r["proto"], r["scope"], r["type"]) == (0, 254, 3, 0, 1)
    assert r.get_attr("RTA_GATEWAY") == "10.1.2.1" and r.get_attr("RTA_OIF") == 2


def ack(seq: int, error: int) -> bytes:
    return struct.pack("=IHHIIi", 36, 2, 0, seq, 0, error) + b"\0" * 16


def test_the_acknowledgement_of_a_request_is_found_by_its_sequence_number():
    assert rtnl.ack_error(ack(3, 0), 3) == 0
    assert rtnl.ack_error(ack(3, -17), 3) == 17          # EEXIST
    assert rtnl.ack_error(ack(2, -1) + ack(3, -19), 3) == 19   # an older one's first
    assert rtnl.ack_error(ack(2, 0), 3) is None
    assert rtnl.ack_error(b"\x01\x00", 3) is None        # truncated: nothing to read
