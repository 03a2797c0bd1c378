"""How containers on one host find each other: the resolver's snapshot and
each container's /etc/hosts, as pure functions of the recorded state.

Both are rebuilt from the store after every change (run, start, stop, exit,
rm, network create/rm), so a linked container that comes back with a new
address, or is recreated under the same name, is followed at once; Docker
never did this (moby #12067, #10066)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from ipaddress import ip_address
from typing import Iterable

from portlink import parse
from portlink.errors import InvalidArgument, InvalidValue
from portlink.catalog.services import Instance
from portlink.dns.zone import DEFAULT_TTL, Member, NetworkZone, ServiceInstance, Snapshot, View
from portlink.netns.model import LinkFlow, NetworkSpec
from portlink.runtime import hostopts
from portlink.runtime.links import LinkedContainer, LinkRequest, hosts_line


@dataclass(frozen=True)
class Seen:
    """A running container as name resolution sees it."""

    id: str
    name: str
    hostname: str
    network: str
    ip: str | None
    aliases: tuple[str, ...] = ()
    exposed: tuple[str, ...] = ()                 # "80/tcp"
    env: tuple[str, ...] = ()                     # image env then user env
    links: tuple[LinkRequest, ...] = ()
    dns: tuple[str, ...] = ()                     # the container's own upstreams (--dns)
    extra_hosts: tuple[str, ...] = ()             # --add-host NAME:IP (runtime.hostopts)

    def member(self) -> Member:
        ports = tuple(parse.port_proto("exposed port", e) for e in self.exposed)
        return Member(self.name, self.ip or "", ports)

    def linked(self) -> LinkedContainer:
        return LinkedContainer(self.name, self.hostname, self.ip or "", self.exposed, self.env)


def upstream_list(servers: list[str] | tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """'1.2.3.4' or '1.2.3.4:5353' -> ((host, port), ...); InvalidArgument otherwise."""
    out = []
    for s in servers:
        try:
            out.append(parse.hostport("DNS server", s, default_port=53, brackets=False))
        except InvalidValue:
            raise InvalidArgument(f"invalid DNS server {s!r}: expected an IP address, optionally with :port") from None
    return tuple(out)


def resolve_links(me: Seen, by_name: dict[str, Seen]) -> list[tuple[LinkRequest, Seen | None]]:
    """Each link with the container it names now (None: gone, stopped or elsewhere)."""
    out = []
    for link in me.links:
        child = by_name.get(link.name)
        ok = child is not None and child.ip and child.network == me.network
        out.append((link, child if ok else None))
    return out


def link_flows(me: Seen, by_name: dict[str, Seen]) -> list[LinkFlow]:
    """What `me`'s links open on a network with icc off (Docker's rule): each
    exposed port of each linked container, from `me` to it, nothing else."""
    if not me.ip:
        return []
    return [LinkFlow(ip_address(me.ip), ip_address(child.ip), proto, port)
            for link, child in resolve_links(me, by_name) if child is not None
            for port, proto in (parse.port_proto("exposed port", e) for e in child.exposed)]


def all_link_flows(running: Iterable[Seen], closed: set[str]) -> frozenset[LinkFlow]:
    """Every link flow of the containers on the networks named in `closed` (icc off)."""
    on = [c for c in running if c.network in closed]
    by_name = {c.name: c for c in on}
    return frozenset(f for c in on for f in link_flows(c, by_name))


def consul_services(services: dict[str, tuple[Instance, ...]] | None) -> dict[str, tuple[ServiceInstance, ...]] | None:
    """Consul's healthy instances as the resolver answers them: IPv4 only (an
    instance registered under a hostname or IPv6 has no A record to give)."""
    if services is None:
        return None
    out = {}
    for name, instances in services.items():
        out[name] = tuple(ServiceInstance(i.address, i.port, i.node, i.tags, i.native) for i in instances
                          if _is_ipv4(i.address))
    return out


class ConsulAnswers:
    """consul_services, kept from one change to the next: a service whose instances
    are the ones it had last time keeps its converted answers, so a Consul change
    converts the services it touched, not the whole catalog."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[tuple[Instance, ...], tuple[ServiceInstance, ...]]] = {}

    def __call__(self, services: dict[str, tuple[Instance, ...]] | None
                 ) -> dict[str, tuple[ServiceInstance, ...]] | None:
        if services is None:
            self._last = {}
            return None
        keep = {}
        for name, instances in services.items():
            hit = self._last.get(name)
            # The catalog cache hands an unchanged service's tuple on as is: mostly an identity check.
            if hit is None or hit[0] != instances:
                hit = (instances, consul_services({name: instances})[name])
            keep[name] = hit
        self._last = keep
        return {name: answers for name, (_, answers) in keep.items()}


