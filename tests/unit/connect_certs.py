"""Test certificates shaped like Consul Connect's (EC P-256, a SPIFFE URI SAN per
service leaf), made with the openssl command line: a CA and leaves signed by it."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from portlink.catalog.connect import Leaf, Roots

TRUST_DOMAIN = "11111111-2222-3333-4444-555555555555.consul"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def uri(service: str, td: str = TRUST_DOMAIN) -> str:
    return f"spiffe://{td}/ns/default/dc/dc1/svc/{service}"


@dataclass
class CA:
    dir: Path
    name: str
    trust_domain: str = TRUST_DOMAIN
    serial: int = 0x10

    @classmethod
    def make(cls, where: Path, name: str = "ca", trust_domain: str = TRUST_DOMAIN) -> "CA":
        d = where / name
        d.mkdir(parents=True)
        _openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", "ca.key", "-out", "ca.pem", "-days", "3", "-subj", f"/CN={name}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
        return cls(d, name, trust_domain)

    @property
    def pem(self) -> str:
        return (self.dir / "ca.pem").read_text()

    def roots(self, *more: "CA") -> Roots:
        return Roots(self.trust_domain, self.name, tuple(c.pem for c in (self, *more)))

    def leaf(self, service: str, san: str | None = None) -> Leaf:
        """A leaf for `service` (its SAN is `san` if given, else the service's SPIFFE URI)."""
        self.serial += 1
        n = f"{service}-{self.serial}"
        (self.dir / f"{n}.ext").write_text(
            f"subjectAltName=URI:{san or uri(service, self.trust_domain)}\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment,keyAgreement\n"
            "extendedKeyUsage=serverAuth,clientAuth\n")
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", f"{n}.key", "-out", f"{n}.csr", "-subj", f"/CN={service}", cwd=self.dir)
        _openssl("x509", "-req", "-in", f"{n}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-set_serial", hex(self.serial), "-days", "2", "-out", f"{n}.pem", "-extfile", f"{n}.ext",
                 cwd=self.dir)
        serial = f"{self.serial:02x}"
        return Leaf(service=service, uri=san or uri(service, self.trust_domain), serial=serial,
                    cert_pem=(self.dir / f"{n}.pem").read_text(), key_pem=(self.dir / f"{n}.key").read_text(),
                    valid_before="2099-01-01T00:00:00Z")
