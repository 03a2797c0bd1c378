"""netns.firewall.already_gone: the tools' words for "nothing to delete", as
they print them (captured from nftables 1.0 and iptables-restore 1.8)."""

from portlink.netns.firewall import already_gone


def test_messages_of_an_element_already_gone():
    assert already_gone("unpublish tcp 9090: nftables rejected the change: Error: Could not process rule: "
                        "No such file or directory\ndelete element ip portlink tcp_any { 9090 : 10.77.0.4 . 90 }")
    assert already_gone("unpublish tcp 9090: iptables-restore failed: iptables-restore: line 2 failed: "
                        "Bad rule (does a matching rule exist in that chain?).")
    assert already_gone("iptables-restore failed: Chain 'PORTLINK-DNAT' does not exist")


def test_other_failures_are_errors():
    assert not already_gone("nftables rejected the change: Error: Could not process rule: Operation not permitted")
    assert not already_gone("iptables-restore timed out after 30s")
    assert not already_gone("")
