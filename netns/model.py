"""The pure model of what portlink builds on a host: networks, endpoints and
published ports. The kernel realisation (kernel_*, fw_*) takes these as input;
nothing here touches the kernel (mininet's topo.py / net.py split)."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network


@dataclass(frozen=True)
class NetworkSpec:
    id: str
    name: str
    subnet: IPv4Network
    gateway: IPv4Address
    bridge: str
    internal: bool = False   # no route out, no masquerade
    icc: bool = True         # containers on the bridge may talk to each other


@dataclass(frozen=True)
class PortMapping:
    """One published port: host [ip:]port/proto -> container ip:port."""

    proto: str                       # "tcp" | "udp"
    host_port: int
    container_ip: IPv4Address
    container_port: int
    host_ip: IPv4Address | None = None   # None: every local address of the host

    def __str__(self) -> str:
        hip = f"{self.host_ip}:" if self.host_ip else ""
        return f"{hip}{self.host_port}->{self.container_ip}:{self.container_port}/{self.proto}"


@dataclass(frozen=True)
class Endpoint:
    """A container's attachment to one network: a veth pair, one end in the
    container's namespace (ifname), the other on the network's bridge."""

    container_id: str
    netns_path: str
    network: NetworkSpec
    address: IPv4Address
    host_ifname: str
    ifname: str = "eth0"
    default_route: bool = True

    @property
    def mac(self) -> str:
        return container_mac(self.address)

    @property
    def pin(self) -> "Pin":
        return Pin(self.host_ifname, self.mac, self.address)


def container_mac(address: IPv4Address) -> str:
    """A container interface's MAC, derived from its address as Docker does
    (02:42 + the four bytes): known before the veth exists, so its layer-2 pin
    is rendered and in force first; unique on a bridge because the address is;
    the same for a pair rebuilt by drift repair, and for the next container
    leasing the address, so neighbours' ARP entries stay right."""
    return "02:42:" + ":".join(f"{b:02x}" for b in address.packed)


@dataclass(frozen=True, order=True)
class Pin:
    """A container's bridge port pinned at layer 2 (netns.rules_l2): frames
    entering the bridge from `host_ifname` must come from `mac` and, for IPv4
    and ARP, from `address`."""

    host_ifname: str
    mac: str
    address: IPv4Address

    def __str__(self) -> str:
        return f"{self.host_ifname} {self.mac} {self.address}"


DNS_PORT = 53   # the resolver on each gateway address (portlinkd --dns-port)

# Consul's ports (server RPC, Serf LAN/WAN, HTTP(S), gRPC(+TLS), DNS) as (first, last):
# no container reaches them on any other host; only an ambassador's trusted flow
# reaches this host's own agent.
CONSUL_TCP_PORTS = ((8300, 8302), (8500, 8503), (8600, 8600))
CONSUL_UDP_PORTS = ((8301, 8302), (8600, 8600))


@dataclass(frozen=True, order=True)
class TrustedFlow:
    """One container allowed to open TCP connections to one port of the host
    itself: an ambassador reaching the Consul agent on this host. Everything
    else a container sends to the host is dropped, except DNS at its gateway."""

    container_ip: IPv4Address
    host_ip: IPv4Address
    port: int

    def __str__(self) -> str:
        return f"{self.container_ip}->{self.host_ip}:{self.port}/tcp"


@dataclass(frozen=True, order=True)
class LinkFlow:
    """One link on a network with icc off: the linking container may open
    connections to one exposed port of the container it links to (Docker's rule
    for `--link` under `--icc=false`); replies follow by conntrack."""

    src: IPv4Address
    dst: IPv4Address
    proto: str        # "tcp" | "udp"
    port: int

    def __str__(self) -> str:
        return f"{self.src}->{self.dst}:{self.port}/{self.proto}"


# A flow the firewall lets through beside the network rules; each kind is one set
# (nftables) or one chain (iptables), changed by elements.
Flow = TrustedFlow | LinkFlow
