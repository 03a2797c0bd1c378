"""iptables rule sets as pure functions of the model (input for `iptables-restore --noflush`).

Same semantics as rules_nft, in portlink's own chains only (as Docker and
netavark do); the built-in chains get nothing but one jump each:

  nat     PREROUTING  -j PORTLINK-PREROUTING   -m addrtype --dst-type LOCAL -j PORTLINK-DNAT
          OUTPUT      -j PORTLINK-OUTPUT       -m addrtype --dst-type LOCAL -j PORTLINK-DNAT
          POSTROUTING -j PORTLINK-POSTROUTING  per network: masquerade out, hairpin, loopback
          PORTLINK-DNAT                        one DNAT rule per published port
  filter  FORWARD     -j PORTLINK-FORWARD      per network: established, published, icc, out, drop
          INPUT       -j PORTLINK-INPUT        per network: replies, DNS and ping at the gateway,
                                               PORTLINK-TRUSTED, then drop
          PORTLINK-TRUSTED                     one ACCEPT rule per trusted flow (ambassador -> Consul)
          PORTLINK-LINKS                       one ACCEPT rule per link flow (icc off: linker ->
                                               linked container's exposed port)

Rules are written the way iptables-save prints them, so a dump compares line
for line with the rendering. Publishing a port, or trusting a flow, is one rule
whatever is already there. A --noflush restore cannot test whether a rule exists, so the renderers
that must know (the jumps, stale chains) read the current `iptables-save` text."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from portlink.netns.model import (CONSUL_TCP_PORTS, CONSUL_UDP_PORTS, DNS_PORT, Flow, NetworkSpec,
                                   PortMapping, TrustedFlow)
from portlink.netns.names import IPT_CHAIN_PREFIX as P

DNAT = f"{P}DNAT"
TRUSTED = f"{P}TRUSTED"
LINKS = f"{P}LINKS"
# table -> (built-in chain, portlink chain it jumps to)
JUMPS = {
    "nat": [("PREROUTING", f"{P}PREROUTING"), ("OUTPUT", f"{P}OUTPUT"), ("POSTROUTING", f"{P}POSTROUTING")],
    "filter": [("FORWARD", f"{P}FORWARD"), ("INPUT", f"{P}INPUT")],
}
CHAINS = {"nat": sorted([DNAT] + [c for _, c in JUMPS["nat"]]),
          "filter": sorted([TRUSTED, LINKS] + [c for _, c in JUMPS["filter"]])}


@dataclass
class TableState:
    chains: list[str] = field(default_factory=list)   # PORTLINK-* chains present
    jumps: list[str] = field(default_factory=list)    # "CHAIN spec" of rules elsewhere that reference them


_REF = re.compile(rf"\s-[jg] {re.escape(P)}")


def parse_saved(saved: str) -> dict[str, TableState]:
    """Portlink's footprint in `iptables-save` output, per table."""
    tables: dict[str, TableState] = {}
    cur = None
    for line in saved.splitlines():
        if line.startswith("*"):
            cur = tables.setdefault(line[1:].strip(), TableState())
        elif cur is None:
            continue
        elif line.startswith(":" + P):
            cur.chains.append(line[1:].split()[0])
        elif line.startswith("-A ") and not line[3:].startswith(P) and _REF.search(line):
            cur.jumps.append(line[3:])
    return {t: s for t, s in tables.items() if s.chains or s.jumps}


def dnat_rule(p: PortMapping) -> str:
    if p.proto not in ("tcp", "udp"):
        raise ValueError(f"unsupported protocol {p.proto!r}")
    dst = f"-d {p.host_ip}/32 " if p.host_ip else ""
    return (f"{dst}-p {p.proto} -m {p.proto} --dport {p.host_port} "
            f"-j DNAT --to-destination {p.container_ip}:{p.container_port}")


def _port_lines(ports: Iterable[PortMapping], op: str) -> list[str]:
    return [f"{op} {DNAT} {dnat_rule(p)}" for p in ports]


def _dnat_adds(ports: Sequence[PortMapping], specific: str = "-I") -> list[str]:
    # Host-ip rules go before the "any" ones, as nft looks up the ip maps first.
    return (_port_lines([p for p in ports if p.host_ip], specific)
            + _port_lines([p for p in ports if not p.host_ip], "-A"))


def render_add_ports(ports: Sequence[PortMapping]) -> str:
    return "*nat\n" + "".join(f"{r}\n" for r in _dnat_adds(ports)) + "COMMIT\n"


def render_remove_ports(ports: Sequence[PortMapping]) -> str:
    return "*nat\n" + "".join(f"{r}\n" for r in _port_lines(ports, "-D")) + "COMMIT\n"


def flow_chain(f: Flow) -> str:
    """The chain a flow's rule is in."""
    return TRUSTED if isinstance(f, TrustedFlow) else LINKS


def flow_rule(f: Flow) -> str:
    if isinstance(f, TrustedFlow):
        return f"-s {f.container_ip}/32 -d {f.host_ip}/32 -p tcp -m tcp --dport {f.port} -j ACCEPT"
    return f"-s {f.src}/32 -d {f.dst}/32 -p {f.proto} -m {f.proto} --dport {f.port} -j ACCEPT"


def _flows(flows: Sequence[Flow], op: str) -> str:
    if not flows:
        return ""
    return "*filter\n" + "".join(f"{op} {flow_chain(f)} {flow_rule(f)}\n" for f in flows) + "COMMIT\n"


def render_add_flows(flows: Sequence[Flow]) -> str:
    return _flows(flows, "-A")


def render_remove_flows(flows: Sequence[Flow]) -> str:
    return _flows(flows, "-D")


