"""IPAM as pure functions: subnet/gateway parsing, overlap, auto pools, next_free."""

from ipaddress import IPv4Address as A, IPv4Network as N

import pytest

from portlink.errors import Conflict, InvalidArgument
from portlink.netns import ipam


@pytest.mark.parametrize("text", ["10.90.0.0/24", "192.168.7.0/30", "172.16.0.0/12", "10.0.0.0/8"])
def test_parse_subnet_valid(text):
    assert ipam.parse_subnet(text) == N(text)


@pytest.mark.parametrize("text, why", [
    ("10.0.0.1/24", "host bits"),        # strict: host bits set
    ("fd00::/64", "only IPv4"),
    ("10.0.0.0/31", "/31 has no room"),
    ("10.0.0.5/32", "/32 has no room"),
    ("127.0.0.0/8", "not a unicast range"),
    ("224.0.0.0/24", "not a unicast range"),
    ("169.254.0.0/16", "not a unicast range"),
    ("banana", "does not appear"),
    ("10.0.0.0/33", "10.0.0.0/33"),
    ("", "invalid subnet"),
])
def test_parse_subnet_rejected_names_input(text, why):
    with pytest.raises(InvalidArgument) as e:
        ipam.parse_subnet(text)
    assert f"invalid subnet {text!r}" in str(e.value)
    assert why in str(e.value)


SUB = N("10.0.0.0/24")


@pytest.mark.parametrize("text, want", [
    (None, "10.0.0.1"), ("", "10.0.0.1"), ("10.0.0.1", "10.0.0.1"),
    ("10.0.0.254", "10.0.0.254"), ("10.0.0.77", "10.0.0.77"),
])
def test_parse_gateway_ok(text, want):
    assert ipam.parse_gateway(text, SUB) == A(want)


@pytest.mark.parametrize("text", ["10.0.1.1", "192.168.0.1", "10.0.0.0", "10.0.0.255", "::a00:2"])
def test_parse_gateway_not_a_host_of_subnet(text):
    with pytest.raises(InvalidArgument, match="not a host address of subnet 10.0.0.0/24"):
        ipam.parse_gateway(text, SUB)


@pytest.mark.parametrize("text", ["gateway", "10.0.0.1/32", "10.0.0"])
def test_parse_gateway_garbage(text):
    with pytest.raises(InvalidArgument, match=f"invalid gateway {text!r}"):
        ipam.parse_gateway(text, SUB)


def test_check_overlap_names_other_network():
    existing = [("front", N("10.1.0.0/24")), ("back", N("10.2.0.0/16"))]
    ipam.check_overlap(N("10.3.0.0/24"), existing)          # no overlap: no error
    ipam.check_overlap(N("10.1.1.0/24"), existing)          # adjacent, not overlapping
    with pytest.raises(Conflict) as e:
        ipam.check_overlap(N("10.2.5.0/24"), existing)
    assert "'back'" in str(e.value) and "10.2.0.0/16" in str(e.value)
    with pytest.raises(Conflict, match="'front'"):
        ipam.check_overlap(N("10.0.0.0/8"), existing)       # a supernet overlaps too


def test_auto_subnet_skips_taken():
    assert ipam.auto_subnet([]) == N("10.78.0.0/24")
    assert ipam.auto_subnet([N("10.78.0.0/24"), N("10.78.1.0/24")]) == N("10.78.2.0/24")
    # a wide user subnet covering the first 4 candidates pushes past it
    assert ipam.auto_subnet([N("10.78.0.0/22")]) == N("10.78.4.0/24")
    # a small subnet inside a candidate still takes the whole candidate
    assert ipam.auto_subnet([N("10.78.0.128/25")]) == N("10.78.1.0/24")


def test_auto_subnet_pool_exhausted():
    with pytest.raises(Conflict, match="no free /24"):
        ipam.auto_subnet([N("10.78.0.0/15")])


S29 = N("10.9.0.0/29")      # hosts .1 .. .6
GW = A("10.9.0.1")


@pytest.mark.parametrize("cursor, used, want", [
    (None, set(), "10.9.0.2"),                         # first after the gateway
    (A("10.9.0.2"), set(), "10.9.0.3"),                # after the cursor, not lowest free
    (A("10.9.0.3"), {A("10.9.0.4")}, "10.9.0.5"),      # skips used
    (A("10.9.0.6"), set(), "10.9.0.2"),                # wraps, skipping the gateway .1
    (A("10.9.0.5"), {A("10.9.0.6"), A("10.9.0.2")}, "10.9.0.3"),
    (A("10.99.0.9"), set(), "10.9.0.2"),               # a cursor outside the subnet: from the start
])
def test_next_free(cursor, used, want):
    assert ipam.next_free(S29, GW, used, cursor) == A(want)


def test_next_free_gateway_not_first():
    gw = A("10.9.0.3")
    assert ipam.next_free(S29, gw, set(), A("10.9.0.2")) == A("10.9.0.4")


def test_next_free_never_returns_used_or_gateway_and_fills_subnet():
    subnet, gw = N("10.8.0.0/28"), A("10.8.0.1")
    used, cursor = set(), None
    for _ in range(13):     # 14 hosts minus the gateway
        ip = ipam.next_free(subnet, gw, used, cursor)
        assert ip != gw and ip not in used and ip in subnet
        assert ip not in (subnet.network_address, subnet.broadcast_address)
        used.add(ip)
        cursor = ip
    assert len(used) == 13
    with pytest.raises(Conflict, match="no free address left in subnet 10.8.0.0/28"):
        ipam.next_free(subnet, gw, used, cursor)


def test_slash30_has_exactly_one_container_address():
    subnet = N("10.7.0.0/30")
    ip = ipam.next_free(subnet, A("10.7.0.1"), set(), None)
    assert ip == A("10.7.0.2")
    with pytest.raises(Conflict):
        ipam.next_free(subnet, A("10.7.0.1"), {ip}, ip)


def test_released_address_is_handed_out_last():
    subnet, gw = N("10.8.0.0/28"), A("10.8.0.1")
    used, cursor = set(), None
    for _ in range(5):                       # .2 .. .6
        cursor = ipam.next_free(subnet, gw, used, cursor)
        used.add(cursor)
    used.discard(A("10.8.0.3"))              # release .3
    order = []
    while True:
        try:
            cursor = ipam.next_free(subnet, gw, used, cursor)
        except Conflict:
            break
        order.append(cursor)
        used.add(cursor)
    assert order == [A(f"10.8.0.{i}") for i in range(7, 15)] + [A("10.8.0.3")]


def test_leased_texts_answer_for_addresses():
    from ipaddress import IPv4Address, IPv4Network
    from portlink.netns.ipam import next_free
    from portlink.runtime.networks import Leased
    used = Leased({"10.0.0.2", "10.0.0.3"})
    assert IPv4Address("10.0.0.2") in used and IPv4Address("10.0.0.4") not in used and len(used) == 2
    assert next_free(IPv4Network("10.0.0.0/29"), IPv4Address("10.0.0.1"), used, None) == IPv4Address("10.0.0.4")
