"""netns.fw_dnat against the real kernel, in a throwaway namespace of the test's
own: the table it writes is the rendered one, backends change in place with the
counters kept, forwarding is on there only while the table is, and teardown
leaves the namespace as the kernel made it."""

from __future__ import annotations

import subprocess

import pytest

from portlink.errors import RuntimeFailure
from portlink.netns import kernel_ns, rules_dnat
from portlink.netns.fw_dnat import NetnsDnat

pytestmark = pytest.mark.root


def nft_in(path: str, *args: str) -> str:
    return subprocess.run(["nsenter", f"--net={path}", "nft", *args], capture_output=True, text=True).stdout


def sysctl_in(path: str, name: str) -> str:
    with kernel_ns.entered(path):
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return f.read().strip()


def test_setup_update_counters_and_teardown(ns):
    d = NetnsDnat(ns)
    assert not d.has_table() and d.teardown() == []
    d.setup(rules_dnat.make([80], {80: [("10.99.0.1", 5432), ("10.99.0.3", 5432)]}))
    listed = nft_in(ns, "list", "table", "ip", "portlink_link")
    assert "dnat ip to numgen inc mod 2 map { 0 : 10.99.0.1 . 5432, 1 : 10.99.0.3 . 5432 }" in listed, listed
    assert sysctl_in(ns, "net.ipv4.ip_forward") == "1"
    assert sysctl_in(ns, "net.netfilter.nf_conntrack_tcp_loose") == "0"
    assert d.counters() == {"conn": {80: 0}, "tx": {80: 0}, "rx": {80: 0}}

    d.set_backends(rules_dnat.make([80], {80: [("10.99.0.3", 5432)]}))
    listed = nft_in(ns, "list", "table", "ip", "portlink_link")
    assert "mod 1 map { 0 : 10.99.0.3 . 5432 }" in listed and "10.99.0.1" not in listed, listed
    assert d.forget_flows(80, rules_dnat.Target("10.99.0.1", 5432)) == 0   # none open: not an error

    assert d.teardown() == []
    assert "portlink_link" not in nft_in(ns, "list", "tables")
    assert sysctl_in(ns, "net.ipv4.ip_forward") == "0"
    assert sysctl_in(ns, "net.netfilter.nf_conntrack_tcp_loose") == "1"


def test_a_rejected_batch_changes_nothing(ns):
    d = NetnsDnat(ns)
    d.setup(rules_dnat.make([80], {80: [("10.99.0.1", 5432)]}))
    before = nft_in(ns, "list", "table", "ip", "portlink_link")
    with pytest.raises(RuntimeFailure, match="nftables rejected"):
        d._nft(rules_dnat.render_backends(rules_dnat.make([80], {80: [("10.99.0.3", 5432)]}))
               + "add rule ip portlink_link prerouting no such syntax\n")
    assert nft_in(ns, "list", "table", "ip", "portlink_link") == before