def network_input(n: NetworkSpec, dns_port: int = DNS_PORT) -> list[str]:
    """What a container of network `n` may send to the host itself (see
    rules_nft.network_input); PORTLINK-TRUSTED returns when no flow matches."""
    b, gw, c = n.bridge, n.gateway, f"-A {P}INPUT"
    return [
        f"{c} -i {b} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"{c} -i {b} -m conntrack --ctstate DNAT -j ACCEPT",
        f"{c} -d {gw}/32 -i {b} -p udp -m udp --dport {dns_port} -j ACCEPT",
        f"{c} -d {gw}/32 -i {b} -p tcp -m tcp --dport {dns_port} -j ACCEPT",
        f"{c} -d {gw}/32 -i {b} -p icmp -m icmp --icmp-type 8 -j ACCEPT",
        f"{c} -i {b} -j {TRUSTED}",
        f"{c} -i {b} -j DROP",
    ]


def network_postrouting(n: NetworkSpec) -> list[str]:
    b, s, c = n.bridge, n.subnet, f"-A {P}POSTROUTING"
    rules = [] if n.internal else [f"{c} -s {s} ! -o {b} -j MASQUERADE"]
    return rules + [
        # hairpin: a container reaching a published port that lands on its own bridge
        f"{c} -s {s} -o {b} -m conntrack --ctstate DNAT -j MASQUERADE",
        # the host's own 127.0.0.1 reaching a published port
        f"{c} -s 127.0.0.0/8 -o {b} -j MASQUERADE",
    ]


def network_forward(n: NetworkSpec) -> tuple[list[str], list[str]]:
    """(what may reach the network, what may leave it). Every network's first
    part goes before any network's second, so one network's way out is never
    another network's way in."""
    b, c = n.bridge, f"-A {P}FORWARD"
    rules = [
        f"{c} -o {b} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"{c} -o {b} -m conntrack --ctstate DNAT -j ACCEPT",
    ]
    if n.icc:   # bridged frames reach FORWARD with -i b -o b through br_netfilter
        rules.append(f"{c} -i {b} -o {b} -j ACCEPT")
    else:       # a link opens the linked container's exposed ports to the linker, nothing more
        rules.append(f"{c} -i {b} -o {b} -j {LINKS}")
    # Nothing else reaches the containers: only published ports, above.
    rules.append(f"{c} -o {b} -j DROP")
    # Consul's ports on other hosts: only an ambassador's trusted flow (to a remote --consul).
    out = [] if n.internal else [f"{c} -i {b} ! -o {b} -j {TRUSTED}"] + [
        f"{c} -i {b} ! -o {b} -p {proto} -m multiport --dports "
        + ",".join(f"{a}:{z}" if a != z else f"{a}" for a, z in ports) + " -j DROP"
        for proto, ports in (("tcp", CONSUL_TCP_PORTS), ("udp", CONSUL_UDP_PORTS))]
    return rules, out + [f"{c} -i {b} ! -o {b} -j {'DROP' if n.internal else 'ACCEPT'}"]


def _table(name: str, state: TableState | None, rules: list[str]) -> str:
    """One table's transaction: drop every old jump to our chains, flush (by
    declaring) our chains, delete stale ones, fill, then jump in first."""
    state = state or TableState()
    ours = CHAINS[name]
    stale = sorted(c for c in state.chains if c not in ours)
    lines = [f"*{name}"]
    lines += [f":{c} - [0:0]" for c in ours + stale]
    lines += [f"-D {j}" for j in state.jumps]
    lines += [f"-X {c}" for c in stale]
    lines += rules
    lines += [f"-I {builtin} -j {chain}" for builtin, chain in JUMPS[name]]
    return "\n".join(lines + ["COMMIT"]) + "\n"


def render_ruleset(networks: Sequence[NetworkSpec], ports: Sequence[PortMapping], saved: str = "",
                   flows: Sequence[Flow] = (), dns_port: int = DNS_PORT) -> str:
    """The whole of portlink's iptables state; `saved` is the current
    `iptables-save` output ("" on a host where portlink has nothing yet)."""
    nets = sorted(networks, key=lambda n: n.bridge)
    state = parse_saved(saved)
    nat = [f"-A {P}{c} -m addrtype --dst-type LOCAL -j {DNAT}" for c in ("PREROUTING", "OUTPUT")]
    nat += [r for n in nets for r in network_postrouting(n)]
    nat += _dnat_adds(ports, specific="-A")
    parts = [network_forward(n) for n in nets]
    fwd = [r for inbound, _ in parts for r in inbound] + [r for _, out in parts for r in out]
    fwd += [r for n in nets for r in network_input(n, dns_port)]
    fwd += [f"-A {flow_chain(f)} {flow_rule(f)}" for f in sorted(flows, key=lambda f: (flow_chain(f), f))]
    return _table("nat", state.get("nat"), nat) + _table("filter", state.get("filter"), fwd)


def teardown_ops(saved: str) -> list[tuple[str, str]]:
    """(table, restore line) steps that remove every trace of portlink, in order."""
    ops = []
    for t, s in parse_saved(saved).items():
        ops += [(t, f"-D {j}") for j in s.jumps]
        ops += [(t, f"-F {c}") for c in s.chains]
        ops += [(t, f"-X {c}") for c in s.chains]
    return ops


def render_teardown(saved: str) -> str:
    by_table: dict[str, list[str]] = {}
    for t, line in teardown_ops(saved):
        by_table.setdefault(t, []).append(line)
    return "".join(f"*{t}\n" + "".join(f"{l}\n" for l in ls) + "COMMIT\n" for t, ls in by_table.items())


def filter_dump(saved: str) -> str:
    return "".join(f"{l}\n" for l in saved.splitlines() if P in l)
