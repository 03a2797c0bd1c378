"""portlink.parse: the one parser of ports, protocols, addresses and durations,
with the exact messages a user sees."""

import math
from ipaddress import IPv4Address, IPv6Address

import pytest

from portlink import parse
from portlink.errors import InvalidArgument, InvalidValue


def message(fn, *args, **kw) -> str:
    with pytest.raises(InvalidValue) as e:
        fn(*args, **kw)
    return str(e.value)


def test_invalid_value_is_both_invalid_argument_and_value_error():
    e = InvalidValue("x")
    assert isinstance(e, InvalidArgument) and isinstance(e, ValueError) and e.status == 400


# -- ports ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [("1", 1), ("80", 80), ("65535", 65535), ("0080", 80)])
def test_port(text, want):
    assert parse.port("--listen", text) == want


@pytest.mark.parametrize("text", ["0", "65536", "99999", "", " 80", "80 ", "+80", "-1", "８０", "٨٠", "80.0", "x"])
def test_port_rejects(text):
    assert message(parse.port, "--listen", text) == \
        f"invalid --listen {text!r}: expected a port number from 1 to 65535"


def test_port_names_the_spec_it_is_in():
    assert message(parse.port, "port", "0", within="8080:0") == \
        "invalid port '0' in '8080:0': expected a port number from 1 to 65535"


def test_port_rejects_what_is_not_text():
    assert message(parse.port, "port", 80) == "invalid port 80: expected a port number from 1 to 65535"


@pytest.mark.parametrize("n, ok", [(1, True), (65535, True), (0, False), (65536, False), (True, False),
                                   (80.0, False), ("80", False), (None, False)])
def test_is_port(n, ok):
    assert parse.is_port(n) is ok


def test_port_range():
    assert parse.port_range("port", "80") == range(80, 81)
    assert parse.port_range("port", "8000-8002") == range(8000, 8003)
    assert message(parse.port_range, "port", "90-80", within="90-80/tcp") == \
        "invalid port range '90-80' in '90-80/tcp': end before start"
    assert message(parse.port_range, "port", "80-", within="80-") == \
        "invalid port '' in '80-': expected a port number from 1 to 65535"


# -- protocols -----------------------------------------------------------------------

def test_split_proto():
    assert parse.split_proto("80") == ("80", "tcp")
    assert parse.split_proto("80", default=None) == ("80", None)
    assert parse.split_proto("80/udp") == ("80", "udp")
    assert parse.split_proto("1.2.3.4:80:80/UDP", fold_case=True) == ("1.2.3.4:80:80", "udp")
    assert message(parse.split_proto, "80/UDP") == "invalid protocol 'UDP' in '80/UDP': use tcp or udp"
    assert message(parse.split_proto, "80/sctp", within="x:80/sctp") == \
        "invalid protocol 'sctp' in 'x:80/sctp': use tcp or udp"
    assert message(parse.split_proto, "80/", fold_case=True) == "invalid protocol '' in '80/': use tcp or udp"
    assert message(parse.split_proto, "53/udp", protos=("tcp",)) == "invalid protocol 'udp' in '53/udp': use tcp"


def test_port_proto():
    assert parse.port_proto("port", "5432/tcp") == (5432, "tcp")
    assert parse.port_proto("port", "5432") == (5432, "tcp")
    assert parse.port_proto("port", "53/udp", default=None) == (53, "udp")
    assert parse.port_proto("port", "53", default=None) == (53, None)
    assert message(parse.port_proto, "port", "0/tcp") == \
        "invalid port '0' in '0/tcp': expected a port number from 1 to 65535"
    assert message(parse.port_proto, "port", "junk") == \
        "invalid port 'junk': expected a port number from 1 to 65535"
    assert message(parse.port_proto, "port", "53/udp", protos=("tcp",)) == \
        "invalid protocol 'udp' in '53/udp': use tcp"


# -- addresses -----------------------------------------------------------------------

def test_ip():
    assert parse.ip("--bind", "10.0.0.1") == IPv4Address("10.0.0.1")
    assert parse.ip("--bind", "FD00::1") == IPv6Address("fd00::1")
    for bad in ("", "10.0.0.300", "db.local", " 10.0.0.1", "1.2.3"):
        assert message(parse.ip, "--bind", bad) == f"invalid --bind {bad!r}: expected an IP address"
    assert message(parse.ip, "--bind", None) == "invalid --bind None: expected an IP address"


def test_ipv4():
    assert parse.ipv4("host address", "127.0.0.1") == IPv4Address("127.0.0.1")
    assert message(parse.ipv4, "host address", "localhost", within="localhost:80:80") == \
        "invalid host address 'localhost' in 'localhost:80:80': expected an IPv4 address"
    assert message(parse.ipv4, "host address", "::1", within="::1:80:80") == \
        "invalid host address '::1' in '::1:80:80': IPv4 only"
    assert message(parse.ipv4, "address", "::1") == "invalid address '::1': IPv4 only"


