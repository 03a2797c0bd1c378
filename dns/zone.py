"""What the resolver knows: a plain in-memory snapshot, rebuilt by the runtime
on every container or network change and swapped in whole.

Answering is a pure function of (query, snapshot), so it is tested without
sockets. A client is known by its source address; each client has a view: the
names on its network (shared by every member of that network) plus its own
link aliases, which are checked first."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, ip_address

DEFAULT_TTL = 1   # seconds: answers follow a moved container within a second, also in caches


@dataclass(frozen=True)
class Member:
    """One container answering under a name."""

    name: str                                # the container's name: the SRV target
    address: str                             # IPv4, dotted
    ports: tuple[tuple[int, str], ...] = ()  # exposed (port, proto)


@dataclass
class NetworkZone:
    """Names every container on one network sees: name, hostname, aliases,
    short id and name.<network>; PTR for its addresses."""

    name: str
    subnet: IPv4Network
    names: dict[str, tuple[Member, ...]] = field(default_factory=dict)
    ptr: dict[str, str] = field(default_factory=dict)   # dotted IPv4 -> container name

    def add(self, member: Member, labels: list[str]) -> None:
        for label in labels:
            key = label.lower().rstrip(".")
            if member not in self.names.get(key, ()):
                self.names[key] = self.names.get(key, ()) + (member,)
        self.ptr.setdefault(member.address, member.name)


@dataclass
class View:
    """What one client may resolve, and where the rest goes."""

    zone: NetworkZone | None
    links: dict[str, tuple[Member, ...]] = field(default_factory=dict)   # alias -> linked container
    upstreams: tuple[tuple[str, int], ...] = ()
    forward: bool = True     # False on internal networks: nothing leaves them, not even DNS

    def lookup(self, name: str) -> tuple[Member, ...] | None:
        hit = self.links.get(name)
        if hit is None and self.zone is not None:
            hit = self.zone.names.get(name)
        return hit

    def reverse(self, address: str) -> str | None:
        for members in self.links.values():
            for m in members:
                if m.address == address:
                    return m.name
        return self.zone.ptr.get(address) if self.zone is not None else None


@dataclass(frozen=True)
class ServiceInstance:
    """One healthy instance of a Consul service."""

    address: str                  # IPv4, dotted: A records and the `<hex>.addr.<domain>` SRV target
    port: int
    node: str = ""
    tags: tuple[str, ...] = ()
    # Connect-native (a secure links server side): speaks mutual TLS only, so it
    # is answered under `<svc>.connect`, never to a plain `<svc>.service` client.
    native: bool = False


@dataclass
class Snapshot:
    views: dict[str, View] = field(default_factory=dict)        # client address -> view
    networks: frozenset[str] = frozenset()                     # `x.<network>` names are ours
    subnets: tuple[IPv4Network, ...] = ()                      # reverse lookups inside are ours
    ttl: int = DEFAULT_TTL
    # None: Consul is not configured and its names go upstream like any other.
    # A dict: lower-case service name -> healthy instances (possibly none), and
    # every name under consul_domain (and `x.service`) is answered here.
    services: dict[str, tuple[ServiceInstance, ...]] | None = None
    consul_domain: str = "consul"

    def owns_reverse(self, address: str) -> bool:
        ip = ip_address(address)
        return any(ip in s for s in self.subnets)

    def owns_name(self, name: str) -> bool:
        # Single-label names never leave (as aardvark-dns): a bare `db` that is not
        # a container is NXDOMAIN here rather than a query to the outside world.
        if name and "." not in name:   # "" is the root: not ours
            return True
        return any(name.endswith("." + n) for n in self.networks)


def address_of_reverse(name: str) -> str | None:
    """'4.3.2.1.in-addr.arpa' -> '1.2.3.4'; None if not a full IPv4 reverse name."""
    if not name.endswith(".in-addr.arpa"):
        return None
    parts = name[: -len(".in-addr.arpa")].split(".")
    if len(parts) != 4:
        return None
    try:
        return str(IPv4Address(".".join(reversed(parts))))
    except ValueError:
        return None
