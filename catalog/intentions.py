"""Intentions from links (secure links): a host that starts a client-side
ambassador for a link to SERVICE allows that ambassador's Connect identity to
reach SERVICE, and deletes the intention when the ambassador goes.

An intention this daemon made says so in its description, `[portlink-host
<host id>]` (Consul 1.9+ keeps intentions in config entries: the exact endpoint
takes no Meta); one without it (a person's, e.g. `consul intention create
-deny`, or a PUT deny over ours) is never overwritten nor deleted: the server
side obeys it. The request
shapes are pure (`put_request`, `delete_request`); `Intentions` is the thin
blocking I/O (the lifecycle's worker threads call it)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlencode

from portlink.catalog.ambassador_tokens import request
from portlink.catalog.config import ConsulConfig
from portlink.errors import RuntimeFailure

log = logging.getLogger("portlink.consul")

MARK = "[portlink-host {}]"
EXACT = "/v1/connect/intentions/exact"


@dataclass(frozen=True)
class Link:
    source: str            # the client-side ambassador's identity
    destination: str       # the linked service

    @classmethod
    def from_key(cls, key: str) -> "Link":
        """The journal's name of the step: 'SOURCE DESTINATION'."""
        source, _, destination = key.partition(" ")
        if not source or not destination:
            raise ValueError(f"invalid intention key {key!r}: expected 'SOURCE DESTINATION'")
        return cls(source, destination)

    @property
    def key(self) -> str:
        return f"{self.source} {self.destination}"


def exact_path(link: Link) -> str:
    return f"{EXACT}?{urlencode({'source': link.source, 'destination': link.destination})}"


def description(link: Link, host: str, host_id: str, ambassador: str) -> str:
    return (f"portlink: --link {link.destination} on host {host} through ambassador {ambassador}, "
            f"removed with it {MARK.format(host_id)}")


def put_request(link: Link, text: str) -> tuple[str, str, dict]:
    """(method, path, body) that allows `link`."""
    return "PUT", exact_path(link), {"Action": "allow", "Description": text}


def delete_request(link: Link) -> tuple[str, str, None]:
    return "DELETE", exact_path(link), None


def ours(existing: object, host_id: str) -> bool:
    """Whether an intention (GET .../exact answer) was made by this host."""
    return isinstance(existing, dict) and existing.get("Action") == "allow" and \
        MARK.format(host_id) in str(existing.get("Description") or "")


class Intentions:
    """One host's intentions, made with the daemon's token (intentions = "write")."""

    def __init__(self, cfg: ConsulConfig, host_id: str, host_name: str) -> None:
        self.cfg, self.host_id, self.host_name = cfg, host_id, host_name

    def _call(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        try:
            return request(self.cfg, method, path, body, token=self.cfg.token)
        except OSError as e:
            raise RuntimeFailure(f"cannot reach Consul {self.cfg.url} for intention {path}: {e}") from None

    def get(self, link: Link) -> dict | None:
        """The intention of `link` as Consul has it; None: there is none."""
        code, existing = self._call("GET", exact_path(link))
        if code == 404:
            return None
        if code != 200 or not isinstance(existing, dict):
            raise RuntimeFailure(f"cannot read intention {link.source} => {link.destination}: HTTP {code}: {existing}")
        return existing

    def ensure(self, link: Link, ambassador: str) -> None:
        """Allow `link` unless a person decided about it (an intention not made by this host)."""
        code, existing = self._call("GET", exact_path(link))
        if code == 200 and not ours(existing, self.host_id):
            log.warning("intention %s => %s exists and is not this host's (%s): left as it is",
                        link.source, link.destination, (existing or {}).get("Action"))
            return
        method, path, body = put_request(link, description(link, self.host_name, self.host_id, ambassador))
        code, out = self._call(method, path, body)
        if code != 200:
            hint = ('; the daemon\'s token needs intentions = "write" (README: Consul in production)'
                    if code == 403 else "")
            raise RuntimeFailure(f"Consul {self.cfg.url} refused the intention {link.source} => "
                                 f"{link.destination} (HTTP {code}: {out}){hint}")
        log.info("consul: intention %s => %s allow", link.source, link.destination)

    def remove(self, link: Link) -> None:
        """Delete `link`'s intention if this host made it; gone already counts as done."""
        code, existing = self._call("GET", exact_path(link))
        if code == 404 or (code == 200 and not ours(existing, self.host_id)):
            return
        if code != 200:
            raise RuntimeFailure(f"cannot read intention {link.source} => {link.destination}: HTTP {code}: {existing}")
        method, path, _ = delete_request(link)
        code, out = self._call(method, path)
        if code != 200:
            raise RuntimeFailure(f"Consul {self.cfg.url} refused to delete intention {link.source} => "
                                 f"{link.destination} (HTTP {code}: {out})")
        log.info("consul: intention %s => %s deleted", link.source, link.destination)
