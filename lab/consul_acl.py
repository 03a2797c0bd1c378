"""The lab's Consul security: ACLs (default deny) and gossip encryption, set
up as an operator would for a real deployment (README: Consul in production).

Per lab, kept in files of mode 0600 under the lab's own dir (never on a command
line): the gossip key and a management token, which every agent's config names
as `initial_management`, so the servers bootstrap the ACL system themselves
(no bootstrap round trip). Per host: the agent's token (a node identity:
node:write on its own node), the daemon's token (policy portlink-daemon) and
the host's ambassador signing key (EC P-256), whose public half goes into the
host's JWT auth method. The secrets are chosen before anything starts, so the
daemons start alongside the agents with their token files in place; the
tokens are created with those SecretIDs once a leader is elected (a daemon
retries until then)."""

from __future__ import annotations

import base64
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from portlink.catalog import acl
from portlink.catalog.ambassador_tokens import ALGORITHM, Signer, generate_key_pem
from portlink.errors import RuntimeFailure
from portlink.lab.consul_agent import Agent, AgentSecurity, write_private

MANAGEMENT_FILE = "consul-management-token"
GOSSIP_FILE = "consul-gossip-key"
AGENT_TOKEN_FILE = "consul-agent-token"
DAEMON_TOKEN_FILE = "consul-token"          # handed to portlinkd with --consul-token-file
KEY_FILE = "ambassador-key.pem"             # handed to portlinkd with --ambassador-key


@dataclass(frozen=True)
class HostSecrets:
    """Where one host's secrets live (its lab work dir)."""

    workdir: Path

    @property
    def agent_token(self) -> Path:
        return self.workdir / AGENT_TOKEN_FILE

    @property
    def daemon_token(self) -> Path:
        return self.workdir / DAEMON_TOKEN_FILE

    @property
    def key(self) -> Path:
        return self.workdir / KEY_FILE


def make_lab_secrets(lab_dir: Path) -> None:
    write_private(lab_dir / MANAGEMENT_FILE, str(uuid.uuid4()))
    write_private(lab_dir / GOSSIP_FILE, base64.b64encode(secrets.token_bytes(32)).decode())


def make_host_secrets(h: HostSecrets) -> None:
    write_private(h.agent_token, str(uuid.uuid4()))
    write_private(h.daemon_token, str(uuid.uuid4()))
    write_private(h.key, generate_key_pem().decode())


def agent_security(lab_dir: Path, h: HostSecrets) -> AgentSecurity:
    read = lambda p: p.read_text().strip()
    return AgentSecurity(encrypt=read(lab_dir / GOSSIP_FILE), management=read(lab_dir / MANAGEMENT_FILE),
                         agent_token=read(h.agent_token))


def daemon_args(h: HostSecrets, host: str) -> list[str]:
    return ["--consul-token-file", str(h.daemon_token), "--ambassador-key", str(h.key),
            "--ambassador-auth-method", acl.auth_method_name(host)]


def _call(agent: Agent, method: str, path: str, body: object = None) -> object:
    code, _, out = agent.put(path, body) if method == "PUT" else agent.get(path)
    if code != 200:
        raise RuntimeFailure(f"consul {method} {path} on {agent.spec.name}: HTTP {code}: {str(out)[:300]}")
    return out


def wait_acl(agent: Agent, timeout: float = 30) -> None:
    """Until the leader has set the ACL system up (the management token resolves)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        code, _, out = agent.get("/v1/acl/token/self")
        if code == 200:
            return
        last = f"HTTP {code}: {str(out)[:200]}"
        time.sleep(0.1)
    raise RuntimeFailure(f"Consul ACLs on {agent.spec.name} not ready within {timeout}s ({last})")


def bootstrap(agents: dict[str, Agent], hosts: dict[str, HostSecrets], datacenter: str = "dc1") -> None:
    """Policies, the ambassador role, and per host: its agent's token (set on the
    agent too, which makes it register its node now), its daemon's token, its
    auth method and its two binding rules (role, service identity). `agents`/`hosts`: by host name; the first agent
    (a server) takes the writes."""
    first = next(iter(agents.values()))
    wait_acl(first)
    _call(first, "PUT", "/v1/acl/policy", acl.policy_body(
        acl.DAEMON_POLICY, acl.DAEMON_RULES, "portlinkd: register its services, read services and nodes"))
    _call(first, "PUT", "/v1/acl/policy", acl.policy_body(
        acl.AMBASSADOR_POLICY, acl.AMBASSADOR_RULES, "portlink ambassadors: read services and nodes"))
    _call(first, "PUT", "/v1/acl/role", acl.role_body())
    # Agent tokens first: a node must be in the catalog before a daemon's service
    # sync (whose token has no node:write) can succeed.
    for name, agent in agents.items():
        secret = hosts[name].agent_token.read_text().strip()
        _call(first, "PUT", "/v1/acl/token", {"SecretID": secret, "Description": f"consul agent on {name}",
                                             "NodeIdentities": [{"NodeName": name, "Datacenter": datacenter}]})
        _call(agent, "PUT", "/v1/agent/token/agent", {"Token": secret})
    for name, h in hosts.items():
        method = acl.auth_method_name(name)
        _call(first, "PUT", "/v1/acl/auth-method",
              acl.auth_method_body(method, Signer.load(str(h.key)).public_pem(), ALGORITHM))
        _call(first, "PUT", "/v1/acl/binding-rule", acl.binding_rule_body(method))
        # Always, as in production: its selector skips logins without the claim (plaintext links).
        _call(first, "PUT", "/v1/acl/binding-rule", acl.identity_binding_rule_body(method))
        _call(first, "PUT", "/v1/acl/token", {"SecretID": h.daemon_token.read_text().strip(),
                                             "Description": f"portlinkd on {name}",
                                             "Policies": [{"Name": acl.DAEMON_POLICY}]})
