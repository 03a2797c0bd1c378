"""SPIFFE service identities in Consul Connect leaf certificates, pure.

A leaf carries one URI SAN `spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>`
(with `/ap/<partition>` first on Consul Enterprise). Python's hostname check
knows nothing of URI SANs, so the peer's identity is read here from
`getpeercert()` (only filled in after the chain was verified against the roots)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


class IdentityError(Exception):
    """The peer's certificate does not name the identity we expected."""


@dataclass(frozen=True)
class ServiceID:
    trust_domain: str
    namespace: str
    datacenter: str
    service: str
    partition: str = ""

    @property
    def uri(self) -> str:
        ap = f"/ap/{self.partition}" if self.partition else ""
        return f"spiffe://{self.trust_domain}{ap}/ns/{self.namespace}/dc/{self.datacenter}/svc/{self.service}"


def parse_uri(uri: str) -> ServiceID:
    """A Connect service SPIFFE URI -> ServiceID; IdentityError if it is not one."""
    try:
        u = urlsplit(uri)
    except ValueError:
        raise IdentityError(f"not a URI: {uri!r:.200}") from None
    if u.scheme != "spiffe" or not u.netloc or u.query or u.fragment or "@" in u.netloc:
        raise IdentityError(f"not a SPIFFE ID: {uri!r:.200}")
    parts = u.path.split("/")[1:]
    partition = ""
    if parts[:1] == ["ap"] and len(parts) >= 2:
        partition, parts = parts[1], parts[2:]
    if len(parts) != 6 or parts[0::2] != ["ns", "dc", "svc"] or not all(parts[1::2]):
        raise IdentityError(f"not a Consul service identity: {uri!r:.200}")
    return ServiceID(u.netloc.lower(), parts[1], parts[3], parts[5], partition)


def peer_uris(cert: dict | None) -> list[str]:
    """The URI SANs of a certificate as `SSLObject.getpeercert()` returns it."""
    if not cert:
        return []
    return [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]


def peer_identity(cert: dict | None, trust_domain: str) -> ServiceID:
    """The one Connect service identity in `cert`, in our trust domain."""
    uris = peer_uris(cert)
    if len(uris) != 1:
        raise IdentityError(f"expected one SPIFFE URI in the peer certificate, found {len(uris)}")
    sid = parse_uri(uris[0])
    if sid.trust_domain != trust_domain.lower():
        raise IdentityError(f"peer {sid.uri} is not in trust domain {trust_domain}")
    return sid


def check_service(cert: dict | None, trust_domain: str, service: str) -> ServiceID:
    """The client's check of a server: it must be `service` of our trust domain
    (default namespace; any datacenter of the same CA)."""
    sid = peer_identity(cert, trust_domain)
    if sid.service != service or sid.namespace != "default":
        raise IdentityError(f"peer is {sid.uri}, expected service {service!r}")
    return sid


def serial_hex(cert: dict | None) -> str:
    """The certificate's serial in Consul's colon hex ("0c", "01:a3:ff")."""
    raw = (cert or {}).get("serialNumber", "")
    try:
        n = int(raw, 16)
    except ValueError:
        raise IdentityError(f"peer certificate has no usable serial number ({raw!r:.60})") from None
    b = n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")
    return ":".join(f"{x:02x}" for x in b)
