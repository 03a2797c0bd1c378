"""Secure links without Consul or root: Connect-native registrations, identity
and server-side names, the server side's run request, the ambassadors' command
lines, the intention requests, the identity binding rule and claims."""

from __future__ import annotations

import pytest

from portlink.catalog import acl, intentions
from portlink.catalog.intentions import Link
from portlink.catalog.services import Published, PublishedPort, parse_health, registrations, served_name
from portlink.errors import InvalidArgument
from portlink.runtime import ambassadors
from portlink.runtime.records import RUNNING, Container
from portlink.runtime.server_sides import server_request, tcp_ports
from portlink.runtime.spec import ContainerSpec

HOST = "a43a1a0b30a5"
CID = "ab" * 32


def test_a_server_side_registers_connect_native_instances_of_the_served_service():
    srv = Published(CID, "srv-frontdb", {"portlink.register": "false"},
                    (PublishedPort(80, "tcp", 32768, "10.99.0.1"), PublishedPort(53, "udp", 32769, "10.99.0.1")),
                    connect="frontdb")
    [r] = registrations(HOST, "10.99.0.1", [srv])
    body = r.payload()
    assert (r.id, r.name, r.address, r.port) == (f"portlink-{HOST}-{CID[:12]}-80-tls", "frontdb", "10.99.0.1", 32768)
    assert body["Connect"] == {"Native": True}
    assert body["Meta"]["portlink-port"] == "80/tcp" and body["Meta"]["portlink-host"] == HOST
    assert body["Check"]["TCP"] == "10.99.0.1:32768"


def test_a_plain_published_port_stays_plain():
    web = Published(CID, "frontdb", {}, (PublishedPort(80, "tcp", 5432),))
    [r] = registrations(HOST, "10.99.0.1", [web])
    assert "Connect" not in r.payload() and r.port == 5432


def test_health_entries_say_which_instances_are_connect_native():
    entries = [{"Node": {"Node": "h1", "Address": "10.99.0.1"},
                "Service": {"ID": "a", "Service": "frontdb", "Port": 32768, "Connect": {"Native": True}}},
               {"Node": {"Node": "h1", "Address": "10.99.0.1"}, "Service": {"ID": "b", "Service": "frontdb", "Port": 5432}}]
    assert [(i.port, i.native) for i in parse_health(entries)] == [(5432, False), (32768, True)]


@pytest.mark.parametrize("amb, want", [
    ("amb-frontdb-bridge", f"amb-frontdb-bridge-{HOST}"),
    ("My_Amb.1", f"my-amb-1-{HOST}"),
    ("x" * 63, f"{'x' * 50}-{HOST}"),
    ("___", f"amb-{HOST}"),
])
def test_identity_names_are_dns_labels_unique_per_host(amb, want):
    got = ambassadors.identity_name(amb, HOST)
    assert got == want and len(got) <= 63
    assert ambassadors.identity_name(amb, "0" * 12) != got


def test_server_side_names_and_served_names():
    assert ambassadors.server_name("frontdb") == "srv-frontdb"
    assert len(ambassadors.server_name("d" * 63)) == 63
    assert served_name("Front_DB", {}) == "front-db"
    assert served_name("frontdb", {"portlink.service": "db"}) == "db"


def served(**kw) -> Container:
    spec = ContainerSpec(image="busybox", name="frontdb", network=kw.pop("network", "bridge"),
                         labels=kw.pop("labels", {}), ambassador=kw.pop("ambassador", {}))
    return Container(id=CID, name="frontdb", spec=spec, exposed=kw.pop("exposed", ("80/tcp", "53/udp", "8080")),
                     status=kw.pop("status", RUNNING), ip=kw.pop("ip", "10.77.0.5"))


def test_the_server_side_request_serves_every_exposed_tcp_port():
    assert tcp_ports(["80/tcp", "53/udp", "8080", "bad"]) == [80, 8080]
    assert server_request(served(), "10.99.0.1") == {
        "name": "srv-frontdb", "image": "busybox", "network": "bridge",
        "ambassador": {"service": "frontdb", "backends": {"80": "10.77.0.5:80", "8080": "10.77.0.5:8080"}},
        "publish": ["10.99.0.1::80/tcp", "10.99.0.1::8080/tcp"], "links": ["frontdb:frontdb"]}


@pytest.mark.parametrize("kw", [dict(status="exited"), dict(exposed=("53/udp",)), dict(network="none"),
                                dict(labels={"portlink.register": "false"}), dict(ip=None),
                                dict(ambassador={"service": "x"})])
