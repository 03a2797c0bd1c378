"""netns.kernel_link's view of a namespace's links (drift's one dump, the
sweep's list) against the real kernel, in a throwaway namespace of the test's
own: portlink's links only, each with its bridge and whether it is up."""

from __future__ import annotations

import subprocess

import pytest

from portlink.netns import kernel_link, kernel_ns

pytestmark = pytest.mark.root


def ip_in(path: str, *args: str) -> None:
    subprocess.run(["nsenter", f"--net={path}", "ip", *args], check=True, capture_output=True)


def test_states_name_each_of_our_links_its_bridge_and_up(ns):
    ip_in(ns, "link", "add", "plb-t1", "type", "bridge")
    ip_in(ns, "link", "set", "plb-t1", "up")
    ip_in(ns, "link", "add", "plv-t1", "type", "veth", "peer", "name", "eth5")
    ip_in(ns, "link", "set", "plv-t1", "master", "plb-t1", "up")
    ip_in(ns, "link", "add", "plv-t2", "type", "veth", "peer", "name", "eth6")   # down, on no bridge
    ip_in(ns, "link", "add", "other0", "type", "veth", "peer", "name", "other1")
    ip_in(ns, "link", "set", "other0", "master", "plb-t1", "up")
    with kernel_ns.entered(ns):
        states = kernel_link.link_states()
        listed = kernel_link.list_links()
    assert states == {"plb-t1": (None, True), "plv-t1": ("plb-t1", True), "plv-t2": (None, False)}
    assert listed == ["plb-t1", "plv-t1", "plv-t2"]


def test_an_empty_namespace_has_none_of_ours(ns):
    with kernel_ns.entered(ns):
        assert kernel_link.link_states() == {} and kernel_link.list_links() == []