def build_snapshot(networks: list[NetworkSpec], running: list[Seen], upstreams: list[str],
                   ttl: int = DEFAULT_TTL, services: dict[str, tuple[Instance, ...]] | None = None,
                   convert=consul_services) -> Snapshot:
    """`services` None: no Consul configured (names under .consul are forwarded like any other).
    `convert`: how Consul's instances become answers (a ConsulAnswers keeps them across builds).
    runtime.name_patch patches the result for the containers a change touched."""
    return snapshot_of(networks, build_zones(networks, running), running, upstreams, ttl, convert(services))


def build_zones(networks: list[NetworkSpec], running: list[Seen]) -> dict[str, NetworkZone]:
    """Each network's names, its running containers added in the order given."""
    zones = {n.name: NetworkZone(n.name, n.subnet) for n in networks}
    for c in running:
        zone = zones.get(c.network)
        if zone is not None and c.ip:
            zone.add(c.member(), zone_labels(c))
    return zones


def snapshot_of(networks: list[NetworkSpec], zones: dict[str, NetworkZone], running: list[Seen],
                upstreams: list[str], ttl: int,
                services: dict[str, tuple[ServiceInstance, ...]] | None) -> Snapshot:
    """The snapshot over `zones` (build_zones): a view per running container with an address."""
    by_name = {c.name: c for c in running}
    policy = ViewPolicy.of(networks, upstreams)
    views = {}
    for c in running:
        zone = zones.get(c.network)
        if zone is None or not c.ip:
            continue
        views[c.ip] = view_of(c, zone, by_name, policy)
    return Snapshot(views=views, networks=frozenset(zones), subnets=tuple(n.subnet for n in networks),
                    ttl=ttl, services=services)


def zone_labels(c: Seen) -> list[str]:
    """The names a container answers to on its network."""
    return [c.name, c.hostname, c.id[:12], f"{c.name}.{c.network}", *c.aliases]


@dataclass(frozen=True)
class ViewPolicy:
    """What a container's view takes from its networks and the daemon's upstreams."""

    internal: frozenset[str]                    # networks nothing leaves, not even DNS
    upstreams: tuple[tuple[str, int], ...]      # the daemon's (portlinkd --dns)

    @classmethod
    def of(cls, networks: list[NetworkSpec], upstreams: list[str]) -> "ViewPolicy":
        return cls(frozenset(n.name for n in networks if n.internal), upstream_list(upstreams))


def view_of(c: Seen, zone: NetworkZone, by_name: dict[str, Seen], policy: ViewPolicy) -> View:
    """What container `c` (on `zone`'s network, with an address) may resolve."""
    links = {link.alias.lower(): (child.member(),)
             for link, child in resolve_links(c, by_name) if child is not None}
    return View(zone=zone, links=links, upstreams=upstream_list(c.dns) if c.dns else policy.upstreams,
                forward=c.network not in policy.internal)


def with_services(snapshot: Snapshot, services: dict[str, tuple[Instance, ...]] | None,
                  convert=consul_services) -> Snapshot:
    """`snapshot` with Consul's instances replaced, every container view kept: what a
    Consul change needs, without reading the containers and networks again."""
    return replace(snapshot, services=convert(services))


def hosts_file(me: Seen, by_name: dict[str, Seen], gateway: str | None = None) -> str:
    """The container's /etc/hosts: localhost, the --add-host lines (Docker's place
    for them; host-gateway is `gateway`), itself, then one line per live link."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += hostopts.hosts_lines(me.extra_hosts, gateway)
    if me.ip:
        lines.append(f"{me.ip}\t{me.hostname}" + (f" {me.name}" if me.name != me.hostname else ""))
    for link, child in resolve_links(me, by_name):
        if child is not None:
            lines.append(hosts_line(link.alias, child.linked()))
    return "\n".join(lines) + "\n"


def resolv_conf(gateway: str | None, servers: list[str], search: list[str] | tuple[str, ...] = (),
                options: list[str] | tuple[str, ...] = ()) -> str:
    """Containers on a network ask portlink (at their gateway); `--dns` servers
    become its upstreams. On network 'none' they are used directly. --dns-search
    and --dns-option lines as Docker writes them (runtime.hostopts)."""
    if gateway is not None:
        return hostopts.resolv_lines([gateway], search, options, resolver_options=("ndots:0",))
    good = [s for s in servers if _is_ip(s)]
    if not good:
        return hostopts.resolv_lines([], search, options) + \
            "# no DNS server configured (portlink run --dns, portlinkd --dns)\n"
    return hostopts.resolv_lines(good, search, options)


def _is_ipv4(s: str) -> bool:
    try:
        return ip_address(s).version == 4
    except ValueError:
        return False


def _is_ip(s: str) -> bool:
    try:
        ip_address(s)
        return True
    except ValueError:
        return False
