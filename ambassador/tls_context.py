"""SSLContexts from Connect's roots and a leaf: the server side requires a client
certificate signed by the roots; the client side presents the leaf and trusts
the roots. TLS 1.2 at least (1.3 is preferred by both ends).

Python's ssl loads a certificate chain only from files: the leaf's certificate
and key are written to a private directory (0700, files 0600) and removed as
soon as they are loaded. The roots load from memory."""

from __future__ import annotations

import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from portlink.catalog.connect import Leaf, Roots


class ContextError(Exception):
    """The roots or the leaf could not be loaded into an SSLContext."""


@dataclass(frozen=True)
class Contexts:
    """What one identity serves and dials with; replaced whole on a rotation."""
    server: ssl.SSLContext
    client: ssl.SSLContext
    leaf: Leaf
    roots: Roots


def private_dir(path: str | os.PathLike) -> Path:
    """Create (or tighten) a directory only we can read."""
    p = Path(path)
    p.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = p.stat()
    if st.st_uid != os.geteuid():
        raise ContextError(f"key directory {p} belongs to uid {st.st_uid}, not to us")
    os.chmod(p, 0o700)
    return p


def _load_chain(ctx: ssl.SSLContext, leaf: Leaf, where: Path) -> None:
    fd, name = tempfile.mkstemp(prefix=".leaf-", suffix=".pem", dir=where)   # 0600 by mkstemp
    try:
        with os.fdopen(fd, "w") as f:
            f.write(leaf.key_pem if leaf.key_pem.endswith("\n") else leaf.key_pem + "\n")
            f.write(leaf.cert_pem)
        ctx.load_cert_chain(name)
    finally:
        os.unlink(name)


def _new(purpose: int, roots: Roots, leaf: Leaf, where: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False           # identities are URI SANs, checked by spiffe.py
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=roots.bundle)
    _load_chain(ctx, leaf, where)
    return ctx


def build(roots: Roots, leaf: Leaf, key_dir: Path) -> Contexts:
    try:
        return Contexts(server=_new(ssl.PROTOCOL_TLS_SERVER, roots, leaf, key_dir),
                        client=_new(ssl.PROTOCOL_TLS_CLIENT, roots, leaf, key_dir), leaf=leaf, roots=roots)
    except (ssl.SSLError, ValueError, OSError) as e:
        raise ContextError(f"cannot load the connect certificates of {leaf.service} "
                           f"(serial {leaf.serial}): {e}") from None
