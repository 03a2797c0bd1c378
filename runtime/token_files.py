"""An ambassador's Consul token on disk: minted at each start through the
host's JWT auth method (catalog.ambassador_tokens), written to a file in the
container's dir that is bound read-only into the ambassador (the environment
carries only its path), and logged out when the ambassador's run ends (the
journal's `consul_token` step: stop, exit, rm, crash recovery).

The secret file is 0400 and owned by the ambassador's user; a root-only file
beside it keeps the token's AccessorID, which is what logs show."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from portlink.catalog.ambassador_tokens import AmbassadorTokens
from portlink.errors import RuntimeFailure

log = logging.getLogger("portlink.consul")

TOKEN_FILE = "consul-token"


def accessor_path(path: Path) -> Path:
    return path.with_name(path.name + ".accessor")


def _write_new(path: Path, text: str, mode: int, uid: int = 0, gid: int = 0) -> None:
    """A fresh file (never through a link), owned and moded before the secret is in it."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read(path: Path) -> str | None:
    """A token file's text; None if there is none (or something else, a link, in its place)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, 4096).decode(errors="replace").strip()
    finally:
        os.close(fd)


class TokenFiles:
    def __init__(self, tokens: AmbassadorTokens | None) -> None:
        self.tokens = tokens

    @property
    def enabled(self) -> bool:
        return self.tokens is not None

    def issue(self, path: Path, container_id: str, service: str, uid: int, gid: int,
              identity: str | None = None) -> str:
        """Log the ambassador in and write its token; returns the AccessorID.
        `identity`: its Connect identity (secure links), bound as a service identity."""
        if path.exists():
            self.revoke(str(path))          # an earlier run's logout failed: try it again first
        login = self.tokens.login(container_id, service, identity)
        try:
            _write_new(accessor_path(path), login.accessor + "\n", 0o600)
            _write_new(path, login.secret, 0o400, uid, gid)
        except OSError as e:
            self.tokens.logout(login.secret)
            raise RuntimeFailure(f"cannot write the ambassador's Consul token to {path}: {e}") from None
        log.info("consul: ambassador %s (%s) logged in, token %s", container_id[:12], service, login.accessor)
        return login.accessor

    def revoke(self, name: str) -> None:
        """Log the token out and remove its files. A logout Consul refuses or cannot
        take (unreachable) is logged with the AccessorID, not raised: removing an
        ambassador must not wait for Consul; an operator can delete the token."""
        path = Path(name)
        secret, accessor = _read(path), _read(accessor_path(path)) or "?"
        if secret and self.tokens is not None:
            try:
                self.tokens.logout(secret)
                log.info("consul: token %s logged out", accessor)
            except RuntimeFailure as e:
                log.warning("consul: token %s could not be logged out (%s): delete it with "
                            "`consul acl token delete -accessor-id %s`", accessor, e, accessor)
        elif secret:
            log.warning("consul: token %s left behind (this daemon has no --ambassador-key): delete it with "
                        "`consul acl token delete -accessor-id %s`", accessor, accessor)
        for p in (path, accessor_path(path)):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
