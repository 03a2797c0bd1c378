"""nftables rule sets as pure functions of the model.

Layout, all in portlink's own tables (nothing else in the host is touched):

  table ip portlink
    maps  tcp_any / udp_any   dport            -> container ip . port   (host ip "any")
          tcp_ip  / udp_ip    host ip . dport  -> container ip . port
    chain published           DNAT through those maps; jumped to from prerouting
                              and output for local destinations only
    chain postrouting         per network: masquerade out, hairpin, loopback
    chain forward             per network: established, published, icc, out (never to
                              Consul's ports), drop
    set   trusted             container ip . host ip . tcp port: ambassador -> Consul agent
    set   links               linker ip . linked ip . proto . port: `--link` on a network
                              with icc off opens the linked container's exposed ports
    chain input               per network: what a container may send to the host
                              itself: replies, DNS at its gateway, ping of its
                              gateway, trusted flows; everything else is dropped

icc relies on br_netfilter (the daemon turns on bridge-nf-call-iptables in its
namespace): frames bridged between two ports then pass the ip forward hook with
iif = oif = the bridge, where icc=true accepts them and icc=false drops them
but for the flows in `links`.

Publishing a port is one map element, so the cost of the 500th container is the
cost of the first: the rule count depends on networks, never on containers. A
trusted flow or a link flow is one element of its set, likewise."""

from __future__ import annotations

from typing import Iterable, Sequence

from portlink.netns.model import (CONSUL_TCP_PORTS, CONSUL_UDP_PORTS, DNS_PORT, Flow, NetworkSpec,
                                   PortMapping, TrustedFlow)
from portlink.netns.names import NFT_TABLE as T


def _map_of(p: PortMapping) -> str:
    return f"{p.proto}_{'ip' if p.host_ip else 'any'}"


def element(p: PortMapping) -> str:
    key = f"{p.host_ip} . {p.host_port}" if p.host_ip else f"{p.host_port}"
    return f"{key} : {p.container_ip} . {p.container_port}"


def _elements(ports: Iterable[PortMapping], op: str) -> list[str]:
    by_map: dict[str, list[str]] = {}
    for p in ports:
        by_map.setdefault(_map_of(p), []).append(element(p))
    return [f"{op} element ip {T} {m} {{ {', '.join(els)} }}" for m, els in sorted(by_map.items())]


def render_add_ports(ports: Sequence[PortMapping]) -> str:
    return "\n".join(_elements(ports, "add")) + "\n"


def render_remove_ports(ports: Sequence[PortMapping]) -> str:
    return "\n".join(_elements(ports, "delete")) + "\n"


def flow_set(f: Flow) -> str:
    """The set a flow is an element of."""
    return "trusted" if isinstance(f, TrustedFlow) else "links"


def flow_element(f: Flow) -> str:
    if isinstance(f, TrustedFlow):
        return f"{f.container_ip} . {f.host_ip} . {f.port}"
    return f"{f.src} . {f.dst} . {f.proto} . {f.port}"


def _flows(flows: Sequence[Flow], op: str) -> str:
    by_set: dict[str, list[str]] = {}
    for f in flows:
        by_set.setdefault(flow_set(f), []).append(flow_element(f))
    return "".join(f"{op} element ip {T} {s} {{ {', '.join(els)} }}\n" for s, els in sorted(by_set.items()))


def render_add_flows(flows: Sequence[Flow]) -> str:
    return _flows(flows, "add")


def render_remove_flows(flows: Sequence[Flow]) -> str:
    return _flows(flows, "delete")


def network_input(n: NetworkSpec, dns_port: int = DNS_PORT) -> list[str]:
    """What a container of network `n` may send to the host itself (the input
    hook: the gateway, the host's other addresses, 127.0.0.1 through
    route_localnet). Published ports are DNATed to a container before this
    hook and so never come here; the rule for them is belt and braces."""
    b, gw = n.bridge, n.gateway
    return [
        f'iifname "{b}" ct state established,related accept',
        f'iifname "{b}" ct status dnat accept',
        f'iifname "{b}" ip daddr {gw} udp dport {dns_port} accept',
        f'iifname "{b}" ip daddr {gw} tcp dport {dns_port} accept',
        # ping of its own gateway: the usual "is my network up", and it tells nothing new
        f'iifname "{b}" ip daddr {gw} icmp type echo-request accept',
        f'iifname "{b}" ip saddr . ip daddr . tcp dport @trusted accept',
        f'iifname "{b}" drop',
    ]


