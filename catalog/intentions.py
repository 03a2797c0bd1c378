"""Intentions from links (secure links): a link allows the linking
container's service (its Connect identity) to reach the linked service; the
intention goes when no container on any host still needs it.

Who holds an intention is in its description, one mark per holding host:
`[portlink-host <host id>]` (Consul 1.9+ keeps intentions in config entries:
the exact endpoint takes no Meta). A host adds its mark when its first linker
of that pair starts and takes it out with its last one (per host counting is
the journal's: one `intention` row per linker); the last holder deletes it.
An intention that is not `allow` or has no mark is a person's (`consul
intention create -deny`, or a PUT over ours): never overwritten nor deleted,
and the server side obeys it.

Two hosts changing one intention at once: each write is a read, a PUT of the
description with its mark added (or taken out) and a read-back; a host that
finds its change lost to the other's write does it again (at most TRIES
times). Left open: a last holder's DELETE landing after another host's
read-back; that host's linker is then denied until its next start re-makes
the intention (the window is one request; Consul's exact endpoint has no
compare-and-set).

The request shapes and the bookkeeping are pure (`put_request`,
`delete_request`, `holders`, `held_text`); `Intentions` is the thin blocking
I/O (the lifecycle's worker threads call it)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

from portlink.catalog.ambassador_tokens import request
from portlink.catalog.config import ConsulConfig
from portlink.errors import RuntimeFailure

log = logging.getLogger("portlink.consul")

MARK = "[portlink-host {}]"
_MARKS = re.compile(r"\[portlink-host ([0-9a-f]+)\]")
EXACT = "/v1/connect/intentions/exact"
TRIES = 5


@dataclass(frozen=True)
class Link:
    source: str            # the linking container's service (or a sidecar ambassador's identity)
    destination: str       # the linked service

    @classmethod
    def from_key(cls, key: str) -> "Link":
        """The journal's name of the step: 'SOURCE DESTINATION' (a third word, a
        holding linker's id, is the journal's own)."""
        source, _, destination = key.partition(" ")
        destination = destination.split(" ")[0]
        if not source or not destination:
            raise ValueError(f"invalid intention key {key!r}: expected 'SOURCE DESTINATION'")
        return cls(source, destination)

    @property
    def key(self) -> str:
        return f"{self.source} {self.destination}"


def exact_path(link: Link) -> str:
    return f"{EXACT}?{urlencode({'source': link.source, 'destination': link.destination})}"


def description(link: Link, host: str, host_id: str, ambassador: str) -> str:
    """An intention held by one host (a sidecar ambassador's own)."""
    return (f"portlink: --link {link.destination} on host {host} through ambassador {ambassador}, "
            f"removed with it {MARK.format(host_id)}")


def holders(existing: object) -> list[str]:
    """The host ids holding an intention made by links, in mark order."""
    if not isinstance(existing, dict):
        return []
    return list(dict.fromkeys(_MARKS.findall(str(existing.get("Description") or ""))))


def made_by_links(existing: object) -> bool:
    """Made by portlink links (of any host): `allow` with at least one holder mark."""
    return isinstance(existing, dict) and existing.get("Action") == "allow" and bool(holders(existing))


def held_text(link: Link, hosts: list[str]) -> str:
    marks = " ".join(MARK.format(h) for h in hosts)
    return (f"portlink: --link {link.destination} from service {link.source}; "
            f"deleted when its last holding host releases it {marks}")


def put_request(link: Link, text: str) -> tuple[str, str, dict]:
    """(method, path, body) that allows `link`."""
    return "PUT", exact_path(link), {"Action": "allow", "Description": text}


def delete_request(link: Link) -> tuple[str, str, None]:
    return "DELETE", exact_path(link), None


def ours(existing: object, host_id: str) -> bool:
    """Whether an intention (GET .../exact answer) was made by links and this host holds it."""
    return made_by_links(existing) and host_id in holders(existing)


class Intentions:
    """One host's intentions, made with the daemon's token (intentions = "write")."""

    def __init__(self, cfg: ConsulConfig, host_id: str, host_name: str,
                 send: Callable[[str, str, object], tuple[int, object]] | None = None) -> None:
        """`send(method, path, body)`: one call to Consul (default: the agent's HTTP API
        with the daemon's token; the unit tests give an in-memory Consul)."""
        self.cfg, self.host_id, self.host_name = cfg, host_id, host_name
        self.send = send or (lambda method, path, body: request(self.cfg, method, path, body, token=self.cfg.token))

    def _call(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        try:
            return self.send(method, path, body)
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
        """Allow `link` with this host among its holders, unless a person decided
        about it (an intention not made by links). `ambassador`: who asks (logs)."""
        for _ in range(TRIES):
            code, existing = self._call("GET", exact_path(link))
            if code == 200 and not made_by_links(existing):
                log.warning("intention %s => %s exists and was not made by a link (%s): left as it is",
                            link.source, link.destination, (existing or {}).get("Action"))
                return
            if code not in (200, 404):
                raise RuntimeFailure(f"cannot read intention {link.source} => {link.destination}: "
                                     f"HTTP {code}: {existing}")
            hosts = holders(existing) if code == 200 else []
            if self.host_id in hosts:
                return
            self._put(link, held_text(link, hosts + [self.host_id]))
            code, now = self._call("GET", exact_path(link))
            if code == 200 and (self.host_id in holders(now) or not made_by_links(now)):
                log.info("consul: intention %s => %s allow, held by %s (%s)", link.source, link.destination,
                         ", ".join(holders(now)), ambassador)
                return
        raise RuntimeFailure(f"intention {link.source} => {link.destination}: this host's hold was "
                             f"overwritten {TRIES} times in a row by other hosts")

    def _put(self, link: Link, text: str) -> None:
        method, path, body = put_request(link, text)
        code, out = self._call(method, path, body)
        if code != 200:
            hint = ('; the daemon\'s token needs intentions = "write" (README: Consul in production)'
                    if code == 403 else "")
            raise RuntimeFailure(f"Consul {self.cfg.url} refused the intention {link.source} => "
                                 f"{link.destination} (HTTP {code}: {out}){hint}")

    def ensure_own(self, link: Link, ambassador: str) -> None:
        """A sidecar ambassador's own identity (one host by construction)."""
        code, existing = self._call("GET", exact_path(link))
        if code == 200 and not ours(existing, self.host_id):
            log.warning("intention %s => %s exists and is not this host's (%s): left as it is",
                        link.source, link.destination, (existing or {}).get("Action"))
            return
        self._put(link, description(link, self.host_name, self.host_id, ambassador))
        log.info("consul: intention %s => %s allow", link.source, link.destination)

    def remove(self, link: Link) -> None:
        """Take this host's hold off `link`; the last holder deletes it. One not
        made by links, or not held by this host, is left alone; gone counts as done."""
        for _ in range(TRIES):
            code, existing = self._call("GET", exact_path(link))
            if code == 404 or (code == 200 and (not made_by_links(existing)
                                                or self.host_id not in holders(existing))):
                return
            if code != 200:
                raise RuntimeFailure(f"cannot read intention {link.source} => {link.destination}: "
                                     f"HTTP {code}: {existing}")
            rest = [h for h in holders(existing) if h != self.host_id]
            if rest:
                self._put(link, held_text(link, rest))
                log.info("consul: intention %s => %s: this host's hold released, still held by %s",
                         link.source, link.destination, ", ".join(rest))
                continue               # read back: another host's write may have crossed ours
            method, path, _ = delete_request(link)
            code, out = self._call(method, path)
            if code != 200:
                raise RuntimeFailure(f"Consul {self.cfg.url} refused to delete intention {link.source} => "
                                     f"{link.destination} (HTTP {code}: {out})")
            log.info("consul: intention %s => %s deleted", link.source, link.destination)
            return
        raise RuntimeFailure(f"intention {link.source} => {link.destination}: could not release this host's "
                             f"hold in {TRIES} tries")
