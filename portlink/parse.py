"""The one parser of ports, addresses, durations and sizes (pure, stdlib only: the CLI
imports it too and must stay fast to import).

Every function takes `what`, the name of the field as the user wrote it
(`--metrics`, `target`, `port`), and raises InvalidValue (an InvalidArgument
that is also a ValueError) with a message naming that field and the bad text.
A caller that wants one message for a whole spec catches it and says its own."""

from __future__ import annotations

import math
import re
from ipaddress import IPv4Address, IPv6Address, ip_address

from portlink.errors import InvalidValue

PORT_MIN, PORT_MAX = 1, 65535
PROTOS = ("tcp", "udp")


def _in(within: str | None) -> str:
    return f" in {within!r}" if within is not None else ""


# -- ports ----------------------------------------------------------------------------

def is_port(n: object) -> bool:
    """An int (not a bool) from 1 to 65535: a port number as JSON carries it."""
    return type(n) is int and PORT_MIN <= n <= PORT_MAX


def port(what: str, text: str, *, within: str | None = None) -> int:
    """'80' -> 80: ASCII digits only (no sign, space or '٨٠'), 1 to 65535."""
    if not (isinstance(text, str) and text.isascii() and text.isdigit() and PORT_MIN <= int(text) <= PORT_MAX):
        raise InvalidValue(f"invalid {what} {text!r}{_in(within)}: expected a port number from 1 to 65535")
    return int(text)


def port_range(what: str, text: str, *, within: str | None = None) -> range:
    """'80' or '8000-8010' (inclusive) -> the ports."""
    lo, sep, hi = text.partition("-")
    a = port(what, lo, within=within)
    b = port(what, hi, within=within) if sep else a
    if b < a:
        raise InvalidValue(f"invalid {what} range {text!r}{_in(within)}: end before start")
    return range(a, b + 1)


def split_proto(text: str, *, within: str | None = None, default: str | None = "tcp",
                protos: tuple[str, ...] = PROTOS, fold_case: bool = False) -> tuple[str, str | None]:
    """'80/udp' -> ('80', 'udp'); no '/': (text, default). The suffix must be one of
    `protos` (as written, or in any case with fold_case)."""
    if "/" not in text:
        return text, default
    body, _, proto = text.rpartition("/")
    if fold_case:
        proto = proto.lower()
    if proto not in protos:
        use = " or ".join(protos) if len(protos) < 3 else ", ".join(protos)
        raise InvalidValue(f"invalid protocol {proto!r}{_in(within if within is not None else text)}: use {use}")
    return body, proto


def port_proto(what: str, text: str, *, default: str | None = "tcp",
               protos: tuple[str, ...] = PROTOS) -> tuple[int, str | None]:
    """'5432/tcp' or '5432' -> (5432, 'tcp' or `default`)."""
    body, proto = split_proto(text, default=default, protos=protos)
    return port(what, body, within=text if body != text else None), proto


# -- addresses ------------------------------------------------------------------------

def ip(what: str, text: str) -> IPv4Address | IPv6Address:
    """An IPv4 or IPv6 address as the standard library reads it."""
    try:
        return ip_address(text)
    except (ValueError, TypeError):
        raise InvalidValue(f"invalid {what} {text!r}: expected an IP address") from None


def ipv4(what: str, text: str, *, within: str | None = None) -> IPv4Address:
    try:
        addr = ip_address(text)
    except (ValueError, TypeError):
        raise InvalidValue(f"invalid {what} {text!r}{_in(within)}: expected an IPv4 address") from None
    if addr.version != 4:
        raise InvalidValue(f"invalid {what} {text!r}{_in(within)}: IPv4 only")
    return addr


_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")


def hostport(what: str, text: str, *, default_port: int | None = None, brackets: bool = True,
             names: bool = False) -> tuple[str, int]:
    """'IP:PORT' -> (ip, port), the address written the standard way.

    brackets: '[IPv6]:PORT' is accepted (a bare IPv6 address with a port is
    ambiguous: never). default_port: the ':PORT' may be left out, and then a
    bare IPv6 address is a host. names: the host may be a DNS name too."""
    t = text
    host: str
    port_text: str | None
    if brackets and t.startswith("["):
        host, close, rest = t[1:].partition("]")
        if not close or (rest and not rest.startswith(":")) or not host:
            raise InvalidValue(_expected(what, text, default_port, brackets, names))
        port_text = rest[1:] if rest else None
        if ip(what, host).version != 6:
            raise InvalidValue(_expected(what, text, default_port, brackets, names))
    elif t.count(":") > 1:
        host, port_text = t, None             # a bare IPv6 address: only as a whole
    else:
        host, colon, port_text = t.partition(":")
        if not colon:
            port_text = None
    if not host or (port_text is None and default_port is None):
        raise InvalidValue(_expected(what, text, default_port, brackets, names))
    if names and not _looks_like_ip(host):
        if not _HOSTNAME.match(host):
            raise InvalidValue(f"invalid {what} {host!r}: expected an IP address or a host name")
        addr = host
    else:
        addr = str(ip(what, host))
    return addr, default_port if port_text is None else port(what, port_text)


def _looks_like_ip(host: str) -> bool:
    return ":" in host or host.replace(".", "").isdigit()


def _expected(what: str, text: str, default_port: int | None, brackets: bool, names: bool) -> str:
    h = "HOST" if names else "IP"
    form = f"{h}[:PORT]" if default_port is not None else f"{h}:PORT"
    six = " ([IPv6]:PORT)" if brackets else ""
    return f"invalid {what} {text!r}: expected {form}{six}"


# -- durations ------------------------------------------------------------------------

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_PIECE = re.compile(rf"({_NUMBER})\s*(ns|us|µs|ms|s|m|h|d)")
_DURATION = re.compile(rf"(?:{_NUMBER}\s*(?:ns|us|µs|ms|s|m|h|d)\s*)+")
UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def is_number(text: str) -> bool:
    """A plain decimal number, as float() reads it and finite: '10', '2.5', '1e3'."""
    try:
        return math.isfinite(float(text))
    except (ValueError, TypeError):
        return False


def duration(what: str, text: str) -> float:
    """Seconds in Go's spelling plus days: '500ms', '10s', '2m', '1h30m', '1.5d';
    a bare number is seconds ('10', '2.5', as float() reads it, so '-1' too).
    Surrounding space is ignored; the result is finite. Callers check the range."""
    t = text.strip() if isinstance(text, str) else ""
    if t and is_number(t):
        return float(t)
    if t and _DURATION.fullmatch(t):
        secs = sum(float(n) * UNITS[u] for n, u in _PIECE.findall(t))
        if math.isfinite(secs):
            return secs
    raise InvalidValue(f"invalid {what} {text!r}: expected a duration like 10s, 500ms, 2m or 1h30m "
                       "(a bare number is seconds)")


# -- sizes ----------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.I)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def size(what: str, text: str | int) -> int:
    """Bytes in Docker's spelling: 10m, 512k, 1g, 1.5m, 32KiB, 10MB, 65536 (binary
    units, as docker's); an int is bytes already. Callers check the range."""
    if type(text) is int and text >= 0:
        return text
    m = _SIZE.match(text) if isinstance(text, str) else None
    n = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()] if m else math.inf
    if not math.isfinite(n):
        raise InvalidValue(f"invalid {what} {text!r}: expected a size like 10m, 512k or 1g")
    return int(n)
