"""What portlink registers in Consul (pure): registrations from running containers
and their labels, the register payload and its spec hash, the resync diff, label
validation, service names and health entries as instances."""

import json
import re

import pytest

from portlink.catalog.services import (
    META_CONTAINER, META_CONTAINER_ID, META_HOST, META_PORT, META_PORTS, META_SPEC, CheckPolicy, Instance, Published,
    PublishedPort, Registration, diff, parse_health, registrations, service_name, spec_hash, validate_labels,
)
from portlink.errors import InvalidArgument

HOST = "h1"
ADV = "192.0.2.10"
CID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
CID12 = CID[:12]
CID2 = "fedcba9876543210" + "0" * 48


def meta(name, cid, port, *user, ports=None):
    return (*user, (META_HOST, HOST), (META_CONTAINER, name), (META_CONTAINER_ID, cid), (META_PORT, port),
            (META_PORTS, ports or port))


# -- service_name ------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("web", "web"),
    ("My_App.v2", "my-app-v2"),
    ("/web", "web"),
    ("--web--", "web"),
    ("a b", "a-b"),
    ("___", "container"),
    ("", "container"),
    ("x" * 70, "x" * 63),
    ("a" * 62 + "_b", "a" * 62),        # cut at 63, then no trailing '-'
    ("Web-1", "web-1"),
])
def test_service_name(text, want):
    got = service_name(text)
    assert got == want
    assert re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", got)


# -- registrations -----------------------------------------------------------

def test_registrations_exact_list():
    web = Published(CID, "My_Web.1", {"portlink.tags": " v1, primary ,,", "portlink.meta.team": "blue",
                                      "portlink.meta.env": "prod", "other.label": "x"},
                    (PublishedPort(80, "tcp", 8080), PublishedPort(53, "udp", 5353)))
    db = Published(CID2, "db", {}, (PublishedPort(5432, "tcp", 15432, "0.0.0.0"),))
    got = registrations(HOST, ADV, [web, db])
    user = (("env", "prod"), ("team", "blue"))          # sorted by label key
    assert got == [
        Registration(id=f"portlink-h1-{CID12}-53-udp", name="my-web-1", address=ADV, port=5353,
                     tags=("v1", "primary"), meta=meta("My_Web.1", CID, "53/udp", *user, ports="53/udp,80/tcp"), tcp_check=False),
        Registration(id=f"portlink-h1-{CID12}-80-tcp", name="my-web-1", address=ADV, port=8080,
                     tags=("v1", "primary"), meta=meta("My_Web.1", CID, "80/tcp", *user, ports="53/udp,80/tcp"), tcp_check=True),
        Registration(id="portlink-h1-fedcba987654-5432-tcp", name="db", address=ADV, port=15432,
                     tags=(), meta=meta("db", CID2, "5432/tcp"), tcp_check=True),
    ]


def test_each_instance_names_every_port_of_its_service():
    """Each port is an instance of its own, registered one PUT at a time: each
    lists the container's ports served under the same name (portlink-ports), so a
    host that has heard of only one knows the others; loopback-only ports are not
    registered, so not listed."""
    c = Published(CID, "shop", {"portlink.service.9000": "admin"},
                  (PublishedPort(81, "tcp", 8081), PublishedPort(9000, "tcp", 9000), PublishedPort(80, "tcp", 8080),
                   PublishedPort(80, "tcp", 8090), PublishedPort(82, "tcp", 8082, "127.0.0.1")))
    got = {(r.name, r.port): dict(r.meta)[META_PORTS] for r in registrations(HOST, ADV, [c])}
    assert got == {("shop", 8080): "80/tcp,81/tcp", ("shop", 8090): "80/tcp,81/tcp", ("shop", 8081): "80/tcp,81/tcp",
                   ("admin", 9000): "9000/tcp"}
    side = Published(CID2, "srv-shop", {}, (PublishedPort(81, "tcp", 32769), PublishedPort(80, "tcp", 32768),
                                            PublishedPort(53, "udp", 32770)), connect="shop")
    tls = registrations(HOST, ADV, [side])
    assert [(r.port, dict(r.meta)[META_PORT], dict(r.meta)[META_PORTS]) for r in tls] == \
        [(32768, "80/tcp", "80/tcp,81/tcp"), (32769, "81/tcp", "80/tcp,81/tcp")]


