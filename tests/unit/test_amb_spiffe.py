"""The pure parts of the mutual-TLS path: SPIFFE IDs from peer certificates, the
agent's Connect answers, and the authorization cache."""

import asyncio

import pytest

from portlink.ambassador.spiffe import (IdentityError, ServiceID, check_service, parse_uri, peer_identity,
                                        serial_hex)
from portlink.ambassador.tls import Authorizer
from portlink.catalog.connect import Decision, parse_authorize, parse_leaf, parse_roots

TD = "e665ef5e-fe18-fd28-58d8-9b3975810b62.consul"
WEB = f"spiffe://{TD}/ns/default/dc/dc1/svc/web"


def cert(*uris, serial="0C"):
    return {"subject": ((("commonName", "x"),),), "serialNumber": serial,
            "subjectAltName": tuple(("URI", u) for u in uris) + (("DNS", "web.example"),)}


def test_parse_uri_service_and_partition():
    assert parse_uri(WEB) == ServiceID(TD, "default", "dc1", "web")
    assert parse_uri(WEB).uri == WEB
    ent = f"spiffe://{TD}/ap/part1/ns/ns1/dc/dc2/svc/db"
    assert parse_uri(ent) == ServiceID(TD, "ns1", "dc2", "db", "part1")
    assert parse_uri(ent).uri == ent


@pytest.mark.parametrize("bad", [
    "https://x/ns/default/dc/dc1/svc/web", f"spiffe://{TD}/ns/default/dc/dc1/agent/web",
    f"spiffe://{TD}/ns/default/dc/dc1/svc/", f"spiffe://{TD}/ns/default/dc/dc1/svc/web/extra",
    f"spiffe://{TD}", f"spiffe:///ns/default/dc/dc1/svc/web", f"spiffe://{TD}/ns/default/dc/dc1/svc/web?x=1",
    f"spiffe://u@{TD}/ns/default/dc/dc1/svc/web", "spiffe://[bad/ns/default/dc/dc1/svc/web"])
def test_parse_uri_rejects_what_is_not_a_service_identity(bad):
    with pytest.raises(IdentityError):
        parse_uri(bad)


def test_peer_identity_needs_exactly_one_uri_in_our_trust_domain():
    assert peer_identity(cert(WEB), TD).service == "web"
    assert peer_identity(cert(WEB), TD.upper()).service == "web"       # host names are case-insensitive
    for c in (None, {}, cert(), cert(WEB, WEB.replace("web", "db"))):
        with pytest.raises(IdentityError, match="expected one SPIFFE URI"):
            peer_identity(c, TD)
    with pytest.raises(IdentityError, match="not in trust domain"):
        peer_identity(cert(WEB.replace(TD, "other.consul")), TD)


def test_check_service_is_the_client_side_check_of_a_server():
    assert check_service(cert(WEB), TD, "web").datacenter == "dc1"
    with pytest.raises(IdentityError, match="expected service 'frontdb'"):
        check_service(cert(WEB), TD, "frontdb")
    with pytest.raises(IdentityError, match="expected service 'web'"):
        check_service(cert(f"spiffe://{TD}/ns/other/dc/dc1/svc/web"), TD, "web")


@pytest.mark.parametrize("raw, want", [("0C", "0c"), ("1A2B", "1a:2b"), ("01A2B", "1a:2b"), ("0", "00"),
                                       ("FF00", "ff:00")])
def test_serial_in_consul_colon_hex(raw, want):
    assert serial_hex(cert(WEB, serial=raw)) == want


def test_serial_missing_is_an_identity_error():
    with pytest.raises(IdentityError, match="serial"):
        serial_hex({"subjectAltName": ()})


ROOTS = {"ActiveRootID": "aa:bb", "TrustDomain": TD, "Roots": [
    {"ID": "aa:bb", "RootCert": "NEW", "IntermediateCerts": ["CROSS"], "Active": True},
    {"ID": "cc:dd", "RootCert": "OLD\n", "IntermediateCerts": None, "Active": False}]}
LEAF = {"SerialNumber": "0C", "CertPEM": "C", "PrivateKeyPEM": "K", "Service": "web", "ServiceURI": WEB,
        "ValidBefore": "2026-12-05T05:26:07Z"}


def test_parse_roots_keeps_every_root_and_intermediate():
    r = parse_roots(ROOTS)
    assert (r.trust_domain, r.active_id, r.pems) == (TD, "aa:bb", ("NEW", "CROSS", "OLD\n"))
    assert r.bundle == "NEW\nCROSS\nOLD\n"


def test_parse_leaf_and_its_repr_hides_the_key():
    leaf = parse_leaf(LEAF)
    assert (leaf.service, leaf.uri, leaf.serial, leaf.cert_pem, leaf.key_pem) == ("web", WEB, "0c", "C", "K")
    assert "K" not in repr(leaf).replace("Leaf", "")


@pytest.mark.parametrize("parse, body, names", [
    (parse_roots, [], "JSON object"), (parse_roots, {**ROOTS, "Roots": []}, "no root"),
    (parse_roots, {**ROOTS, "TrustDomain": ""}, "TrustDomain"),
    (parse_leaf, {**LEAF, "PrivateKeyPEM": None}, "PrivateKeyPEM"),
    (parse_authorize, {"Authorized": "yes"}, "Authorized")])
def test_bad_agent_answers_name_what_is_wrong(parse, body, names):
    with pytest.raises(ValueError, match=names):
        parse(body)


def test_parse_authorize():
    assert parse_authorize({"Authorized": False, "Reason": "denied by intention"}) == \
        Decision(False, "denied by intention")


class Agent:
    def __init__(self):
        self.calls = []
        self.answer: Decision | Exception = Decision(True, "default allow")

    async def __call__(self, target, uri, serial):
        self.calls.append((target, uri, serial))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_authorizer_caches_for_ttl_then_asks_again():
    now = [100.0]
    agent = Agent()
    a = Authorizer(agent, ttl=1.0, stale=60.0, clock=lambda: now[0])

    async def go():
        assert (await a.check("db", WEB, "0c")).authorized
        now[0] += 0.5
        assert (await a.check("db", WEB, "0c")).authorized
        assert len(agent.calls) == 1                       # cached
        await a.check("db", WEB, "0d")                     # another certificate: asked
        assert len(agent.calls) == 2
        agent.answer = Decision(False, "intention deny")
        now[0] += 0.6
        d = await a.check("db", WEB, "0c")                 # expired: asked, the deny applies
        assert (d.authorized, d.reason) == (False, "intention deny")
        assert len(agent.calls) == 3
    asyncio.run(go())


def test_authorizer_uses_last_word_while_agent_away_then_fails_closed():
    now = [0.0]
    agent = Agent()
    a = Authorizer(agent, ttl=1.0, stale=10.0, clock=lambda: now[0])

    async def go():
        assert (await a.check("db", WEB, "0c")).authorized
        agent.answer = ConnectionRefusedError("agent down")
        now[0] = 5.0
        assert (await a.check("db", WEB, "0c")).authorized       # stale but within 10 s
        now[0] = 10.5
        d = await a.check("db", WEB, "0c")
        assert not d.authorized and "cannot ask the consul agent" in d.reason
        assert not (await a.check("db", "spiffe://x/ns/default/dc/dc1/svc/never", "01")).authorized
        assert a.errors == 3
    asyncio.run(go())
