"""Consul ACLs for portlink (pure): the policies a daemon and an ambassador
need, the JWT auth method through which a daemon mints its ambassadors'
tokens, and the claims it signs.

Why an auth method: creating tokens needs `acl = "write"`, which in Consul
amounts to global management. Instead (as Nomad's workload identities do) the
operator creates, per host, an auth method of type `jwt` that trusts only that
host's public key and binds one read-only policy; the daemon signs a short-lived
JWT per ambassador with the private key and exchanges it at /v1/acl/login,
which needs no token. The worst a stolen host key buys is read access. Consul 1.16
validates RS*, ES* and PS* signatures: portlink signs ES256 (P-256 keys).

With --secure-links an ambassador speaks mutual TLS as a Connect identity: a
server side as the service it serves (leaf + authorize: service:write on it),
a client side as its own identity (leaf: service:write on it; read on the
target). The daemon signs that identity as the claim `identity`, and a second
binding rule binds it as a service identity (service:write on that name, read
on every service and node); the daemon writes intentions (intentions = "write").

What each side calls (and so needs):
  daemon      PUT /v1/agent/service/register, /v1/agent/service/deregister/<id>
              (service:write), GET /v1/agent/services (service:read),
              GET /v1/catalog/services and /v1/health/service/<svc> blocking
              queries (service:read, node:read to see the entries' nodes)
  ambassador  GET /v1/health/service/<svc> blocking queries (service:read on the
              followed service, node:read)
The agent's own token registers its node (node:write on that node), so the
daemon needs no node write."""

from __future__ import annotations

import re

PREFIX = "portlink"
DAEMON_POLICY = f"{PREFIX}-daemon"
AMBASSADOR_POLICY = f"{PREFIX}-ambassador"
AMBASSADOR_ROLE = f"{PREFIX}-ambassador"    # holds AMBASSADOR_POLICY; what the binding rule binds
AUDIENCE = f"{PREFIX}-ambassador"      # the `aud` an auth method accepts
JWT_TTL = 60                           # seconds a signed JWT is good for: only for the login exchange
TOKEN_ENV = "CONSUL_HTTP_TOKEN_FILE"   # read by the ambassador (catalog.config.from_sources)
# Claims copied onto the login's variables (value.service, value.container,
# value.identity): usable in a binding rule's selector and bind name.
CLAIM_MAPPINGS = {"service": "service", "sub": "container", "identity": "identity"}

DAEMON_RULES = '''\
# portlinkd: register and deregister its containers' services on its own agent,
# and read every service and node (DNS, ambassadors' ports, its own entries).
# With --secure-links it also makes and deletes the intentions its links need.
service_prefix "" {
  policy = "write"
  intentions = "write"
}
node_prefix "" {
  policy = "read"
}
'''

AMBASSADOR_RULES = '''\
# An ambassador: follow services' healthy instances (blocking health queries).
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
'''

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")   # Consul's auth method names


def auth_method_name(host: str) -> str:
    """The auth method of one host: portlink-<host>."""
    name = f"{PREFIX}-{host}"
    if not _NAME.match(name):
        raise ValueError(f"invalid auth method name {name!r}: letters, digits, '-' and '_', at most 128")
    return name


def check_auth_method_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"invalid auth method name {name!r}: letters, digits, '-' and '_', at most 128")
    return name


def service_rules(service: str) -> str:
    """Read of one service and every node: what a narrower, per-service ambassador
    policy would hold (binding it needs a policy per service: templated policies
    are Consul 1.17+, and creating policies at run time needs acl:write)."""
    return f'service "{service}" {{\n  policy = "read"\n}}\nnode_prefix "" {{\n  policy = "read"\n}}\n'


def policy_body(name: str, rules: str, description: str) -> dict:
    """PUT /v1/acl/policy."""
    return {"Name": name, "Description": description, "Rules": rules}


def auth_method_body(name: str, public_key_pem: str, algorithm: str, audience: str = AUDIENCE) -> dict:
    """PUT /v1/acl/auth-method: a jwt method that trusts one host's key only.
    The issuer is bound to the method's name, so a JWT minted for another host's
    method (with another key anyway) is refused twice."""
    return {
        "Name": name, "Type": "jwt", "DisplayName": name,
        "Description": "portlink ambassadors of one host (JWTs signed by its portlinkd)",
        "Config": {
            "JWTValidationPubKeys": [public_key_pem],
            "JWTSupportedAlgs": [algorithm],
            "BoundAudiences": [audience],
            "BoundIssuer": name,
            "ClaimMappings": dict(CLAIM_MAPPINGS),
        },
    }


def role_body(name: str = AMBASSADOR_ROLE, policy: str = AMBASSADOR_POLICY) -> dict:
    """PUT /v1/acl/role: the role a binding rule hands out, holding one policy."""
    return {"Name": name, "Description": "portlink ambassadors: read services and nodes",
            "Policies": [{"Name": policy}]}


def binding_rule_body(method: str, role: str = AMBASSADOR_ROLE) -> dict:
    """PUT /v1/acl/binding-rule: every login through `method` that names a
    service gets the read-only ambassador role. Consul 1.16 binds only
    service, node or role (policy and templated-policy came with 1.17)."""
    return {"AuthMethod": method, "BindType": "role", "BindName": role,
            "Selector": 'value.service != ""',
            "Description": "portlink ambassadors: read services and nodes"}


# The identity rule's selector. `value.identity != ""` alone is not enough: in
# Consul 1.16 a claim the JWT lacks is absent from the selector's `value` map,
# and go-bexpr counts `!=` (and `matches`) on a missing key as true, so a login
# without the claim matched, bound `${value.identity}` as "" and was refused
# (HTTP 500 'computed "service" bind name for bind target is invalid: ""').
# `in` tests the key itself; the second half keeps an empty claim out too.
IDENTITY_SELECTOR = '"identity" in value and value.identity != ""'


def identity_binding_rule_body(method: str) -> dict:
    """PUT /v1/acl/binding-rule: a login that carries the claim `identity` (an
    ambassador of secure links) also gets that service identity: service:write
    on the name (its Connect leaf, and authorize on a server side) and read on
    every service and node. A login without the claim (plaintext links) does not
    match, so one method serves daemons with and without --secure-links."""
    return {"AuthMethod": method, "BindType": "service", "BindName": "${value.identity}",
            "Selector": IDENTITY_SELECTOR,
            "Description": "portlink secure links: an ambassador's Connect identity"}


def claims(method: str, container_id: str, service: str, now: int, ttl: int = JWT_TTL,
           audience: str = AUDIENCE, identity: str | None = None) -> dict:
    """What the daemon signs for one ambassador's login; `identity`: the Connect
    identity of a secure-links ambassador."""
    if not container_id or not service:
        raise ValueError("an ambassador's claims need its container id and service")
    out = {"iss": method, "sub": container_id, "aud": audience, "service": service,
           "iat": now, "nbf": now - 5, "exp": now + ttl}
    if identity:
        out["identity"] = identity
    return out


def login_body(method: str, bearer: str, container_id: str, service: str) -> dict:
    """POST /v1/acl/login; Meta shows on the token, so an operator can tell it apart."""
    return {"AuthMethod": method, "BearerToken": bearer,
            "Meta": {"portlink-container": container_id[:64], "portlink-service": service}}
