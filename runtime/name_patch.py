"""The resolver's snapshot and the linkers whose /etc/hosts may have changed,
patched for the containers a change touched instead of rebuilt from every
running container (issue 18: rebuilt on every change, the 1,000th link started
seven times slower than the 1st).

A change is told by the running containers by id and the ids whose Seen came,
went or was made again since the last refresh (Refresher's view of the
store's change log), so a change costs what it touched, not a pass over every
running container; without those ids (`changed` None) the touched ones are
found by identity, a container whose record did not change keeping its Seen
object. discovery.build_snapshot stays the one way
to make a snapshot from nothing (the first refresh, a network or the daemon's
upstreams changed); a patch gives what it would give for the same list
(tests/unit/test_name_patch.py: patch == rebuild over random sequences).

The patched snapshot shares the untouched views and the zones with the last
one: a touched zone gets new `names`/`ptr` dicts, bound in whole, so the
resolver's thread reads either the old dict or the new one, never a dict
being changed (the server drops its cached answers when the new snapshot is
swapped in). Containers' addresses are unique on a host (leases; networks do
not overlap), which the views, by address, rely on."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from portlink.dns.zone import NetworkZone, Snapshot
from portlink.netns.model import NetworkSpec
from portlink.runtime import discovery
from portlink.runtime.discovery import Seen, ViewPolicy, view_of, zone_labels


@dataclass(frozen=True)
class Running:
    """Running containers as names see them: `by_id` (read, never kept: the caller
    may change it after the refresh); `changed`: the ids whose Seen came, went or
    was made again since the last refresh, None when unknown (every one is
    compared); `ordered`: all of them in start order, made only when needed (a
    rebuild, a name two containers share)."""
    by_id: Mapping[str, Seen]
    ordered: Callable[[], list[Seen]]
    changed: frozenset[str] | None = None

    @staticmethod
    def of(seen: list[Seen]) -> "Running":
        return Running({c.id: c for c in seen}, lambda: seen)


@dataclass
class Refreshed:
    snapshot: Snapshot
    hosts: set[str]      # running linkers whose /etc/hosts may have changed (every linker after a rebuild)
    rebuilt: bool


class Names:
    """The last snapshot and what it was made from, patched change by change."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._made_from: tuple = ()                 # (networks, upstreams, ttl) of the last rebuild
        self._policy: ViewPolicy | None = None
        self._zones: dict[str, NetworkZone] = {}
        self._by_id: dict[str, Seen] = {}
        self._by_name: dict[str, Seen] = {}
        self._linkers: dict[str, set[str]] = {}     # a link's target name -> ids of the containers linking to it

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    @property
    def by_name(self) -> Mapping[str, Seen]:
        """The running containers of the last refresh by name (discovery.hosts_file's view)."""
        return self._by_name

    def invalidate(self) -> None:
        """The next refresh rebuilds (a pass failed part-way: the indexes may be half
        patched). The last snapshot stays, for use() until then."""
        self._made_from = ()

    def use(self, snapshot: Snapshot) -> None:
        """The last snapshot with other services (discovery.with_services): views and zones as they were."""
        self._snapshot = snapshot

    def refresh(self, networks: list[NetworkSpec], running: Running, upstreams: list[str], ttl: int,
                services) -> Refreshed:
        """The snapshot for `running`: patched from the last one when only containers
        changed, else rebuilt. `services`: a callable giving Consul's answers, called
        on a rebuild only (a patch keeps the last snapshot's)."""
        if self._snapshot is None or self._made_from != (networks, list(upstreams), ttl):
            return self.rebuild(networks, running.ordered(), upstreams, ttl, services())
        return self.patch(running)

    def rebuild(self, networks: list[NetworkSpec], running: list[Seen], upstreams: list[str], ttl: int,
                services) -> Refreshed:
        """From nothing: discovery's build, and the indexes a patch needs."""
        self._zones = discovery.build_zones(networks, running)
        self._snapshot = discovery.snapshot_of(networks, self._zones, running, upstreams, ttl, services)
        self._made_from = (list(networks), list(upstreams), ttl)
        self._policy = ViewPolicy.of(networks, upstreams)
        self._by_id = {c.id: c for c in running}
        self._by_name = {c.name: c for c in running}
        self._linkers = {}
        for c in running:
            self._link(c)
        return Refreshed(self._snapshot, {c.id for c in running if c.links}, True)

    def patch(self, running: Running) -> Refreshed:
        """The last snapshot with the containers that differ from the last ones patched in."""
        assert self._snapshot is not None and self._policy is not None, "patch before the first rebuild"
        now, by_id = running.by_id, self._by_id
        if running.changed is None:
            moved = [cid for cid, c in now.items() if by_id.get(cid) is not c]
            moved += by_id.keys() - now.keys()
        else:
            moved = [cid for cid in running.changed if by_id.get(cid) is not now.get(cid)]
        before = {cid: by_id.get(cid) for cid in moved}
        changed = [cid for cid in moved if before[cid] != now.get(cid)]
        for cid in moved:                     # the same value as a new object: only the indexes follow
            self._forget(before[cid])
        for cid in moved:
            c = now.get(cid)
            if c is None:
                del by_id[cid]
            else:
                by_id[cid] = self._by_name[c.name] = c
                self._link(c)
        if not changed:
            return Refreshed(self._snapshot, set(), False)
        affected = {cid for cid in changed if cid in by_id}
        for cid in changed:
            for c in (before[cid], by_id.get(cid)):
                if c is not None:
                    affected |= self._linkers.get(c.name, set())
        self._patch_zones([before[cid] for cid in changed if before[cid] is not None],
                          [by_id[cid] for cid in changed if cid in by_id], running.ordered)
        views = dict(self._snapshot.views)
        for cid in changed:
            old = before[cid]
            if old is not None and old.ip and old.network in self._zones:
                views.pop(old.ip, None)
        for cid in affected:
            c = by_id.get(cid)
            zone = self._zones.get(c.network) if c is not None else None
            if zone is not None and c.ip:
                views[c.ip] = view_of(c, zone, self._by_name, self._policy)
        self._snapshot = replace(self._snapshot, views=views)
        return Refreshed(self._snapshot, {cid for cid in affected if by_id[cid].links}, False)

    def _patch_zones(self, gone: list[Seen], came: list[Seen], ordered: Callable[[], list[Seen]]) -> None:
        """Take `gone`'s names out of their zones and put `came`'s in, each name's members
        in start order (`ordered()`, as build_zones adds them)."""
        fresh: dict[str, tuple[dict, dict]] = {}

        def entries(cs: list[Seen]):
            """Per container with an address on a known network: its zone's new
            dicts, its member, and its names as the zone keys them."""
            for c in cs:
                zone = self._zones.get(c.network)
                if zone is None or not c.ip:
                    continue
                if zone.name not in fresh:
                    fresh[zone.name] = (dict(zone.names), dict(zone.ptr))
                yield (*fresh[zone.name], c.member(), [label.lower().rstrip(".") for label in zone_labels(c)])

        for names, ptr, m, keys in entries(gone):
            for key in keys:
                kept = tuple(x for x in names.get(key, ()) if x != m)
                if kept:
                    names[key] = kept
                else:
                    names.pop(key, None)
            if ptr.get(m.address) == m.name:
                del ptr[m.address]
        rank: dict[str, int] = {}
        for names, ptr, m, keys in entries(came):
            for key in keys:
                have = names.get(key, ())
                if m in have:
                    continue
                if have and not rank:
                    rank.update((s.name, i) for i, s in enumerate(ordered()))
                names[key] = tuple(sorted((*have, m), key=lambda x: rank[x.name])) if have else (m,)
            ptr.setdefault(m.address, m.name)
        for name, (names, ptr) in fresh.items():
            zone = self._zones[name]
            zone.names, zone.ptr = names, ptr    # each bound whole: see the module's note

    def _link(self, c: Seen) -> None:
        for link in c.links:
            self._linkers.setdefault(link.name, set()).add(c.id)

    def _forget(self, c: Seen | None) -> None:
        if c is None:
            return
        if self._by_name.get(c.name) is c:
            del self._by_name[c.name]
        for link in c.links:
            ids = self._linkers.get(link.name)
            if ids is not None:
                ids.discard(c.id)
                if not ids:
                    del self._linkers[link.name]
