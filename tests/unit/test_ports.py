"""Parsing of -p / --expose and conflict checks (pure)."""

from ipaddress import IPv4Address as A

import pytest

from portlink.errors import InvalidArgument
from portlink.runtime.ports import PortRequest, addresses_overlap, check_conflicts, parse_expose, parse_publish

LOCAL = A("127.0.0.1")


@pytest.mark.parametrize("spec, want", [
    ("80", [PortRequest("tcp", 80, None, None)]),
    ("8080:80", [PortRequest("tcp", 80, 8080, None)]),
    ("127.0.0.1:8080:80", [PortRequest("tcp", 80, 8080, LOCAL)]),
    ("0.0.0.0:8080:80", [PortRequest("tcp", 80, 8080, None)]),
    ("127.0.0.1::80", [PortRequest("tcp", 80, None, LOCAL)]),
    (":80", [PortRequest("tcp", 80, None, None)]),
    ("53/udp", [PortRequest("udp", 53, None, None)]),
    ("8080:80/TCP", [PortRequest("tcp", 80, 8080, None)]),
    (" 65535:1 ", [PortRequest("tcp", 1, 65535, None)]),
    ("8000-8002:9000-9002/udp", [PortRequest("udp", 9000, 8000, None),
                                 PortRequest("udp", 9001, 8001, None),
                                 PortRequest("udp", 9002, 8002, None)]),
    ("7000-7001", [PortRequest("tcp", 7000, None, None), PortRequest("tcp", 7001, None, None)]),
])
def test_parse_publish(spec, want):
    assert parse_publish(spec) == want


@pytest.mark.parametrize("spec, msg", [
    ("8000-8002:9000-9001", "differ in length"),
    ("8000:9000-9001", "differ in length"),
    ("80/sctp", "invalid protocol 'sctp'"),
    ("80/", "invalid protocol ''"),
    ("0", "invalid port '0'"),
    ("65536", "invalid port '65536'"),
    ("8080:0", "invalid port '0'"),
    ("http", "invalid port 'http'"),
    ("80a", "invalid port '80a'"),
    ("-80", "invalid port ''"),
    ("80-", "invalid port ''"),
    ("", "invalid port ''"),
    ("9002-9000", "end before start"),
    ("localhost:8080:80", "invalid host address 'localhost'"),
    ("1.2.3:8080:80", "invalid host address '1.2.3'"),
    ("::1:8080:80", "expected [hostip:][hostport:]port"),        # IPv6 host: rejected
    ("[::1]:8080:80", "expected [hostip:][hostport:]port"),
    ("1.2.3.4:1:2:3", "expected [hostip:][hostport:]port"),
])
def test_parse_publish_rejected(spec, msg):
    with pytest.raises(InvalidArgument) as e:
        parse_publish(spec)
    assert msg in str(e.value)
    assert repr(spec.strip()) in str(e.value) or repr(spec) in str(e.value)


@pytest.mark.parametrize("spec", [
    pytest.param("\u00b2"),
    pytest.param("\u0668\u0660"),
])
def test_parse_publish_non_ascii_digits_rejected(spec):
    with pytest.raises(InvalidArgument):
        parse_publish(spec)


@pytest.mark.parametrize("spec, want", [
    ("80", ["80/tcp"]),
    ("53/udp", ["53/udp"]),
    ("7000-7002/udp", ["7000/udp", "7001/udp", "7002/udp"]),
])
def test_parse_expose(spec, want):
    assert parse_expose(spec) == want


@pytest.mark.parametrize("spec", ["0", "80/icmp", "7002-7000", "8080:80", "x"])
def test_parse_expose_rejected(spec):
    with pytest.raises(InvalidArgument):
        parse_expose(spec)


def R(port, ip=None, proto="tcp", cport=80):
    return PortRequest(proto, cport, port, A(ip) if ip else None)


@pytest.mark.parametrize("reqs", [
    [R(8080), R(8080, cport=81)],                          # same port twice, any ip
    [R(8080, "127.0.0.1"), R(8080)],                       # specific then any
    [R(8080), R(8080, "10.0.0.1")],                        # any then specific
    [R(8080, "127.0.0.1"), R(8080, "127.0.0.1")],          # same specific ip
    [R(53, proto="udp"), R(54, proto="udp"), R(53, proto="udp")],
])
def test_check_conflicts_rejects(reqs):
    with pytest.raises(InvalidArgument, match=f"host port {reqs[-1].host_port}/{reqs[-1].proto} is published twice"):
        check_conflicts(reqs)


@pytest.mark.parametrize("reqs", [
    [R(8080, "127.0.0.1"), R(8080, "127.0.0.2")],          # different ips
    [R(53, proto="tcp"), R(53, proto="udp")],              # tcp vs udp
    [R(None), R(None)],                                    # host port picked later
    [R(8080), R(8081)],
    parse_publish("8000-8002:9000-9002") + parse_publish("8003:80"),
])
def test_check_conflicts_allows(reqs):
    assert check_conflicts(reqs) is None


@pytest.mark.parametrize("a, b, want", [
    (None, None, True),
    (None, LOCAL, True),
    (LOCAL, None, True),
    (LOCAL, A("127.0.0.1"), True),
    (LOCAL, A("127.0.0.2"), False),
])
def test_addresses_overlap(a, b, want):
    assert addresses_overlap(a, b) is want