def test_registrations_sorted_by_id_whatever_the_input_order():
    a = Published("b" * 64, "b", {}, (PublishedPort(2, "tcp", 2002), PublishedPort(1, "tcp", 2001)))
    b = Published("a" * 64, "a", {}, (PublishedPort(9, "tcp", 2009),))
    ids = [r.id for r in registrations(HOST, ADV, [a, b])]
    assert ids == sorted(ids)
    assert ids == [f"portlink-h1-{'a' * 12}-9-tcp", f"portlink-h1-{'b' * 12}-1-tcp", f"portlink-h1-{'b' * 12}-2-tcp"]


@pytest.mark.parametrize("labels, names", [
    ({}, ("app-x", "app-x", "app-x")),
    ({"portlink.service": "svc"}, ("svc", "svc", "svc")),
    ({"portlink.service": "svc", "portlink.service.80": "http"}, ("http", "http", "svc")),
    ({"portlink.service": "svc", "portlink.service.80": "http", "portlink.service.80/udp": "quic"},
     ("http", "quic", "svc")),
    ({"portlink.service.80/tcp": "web", "portlink.service.80": "http"}, ("web", "http", "app-x")),
    ({"portlink.service.443": "tls"}, ("app-x", "app-x", "tls")),
])
def test_registration_name_precedence(labels, names):
    c = Published(CID, "App_X", labels, (PublishedPort(80, "tcp", 8080), PublishedPort(80, "udp", 8080),
                                         PublishedPort(443, "tcp", 8443)))
    by_port = {dict(r.meta)[META_PORT]: r.name for r in registrations(HOST, ADV, [c])}
    assert (by_port["80/tcp"], by_port["80/udp"], by_port["443/tcp"]) == names


def test_loopback_ports_skipped_and_specific_ip_used():
    c = Published(CID, "web", {}, (
        PublishedPort(80, "tcp", 8080, "127.0.0.1"),
        PublishedPort(81, "tcp", 8081, "127.1.2.3"),
        PublishedPort(82, "tcp", 8082, "198.51.100.7"),
        PublishedPort(83, "tcp", 8083, "0.0.0.0"),
        PublishedPort(84, "tcp", 8084, None),
    ))
    got = {r.port: r.address for r in registrations(HOST, ADV, [c])}
    assert got == {8082: "198.51.100.7", 8083: ADV, 8084: ADV}


@pytest.mark.parametrize("value", ["false", "False", "FALSE"])
def test_register_false_skips_container(value):
    off = Published(CID, "off", {"portlink.register": value}, (PublishedPort(80, "tcp", 8080),))
    on = Published(CID2, "on", {"portlink.register": "true"}, (PublishedPort(80, "tcp", 8081),))
    assert [r.name for r in registrations(HOST, ADV, [off, on])] == ["on"]


def test_no_ports_no_registrations():
    assert registrations(HOST, ADV, [Published(CID, "web")]) == []


# -- payload -----------------------------------------------------------------

REG = Registration(id="portlink-h1-0123456789ab-80-tcp", name="web", address="192.0.2.10", port=8080,
                   tags=("v1", "primary"), meta=(("team", "blue"), (META_HOST, HOST)))


def test_payload_exact_body():
    body = REG.payload(CheckPolicy(interval="7s", timeout="3s", deregister_after="90s"))
    spec = body["Meta"][META_SPEC]
    assert re.fullmatch(r"[0-9a-f]{16}", spec)
    assert body == {
        "ID": "portlink-h1-0123456789ab-80-tcp",
        "Name": "web",
        "Address": "192.0.2.10",
        "Port": 8080,
        "Tags": ["v1", "primary"],
        "Meta": {"team": "blue", META_HOST: HOST, META_SPEC: spec},
        "Check": {
            "CheckID": "portlink-h1-0123456789ab-80-tcp-tcp",
            "Name": "tcp 192.0.2.10:8080",
            "TCP": "192.0.2.10:8080",
            "Interval": "7s",
            "Timeout": "3s",
            "DeregisterCriticalServiceAfter": "90s",
            "Status": "passing",
        },
    }
    assert spec == spec_hash(body)
    json.dumps(body)   # serialisable as is


def test_payload_default_policy():
    check = REG.payload()["Check"]
    assert (check["Interval"], check["Timeout"], check["DeregisterCriticalServiceAfter"]) == ("5s", "2s", "1m")


