"""Consul ACL pieces without Consul: policy texts, the auth method and binding
rule bodies, an ambassador's JWT claims and signature, the key file checks,
the daemon's token flags, the plan's token bind and the token files' life."""

from __future__ import annotations

import logging
import os
import stat
from ipaddress import ip_address
from pathlib import Path

import jwt
import pytest

from portlink.catalog import acl
from portlink.catalog.ambassador_tokens import ALGORITHM, AmbassadorTokens, Login, Signer, generate_key_pem
from portlink.catalog.config import from_sources
from portlink.errors import InvalidArgument, RuntimeFailure
from portlink.lab.consul_agent import AgentSecurity, AgentSpec
from portlink.runtime import ambassadors
from portlink.runtime.daemon import ambassador_tokens
from portlink.runtime.token_files import TokenFiles, accessor_path
from test_plan import IMAGE, LAYOUT, NET, container

CID = "ab" * 32


def key_file(tmp_path: Path, mode: int = 0o600) -> Path:
    p = tmp_path / "amb.pem"
    p.write_bytes(generate_key_pem())
    p.chmod(mode)
    return p


# -- policies and auth method ------------------------------------------------------

def test_daemon_policy_writes_services_and_intentions_reads_nodes_and_nothing_else():
    rules = [l.strip() for l in acl.DAEMON_RULES.splitlines() if l.strip() and not l.startswith("#")]
    assert rules == ['service_prefix "" {', 'policy = "write"', 'intentions = "write"', '}',
                     'node_prefix "" {', 'policy = "read"', '}']


def test_ambassador_policy_reads_only():
    body = acl.AMBASSADOR_RULES
    assert body.count('policy = "read"') == 2 and "write" not in body
    assert acl.service_rules("frontdb") == \
        'service "frontdb" {\n  policy = "read"\n}\nnode_prefix "" {\n  policy = "read"\n}\n'


def test_auth_method_trusts_one_key_one_audience_one_issuer():
    body = acl.auth_method_body("portlink-host1", "PEM", "ES256")
    assert body["Type"] == "jwt" and body["Name"] == "portlink-host1"
    assert body["Config"] == {"JWTValidationPubKeys": ["PEM"], "JWTSupportedAlgs": ["ES256"],
                              "BoundAudiences": ["portlink-ambassador"], "BoundIssuer": "portlink-host1",
                              "ClaimMappings": {"service": "service", "sub": "container",
                                                "identity": "identity"}}


def test_binding_rule_binds_the_read_only_role():
    # Consul 1.16 binds service, node or role; a role holds the policy.
    assert acl.binding_rule_body("portlink-host1") == {
        "AuthMethod": "portlink-host1", "BindType": "role", "BindName": "portlink-ambassador",
        "Selector": 'value.service != ""', "Description": "portlink ambassadors: read services and nodes"}
    assert acl.role_body()["Policies"] == [{"Name": "portlink-ambassador"}]


@pytest.mark.parametrize("host, ok", [("host1", True), ("web-01_a", True), ("bad name", False),
                                      ("x" * 130, False), ("h/1", False)])
def test_auth_method_names(host, ok):
    if ok:
        assert acl.auth_method_name(host) == f"portlink-{host}"
    else:
        with pytest.raises(ValueError):
            acl.auth_method_name(host)


def test_claims_are_short_lived_and_name_the_container_and_service():
    c = acl.claims("portlink-host1", CID, "frontdb", now=1000)
    assert c == {"iss": "portlink-host1", "sub": CID, "aud": "portlink-ambassador", "service": "frontdb",
                 "iat": 1000, "nbf": 995, "exp": 1000 + acl.JWT_TTL}
    with pytest.raises(ValueError):
        acl.claims("m", "", "frontdb", now=1)
    assert acl.login_body("m", "JWT", CID, "frontdb") == {
        "AuthMethod": "m", "BearerToken": "JWT",
        "Meta": {"portlink-container": CID, "portlink-service": "frontdb"}}


# -- the signing key ---------------------------------------------------------------

def test_signed_jwt_verifies_with_the_public_key_only(tmp_path):
    s = Signer.load(str(key_file(tmp_path)))
    token = s.sign(acl.claims("portlink-h", CID, "frontdb", now=int(__import__("time").time())))
    got = jwt.decode(token, s.public_pem(), algorithms=[ALGORITHM], audience="portlink-ambassador",
                     issuer="portlink-h")
    assert (got["sub"], got["service"]) == (CID, "frontdb")
    (tmp_path / "o").mkdir()
    other = Signer.load(str(key_file(tmp_path / "o")))
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, other.public_pem(), algorithms=[ALGORITHM], audience="portlink-ambassador")


