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

from portlink.ambassador.warm import ALPNS
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
    warm: ssl.SSLContext | None = None   # the client context of warm connections (offers ALPNS)


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


class ResumingClientContext(ssl.SSLContext):
    """A client context that offers the session of its last verified connection
    (TLS 1.3 ticket or 1.2 session id): a resumed handshake skips the certificate
    exchange and its signatures, most of a connect-per-request's cost. The
    server still authorizes each connection (the peer certificate travels in
    the session), and a rotation builds new contexts on both sides, so a
    session never outlives the certificates it was made with.

    asyncio and uvloop create the TLS object through `wrap_bio`, without a
    session argument; this is where the session is put in."""

    _last = None                 # the SSLObject of the last verified full handshake
    _session = None              # its session, once it holds a ticket: offered at every dial

    def remember(self, ssl_object) -> None:
        """The SSLObject of a connection whose server was verified and checked.
        Its session is read at the next dial: TLS 1.3 tickets arrive after the
        handshake, so reading it now would often find none. A connection that
        resumed the cached session keeps it: reading a session out of an
        SSLObject costs more than the resumed handshake saves (CPython copies
        it through DER), and the server's stateless tickets can be reused."""
        if ssl_object.session_reused and self._session is not None:
            return
        self._last, self._session = ssl_object, None

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None, session=None):
        if session is None and not server_side:
            session = self._session
            if session is None and self._last is not None:
                try:
                    session = self._last.session
                except (ValueError, AttributeError):
                    session = None
                if session is not None and session.has_ticket:
                    self._session = session
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)


def _new(purpose: int, roots: Roots, leaf: Leaf, where: Path) -> ssl.SSLContext:
    ctx = (ResumingClientContext if purpose == ssl.PROTOCOL_TLS_CLIENT else ssl.SSLContext)(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # No dummy ChangeCipherSpec records (TLS 1.3's middlebox disguise): both ends are
    # ours, and every handshake (a reroute's, a connect-per-request's) skips two records.
    ctx.options &= ~ssl.OP_ENABLE_MIDDLEBOX_COMPAT
    ctx.check_hostname = False           # identities are URI SANs, checked by spiffe.py
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=roots.bundle)
    _load_chain(ctx, leaf, where)
    return ctx


def build(roots: Roots, leaf: Leaf, key_dir: Path) -> Contexts:
    try:
        server = _new(ssl.PROTOCOL_TLS_SERVER, roots, leaf, key_dir)
        server.set_alpn_protocols(ALPNS)      # selected only when a client offers one
        # One TLS 1.3 ticket per handshake, not OpenSSL's 2: a client side keeps and reuses
        # one (ResumingClientContext), so the second was built and encrypted for nothing.
        server.num_tickets = 1
        warm = _new(ssl.PROTOCOL_TLS_CLIENT, roots, leaf, key_dir)
        warm.set_alpn_protocols(ALPNS)        # offered only by warm dials (ambassador/warm.py)
        return Contexts(server=server, client=_new(ssl.PROTOCOL_TLS_CLIENT, roots, leaf, key_dir),
                        leaf=leaf, roots=roots, warm=warm)
    except (ssl.SSLError, ValueError, OSError) as e:
        raise ContextError(f"cannot load the connect certificates of {leaf.service} "
                           f"(serial {leaf.serial}): {e}") from None
