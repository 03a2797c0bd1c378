"""The exact nftables rule sets portlink renders (no root: pure functions)."""

from ipaddress import IPv4Address as A, IPv4Network as N

from portlink.netns import rules_nft as R
from portlink.netns.model import NetworkSpec, PortMapping, TrustedFlow

FRONT = NetworkSpec("n1", "front", N("10.77.0.0/24"), A("10.77.0.1"), "plb-front")
BACK = NetworkSpec("n2", "back", N("10.78.0.0/24"), A("10.78.0.1"), "plb-back", internal=True, icc=False)
PORTS = [
    PortMapping("tcp", 8080, A("10.77.0.2"), 80),
    PortMapping("udp", 5353, A("10.77.0.3"), 53, host_ip=A("127.0.0.1")),
]
# ambassadors reaching the Consul agent on the host's underlay address
TRUSTED = [TrustedFlow(A("10.77.0.9"), A("10.99.0.2"), 8500), TrustedFlow(A("10.77.0.5"), A("10.99.0.2"), 8500)]

EXPECTED = """\
add table ip portlink
delete table ip portlink
table ip portlink {
\tmap tcp_any {
\t\ttype inet_service : ipv4_addr . inet_service
\t}
\tmap tcp_ip {
\t\ttype ipv4_addr . inet_service : ipv4_addr . inet_service
\t}
\tmap udp_any {
\t\ttype inet_service : ipv4_addr . inet_service
\t}
\tmap udp_ip {
\t\ttype ipv4_addr . inet_service : ipv4_addr . inet_service
\t}
\tset trusted {
\t\ttype ipv4_addr . ipv4_addr . inet_service
\t}
\tset links {
\t\ttype ipv4_addr . ipv4_addr . inet_proto . inet_service
\t}
\tchain published {
\t\tmeta l4proto tcp dnat ip to ip daddr . tcp dport map @tcp_ip
\t\tmeta l4proto tcp dnat ip to tcp dport map @tcp_any
\t\tmeta l4proto udp dnat ip to ip daddr . udp dport map @udp_ip
\t\tmeta l4proto udp dnat ip to udp dport map @udp_any
\t}
\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tfib daddr type local jump published
\t}
\tchain output {
\t\ttype nat hook output priority -100; policy accept;
\t\tfib daddr type local jump published
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname "plb-back" ct status dnat ip saddr 10.78.0.0/24 masquerade
\t\toifname "plb-back" ip saddr 127.0.0.0/8 masquerade
\t\tip saddr 10.77.0.0/24 oifname != "plb-front" masquerade
\t\toifname "plb-front" ct status dnat ip saddr 10.77.0.0/24 masquerade
\t\toifname "plb-front" ip saddr 127.0.0.0/8 masquerade
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\toifname "plb-back" ct state established,related accept
\t\toifname "plb-back" ct status dnat accept
\t\tiifname "plb-back" oifname "plb-back" ip saddr . ip daddr . meta l4proto . th dport @links accept
\t\toifname "plb-back" drop
\t\toifname "plb-front" ct state established,related accept
\t\toifname "plb-front" ct status dnat accept
\t\tiifname "plb-front" oifname "plb-front" accept
\t\toifname "plb-front" drop
\t\tiifname "plb-back" oifname != "plb-back" drop
\t\tiifname "plb-front" oifname != "plb-front" ip saddr . ip daddr . tcp dport @trusted accept
\t\tiifname "plb-front" oifname != "plb-front" tcp dport { 8300-8302, 8500-8503, 8600 } drop
\t\tiifname "plb-front" oifname != "plb-front" udp dport { 8301-8302, 8600 } drop
\t\tiifname "plb-front" oifname != "plb-front" accept
\t}
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname "plb-back" ct state established,related accept
\t\tiifname "plb-back" ct status dnat accept
\t\tiifname "plb-back" ip daddr 10.78.0.1 udp dport 53 accept
\t\tiifname "plb-back" ip daddr 10.78.0.1 tcp dport 53 accept
\t\tiifname "plb-back" ip daddr 10.78.0.1 icmp type echo-request accept
\t\tiifname "plb-back" ip saddr . ip daddr . tcp dport @trusted accept
\t\tiifname "plb-back" drop
\t\tiifname "plb-front" ct state established,related accept
\t\tiifname "plb-front" ct status dnat accept
\t\tiifname "plb-front" ip daddr 10.77.0.1 udp dport 53 accept
\t\tiifname "plb-front" ip daddr 10.77.0.1 tcp dport 53 accept
\t\tiifname "plb-front" ip daddr 10.77.0.1 icmp type echo-request accept
\t\tiifname "plb-front" ip saddr . ip daddr . tcp dport @trusted accept
\t\tiifname "plb-front" drop
\t}
}
add element ip portlink tcp_any { 8080 : 10.77.0.2 . 80 }
add element ip portlink udp_ip { 127.0.0.1 . 5353 : 10.77.0.3 . 53 }
"""


def test_render_ruleset_exact():
    assert R.render_ruleset([FRONT, BACK], PORTS) == EXPECTED


def test_render_ruleset_order_independent_of_input_order():
    assert R.render_ruleset([BACK, FRONT], PORTS) == R.render_ruleset([FRONT, BACK], PORTS)


def test_render_ruleset_without_ports_has_no_elements():
    text = R.render_ruleset([FRONT, BACK], [])
    assert "element" not in text
    assert text == EXPECTED.split("add element")[0]