def test_no_server_side_for(kw):
    assert server_request(served(**kw), "10.99.0.1") is None


def test_command_lines_of_both_halves():
    srv = ambassadors.AmbassadorSpec.from_json({"service": "frontdb", "backends": {"80": "10.77.0.5:80"}})
    argv = ambassadors.command(srv, [80], "http://10.99.0.1:8500")
    tail = argv[argv.index("--listen"):]
    assert tail[:10] == ["--listen", "80", "--backend", "80=10.77.0.5:80", "--tls-serve", "frontdb",
                         "--tls-keys", ambassadors.KEY_DIR, "--consul", "http://10.99.0.1:8500"]
    assert "--service" not in argv and srv.to_json()["backends"] == {"80": "10.77.0.5:80"}
    cli = ambassadors.AmbassadorSpec.from_json({"service": "frontdb", "identity": f"amb-x-{HOST}"})
    argv = ambassadors.command(cli, [80], "http://10.99.0.2:8500")
    assert argv[-6:] == ["--tls-dial", f"amb-x-{HOST}", "--tls-keys", ambassadors.KEY_DIR,
                         "--tls-linkers", ambassadors.LINKERS_PATH] and "--service" in argv
    made = ambassadors.AmbassadorSpec.from_json({"service": "frontdb", "identity": f"amb-x-{HOST}",
                                                 "unlinked": "refuse"})
    assert ambassadors.command(made, [80], "http://10.99.0.2:8500")[-2:] == ["--tls-unlinked", "refuse"]
    assert made.to_json()["unlinked"] == "refuse" and "unlinked" not in cli.to_json()
    plain = ambassadors.AmbassadorSpec.from_json({"service": "frontdb"})
    assert not any(a.startswith("--tls") for a in ambassadors.command(plain, [80], "http://c:8500"))
    assert plain.to_json() == {"service": "frontdb", "ports": [], "policy": plain.policy,
                               "drain_deadline": plain.drain_deadline}


@pytest.mark.parametrize("bad", [{"identity": "Not A Name"}, {"backends": {"x": "1.2.3.4:80"}},
                                 {"backends": {"80": "nohost"}}, {"backends": ["80"]},
                                 {"identity": "a", "backends": {"80": "1.2.3.4:80"}}])
def test_bad_secure_fields_are_refused(bad):
    with pytest.raises(InvalidArgument):
        ambassadors.AmbassadorSpec.from_json({"service": "frontdb", **bad})


def test_intention_requests():
    link = Link(f"amb-frontdb-bridge-{HOST}", "frontdb")
    assert Link.from_key(link.key) == link
    method, path, body = intentions.put_request(link, intentions.description(link, "host2", HOST, "amb-frontdb-bridge"))
    assert (method, path) == ("PUT", f"/v1/connect/intentions/exact?source=amb-frontdb-bridge-{HOST}"
                                     "&destination=frontdb")
    assert body["Action"] == "allow" and f"[portlink-host {HOST}]" in body["Description"]
    assert "host2" in body["Description"] and "amb-frontdb-bridge" in body["Description"]
    assert intentions.delete_request(link) == ("DELETE", path, None)
    assert intentions.ours({"Action": "allow", "Description": body["Description"]}, HOST)
    assert not intentions.ours({"Action": "allow", "Description": body["Description"]}, "0" * 12)
    assert not intentions.ours({"Action": "deny", "Description": body["Description"]}, HOST)   # a person's deny
    assert not intentions.ours({"Action": "allow", "Description": "by hand"}, HOST)
    with pytest.raises(ValueError):
        Link.from_key("onlyone")


def test_the_identity_binding_rule_and_claim():
    # The selector tests the claim's key: Consul 1.16 counts `value.identity != ""` true when
    # the claim is absent (tests/integration/test_consul_identity_rule.py shows it).
    assert acl.identity_binding_rule_body("portlink-host1") == {
        "AuthMethod": "portlink-host1", "BindType": "service", "BindName": "${value.identity}",
        "Selector": '"identity" in value and value.identity != ""',
        "Description": "portlink secure links: an ambassador's Connect identity"}
    c = acl.claims("portlink-host1", CID, "frontdb", now=1000, identity="frontdb")
    assert c["identity"] == "frontdb" and c["service"] == "frontdb"
    assert "identity" not in acl.claims("portlink-host1", CID, "frontdb", now=1000)
    assert acl.CLAIM_MAPPINGS["identity"] == "identity"
