"""Layer-2 pinning of container ports in the kernel (rules in netns.rules_l2).

Its own concern, beside the IP firewall driver (netavark's "a driver
interface per concern"), and always nftables, whichever IP driver
(`--firewall nftables|iptables`) runs: iptables has no bridge-family
counterpart with sets. ebtables pins a port with `--among-src` lists or one
rule per container, each change a rewrite of a chain that grows with the
containers, so the 500th container would cost more than the first; the bridge
family of nf_tables matches a concatenated set, one element per container.
Both IP drivers live beside it untouched: the table is `bridge portlink`,
theirs are in the ip family. Applied through libnftables in-process (one
atomic batch per change, no exec), as the nftables driver is."""

from __future__ import annotations

from typing import Sequence

from portlink.netns import rules_l2
from portlink.netns.fw_nftables import Nft
from portlink.netns.model import Pin


class L2Pins:
    """Make it in the namespace it must change (its libnftables socket stays there)."""

    def __init__(self, nft: Nft | None = None) -> None:
        self._nft = nft or Nft()

    def apply_all(self, pins: Sequence[Pin]) -> None:
        """The table with exactly these pins, atomically (start, reconcile, drift)."""
        self._nft.run(rules_l2.render_table(pins))

    def add(self, pins: Sequence[Pin]) -> None:
        if pins:
            self._nft.run(rules_l2.render_add(pins))

    def remove(self, pins: Sequence[Pin]) -> list[str]:
        """Best effort, one by one; a pin already gone (or its table) is not an error."""
        return self._nft.remove_each(pins, rules_l2.render_remove, "unpin")

    def teardown(self) -> list[str]:
        return self._nft.teardown(rules_l2.render_teardown())

    def dump(self) -> str:
        return self._nft.list_table("bridge")
