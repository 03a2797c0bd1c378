"""A Connect-native identity: the local agent's CA roots and the leaf of each
service this process speaks as, followed with blocking queries
(catalog.watch: index reset when it goes backwards, never a spin, rate
limited), turned into SSLContexts.

The set of services may change while it runs (`follow`): a client-side
ambassador presents each linking container's own leaf (secure links), and
linkers come and go. `ready` is about the fixed services given at
construction; an added one is usable once `current()` has it.

Rotation: a new leaf or new roots build new Contexts, which new connections
pick up (`current()` is read at every handshake); established connections keep
the SSLObject they were made with. While the agent is unreachable the last
contexts stay in use. The agent I/O is injected (`api`: see
catalog.connect.AgentConnect) so the logic is tested with a fake agent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from portlink.ambassador.tls_context import ContextError, Contexts, build as build_contexts
from portlink.catalog.connect import Leaf, Roots
from portlink.catalog.watch import RateLimit, Reachability, watch

log = logging.getLogger("portlink.ambassador")


class Identity:
    def __init__(self, api, services: Iterable[str], key_dir: Path, reach: Reachability, wait: float = 30.0,
                 build: Callable[[Roots, Leaf, Path], Contexts] = build_contexts,
                 limit: Callable[[], RateLimit] = RateLimit) -> None:
        self.api = api
        self.services = tuple(dict.fromkeys(services))
        if not self.services:
            raise ValueError("an identity needs at least one service")
        self.key_dir = key_dir
        self.reach = reach
        self.wait = wait
        self.build = build
        self.limit = limit
        self.roots: Roots | None = None
        self.leaves: dict[str, Leaf] = {}
        self.contexts: dict[str, Contexts] = {}
        self.rotations = 0            # contexts replaced after the first set
        self.build_errors = 0
        self.ready = asyncio.Event()  # every fixed service has contexts
        self.extra: dict[str, object] = {}           # added service -> the api its leaf is fetched with
        self._tasks: dict[str, asyncio.Task] = {}    # service -> its leaf follower (while running)
        self._running = False

    @property
    def all_services(self) -> tuple[str, ...]:
        return self.services + tuple(s for s in self.extra if s not in self.services)

    @property
    def trust_domain(self) -> str | None:
        return self.roots.trust_domain if self.roots else None

    def current(self, service: str) -> Contexts | None:
        return self.contexts.get(service)

    # -- following ------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the roots and every leaf until cancelled."""
        roots = asyncio.ensure_future(self._follow("roots", self._fetch_roots, self._got_roots))
        self._running = True
        for s in self.all_services:
            self._start(s)
        try:
            await roots
        finally:
            self._running = False
            tasks = [roots, *self._tasks.values()]
            self._tasks.clear()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _start(self, service: str) -> None:
        api = self.extra.get(service, self.api) if service not in self.services else self.api
        self._tasks[service] = asyncio.ensure_future(
            self._follow(f"leaf {service}", self._fetch_leaf(service, api), self._got_leaf))

    def follow(self, extra: dict[str, object]) -> list[object]:
        """Follow exactly these added services (service -> the api that may fetch its
        leaf), besides the fixed ones. A service whose api changed is followed anew
        with the new one (its last contexts stay in use meanwhile); one no longer
        named is dropped with its contexts. Returns the apis no longer used (the
        caller closes them)."""
        old = self.extra
        self.extra = {s: a for s, a in extra.items() if s not in self.services}
        unused = [a for s, a in old.items() if self.extra.get(s) is not a]
        for s in old:
            if self.extra.get(s) is old[s]:
                continue
            t = self._tasks.pop(s, None)
            if t is not None:
                t.cancel()
            if s not in self.extra:
                self.leaves.pop(s, None)
                self.contexts.pop(s, None)
        if self._running:
            for s in self.extra:
                if s not in self._tasks:
                    self._start(s)
        return unused

    async def _fetch_roots(self, index: int):
        return await self.api.roots(index, self.wait)

    def _fetch_leaf(self, service: str, api=None):
        api = api or self.api

        async def fetch(index: int):
            return await api.leaf(service, index, self.wait)
        return fetch

    async def _follow(self, what: str, fetch, apply) -> None:
        while True:
            try:
                async for data in watch(fetch, self.reach, self.limit()):
                    apply(data)
            except asyncio.CancelledError:
                raise
            except Exception:
                # watch() survives agent errors itself; anything else is a bug: log, keep
                # the last contexts, start over.
                log.exception("following the connect %s failed; retrying", what)
                await asyncio.sleep(1.0)

    def _got_roots(self, roots: Roots) -> None:
        if self.roots is not None and roots.active_id != self.roots.active_id:
            log.warning("connect CA roots changed: active root %s", roots.active_id)
        self.roots = roots
        for s in self.all_services:
            self._rebuild(s)

    def _got_leaf(self, leaf: Leaf) -> None:
        if leaf.service not in self.all_services:
            # an answer that was under way when the service was dropped, or a confused agent
            log.info("a leaf for %r, which is not followed (now): ignored", leaf.service)
            return
        self.leaves[leaf.service] = leaf
        self._rebuild(leaf.service)

    def _rebuild(self, service: str) -> None:
        leaf = self.leaves.get(service)
        if self.roots is None or leaf is None:
            return
        old = self.contexts.get(service)
        if old is not None and old.leaf == leaf and old.roots == self.roots:
            return
        try:
            new = self.build(self.roots, leaf, self.key_dir)
        except ContextError as e:
            self.build_errors += 1
            log.error("%s; new connections keep the previous certificates", e)
            return
        self.contexts[service] = new
        if old is not None:
            self.rotations += 1
            log.info("connect identity %s: now serial %s (valid before %s), active root %s",
                     service, leaf.serial, leaf.valid_before, self.roots.active_id)
        if all(s in self.contexts for s in self.services):
            self.ready.set()

    def snapshot(self) -> dict:
        """For GET /stats: what each identity presents now (never a key)."""
        return {"trust_domain": self.trust_domain,
                "active_root": self.roots.active_id if self.roots else None,
                "rotations": self.rotations, "build_errors": self.build_errors,
                "services": {s: {"serial": c.leaf.serial, "uri": c.leaf.uri, "valid_before": c.leaf.valid_before}
                             for s, c in sorted(self.contexts.items())}}