def test_render_add_and_remove_group_elements_per_map():
    ports = [
        PortMapping("tcp", 8080, A("10.77.0.2"), 80),
        PortMapping("udp", 53, A("10.77.0.4"), 53),
        PortMapping("tcp", 8081, A("10.77.0.3"), 80),
        PortMapping("tcp", 443, A("10.77.0.2"), 8443, host_ip=A("192.0.2.1")),
        PortMapping("tcp", 444, A("10.77.0.3"), 8443, host_ip=A("192.0.2.2")),
    ]
    assert R.render_add_ports(ports) == (
        "add element ip portlink tcp_any { 8080 : 10.77.0.2 . 80, 8081 : 10.77.0.3 . 80 }\n"
        "add element ip portlink tcp_ip { 192.0.2.1 . 443 : 10.77.0.2 . 8443, "
        "192.0.2.2 . 444 : 10.77.0.3 . 8443 }\n"
        "add element ip portlink udp_any { 53 : 10.77.0.4 . 53 }\n"
    )
    assert R.render_remove_ports(ports[1:2]) == "delete element ip portlink udp_any { 53 : 10.77.0.4 . 53 }\n"
    assert R.render_remove_ports(ports).count("\n") == 3
    assert all(line.startswith("delete element ip portlink ")
               for line in R.render_remove_ports(ports).splitlines())


def _ports(n):
    return [PortMapping("tcp" if i % 2 else "udp", 10000 + i, A(f"10.77.{1 + i // 250}.{2 + i % 250}"), 80,
                        host_ip=A("127.0.0.1") if i % 3 == 0 else None) for i in range(n)]


def test_rule_count_does_not_grow_with_ports():
    one, many = R.render_ruleset([FRONT, BACK], _ports(1)), R.render_ruleset([FRONT, BACK], _ports(500))

    def split(text):
        lines = text.splitlines()
        return [x for x in lines if "element" not in x], [x for x in lines if "element" in x]

    rules_1, els_1 = split(one)
    rules_500, els_500 = split(many)
    assert rules_1 == rules_500                 # identical rules, byte for byte
    assert len(els_1) == 1
    assert len(els_500) == 4                    # one element line per map, not per port
    assert sum(line.count(" : ") for line in els_500) == 500


def test_render_teardown():
    assert R.render_teardown() == "add table ip portlink\ndelete table ip portlink\n"
    assert R.render_ruleset([], []).startswith(R.render_teardown())


def test_trusted_flows_are_set_elements_after_the_rules():
    text = R.render_ruleset([FRONT, BACK], PORTS, TRUSTED)
    assert text == EXPECTED + (
        "add element ip portlink trusted { 10.77.0.5 . 10.99.0.2 . 8500, 10.77.0.9 . 10.99.0.2 . 8500 }\n")


def test_dns_port_is_the_one_input_accepts():
    text = R.render_ruleset([FRONT], [], dns_port=5353)
    assert 'iifname "plb-front" ip daddr 10.77.0.1 udp dport 5353 accept\n' in text
    assert 'iifname "plb-front" ip daddr 10.77.0.1 tcp dport 5353 accept\n' in text
    assert "dport 53 " not in text
    assert text.replace("5353", "53") == R.render_ruleset([FRONT], [])


def test_add_and_remove_trusted_exact():
    assert R.render_add_flows(TRUSTED) == (
        "add element ip portlink trusted { 10.77.0.9 . 10.99.0.2 . 8500, 10.77.0.5 . 10.99.0.2 . 8500 }\n")
    assert R.render_remove_flows(TRUSTED[:1]) == (
        "delete element ip portlink trusted { 10.77.0.9 . 10.99.0.2 . 8500 }\n")
    assert R.render_add_flows([]) == R.render_remove_flows([]) == ""


def test_rule_count_does_not_grow_with_trusted_flows():
    many = [TrustedFlow(A(f"10.77.{i // 250}.{2 + i % 250}"), A("10.99.0.2"), 8500) for i in range(500)]
    one, all_ = R.render_ruleset([FRONT, BACK], [], many[:1]), R.render_ruleset([FRONT, BACK], [], many)
    assert one.splitlines()[:-1] == all_.splitlines()[:-1]     # identical rules; one element line
    assert all_.splitlines()[-1].count(" . 8500") == 500
    assert R.render_add_flows(many[499:]) == "add element ip portlink trusted { 10.77.1.251 . 10.99.0.2 . 8500 }\n"


def test_input_rules_per_network():
    # Replies, DNS and ping at the own gateway, trusted flows, then drop: in this order,
    # so the drop can never shadow an accept.
    rules = R.network_input(FRONT, 53)
    assert rules[-1] == 'iifname "plb-front" drop'
    assert all(r.startswith('iifname "plb-front" ') for r in rules)
    assert [r for r in rules if "10.78." in r] == []


def test_link_flows_are_elements_of_their_own_set():
    from portlink.netns.model import LinkFlow
    links = [LinkFlow(A("10.78.0.5"), A("10.78.0.7"), "tcp", 5432), LinkFlow(A("10.78.0.5"), A("10.78.0.7"), "udp", 53)]
    assert R.render_add_flows(links + TRUSTED[:1]) == (
        "add element ip portlink links { 10.78.0.5 . 10.78.0.7 . tcp . 5432, 10.78.0.5 . 10.78.0.7 . udp . 53 }\n"
        "add element ip portlink trusted { 10.77.0.9 . 10.99.0.2 . 8500 }\n")
    assert R.render_remove_flows(links[1:]) == "delete element ip portlink links { 10.78.0.5 . 10.78.0.7 . udp . 53 }\n"
    # the rules are the same whatever the links: one element each
    assert R.render_ruleset([FRONT, BACK], [], links).startswith(R.render_ruleset([FRONT, BACK], []))
