"""Watching Consul with blocking queries, done the way Consul's docs ask:
the index is reset when it goes backwards, is never 0 twice in a row (a query
at index 0 returns at once: a busy loop), and successive queries are rate
limited. While Consul is unreachable a watch keeps quiet (its consumers keep
the last answer it gave), retries with a capped backoff, and picks up by
itself when Consul is back.

`watch_service` is the one interface discovery uses (the DNS cache here, the
ambassadors later): an async iterator of the current healthy instances, one
item per change."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from portlink.catalog.services import Instance, parse_health

log = logging.getLogger("portlink.consul")


def next_index(prev: int, got: int) -> int:
    """The index for the next blocking query, given the one Consul just returned."""
    if got < 1:
        return 1      # never block on 0 (or a nonsense negative): that returns at once, forever
    if got < prev:
        return 0      # went backwards (a snapshot restore, a new cluster): start over, once
    return got


@dataclass
class RateLimit:
    """Token bucket: at most `burst` queries at once, then `rate` per second."""

    rate: float = 20.0
    burst: float = 5.0
    tokens: float = 5.0
    stamp: float = field(default_factory=time.monotonic)

    def delay(self, now: float | None = None) -> float:
        """Take a token; the seconds to wait before using it."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclass
class Backoff:
    first: float = 0.05
    cap: float = 1.0     # recovery is noticed within a second of Consul coming back
    current: float = 0.0

    def next(self) -> float:
        self.current = min(self.cap, self.current * 2 if self.current else self.first)
        return self.current

    def reset(self) -> None:
        self.current = 0.0


class Reachability:
    """Whether Consul answers, shared by every watch of one daemon: the loss is
    logged once and the return once, and those who care (the registrar's
    resync) hear about the return at once. An agent going down answers some
    requests and fails others for a moment, so a return is only reported once
    it has held for `settle` seconds: one outage, one pair of log lines."""

    def __init__(self, where: str, settle: float = 1.0) -> None:
        self.where = where
        self.settle = settle
        self.up: bool | None = None     # None: not asked yet
        self.failures = 0
        self.last_error = ""
        self._reported_down = False
        self._streak = 0                # bumped by every failure: a pending confirmation is void
        self._on_up: list[Callable[[], None]] = []

    def on_up(self, fn: Callable[[], None]) -> None:
        """Call `fn` whenever Consul answers again after failing."""
        self._on_up.append(fn)

    def ok(self) -> None:
        was, self.up = self.up, True
        if was is True:
            return
        if self._reported_down:
            streak = self._streak
            asyncio.get_running_loop().call_later(self.settle, self._confirm, streak)
        if was is False:
            for fn in self._on_up:
                fn()

    def _confirm(self, streak: int) -> None:
        if streak == self._streak and self.up and self._reported_down:
            self._reported_down = False
            log.warning("consul at %s is reachable again", self.where)

    def failed(self, err: BaseException) -> None:
        self.failures += 1
        self._streak += 1
        self.last_error = describe(err)
        self.up = False
        if not self._reported_down:
            self._reported_down = True
            log.warning("consul at %s is unreachable (%s): serving the last known state until it returns",
                        self.where, self.last_error)


def describe(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


Fetch = Callable[[int], Awaitable[tuple[int, object]]]


async def watch(fetch: Fetch, reach: Reachability, limit: RateLimit | None = None) -> AsyncIterator[object]:
    """Yield fetch's data first and then whenever it changes; fetch(index) is one
    (blocking, when index > 0) query returning (index, data)."""
    limit = limit or RateLimit()
    backoff = Backoff()
    index, last, first = 0, None, True
    while True:
        pause = limit.delay()
        if pause:
            await asyncio.sleep(pause)
        try:
            got, data = await fetch(index)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            reach.failed(e)
            index = 0              # after an outage, the first query reads the current state
            await asyncio.sleep(backoff.next())
            continue
        backoff.reset()
        reach.ok()
        index = next_index(index, int(got))
        if first or data != last:
            first, last = False, data
            yield data


def service_fetch(consul, name: str, wait: float, connect: bool = False) -> Fetch:
    """`connect`: only the mesh-capable instances (/v1/health/connect: Connect-native
    services and proxies), the ones a mutual-TLS client can dial."""
    query = consul.health.connect if connect else consul.health.service

    async def fetch(index: int):
        got, entries = await query(name, index=index or None, wait=f"{int(wait)}s", passing=True)
        return got, parse_health(entries)
    return fetch


async def watch_service(consul, name: str, reach: Reachability, wait: float = 30.0,
                        limit: RateLimit | None = None, connect: bool = False) -> AsyncIterator[tuple[Instance, ...]]:
    """The healthy instances of one service: now, then after every change."""
    async for instances in watch(service_fetch(consul, name, wait, connect), reach, limit):
        yield instances


class CatalogCache:
    """Every service in the catalog with its healthy instances, kept fresh by one
    blocking query on the service list plus one per service; `on_change` gets a
    new dict (name -> instances) after each change. Nothing is dropped while
    Consul is away: the last known state stays."""

    def __init__(self, consul, reach: Reachability, on_change: Callable[[dict[str, tuple[Instance, ...]]], None],
                 wait: float = 30.0) -> None:
        self.consul = consul
        self.reach = reach
        self.on_change = on_change
        self.wait = wait
        self.services: dict[str, tuple[Instance, ...]] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self.ready = asyncio.Event()       # set once every known service has been read

    async def run(self) -> None:
        async def fetch(index: int):
            got, names = await self.consul.catalog.services(index=index or None, wait=f"{int(self.wait)}s")
            return got, frozenset(names)
        try:
            async for names in watch(fetch, self.reach):
                self._follow(names)
        finally:
            for t in self._tasks.values():
                t.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def _follow(self, names: frozenset[str]) -> None:
        for gone in set(self._tasks) - names:
            self._tasks.pop(gone).cancel()
            self.services.pop(gone, None)   # Consul names are case-sensitive; DNS is not (see _publish)
        for name in names - set(self._tasks):
            self._tasks[name] = asyncio.ensure_future(self._one(name))
        self._publish()

    async def _one(self, name: str) -> None:
        async for instances in watch_service(self.consul, name, self.reach, self.wait):
            self.services[name] = instances
            self._publish()

    def _publish(self) -> None:
        if not self.ready.is_set() and set(self.services) >= set(self._tasks):
            self.ready.set()
        self.on_change({name.lower(): inst for name, inst in sorted(self.services.items())})
