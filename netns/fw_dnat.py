"""The kernel data path's rules in an ambassador's own network namespace
(touches the kernel; the rules are netns.rules_dnat's).

Everything happens inside the namespace at `netns_path`, which the runtime made
for the ambassador container and removes with it: the table, the sysctls and
the conntrack entries go when the namespace goes. The host's own namespace and
firewall are never touched. nft runs in-process through libnftables (a context
made after setns keeps its netlink socket in that namespace); conntrack entries
are deleted with conntrack(8) under nsenter (Debian's `conntrack` package)."""

from __future__ import annotations

import re
import subprocess

from portlink.errors import RuntimeFailure
from portlink.netns import kernel_ns, rules_dnat
from portlink.netns.firewall import already_gone
from portlink.netns.fw_nftables import Nft

# In the ambassador's namespace only: forward what the DNAT rules rewrite, and
# treat a mid-stream segment without a conntrack entry as invalid (not a new
# flow to DNAT afresh), so a flow whose entry `close` deleted is reset.
SYSCTLS = (("net.ipv4.ip_forward", "1"), ("net.netfilter.nf_conntrack_tcp_loose", "0"))
DEFAULTS = (("net.ipv4.ip_forward", "0"), ("net.netfilter.nf_conntrack_tcp_loose", "1"))
_DELETED = re.compile(r"(\d+) flow entries have been deleted")


class NetnsDnat:
    """One namespace's kernel path. Each call enters the namespace afresh."""

    def __init__(self, netns_path: str) -> None:
        self.netns_path = netns_path

    def _nft(self, script: str) -> str:
        with kernel_ns.entered(self.netns_path):
            nft = Nft()
        try:
            return nft.run(script)
        finally:
            nft.close()

    def has_table(self) -> bool:
        try:
            self._nft(f"list table {rules_dnat.FAMILY} {rules_dnat.TABLE}")
            return True
        except RuntimeFailure:
            return False

    def setup(self, rules: rules_dnat.LinkRules) -> None:
        """The whole table (one batch), then forwarding on in this namespace only."""
        self._nft(rules_dnat.render_table(rules))
        with kernel_ns.entered(self.netns_path):
            for name, value in SYSCTLS:
                kernel_ns.write_sysctl(name, value)

    def set_backends(self, rules: rules_dnat.LinkRules) -> None:
        self._nft(rules_dnat.render_backends(rules))

    def teardown(self) -> list[str]:
        """Best effort; a namespace or table already gone is no error. The
        namespace's sysctls go back to the kernel's defaults with the table."""
        try:
            if not self.has_table():
                return []
            self._nft(rules_dnat.render_teardown())
            with kernel_ns.entered(self.netns_path):
                for name, value in DEFAULTS:
                    kernel_ns.write_sysctl(name, value)
            return []
        except FileNotFoundError:
            return []
        except (RuntimeFailure, OSError) as e:
            return [] if already_gone(str(e)) else [f"{self.netns_path}: {e}"]

    def counters(self) -> dict[str, dict[int, int]]:
        return rules_dnat.parse_counters(self._nft(f"list counters table {rules_dnat.FAMILY} {rules_dnat.TABLE}"))

    def forget_flows(self, listener: int, target: rules_dnat.Target) -> int:
        """Delete the conntrack entries of the flows DNATed from `listener` to
        `target`: their next segment is invalid here and is reset. How many went."""
        argv = ["nsenter", f"--net={self.netns_path}", "conntrack", "-D", "-p", "tcp", "--mark", str(listener),
                "--reply-src", target.address, "--reply-port-src", str(target.port)]
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise RuntimeFailure("conntrack(8) is not installed: install the apt package conntrack "
                                 "(scripts/setup does)") from None
        m = _DELETED.search(p.stderr + p.stdout)
        if m is None:   # exit 1 with "0 flow entries have been deleted" is no error
            raise RuntimeFailure(f"conntrack -D in {self.netns_path}: {(p.stderr or p.stdout).strip()}")
        return int(m.group(1))