def test_payload_udp_has_no_check():
    body = Registration("portlink-h1-x-53-udp", "dns", "192.0.2.1", 53, tcp_check=False).payload()
    assert "Check" not in body
    assert body == {"ID": "portlink-h1-x-53-udp", "Name": "dns", "Address": "192.0.2.1", "Port": 53,
                    "Tags": [], "Meta": {META_SPEC: body["Meta"][META_SPEC]}}


def test_payload_does_not_mutate_registration():
    before = REG.meta
    REG.payload()
    REG.payload()
    assert REG.meta == before


def _spec(r, policy=CheckPolicy()):
    return r.payload(policy)["Meta"][META_SPEC]


def test_spec_hash_stable():
    same = Registration(REG.id, REG.name, REG.address, REG.port, tuple(REG.tags), tuple(REG.meta))
    assert _spec(REG) == _spec(same) == _spec(REG)
    # meta order does not matter; a stale spec value in the meta is ignored
    shuffled = Registration(REG.id, REG.name, REG.address, REG.port, REG.tags,
                            ((META_HOST, HOST), ("team", "blue"), (META_SPEC, "stale")))
    assert _spec(shuffled) == _spec(REG)


@pytest.mark.parametrize("change", [
    {"port": 8081},
    {"address": "192.0.2.11"},
    {"tags": ("v1",)},
    {"tags": ("primary", "v1")},
    {"tags": ("v1", "primary", "canary")},
    {"name": "www"},
    {"meta": (("team", "red"), (META_HOST, HOST))},
    {"tcp_check": False},
])
def test_spec_hash_changes(change):
    fields = dict(id=REG.id, name=REG.name, address=REG.address, port=REG.port, tags=REG.tags, meta=REG.meta)
    fields.update(change)
    assert _spec(Registration(**fields)) != _spec(REG)


def test_spec_hash_follows_check_policy():
    assert _spec(REG, CheckPolicy(interval="10s")) != _spec(REG)
    assert _spec(REG, CheckPolicy()) == _spec(REG)


def test_spec_hash_ignores_its_own_key():
    body = REG.payload()
    changed = json.loads(json.dumps(body))
    changed["Meta"][META_SPEC] = "something else"
    assert spec_hash(changed) == spec_hash(body)
    changed["Port"] = 1
    assert spec_hash(changed) != spec_hash(body)


# -- diff --------------------------------------------------------------------

def _reg(n, port=1000):
    return Registration(f"portlink-h1-{n:012d}-80-tcp", f"s{n}", ADV, port + n)


def _as_agent(r, policy=CheckPolicy()):
    """How the agent lists a registration made from r.payload(): with our meta."""
    body = r.payload(policy)
    return {"ID": body["ID"], "Service": body["Name"], "Address": body["Address"], "Port": body["Port"],
            "Tags": body["Tags"], "Meta": body["Meta"]}


def test_diff():
    same, changed, missing = _reg(1), _reg(2), _reg(3)
    actual = {
        same.id: _as_agent(same),
        changed.id: _as_agent(_reg(2, port=2000)),      # the port moved
        "portlink-h1-zzz-1-tcp": {"Meta": {}},
        "portlink-h1-aaa-1-tcp": {"Meta": {META_SPEC: "x"}},
    }
    register, deregister = diff([same, changed, missing], actual)
    assert register == [changed, missing]
    assert deregister == ["portlink-h1-aaa-1-tcp", "portlink-h1-zzz-1-tcp"]


def test_diff_nothing_to_do():
    want = [_reg(1), _reg(2)]
    assert diff(want, {r.id: _as_agent(r) for r in want}) == ([], [])


def test_diff_empty_agent_registers_everything():
    want = [_reg(1), _reg(2)]
    assert diff(want, {}) == (want, [])


def test_diff_nothing_wanted_deregisters_everything_sorted():
    assert diff([], {"c": {}, "a": {}, "b": {}}) == ([], ["a", "b", "c"])


def test_diff_entry_without_meta_is_reregistered():
    r = _reg(1)
    assert diff([r], {r.id: {"ID": r.id}}) == ([r], [])
    assert diff([r], {r.id: None}) == ([r], [])


def test_diff_uses_the_policy():
    r = _reg(1)
    actual = {r.id: _as_agent(r, CheckPolicy())}
    assert diff([r], actual, CheckPolicy()) == ([], [])
    assert diff([r], actual, CheckPolicy(deregister_after="5m")) == ([r], [])


