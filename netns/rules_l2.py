"""Layer-2 pinning of container ports, as pure functions: nftables text for
portlink's bridge-family table (applied by netns.fw_l2).

  table bridge portlink
    set   pins         host veth name . MAC . IPv4: one element per container port
    chain prerouting   bridge prerouting, priority filter (-200): before
                       br_netfilter hands the frame to the ip hooks (DNAT,
                       forward, input) and before the bridge learns its source
                       MAC, so a dropped frame leaves no trace in the FDB

A frame entering a bridge from a container's port (`plv-*`) passes only if it
is IPv4 from that port's MAC and address, or ARP (Ethernet/IPv4) whose link
source, sender MAC and sender IP are that port's. Everything else from a
container port is dropped: other ethertypes (IPv6: portlink gives containers
none; 802.1Q-tagged frames, whose `ether type` reads as the tag), IPv4 from
another address, gratuitous ARP or replies claiming a neighbour's address.
Frames from any other port, and the host's own, are not looked at.

Sources 0.0.0.0 are dropped too: no DHCP (IPAM hands out static addresses, set
by portlink through netlink), and no ARP probes (RFC 5227 DAD, `arping -D`):
the kernel never sends them for IPv4, and an address is never leased twice, so
a probe could only tell a container what IPAM already guarantees.

A port whose pin is missing sends nothing (fail closed): the element is added
before the veth is made and deleted after the container's process is gone.
The rules depend on nothing but the table; a container is one set element, so
the 500th attaches as fast as the first."""

from __future__ import annotations

from typing import Sequence

from portlink.netns.model import Pin
from portlink.netns.names import NFT_TABLE as T
from portlink.netns.names import VETH_PREFIX

RULES = (
    f'iifname != "{VETH_PREFIX}*" accept',
    "ether type ip iifname . ether saddr . ip saddr @pins accept",
    # One element per port, so both lookups hit the same one: the frame's source,
    # the ARP sender MAC and the sender IP are all the port's own.
    "ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4"
    " iifname . ether saddr . arp saddr ip @pins iifname . arp saddr ether . arp saddr ip @pins accept",
    "counter drop",   # what a container tried to send past its pin (`system firewall`)
)


def element(p: Pin) -> str:
    return f'"{p.host_ifname}" . {p.mac} . {p.address}'


def _elements(pins: Sequence[Pin], op: str) -> str:
    if not pins:
        return ""
    return f"{op} element bridge {T} pins {{ {', '.join(element(p) for p in pins)} }}\n"


def render_add(pins: Sequence[Pin]) -> str:
    return _elements(pins, "add")


def render_remove(pins: Sequence[Pin]) -> str:
    return _elements(pins, "delete")


def render_table(pins: Sequence[Pin]) -> str:
    """The whole table with these pins, replacing any previous one in one
    atomic batch (add-then-delete makes the delete safe when it is not there):
    no frame ever passes between the old table and the new."""
    rules = "".join(f"\t\t{r}\n" for r in RULES)
    return (
        f"add table bridge {T}\ndelete table bridge {T}\n"
        f"table bridge {T} {{\n"
        "\tset pins {\n\t\ttype ifname . ether_addr . ipv4_addr\n\t}\n"
        "\tchain prerouting {\n\t\ttype filter hook prerouting priority filter; policy accept;\n"
        f"{rules}\t}}\n"
        "}\n"
    ) + render_add(sorted(pins))


def render_teardown() -> str:
    return f"add table bridge {T}\ndelete table bridge {T}\n"
