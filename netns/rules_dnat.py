"""The kernel data path of a plaintext client-side ambassador, as pure functions:
nftables text for a table inside the AMBASSADOR'S OWN network namespace (applied
by netns.fw_dnat; never the host's).

  table ip portlink_link
    counter conn_P / tx_P / rx_P   per listener port P: new connections, bytes
                                   client -> backend, bytes backend -> client
    chain prerouting   nat, dstnat: a new TCP connection to one of the
                       namespace's own addresses on listener port P is counted,
                       its conntrack entry marked P, and DNATed to one of P's
                       backends chosen by `numgen inc` (round-robin per new
                       connection). A port with no backend has no rule: the
                       connection reaches the forwarder still listening there
    chain postrouting  nat, srcnat: DNATed flows are masqueraded to the
                       ambassador's address, so replies come back through it
    chain forward      counts each marked flow's bytes, by direction
    chain input        a TCP segment conntrack calls invalid (its entry was
                       deleted by a `close` reroute, and tcp_loose is 0 here) is
                       answered with a reset: a cut flow ends at its next segment

The backends change as one transaction that flushes and refills the prerouting
chain: a new connection sees the old set or the new, never none; the counters
are objects outside the chains and survive it; established flows keep the
backend conntrack bound them to (keep/drain/close act on conntrack,
runtime.kernel_link). Counters count IP packets' bytes (headers included), not
the payload the forwarder counts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address

from portlink.errors import InvalidArgument

TABLE = "portlink_link"       # prefixed (netns.names): found by name in any namespace
FAMILY = "ip"                 # IPv4 only: portlink gives containers no IPv6


@dataclass(frozen=True, order=True)
class Target:
    """One backend: where a DNATed connection goes."""
    address: str
    port: int

    @property
    def label(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class LinkRules:
    """One ambassador's kernel path: its listener ports and their backends."""
    ports: tuple[int, ...]
    backends: tuple[tuple[int, tuple[Target, ...]], ...] = ()   # (listener port, backends), sorted

    def of(self, port: int) -> tuple[Target, ...]:
        return dict(self.backends).get(port, ())


def check_target(listener: int, address: object, port: object) -> Target:
    """A backend from Consul, checked before any rule is written (as netavark
    validates before it applies): an IPv4 unicast address and a TCP port."""
    try:
        ip = IPv4Address(address) if isinstance(address, str) else None
    except ValueError:
        ip = None
    if ip is None or ip.is_unspecified or ip.is_multicast or ip.is_loopback or str(ip) == "255.255.255.255":
        raise InvalidArgument(f"backend {address!r}:{port!r} of listener {listener}: not an IPv4 unicast "
                              "address (the kernel path forwards IPv4 to other hosts only)")
    if type(port) is not int or not 1 <= port <= 65535:
        raise InvalidArgument(f"backend {address}:{port!r} of listener {listener}: not a TCP port (1 to 65535)")
    return Target(str(ip), port)


def make(ports, backends: dict[int, list[tuple[object, object]]]) -> LinkRules:
    """Checked rules: every backend valid, every backend's listener a port of the
    ambassador. InvalidArgument names the first bad one; nothing is rendered."""
    ports = tuple(sorted(set(ports)))
    for p in ports:
        if type(p) is not int or not 1 <= p <= 65535:
            raise InvalidArgument(f"listener port {p!r}: not a TCP port (1 to 65535)")
    out = []
    for p in sorted(backends):
        if p not in ports:
            raise InvalidArgument(f"backends for port {p}, which the ambassador does not listen on")
        targets = tuple(dict.fromkeys(check_target(p, a, b) for a, b in backends[p]))
        if targets:
            out.append((p, targets))
    return LinkRules(ports, tuple(out))


def dnat_rule(port: int, targets: tuple[Target, ...]) -> str:
    choices = ", ".join(f"{i} : {t.address} . {t.port}" for i, t in enumerate(targets))
    return (f'fib daddr type local tcp dport {port} counter name "conn_{port}" ct mark set {port} '
            f"dnat ip to numgen inc mod {len(targets)} map {{ {choices} }}")


def _dnat_rules(r: LinkRules) -> list[str]:
    return [dnat_rule(p, ts) for p, ts in r.backends]


def render_table(r: LinkRules) -> str:
    """The whole table, replacing any earlier one in one batch (a new namespace,
    or one whose table is not ours any more)."""
    counters = "".join(f"\tcounter {k}_{p} {{\n\t}}\n" for p in r.ports for k in ("conn", "tx", "rx"))
    pre = "".join(f"\t\t{x}\n" for x in _dnat_rules(r))
    fwd = "".join(f'\t\tct mark {p} ct direction original counter name "tx_{p}"\n'
                  f'\t\tct mark {p} ct direction reply counter name "rx_{p}"\n' for p in r.ports)
    return (
        f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"
        f"table {FAMILY} {TABLE} {{\n"
        f"{counters}"
        "\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        f"{pre}\t}}\n"
        "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        "\t\tct status dnat masquerade\n\t}\n"
        "\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n"
        f"{fwd}\t}}\n"
        "\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n"
        "\t\tct state invalid meta l4proto tcp reject with tcp reset\n\t}\n"
        "}\n"
    )


def render_backends(r: LinkRules) -> str:
    """The new backend sets, atomically: the chain flushed and refilled in one batch."""
    return (f"flush chain {FAMILY} {TABLE} prerouting\n"
            + "".join(f"add rule {FAMILY} {TABLE} prerouting {x}\n" for x in _dnat_rules(r)))


def render_teardown() -> str:
    return f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"


_COUNTER = re.compile(r"counter (conn|tx|rx)_(\d+) \{\s*packets (\d+) bytes (\d+)")


def parse_counters(text: str) -> dict[str, dict[int, int]]:
    """`list counters table ...` as nft prints it -> {"conn": {port: packets},
    "tx": {port: bytes}, "rx": {port: bytes}} (connections count packets: the
    nat chain sees only each connection's first)."""
    out: dict[str, dict[int, int]] = {"conn": {}, "tx": {}, "rx": {}}
    for kind, port, packets, nbytes in _COUNTER.findall(text):
        out[kind][int(port)] = int(packets if kind == "conn" else nbytes)
    return out