# -- validate_labels ---------------------------------------------------------

def test_valid_labels_pass():
    validate_labels({
        "portlink.service": "web", "portlink.service.80": "http", "portlink.service.53/udp": "dns",
        "portlink.service.65535/tcp": "hi", "portlink.tags": "v1, primary,a.b:c_d-e",
        "portlink.meta.team": "blue", "portlink.meta.Owner_ID-2": "x" * 512,
        "portlink.register": "False", "com.example.other": "anything goes", "portlinkish": "?",
    })


@pytest.mark.parametrize("key, value", [
    ("portlink.service", "Web"),
    ("portlink.service", "web_1"),
    ("portlink.service", "-web"),
    ("portlink.service", "web-"),
    ("portlink.service", ""),
    ("portlink.service", "a" * 64),
    ("portlink.service.80", "Bad Name"),
    ("portlink.service.0", "web"),
    ("portlink.service.65536", "web"),
    ("portlink.service.http", "web"),
    ("portlink.service.80/sctp", "web"),
    ("portlink.service.", "web"),
    ("portlink.service.８０", "web"),      # full-width digits
    ("portlink.tags", "ok,bad tag"),
    ("portlink.tags", "-lead"),
    ("portlink.tags", "x" * 64),
    ("portlink.meta.", "v"),
    ("portlink.meta.bad.key", "v"),
    ("portlink.meta.consul-x", "v"),
    ("portlink.meta.Portlink-host", "v"),
    ("portlink.meta.k", "x" * 513),
    ("portlink.register", "no"),
    ("portlink.register", ""),
    ("portlink.servce", "web"),
    ("portlink.tag", "a"),
])
def test_bad_label_names_the_label(key, value):
    with pytest.raises(InvalidArgument) as e:
        validate_labels({"portlink.service": "fine", key: value} if key != "portlink.service" else {key: value})
    assert key in str(e.value)


# -- parse_health ------------------------------------------------------------

def _entry(node, node_addr, sid, svc_addr, port, tags=None, meta=None, service="web"):
    return {"Node": {"Node": node, "Address": node_addr},
            "Service": {"ID": sid, "Service": service, "Address": svc_addr, "Port": port,
                        "Tags": tags, "Meta": meta},
            "Checks": []}


def test_parse_health():
    entries = [
        _entry("n2", "10.0.0.2", "b", "", 80, ["v1"], {"z": "1", "a": "2"}),     # falls back to the node
        _entry("n1", "10.0.0.1", "a", "10.9.9.9", 81),                           # service address wins
        _entry("n3", "", "c", "", 80),                                           # no address at all
        _entry("n4", "10.0.0.4", "d", "", 0),                                    # no port
        {"Node": {"Node": "n5", "Address": "10.0.0.5"}, "Service": {"ID": "e", "Service": "web"}},
        {"Node": None, "Service": None},
        {},
    ]
    assert parse_health(entries) == (
        Instance(id="b", service="web", address="10.0.0.2", port=80, node="n2", tags=("v1",),
                 meta=(("a", "2"), ("z", "1"))),
        Instance(id="a", service="web", address="10.9.9.9", port=81, node="n1"),
    )


def test_parse_health_stable_sort():
    entries = [
        _entry("n", "10.0.0.2", "x", "", 80),
        _entry("n", "10.0.0.1", "z", "", 90),
        _entry("n", "10.0.0.1", "y", "", 80),
        _entry("n", "10.0.0.1", "a", "", 90),
    ]
    want = [("10.0.0.1", 80, "y"), ("10.0.0.1", 90, "a"), ("10.0.0.1", 90, "z"), ("10.0.0.2", 80, "x")]
    assert [(i.address, i.port, i.id) for i in parse_health(entries)] == want
    assert parse_health(entries) == parse_health(list(reversed(entries)))


def test_parse_health_empty():
    assert parse_health([]) == ()
    assert parse_health(None) == ()


def test_instance_meta_get():
    i = parse_health([_entry("n", "10.0.0.1", "a", "", 80, meta={"portlink-host": "h9"})])[0]
    assert i.meta_get("portlink-host") == "h9"
    assert i.meta_get("nope") is None
    assert i.meta_get("nope", "d") == "d"
