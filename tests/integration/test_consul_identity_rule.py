"""The secure-links identity binding rule against a real Consul 1.16 agent (ACLs
on, default deny, on a loopback address of its own): with both of a host's
binding rules in place, an ambassador of a daemon without --secure-links
(no claim `identity`) logs in and gets the read-only role only; a secure one
gets its service identity too; a bad identity is refused and leaves no token.
And why the selector tests the claim's key: under the former `value.identity
!= ""` the same plain login is refused. Logins go through the daemon's own
code (AmbassadorTokens). And end to end: a plaintext lab (daemons without
--secure-links, both rules in place) starts a cross-host link's ambassador."""

from __future__ import annotations

import base64
import os
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import wait_for

from portlink.catalog import acl
from portlink.catalog.ambassador_tokens import ALGORITHM, AmbassadorTokens, Signer, generate_key_pem, request
from portlink.catalog.config import ConsulConfig
from portlink.errors import RuntimeFailure
from portlink.lab.consul_acl import wait_acl
from portlink.lab import lab as labmod
from portlink.lab.consul_agent import AgentSecurity, AgentSpec, start_agent, wait_ready
from test_consul_acl import SERVE, Two

CID = "cd" * 32
OLD_SELECTOR = 'value.identity != ""'     # what portlink shipped before; Consul 1.16 mis-selects with it


@dataclass
class Consul:
    agent: object
    cfg: ConsulConfig
    signer: Signer

    def token_self(self, secret: str) -> dict:
        code, out = request(self.cfg, "GET", "/v1/acl/token/self", token=secret)
        assert code == 200, (code, out)
        return out

    def tokens_of(self, method: str) -> list[str]:
        code, out = request(self.cfg, "GET", f"/v1/acl/tokens?authmethod={method}", token=self.agent.token)
        assert code == 200, (code, out)
        return sorted(t["AccessorID"] for t in out)

    def method(self, name: str, identity_selector: str | None = None) -> AmbassadorTokens:
        """A host's auth method with its two binding rules, as README's production
        commands make them; `identity_selector` replaces the identity rule's."""
        rule = acl.identity_binding_rule_body(name)
        if identity_selector is not None:
            rule["Selector"] = identity_selector
        for path, body in (("/v1/acl/auth-method", acl.auth_method_body(name, self.signer.public_pem(), ALGORITHM)),
                           ("/v1/acl/binding-rule", acl.binding_rule_body(name)),
                           ("/v1/acl/binding-rule", rule)):
            code, out = request(self.cfg, "PUT", path, body, token=self.agent.token)
            assert code == 200, (path, code, out)
        return AmbassadorTokens(self.cfg, self.signer, name)


