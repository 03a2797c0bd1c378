"""The firewall driver interface (one per concern, as in netavark).

A driver realises the model (networks and published ports) in the kernel. The
rule text is rendered by pure functions in rules_nft / rules_iptables, so the
exact rule set is tested without root (as sshuttle's methods are)."""

from __future__ import annotations

import abc
from typing import Sequence

from portlink.netns.model import NetworkSpec, PortMapping


class FirewallDriver(abc.ABC):
    name: str

    @abc.abstractmethod
    def apply_all(self, networks: Sequence[NetworkSpec], ports: Sequence[PortMapping]) -> None:
        """Replace everything portlink has in the firewall with exactly this, atomically.

        Used at daemon start (reconcile), on network create/remove and to repair drift."""

    @abc.abstractmethod
    def add_ports(self, ports: Sequence[PortMapping]) -> None:
        """Publish ports, all or none. Cost must not grow with the number already published."""

    @abc.abstractmethod
    def remove_ports(self, ports: Sequence[PortMapping]) -> list[str]:
        """Unpublish ports, best effort: returns the errors instead of stopping at the first."""

    @abc.abstractmethod
    def teardown(self) -> list[str]:
        """Remove everything this driver ever made; returns the errors."""

    @abc.abstractmethod
    def dump(self) -> str:
        """The driver's current rules as text (for `network inspect` and drift checks)."""


def make_driver(name: str) -> FirewallDriver:
    if name == "nftables":
        from portlink.netns.fw_nftables import NftablesDriver
        return NftablesDriver()
    if name == "iptables":
        from portlink.netns.fw_iptables import IptablesDriver
        return IptablesDriver()
    from portlink.errors import InvalidArgument
    raise InvalidArgument(f"unknown firewall driver {name!r}: use nftables or iptables")
