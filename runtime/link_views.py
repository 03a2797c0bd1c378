"""What this host's links are, as `portlink link ls` and `inspect` show them:
one row per link of a container that is no ambassador (a server side's link
to the container it serves is plumbing): the linker, the alias, the target
service, where the name resolves (a local container, or a client-side
ambassador), and for a link through a secure ambassador its Consul intention
(source -> destination, action, and who made it).

`link_rows` and `intention_view` are pure; `LinkViews` reads the store and asks
Consul for each intention once per call (Consul away: the row says so)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass

from portlink.catalog.intentions import Link, ours
from portlink.catalog.services import served_name
from portlink.runtime import links as linkspec
from portlink.runtime.records import Container, Records

_MARK = re.compile(r"\[portlink-host ([0-9a-f]+)\]")


@dataclass(frozen=True)
class LinkRow:
    container: str              # the linking container
    alias: str
    target: str                 # a local container's name, or the remote service
    resolves: str               # "local" or "ambassador"
    via: str | None = None      # the client-side ambassador's name
    status: str = ""            # the linking container's status
    intention: Link | None = None   # through a secure ambassador: the linker's service -> the service


def link_rows(containers: list[Container]) -> list[LinkRow]:
    by_name = {c.name: c for c in containers}
    rows = []
    for c in containers:
        if c.is_ambassador:
            continue
        for text in c.spec.links:
            link = linkspec.parse_link(text)
            target = by_name.get(link.name)
            amb = target.spec.ambassador if target is not None and target.is_ambassador else None
            if amb and not amb.get("backends"):
                # Secure: the linker is dialled as its own service (runtime.linker_identity).
                secure = bool(amb.get("identity"))
                rows.append(LinkRow(c.name, link.alias, amb["service"], "ambassador", target.name, c.status,
                                    Link(served_name(c.name, c.spec.labels or {}), amb["service"])
                                    if secure else None))
            else:
                rows.append(LinkRow(c.name, link.alias, link.name, "local", None, c.status))
    return rows


def intention_view(link: Link, existing: dict | None, host_id: str, error: str | None = None) -> dict:
    """An intention as shown: action None = none in Consul (its default applies);
    `by`: "this host" / "portlink host <id>" (made by a link) or "person"."""
    out = {"source": link.source, "destination": link.destination, "action": None, "by": None}
    if error is not None:
        return {**out, "action": "unknown", "error": error}
    if existing is None:
        return out
    desc = str(existing.get("Description") or "")
    hosts = _MARK.findall(desc)
    if ours(existing, host_id):
        by = "this host" + "".join(f", portlink host {h}" for h in hosts if h != host_id)
    elif hosts and existing.get("Action") == "allow":
        by = ", ".join(f"portlink host {h}" for h in hosts)
    else:
        by = "person"
    return {**out, "action": existing.get("Action"), "by": by, "description": desc, "holders": hosts}


def row_json(row: LinkRow, intention: dict | None) -> dict:
    out = asdict(row)
    out["intention"] = intention
    return out


class LinkViews:
    def __init__(self, records: Records, host_id: str,
                 lookup: Callable[[Link], dict | None] | None) -> None:
        """`lookup`: the intention of a pair (None: none); None without secure links."""
        self.records, self.host_id, self.lookup = records, host_id, lookup

    def _intentions(self, rows: list[LinkRow]) -> dict[Link, dict]:
        seen: dict[Link, dict] = {}
        for r in rows:
            if r.intention is None or r.intention in seen or self.lookup is None:
                continue
            try:
                seen[r.intention] = intention_view(r.intention, self.lookup(r.intention), self.host_id)
            except Exception as e:   # Consul away: the rest of the listing still shows
                seen[r.intention] = intention_view(r.intention, None, self.host_id, str(e))
        return seen

    def list(self, all: bool = False) -> list[dict]:
        rows = [r for r in link_rows(self.records.all()) if all or r.status == "running"]
        found = self._intentions(rows)
        return [row_json(r, found.get(r.intention)) for r in rows]

    def of(self, name: str) -> dict[str, dict]:
        """A container's links by alias (inspect adds them to its `links` entries)."""
        rows = [r for r in link_rows(self.records.all()) if r.container == name]
        found = self._intentions(rows)
        return {r.alias: row_json(r, found.get(r.intention)) for r in rows}