@pytest.fixture(scope="module")
def consul(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("idrule")
    ip = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
    security = AgentSecurity(encrypt=base64.b64encode(os.urandom(32)).decode(), management=str(uuid.uuid4()))
    agent = start_agent(AgentSpec("idrule", ip, tmp / "consul", security=security))
    try:
        wait_ready(agent)
        wait_acl(agent)
        for path, body in (("/v1/acl/policy", acl.policy_body(acl.AMBASSADOR_POLICY, acl.AMBASSADOR_RULES,
                                                               "portlink ambassadors")),
                           ("/v1/acl/role", acl.role_body())):
            code, _, out = agent.put(path, body)
            assert code == 200, (path, code, out)
        key = tmp / "amb.pem"
        key.write_bytes(generate_key_pem())
        key.chmod(0o600)
        yield Consul(agent, ConsulConfig(host=ip), Signer.load(str(key)))
    finally:
        agent.stop()


def test_plain_login_gets_the_role_only_secure_login_its_identity_bad_identity_refused(consul):
    assert consul.agent.get("/v1/agent/self")[2]["Config"]["Version"] == "1.16.3"
    tokens = consul.method("portlink-idhost1")

    plain = tokens.login(CID, "frontdb")                       # no --secure-links: no claim `identity`
    me = consul.token_self(plain.secret)
    assert [r["Name"] for r in me["Roles"]] == [acl.AMBASSADOR_ROLE] and not me.get("ServiceIdentities"), me
    code, out = request(consul.cfg, "PUT", "/v1/agent/service/register", {"Name": "frontdb", "Port": 1},
                        token=plain.secret)
    assert code == 403 and "service:write" in str(out), (code, out)

    secure = tokens.login(CID, "frontdb", identity="amb-frontdb-bridge-0a1b2c")
    me = consul.token_self(secure.secret)
    assert [r["Name"] for r in me["Roles"]] == [acl.AMBASSADOR_ROLE], me
    assert me["ServiceIdentities"] == [{"ServiceName": "amb-frontdb-bridge-0a1b2c"}], me

    # An empty claim (the daemon never signs one) selects nothing either.
    now = int(time.time())
    bearer = consul.signer.sign({**acl.claims(tokens.method, CID, "frontdb", now), "identity": ""})
    code, out = request(consul.cfg, "POST", "/v1/acl/login", acl.login_body(tokens.method, bearer, CID, "frontdb"))
    assert code == 200, (code, out)
    empty = out["SecretID"]
    assert not consul.token_self(empty).get("ServiceIdentities")

    # A name Consul cannot bind: the login is refused, naming it, and makes no token.
    before = consul.tokens_of(tokens.method)
    with pytest.raises(RuntimeFailure, match=r'bind name for bind target is invalid: \\?"bad name!'):
        tokens.login(CID, "frontdb", identity="bad name!")
    assert consul.tokens_of(tokens.method) == before and len(before) == 3

    for secret in (plain.secret, secure.secret, empty):
        tokens.logout(secret)
    assert consul.tokens_of(tokens.method) == []


def test_consul_1_16_refuses_a_plain_login_under_the_former_selector(consul):
    # The claim is absent from `value`, `!=` on a missing key counts as true, the bind name is "".
    tokens = consul.method("portlink-idhost2", identity_selector=OLD_SELECTOR)
    with pytest.raises(RuntimeFailure, match=r'computed \\?"service\\?" bind name for bind target is invalid: '
                                             r'\\?"\\?"'):
        tokens.login(CID, "frontdb")
    assert consul.tokens_of(tokens.method) == []
    secure = tokens.login(CID, "frontdb", identity="frontdb")   # with the claim it always worked
    assert consul.token_self(secure.secret)["ServiceIdentities"] == [{"ServiceName": "frontdb"}]
    tokens.logout(secure.secret)


@pytest.mark.root
def test_plaintext_lab_starts_a_cross_host_ambassador_with_both_rules(tmp_path):
    root, labmod.LAB_ROOT = labmod.LAB_ROOT, tmp_path
    try:
        made = labmod.up(2, f"i{os.getpid() % 10000}", progress=lambda *_: None, secure_links=False)
        try:
            two = Two(made)
            code, rules = two.consul("host2", "GET", "/v1/acl/binding-rules?authmethod=portlink-host2",
                                     two.management)
            assert code == 200 and sorted(r["Selector"] for r in rules) == \
                sorted([acl.IDENTITY_SELECTOR, acl.binding_rule_body("x")["Selector"]]), rules
            two.cli("host1", "run", "-d", "--name", "frontdb", "-p", "5432:80", "busybox", "sh", "-c", SERVE, "host1")
            assert wait_for(lambda: two.client("host2").get("/system/consul")["services_seen"] >= 2, 20)
            two.cli("host2", "run", "-d", "--name", "web", "--link", "frontdb:sql", "busybox", "sleep", "600")
            fetch = lambda: two.cli("host2", "exec", "web", "sh", "-c", "timeout 5 wget -qO- http://sql/",
                                    check=False)
            assert wait_for(lambda: fetch().stdout.strip() == "db-on-host1", 10), fetch()
            # Plaintext: the link's ambassador is served by the host forwarder, which never
            # talks to Consul, so it gets no token. A sidecar has a process of its own: it does.
            amb = two.client("host2").get("/containers/amb-frontdb-bridge")
            state = Path(made.host("host2").workdir) / "state" / "containers"
            assert not (state / amb["id"] / "consul-token").exists()
            two.cli("host2", "run", "-d", "--name", "side", "--ambassador", "frontdb")
            side = two.client("host2").get("/containers/side")
            secret = (state / side["id"] / "consul-token").read_text().strip()
            code, me = two.consul("host2", "GET", "/v1/acl/token/self", secret)
            assert code == 200 and [r["Name"] for r in me["Roles"]] == [acl.AMBASSADOR_ROLE], me
            assert not me.get("ServiceIdentities"), me     # plaintext: no claim, no identity
        finally:
            errors = labmod.down(made.name, progress=lambda *_: None)
        assert not errors, errors
    finally:
        labmod.LAB_ROOT = root
