"""The firewall driver interface (one per concern, as in netavark).

A driver realises the model (networks, published ports and allowed flows) in
the kernel, including what containers may send to the host itself (DNS at the
gateway on `dns_port`, trusted flows; nothing else). The
rule text is rendered by pure functions in rules_nft / rules_iptables, so the
exact rule set is tested without root (as sshuttle's methods are)."""

from __future__ import annotations

import abc
from typing import Sequence

from portlink.netns.model import DNS_PORT, Flow, NetworkSpec, PortMapping

# What the tools say when an element or rule to delete is not there: nftables
# "No such file or directory" (ENOENT), iptables "Bad rule (does a matching rule
# exist in that chain?)" and "... does not exist". The one place that knows them.
ALREADY_GONE = ("No such file", "does not exist", "matching rule")


def already_gone(error: str) -> bool:
    """A failed delete whose element was not there: the wanted end state, not an error."""
    return any(m in error for m in ALREADY_GONE)


class FirewallDriver(abc.ABC):
    name: str
    dns_port: int = DNS_PORT   # the resolver's port on each gateway: containers may reach it

    @abc.abstractmethod
    def apply_all(self, networks: Sequence[NetworkSpec], ports: Sequence[PortMapping],
                  flows: Sequence[Flow] = ()) -> None:
        """Replace everything portlink has in the firewall with exactly this, atomically.

        Used at daemon start (reconcile), on network create/remove and to repair drift."""

    @abc.abstractmethod
    def add_flows(self, flows: Sequence[Flow]) -> None:
        """Let these flows through (trusted: a container to a host port; links: a
        linker to a linked container's port on an icc-off network), all or none;
        constant cost per flow."""

    @abc.abstractmethod
    def remove_flows(self, flows: Sequence[Flow]) -> list[str]:
        """Withdraw flows, best effort: returns the errors. A flow already
        gone is not an error (it is not in the list)."""

    @abc.abstractmethod
    def add_ports(self, ports: Sequence[PortMapping]) -> None:
        """Publish ports, all or none. Cost must not grow with the number already published."""

    @abc.abstractmethod
    def remove_ports(self, ports: Sequence[PortMapping]) -> list[str]:
        """Unpublish ports, best effort: returns the errors instead of stopping at the first.
        A port already gone is not an error (it is not in the list)."""

    @abc.abstractmethod
    def teardown(self) -> list[str]:
        """Remove everything this driver ever made; returns the errors."""

    @abc.abstractmethod
    def dump(self) -> str:
        """The driver's current rules as text (for `network inspect` and drift checks)."""


def make_driver(name: str, dns_port: int = DNS_PORT) -> FirewallDriver:
    from portlink.errors import InvalidArgument
    from portlink.parse import is_port
    if not is_port(dns_port):
        raise InvalidArgument(f"invalid --dns-port {dns_port}: expected 1 to 65535")
    if name == "nftables":
        from portlink.netns.fw_nftables import NftablesDriver
        return NftablesDriver(dns_port)
    if name == "iptables":
        from portlink.netns.fw_iptables import IptablesDriver
        return IptablesDriver(dns_port)
    raise InvalidArgument(f"unknown firewall driver {name!r}: use nftables or iptables")
