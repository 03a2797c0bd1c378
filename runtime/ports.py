"""Parsing of -p / --expose specs (pure).

  -p [hostip:][hostport[-end]:]port[-end][/proto]     Docker's syntax
  --expose port[-end][/proto]
A host port left out is picked from the ephemeral range by the runtime."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from portlink import parse
from portlink.errors import InvalidArgument

EPHEMERAL = range(32768, 61000)


@dataclass(frozen=True)
class PortRequest:
    proto: str
    container_port: int
    host_port: int | None          # None: pick one
    host_ip: IPv4Address | None    # None: every local address

    def key(self) -> str:
        return f"{self.container_port}/{self.proto}"


def _range(text: str, spec: str) -> list[int]:
    return list(parse.port_range("port", text, within=spec))


def _proto(spec: str) -> tuple[str, str]:
    body, proto = parse.split_proto(spec, within=spec, fold_case=True)
    return body, proto


def parse_publish(spec: str) -> list[PortRequest]:
    body, proto = _proto(spec.strip())
    host_ip = None
    parts = body.split(":")
    if len(parts) == 3:
        ip_text, host_text, ctr_text = parts
        if ip_text:
            host_ip = parse.ipv4("host address", ip_text, within=spec)
            if host_ip.is_unspecified:
                host_ip = None
    elif len(parts) == 2:
        host_text, ctr_text = parts
    elif len(parts) == 1:
        host_text, ctr_text = "", parts[0]
    else:
        raise InvalidArgument(f"invalid port spec {spec!r}: expected [hostip:][hostport:]port[/proto]")
    ctr = _range(ctr_text, spec)
    if host_text:
        host = _range(host_text, spec)
        if len(host) != len(ctr):
            raise InvalidArgument(f"invalid port spec {spec!r}: host range and container range differ in length")
    else:
        host = [None] * len(ctr)
    return [PortRequest(proto, c, h, host_ip) for h, c in zip(host, ctr)]


def parse_expose(spec: str) -> list[str]:
    body, proto = _proto(spec.strip())
    return [f"{p}/{proto}" for p in _range(body, spec)]


def addresses_overlap(a: IPv4Address | None, b: IPv4Address | None) -> bool:
    """Two bindings of one port collide when either is "any address" or both are the same."""
    return a is None or b is None or a == b


def check_conflicts(requests: list[PortRequest]) -> None:
    """Two requests of one run that claim the same host port."""
    bound: dict[tuple[str, int], list[IPv4Address | None]] = {}
    for r in requests:
        if r.host_port is None:
            continue
        ips = bound.setdefault((r.proto, r.host_port), [])
        if any(addresses_overlap(r.host_ip, ip) for ip in ips):
            raise InvalidArgument(f"host port {r.host_port}/{r.proto} is published twice in this run")
        ips.append(r.host_ip)
