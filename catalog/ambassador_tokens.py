"""Minting and revoking ambassadors' Consul tokens through the host's JWT
auth method (see catalog.acl for why): sign a short-lived JWT with the host's
private key, log in at /v1/acl/login (no token needed), and log the token out
(/v1/acl/logout, with the token itself) when the ambassador stops.

Signing is PyJWT over `cryptography` (ES256): a library call, no process per
ambassador, and the key is parsed and checked once at daemon start. Calls are
blocking (urllib): they run in the lifecycle's worker threads."""

from __future__ import annotations

import json
import os
import ssl
import stat
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from portlink.catalog import acl
from portlink.catalog.config import REQUEST_TIMEOUT, ConsulConfig
from portlink.errors import InvalidArgument, RuntimeFailure

ALGORITHM = "ES256"


@dataclass(frozen=True)
class Login:
    secret: str        # what the ambassador presents (never logged)
    accessor: str      # what may be shown and logged


class Signer:
    """The host's ambassador signing key (an EC P-256 private key, PEM)."""

    def __init__(self, key, path: str) -> None:
        self._key, self.path = key, path

    @classmethod
    def load(cls, path: str) -> "Signer":
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        try:
            st = os.stat(path)
            data = Path(path).read_bytes()
        except OSError as e:
            raise InvalidArgument(f"cannot read --ambassador-key {path!r}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"--ambassador-key {path!r} is not a regular file")
        if st.st_mode & 0o077:
            raise InvalidArgument(f"--ambassador-key {path!r} is readable by others (mode "
                                  f"{stat.S_IMODE(st.st_mode):o}): chmod 600 it")
        try:
            key = load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise InvalidArgument(f"--ambassador-key {path!r} is not an unencrypted PEM private key: {e}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise InvalidArgument(f"--ambassador-key {path!r} must be an EC P-256 key "
                                  "(openssl ecparam -name prime256v1 -genkey -noout): Consul 1.16 checks ES256")
        return cls(key, path)

    def public_pem(self) -> str:
        from cryptography.hazmat.primitives import serialization
        return self._key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def sign(self, claims: dict) -> str:
        import jwt
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)


def generate_key_pem() -> bytes:
    """A new P-256 private key, PEM (PKCS#8): what `lab up` gives each host."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def request(cfg: ConsulConfig, method: str, path: str, body: object = None, token: str | None = None,
            timeout: float = REQUEST_TIMEOUT) -> tuple[int, object]:
    """One blocking call to the agent: (status, decoded JSON or text). The token
    goes in the X-Consul-Token header, never in the URL."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(cfg.url + path, data=data, method=method)
    if token:
        req.add_header("X-Consul-Token", token)
    ctx = None
    if cfg.scheme == "https":
        ctx = ssl.create_default_context(cafile=cfg.ca_file)
        if not cfg.verify:
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))
    try:
        with opener.open(req, timeout=timeout) as r:
            text = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace").strip()[:300]
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text


class AmbassadorTokens:
    """One host's minting of ambassador tokens."""

    def __init__(self, cfg: ConsulConfig, signer: Signer, method: str) -> None:
        self.cfg, self.signer, self.method = cfg, signer, acl.check_auth_method_name(method)

    def login(self, container_id: str, service: str, identity: str | None = None) -> Login:
        bearer = self.signer.sign(acl.claims(self.method, container_id, service, int(time.time()),
                                             identity=identity))
        try:
            code, body = request(self.cfg, "POST", "/v1/acl/login",
                                 acl.login_body(self.method, bearer, container_id, service))
        except OSError as e:
            raise RuntimeFailure(f"cannot log the ambassador in at Consul {self.cfg.url}: {e}") from None
        if code != 200 or not isinstance(body, dict) or not body.get("SecretID"):
            raise RuntimeFailure(f"Consul {self.cfg.url} refused the ambassador's login through auth method "
                                 f"{self.method!r} (HTTP {code}: {body}); {_login_hint(body)} "
                                 "(README: Consul in production)")
        return Login(body["SecretID"], body.get("AccessorID", ""))

    def logout(self, secret: str) -> None:
        """Revoke a token made by login; one already gone counts as done."""
        try:
            code, body = request(self.cfg, "POST", "/v1/acl/logout", token=secret)
        except OSError as e:
            raise RuntimeFailure(f"cannot log the ambassador's token out at Consul {self.cfg.url}: {e}") from None
        if code != 200 and not (code == 403 and "not found" in str(body).lower()):
            raise RuntimeFailure(f"Consul {self.cfg.url} refused the logout (HTTP {code}: {body})")


def _login_hint(body: object) -> str:
    """What to check, from Consul's refusal: a bind-name error is a binding rule's doing
    (an old identity selector matches logins without the claim), anything else the key."""
    if "bind name" in str(body):
        return ("a binding rule computed an invalid name: check the rules' selectors (the identity "
                f"rule's is {acl.IDENTITY_SELECTOR!r})")
    return "is the method set up with this host's public key?"