def test_key_readable_by_others_is_refused(tmp_path):
    with pytest.raises(InvalidArgument, match="chmod 600"):
        Signer.load(str(key_file(tmp_path, 0o644)))


def test_key_of_another_kind_is_refused(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    p = tmp_path / "ed.pem"
    p.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    p.chmod(0o600)
    with pytest.raises(InvalidArgument, match="P-256"):
        Signer.load(str(p))
    (tmp_path / "junk").write_text("not a key")
    (tmp_path / "junk").chmod(0o600)
    with pytest.raises(InvalidArgument, match="PEM private key"):
        Signer.load(str(tmp_path / "junk"))
    with pytest.raises(InvalidArgument, match="cannot read"):
        Signer.load(str(tmp_path / "missing"))


# -- daemon flags ------------------------------------------------------------------

def test_token_file_flag(tmp_path):
    f = tmp_path / "t"
    f.write_text("  secret-1\n")
    assert from_sources("c:8500", token_file=str(f), env={}).token == "secret-1"
    # The file wins over the environment, as a flag does.
    assert from_sources("c:8500", token_file=str(f), env={"CONSUL_HTTP_TOKEN": "env"}).token == "secret-1"
    with pytest.raises(InvalidArgument, match="not both"):
        from_sources("c", token="x", token_file=str(f), env={})
    with pytest.raises(InvalidArgument, match="cannot read --consul-token-file"):
        from_sources("c", token_file=str(tmp_path / "nope"), env={})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(InvalidArgument, match="is empty"):
        from_sources("c", token_file=str(tmp_path / "empty"), env={})
    with pytest.raises(InvalidArgument, match="needs a Consul address"):
        from_sources(None, token_file=str(f), env={})


def test_ambassador_key_flags(tmp_path):
    consul = from_sources("c:8500", env={})
    assert ambassador_tokens(consul, None, None) is None
    got = ambassador_tokens(consul, str(key_file(tmp_path)), "portlink-h1")
    assert got.method == "portlink-h1"
    assert ambassador_tokens(consul, str(key_file(tmp_path)), None).method.startswith("portlink-")
    with pytest.raises(InvalidArgument, match="with --ambassador-key"):
        ambassador_tokens(consul, None, "portlink-h1")
    with pytest.raises(InvalidArgument, match="--consul ADDR"):
        ambassador_tokens(None, str(key_file(tmp_path)), None)
    with pytest.raises(InvalidArgument, match="invalid auth method name"):
        ambassador_tokens(consul, str(key_file(tmp_path)), "bad name")


def test_daemon_warns_that_a_token_on_the_command_line_shows(tmp_path, caplog, monkeypatch):
    from portlink.runtime import daemon
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(daemon.reaper, "become_subreaper", lambda: None)
    monkeypatch.setattr(daemon, "protect_from_oom", lambda: None)
    monkeypatch.setattr(daemon.logsetup, "configure", lambda *a: None)
    monkeypatch.setattr(daemon.asyncio, "run", lambda coro: coro.close())
    with caplog.at_level(logging.WARNING, "portlink.daemon"):
        daemon.main(["--state-dir", str(tmp_path / "s"), "--consul", "c:8500", "--consul-token", "x"])
    assert "--consul-token-file" in caplog.text
    with pytest.raises(SystemExit, match="not both"):
        daemon.main(["--state-dir", str(tmp_path / "s"), "--consul", "c:8500", "--consul-token", "x",
                     "--consul-token-file", str(tmp_path / "f")])


# -- the plan: a path in the environment, the secret in a read-only bind -----------------

def test_ambassador_plan_binds_the_token_read_only_and_names_only_its_path():
    from portlink.runtime.plan import plan_start
    c = container(ambassador={"service": "db", "ports": [5432], "policy": "drain", "drain_deadline": 10.0})
    plan = plan_start(c, IMAGE, (65534, 65534), LAYOUT, NET, ip_address("10.90.0.5"), [], {}, [],
                      token_file="/var/lib/pl/containers/x/consul-token")
    [m] = [m for m in plan.config["mounts"] if m["destination"] == ambassadors.TOKEN_PATH]
    assert m["source"] == "/var/lib/pl/containers/x/consul-token" and "ro" in m["options"]
    env = plan.config["process"]["env"]
    assert f"CONSUL_HTTP_TOKEN_FILE={ambassadors.TOKEN_PATH}" in env
    without = plan_start(c, IMAGE, (0, 0), LAYOUT, NET, ip_address("10.90.0.5"), [], {}, [])
    assert not [e for e in without.config["process"]["env"] if e.startswith("CONSUL_")]
    assert ambassadors.TOKEN_PATH not in {m["destination"] for m in without.config["mounts"]}


# -- token files --------------------------------------------------------------------

class FakeTokens:
    def __init__(self, fail_logout: bool = False):
        self.out: list[str] = []
        self.logins = 0
        self.fail_logout = fail_logout

    def login(self, cid: str, service: str, identity: str | None = None) -> Login:
        self.logins += 1
        return Login(f"secret-{self.logins}", f"acc-{self.logins}")

    def logout(self, secret: str) -> None:
        if self.fail_logout:
            raise RuntimeFailure("consul unreachable")
        self.out.append(secret)


def test_token_file_is_written_private_and_logged_out_on_revoke(tmp_path):
    fake = FakeTokens()
    files = TokenFiles(fake)
    path = tmp_path / "consul-token"
    uid, gid = os.getuid(), os.getgid()
    assert files.issue(path, CID, "db", uid, gid) == "acc-1"
    st = path.stat()
    assert (path.read_text(), stat.S_IMODE(st.st_mode), st.st_uid) == ("secret-1", 0o400, uid)
    assert stat.S_IMODE(accessor_path(path).stat().st_mode) == 0o600
    files.revoke(str(path))
    assert fake.out == ["secret-1"] and not path.exists() and not accessor_path(path).exists()
    files.revoke(str(path))   # already gone: nothing to do
    assert fake.out == ["secret-1"]


def test_a_leftover_token_is_logged_out_before_a_new_one(tmp_path):
    fake = FakeTokens()
    files = TokenFiles(fake)
    path = tmp_path / "consul-token"
    files.issue(path, CID, "db", os.getuid(), os.getgid())
    files.issue(path, CID, "db", os.getuid(), os.getgid())
    assert fake.out == ["secret-1"] and path.read_text() == "secret-2"


def test_a_refused_logout_is_logged_with_the_accessor_not_raised(tmp_path, caplog):
    files = TokenFiles(FakeTokens(fail_logout=True))
    path = tmp_path / "consul-token"
    files.issue(path, CID, "db", os.getuid(), os.getgid())
    with caplog.at_level(logging.WARNING, "portlink.consul"):
        files.revoke(str(path))
    assert "acc-1" in caplog.text and "secret-1" not in caplog.text and not path.exists()


def test_a_symlink_in_place_of_the_token_file_is_replaced_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    path = tmp_path / "consul-token"
    path.symlink_to(target)
    TokenFiles(FakeTokens()).issue(path, CID, "db", os.getuid(), os.getgid())
    assert target.read_text() == "keep"
    assert not path.is_symlink() and path.read_text() == "secret-1"


# -- the lab's agent config ----------------------------------------------------------

def test_agent_security_goes_in_a_config_file_not_the_command_line(tmp_path):
    sec = AgentSecurity(encrypt="a2V5", management="m-uuid", agent_token="a-uuid")
    spec = AgentSpec("host1", "10.99.0.1", tmp_path, mode="server", security=sec)
    argv = spec.argv("consul")
    assert f"-config-file={tmp_path / 'security.hcl'}" in argv
    assert not [a for a in argv if "m-uuid" in a or "a-uuid" in a or "a2V5" in a]
    hcl = sec.hcl()
    for want in ('encrypt = "a2V5"', 'default_policy = "deny"', 'initial_management = "m-uuid"',
                 'agent = "a-uuid"', "enable_token_persistence = true", "enabled = true"):
        assert want in hcl
    assert "-config-file" not in " ".join(AgentSpec("d", "127.0.0.1", tmp_path).argv("consul"))


def test_login_refusal_says_what_to_set_up(tmp_path, monkeypatch):
    from portlink.catalog import ambassador_tokens as mod
    monkeypatch.setattr(mod, "request", lambda *a, **k: (403, "auth method not found"))
    t = AmbassadorTokens(from_sources("c:8500", env={}), Signer.load(str(key_file(tmp_path))), "portlink-h1")
    with pytest.raises(RuntimeFailure, match="portlink-h1.*public key"):
        t.login(CID, "db")
    monkeypatch.setattr(mod, "request", lambda *a, **k: (
        500, 'computed "service" bind name for bind target is invalid: ""'))
    with pytest.raises(RuntimeFailure, match="binding rule computed an invalid name.*\"identity\" in value") as e:
        t.login(CID, "db")
    assert "public key" not in str(e.value)
    monkeypatch.setattr(mod, "request", lambda *a, **k: (403, "ACL not found"))
    t.logout("gone")   # already logged out: done
    monkeypatch.setattr(mod, "request", lambda *a, **k: (500, "boom"))
    with pytest.raises(RuntimeFailure, match="refused the logout"):
        t.logout("x")
