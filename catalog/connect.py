"""Consul Connect's agent endpoints, as a Connect-native service uses them: the
CA roots and a service's leaf certificate (both blocking queries, answered
from the local agent's cache) and the per-connection authorization.

`parse_roots`, `parse_leaf` and `parse_authorize` are pure (a bad answer is a
ValueError naming what is wrong); `AgentConnect` is the thin I/O over a
py-consul asyncio client, so its token and TLS settings are the ones the rest
of portlink uses."""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True)
class Roots:
    trust_domain: str                 # "<cluster id>.consul"
    active_id: str
    pems: tuple[str, ...]             # every root (old and new during a rotation) and its intermediates

    @property
    def bundle(self) -> str:
        return "".join(p if p.endswith("\n") else p + "\n" for p in self.pems)


@dataclass(frozen=True)
class Leaf:
    service: str
    uri: str                          # spiffe://<trust-domain>/ns/default/dc/<dc>/svc/<service>
    serial: str                       # colon hex, as Consul spells it ("0c", "01:a3")
    cert_pem: str                     # the leaf, then any intermediates (a cross-signed root)
    key_pem: str
    valid_before: str

    def __repr__(self) -> str:        # never the key
        return f"Leaf({self.service!r}, serial={self.serial!r}, valid_before={self.valid_before!r})"


@dataclass(frozen=True)
class Decision:
    authorized: bool
    reason: str


def _need(body: object, key: str, what: str, kind: type = str):
    if not isinstance(body, dict):
        raise ValueError(f"{what}: expected a JSON object, got {type(body).__name__}")
    v = body.get(key)
    if not isinstance(v, kind) or (kind is str and not v):
        raise ValueError(f"{what}: missing or invalid {key!r}")
    return v


def parse_roots(body: object) -> Roots:
    what = "connect CA roots"
    td = _need(body, "TrustDomain", what)
    active = _need(body, "ActiveRootID", what)
    pems: list[str] = []
    for r in _need(body, "Roots", what, list):
        pems.append(_need(r, "RootCert", what))
        pems.extend(p for p in (r.get("IntermediateCerts") or []) if isinstance(p, str) and p)
    if not pems:
        raise ValueError(f"{what}: no root certificates")
    return Roots(td, active, tuple(pems))


def parse_leaf(body: object) -> Leaf:
    what = "connect leaf certificate"
    return Leaf(service=_need(body, "Service", what), uri=_need(body, "ServiceURI", what),
                serial=_need(body, "SerialNumber", what).lower(), cert_pem=_need(body, "CertPEM", what),
                key_pem=_need(body, "PrivateKeyPEM", what), valid_before=_need(body, "ValidBefore", what))


def parse_authorize(body: object) -> Decision:
    if not isinstance(body, dict) or not isinstance(body.get("Authorized"), bool):
        raise ValueError(f"connect authorize: expected {{'Authorized': bool}}, got {body!r:.200}")
    return Decision(body["Authorized"], str(body.get("Reason") or ""))


class AgentConnect:
    """The three endpoints on a py-consul `consul.aio.Consul` client (its token is sent)."""

    def __init__(self, consul) -> None:
        self.consul = consul

    async def _get(self, path: str, index: int, wait: float) -> tuple[int, object]:
        from consul.callback import CB
        params = [("index", str(index)), ("wait", f"{int(wait)}s")] if index else []
        got, body = await self.consul.http.get(CB.json(index=True, allow_404=False), path, params=params,
                                               headers=self.consul.prepare_headers())
        return int(got), body

    async def roots(self, index: int, wait: float) -> tuple[int, Roots]:
        got, body = await self._get("/v1/agent/connect/ca/roots", index, wait)
        return got, parse_roots(body)

    async def leaf(self, service: str, index: int, wait: float) -> tuple[int, Leaf]:
        got, body = await self._get(f"/v1/agent/connect/ca/leaf/{quote(service, safe='')}", index, wait)
        return got, parse_leaf(body)

    async def authorize(self, target: str, uri: str, serial: str) -> Decision:
        from consul.callback import CB
        body = json.dumps({"Target": target, "ClientCertURI": uri, "ClientCertSerial": serial})
        got = await self.consul.http.post(CB.json(allow_404=False), "/v1/agent/connect/authorize",
                                          headers=self.consul.prepare_headers(), data=body)
        return parse_authorize(got)