def network_postrouting(n: NetworkSpec) -> list[str]:
    b, s = n.bridge, n.subnet
    rules = []
    if not n.internal:
        rules.append(f'ip saddr {s} oifname != "{b}" masquerade')
    rules += [
        # hairpin: a container reaching a published port that lands on its own bridge
        f'oifname "{b}" ct status dnat ip saddr {s} masquerade',
        # the host's own 127.0.0.1 reaching a published port
        f'oifname "{b}" ip saddr 127.0.0.0/8 masquerade',
    ]
    return rules


def network_forward(n: NetworkSpec) -> tuple[list[str], list[str]]:
    """(what may reach the network, what may leave it). Every network's first
    part goes before any network's second, so one network's way out is never
    another network's way in."""
    b = n.bridge
    rules = [
        f'oifname "{b}" ct state established,related accept',
        f'oifname "{b}" ct status dnat accept',
    ]
    if n.icc:
        rules.append(f'iifname "{b}" oifname "{b}" accept')
    else:   # a link opens the linked container's exposed ports to the linker, nothing more
        rules.append(f'iifname "{b}" oifname "{b}" ip saddr . ip daddr . meta l4proto . th dport @links accept')
    # Nothing else reaches the containers: not other networks, not the outside
    # by container address (only published ports, above).
    rules.append(f'oifname "{b}" drop')
    # Consul's ports on other hosts: only an ambassador's trusted flow (to a remote --consul).
    out = [] if n.internal else [f'iifname "{b}" oifname != "{b}" ip saddr . ip daddr . tcp dport @trusted accept'] + [
        f'iifname "{b}" oifname != "{b}" {proto} dport {{ {_ranges(ports)} }} drop'
        for proto, ports in (("tcp", CONSUL_TCP_PORTS), ("udp", CONSUL_UDP_PORTS))]
    return rules, out + [f'iifname "{b}" oifname != "{b}" {"drop" if n.internal else "accept"}']


def _ranges(ports: tuple[tuple[int, int], ...]) -> str:
    return ", ".join(f"{a}-{z}" if a != z else f"{a}" for a, z in ports)


def render_ruleset(networks: Sequence[NetworkSpec], ports: Sequence[PortMapping],
                   flows: Sequence[Flow] = (), dns_port: int = DNS_PORT) -> str:
    """The whole of portlink's nftables state; applied as one atomic batch that
    first deletes the previous tables (the add-then-delete idiom makes the
    delete safe when they do not exist yet)."""
    nets = sorted(networks, key=lambda n: n.bridge)
    ind = "\t\t"
    inp = "".join(f"{ind}{r}\n" for n in nets for r in network_input(n, dns_port))
    post = "".join(f"{ind}{r}\n" for n in nets for r in network_postrouting(n))
    parts = [network_forward(n) for n in nets]
    fwd = "".join(f"{ind}{r}\n" for r in [r for i, _ in parts for r in i] + [r for _, o in parts for r in o])
    maps = ""
    for proto in ("tcp", "udp"):
        maps += f"\tmap {proto}_any {{\n\t\ttype inet_service : ipv4_addr . inet_service\n\t}}\n"
        maps += f"\tmap {proto}_ip {{\n\t\ttype ipv4_addr . inet_service : ipv4_addr . inet_service\n\t}}\n"
    maps += "\tset trusted {\n\t\ttype ipv4_addr . ipv4_addr . inet_service\n\t}\n"
    maps += "\tset links {\n\t\ttype ipv4_addr . ipv4_addr . inet_proto . inet_service\n\t}\n"
    text = (
        f"add table ip {T}\ndelete table ip {T}\n"
        f"table ip {T} {{\n{maps}"
        "\tchain published {\n"
        "\t\tmeta l4proto tcp dnat ip to ip daddr . tcp dport map @tcp_ip\n"
        "\t\tmeta l4proto tcp dnat ip to tcp dport map @tcp_any\n"
        "\t\tmeta l4proto udp dnat ip to ip daddr . udp dport map @udp_ip\n"
        "\t\tmeta l4proto udp dnat ip to udp dport map @udp_any\n"
        "\t}\n"
        "\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        "\t\tfib daddr type local jump published\n\t}\n"
        "\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n"
        "\t\tfib daddr type local jump published\n\t}\n"
        f"\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n{post}\t}}\n"
        f"\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n{fwd}\t}}\n"
        f"\tchain input {{\n\t\ttype filter hook input priority filter; policy accept;\n{inp}\t}}\n"
        "}\n"
    )
    if ports:
        text += render_add_ports(ports)
    return text + render_add_flows(sorted(flows, key=lambda f: (flow_set(f), f)))


def render_teardown() -> str:
    return f"add table ip {T}\ndelete table ip {T}\n"
