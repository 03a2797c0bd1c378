"""IP address management as pure functions. Leases are kept by the caller's
store (the runtime's SQLite state) so they persist across daemon restarts; this
module only decides which address is next and whether subnets collide."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from typing import Iterable

from portlink.errors import Conflict, InvalidArgument

# Pool for networks created without --subnet: 10.78.0.0/24, 10.78.1.0/24, ...
AUTO_POOL = ip_network("10.78.0.0/15")
AUTO_PREFIX = 24


def parse_subnet(text: str) -> IPv4Network:
    try:
        net = ip_network(text, strict=True)
    except ValueError as e:
        raise InvalidArgument(f"invalid subnet {text!r}: {e} (expected e.g. 10.90.0.0/24)") from None
    if net.version != 4:
        raise InvalidArgument(f"invalid subnet {text!r}: only IPv4 subnets are supported")
    if net.prefixlen > 30:
        raise InvalidArgument(f"invalid subnet {text!r}: a /{net.prefixlen} has no room for a gateway and a container (use /30 or larger)")
    if net.is_loopback or net.is_multicast or net.is_link_local or net.overlaps(ip_network("0.0.0.0/8")):
        raise InvalidArgument(f"invalid subnet {text!r}: not a unicast range usable for containers")
    return net


def parse_gateway(text: str | None, subnet: IPv4Network) -> IPv4Address:
    if not text:
        return subnet.network_address + 1
    try:
        gw = ip_address(text)
    except ValueError:
        raise InvalidArgument(f"invalid gateway {text!r}: not an IPv4 address") from None
    if gw not in subnet or gw in (subnet.network_address, subnet.broadcast_address):
        raise InvalidArgument(f"invalid gateway {gw}: not a host address of subnet {subnet}")
    return gw


def check_overlap(subnet: IPv4Network, existing: Iterable[tuple[str, IPv4Network]]) -> None:
    for name, other in existing:
        if subnet.overlaps(other):
            raise Conflict(f"subnet {subnet} overlaps {other} of network {name!r}")


def auto_subnet(existing: Iterable[IPv4Network]) -> IPv4Network:
    taken = list(existing)
    for cand in AUTO_POOL.subnets(new_prefix=AUTO_PREFIX):
        if not any(cand.overlaps(t) for t in taken):
            return cand
    raise Conflict(f"no free /{AUTO_PREFIX} left in {AUTO_POOL}; pass --subnet")


def next_free(subnet: IPv4Network, gateway: IPv4Address, used: set[IPv4Address],
              cursor: IPv4Address | None) -> IPv4Address:
    """The first free host address after `cursor`, wrapping around once.

    Round robin instead of lowest-free: an address just released is handed out
    last, so a stale peer (DNS cache, conntrack) rarely meets a new owner."""
    first = int(subnet.network_address) + 1
    last = int(subnet.broadcast_address) - 1
    size = last - first + 1
    start = int(cursor) + 1 if cursor is not None and first <= int(cursor) <= last else first
    for i in range(size):
        cand = IPv4Address(first + (start - first + i) % size)
        if cand != gateway and cand not in used:
            return cand
    raise Conflict(f"no free address left in subnet {subnet} ({len(used)} leased)")