@pytest.mark.parametrize("text, kw, want", [
    ("10.0.0.7:15432", {}, ("10.0.0.7", 15432)),
    ("[fd00::7]:8080", {}, ("fd00::7", 8080)),
    ("[FD00::7]:8080", {}, ("fd00::7", 8080)),
    ("1.1.1.1", {"default_port": 53}, ("1.1.1.1", 53)),
    ("9.9.9.9:5353", {"default_port": 53}, ("9.9.9.9", 5353)),
    ("2001:db8::1", {"default_port": 53}, ("2001:db8::1", 53)),          # bare IPv6: a host, as a whole
    ("2001:db8::1", {"default_port": 53, "brackets": False}, ("2001:db8::1", 53)),
    ("[::1]", {"default_port": 8500}, ("::1", 8500)),
    ("consul", {"default_port": 8500, "names": True}, ("consul", 8500)),
    ("Consul.Example:8501", {"names": True}, ("Consul.Example", 8501)),
    ("localhost:9101", {"names": True}, ("localhost", 9101)),
    ("127.0.0.1:9101", {"names": True}, ("127.0.0.1", 9101)),
])
def test_hostport(text, kw, want):
    assert parse.hostport("addr", text, **kw) == want


@pytest.mark.parametrize("text, kw, want", [
    ("10.0.0.7", {}, "invalid target '10.0.0.7': expected IP:PORT ([IPv6]:PORT)"),
    ("fd00::7:80", {}, "invalid target 'fd00::7:80': expected IP:PORT ([IPv6]:PORT)"),
    (":80", {}, "invalid target ':80': expected IP:PORT ([IPv6]:PORT)"),
    ("", {}, "invalid target '': expected IP:PORT ([IPv6]:PORT)"),
    ("[fd00::7]80", {}, "invalid target '[fd00::7]80': expected IP:PORT ([IPv6]:PORT)"),
    ("[fd00::7:80", {}, "invalid target '[fd00::7:80': expected IP:PORT ([IPv6]:PORT)"),
    ("[10.0.0.7]:80", {}, "invalid target '[10.0.0.7]:80': expected IP:PORT ([IPv6]:PORT)"),
    ("[]:80", {}, "invalid target '[]:80': expected IP:PORT ([IPv6]:PORT)"),
    ("db.local:5432", {}, "invalid target 'db.local': expected an IP address"),
    ("10.0.0.300:80", {}, "invalid target '10.0.0.300': expected an IP address"),
    ("10.0.0.7:99999", {}, "invalid target '99999': expected a port number from 1 to 65535"),
    ("10.0.0.7:", {}, "invalid target '': expected a port number from 1 to 65535"),
    ("[::1]:53", {"default_port": 53, "brackets": False}, "invalid target '[::1]:53': expected an IP address"),
    ("1.2.3.4:５３", {"default_port": 53}, "invalid target '５３': expected a port number from 1 to 65535"),
    ("nowhere", {"names": True}, "invalid target 'nowhere': expected HOST:PORT ([IPv6]:PORT)"),
    ("a b:80", {"names": True}, "invalid target 'a b': expected an IP address or a host name"),
    ("user@consul", {"names": True, "default_port": 1}, "invalid target 'user@consul': expected an IP address "
                                                        "or a host name"),
    (":8500", {"names": True, "default_port": 1}, "invalid target ':8500': expected HOST[:PORT] ([IPv6]:PORT)"),
])
def test_hostport_rejects(text, kw, want):
    assert message(parse.hostport, "target", text, **kw) == want


# -- durations -----------------------------------------------------------------------

@pytest.mark.parametrize("text, secs", [
    ("10", 10.0), ("2.5", 2.5), ("0", 0.0), (" 10 ", 10.0), ("1e3", 1000.0),
    ("10s", 10.0), ("500ms", 0.5), ("2m", 120.0), ("1h30m", 5400.0), ("1.5d", 129600.0),
    ("250us", 0.00025), ("250µs", 0.00025), ("100ns", 1e-7), (".5s", 0.5), ("30 s", 30.0), ("1h 30m", 5400.0),
])
def test_duration(text, secs):
    assert parse.duration("--cooldown", text) == pytest.approx(secs)


@pytest.mark.parametrize("text", ["", "  ", "s", "m", "10x", "10 minutes", "1h30", "-10m", "inf", "nan", "soon",
                                  "1e999s", "ten seconds"])
def test_duration_rejects(text):
    assert message(parse.duration, "--cooldown", text) == \
        f"invalid --cooldown {text!r}: expected a duration like 10s, 500ms, 2m or 1h30m (a bare number is seconds)"


def test_duration_bare_number_keeps_its_sign_for_the_caller_to_check():
    assert parse.duration("stop timeout", "-1") == -1.0


def test_is_number():
    assert parse.is_number("10") and parse.is_number("2.5") and parse.is_number("1e3")
    assert not any(parse.is_number(t) for t in ("", "10s", "inf", "nan", "x"))
    assert not parse.is_number(None)
    assert math.isfinite(parse.duration("t", "1e308"))
