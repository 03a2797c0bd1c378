"""Layer-2 pinning (rules_l2): the exact bridge-family table and element text
portlink renders, and the MAC each container gets (no root: pure functions)."""

from ipaddress import IPv4Address as A, IPv4Network as N

from portlink.netns import rules_l2 as R
from portlink.netns.kernel_link import stable_mac
from portlink.netns.model import Endpoint, NetworkSpec, Pin, container_mac
from portlink.runtime.firewall import pin_from_key, pin_key

WEB = Pin("plv-0a1b2c3d4e5", "02:42:0a:4d:00:02", A("10.77.0.2"))
DB = Pin("plv-99887766554", "02:42:0a:4d:00:0a", A("10.77.0.10"))

TABLE = """\
add table bridge portlink
delete table bridge portlink
table bridge portlink {
\tset pins {
\t\ttype ifname . ether_addr . ipv4_addr
\t}
\tchain prerouting {
\t\ttype filter hook prerouting priority filter; policy accept;
\t\tiifname != "plv-*" accept
\t\tether type ip iifname . ether saddr . ip saddr @pins accept
\t\tether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 \
iifname . ether saddr . arp saddr ip @pins iifname . arp saddr ether . arp saddr ip @pins accept
\t\tcounter drop
\t}
}
"""


def test_table_without_containers():
    assert R.render_table([]) == TABLE


def test_table_with_pins_is_the_same_rules_plus_sorted_elements():
    assert R.render_table([WEB, DB]) == TABLE + (
        'add element bridge portlink pins { "plv-0a1b2c3d4e5" . 02:42:0a:4d:00:02 . 10.77.0.2, '
        '"plv-99887766554" . 02:42:0a:4d:00:0a . 10.77.0.10 }\n')


def test_rule_count_does_not_grow_with_containers():
    many = [Pin(f"plv-{i:011x}", container_mac(A("10.77.0.0") + i), A("10.77.0.0") + i) for i in range(2, 502)]
    text = R.render_table(many)
    assert text.startswith(TABLE)
    assert text.count("\n") == TABLE.count("\n") + 1   # one line of elements
    assert text.count("plv-0") == 500


def test_add_and_remove_elements():
    assert R.render_add([WEB]) == \
        'add element bridge portlink pins { "plv-0a1b2c3d4e5" . 02:42:0a:4d:00:02 . 10.77.0.2 }\n'
    assert R.render_remove([WEB, DB]) == (
        'delete element bridge portlink pins { "plv-0a1b2c3d4e5" . 02:42:0a:4d:00:02 . 10.77.0.2, '
        '"plv-99887766554" . 02:42:0a:4d:00:0a . 10.77.0.10 }\n')
    assert R.render_add([]) == "" and R.render_remove([]) == ""


def test_teardown():
    assert R.render_teardown() == "add table bridge portlink\ndelete table bridge portlink\n"


def test_container_mac_is_docker_style_and_the_endpoint_pin_uses_it():
    assert container_mac(A("10.77.0.2")) == "02:42:0a:4d:00:02"
    assert container_mac(A("192.168.255.254")) == "02:42:c0:a8:ff:fe"
    net = NetworkSpec("n1", "front", N("10.77.0.0/24"), A("10.77.0.1"), "plb-n1")
    ep = Endpoint("0a1b2c3d4e5f", "/ns/x", net, A("10.77.0.2"), "plv-0a1b2c3d4e5")
    assert ep.mac == "02:42:0a:4d:00:02" and ep.pin == WEB


def test_bridge_macs_never_take_the_containers_prefix():
    # 02:42:… is the containers' (container_mac); a bridge's name-derived MAC never is.
    macs = [stable_mac(f"plb-{i:011x}") for i in range(5000)]
    assert all(m.startswith("02:") and not m.startswith("02:42:") for m in macs)
    assert len({m[3:5] for m in macs}) == 255   # the rest of the byte's values all occur


def test_pin_journal_key_round_trips():
    assert pin_key(WEB) == '["plv-0a1b2c3d4e5", "02:42:0a:4d:00:02", "10.77.0.2"]'
    assert pin_from_key(pin_key(WEB)) == WEB
