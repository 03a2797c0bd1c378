"""One daemon's link to Consul: the registrar (this host's entries) and the
catalog cache (everyone's healthy instances, for DNS), sharing one
reachability state. Runs as tasks on the daemon's event loop."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from portlink.catalog.config import WATCH_WAIT, ConsulConfig
from portlink.catalog.registrar import Registrar
from portlink.catalog.services import CheckPolicy, Instance, Registration
from portlink.catalog.watch import CatalogCache, Reachability
from portlink.errors import InvalidArgument

log = logging.getLogger("portlink.consul")


def route_source(host: str, port: int) -> str:
    """The local address the kernel would use to reach Consul: the natural
    address to advertise when none is given. (A UDP connect sends nothing.)"""
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            return s.getsockname()[0]
    except OSError as e:
        raise InvalidArgument(f"cannot find this host's address towards Consul at {host}:{port} "
                              f"({e.strerror or e}): give --advertise IP") from None


class ConsulSync:
    def __init__(self, cfg: ConsulConfig, host_id: str,
                 desired: Callable[[], list[Registration]],
                 on_services: Callable[[dict[str, tuple[Instance, ...]]], None],
                 policy: CheckPolicy = CheckPolicy(), resync_every: float = 30.0) -> None:
        self.cfg = cfg
        self.host_id = host_id
        self.desired = desired
        self._on_services = on_services
        self._policy = policy
        self._every = resync_every
        self.reach = Reachability(cfg.url)
        self._tasks: list[asyncio.Task] = []
        self.registrar: Registrar | None = None
        self.cache: CatalogCache | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Two sessions: writes must fail fast; blocking queries hang for WATCH_WAIT
        # (plus Consul's up to wait/16 jitter) by design.
        self._writes = self.cfg.client(timeout=5.0)
        self._watches = self.cfg.client(timeout=WATCH_WAIT * 1.1 + 5)
        self.registrar = Registrar(self._writes, self.host_id, self.desired, self.reach,
                                   self._policy, self._every)
        self.cache = CatalogCache(self._watches, self.reach, self._on_services, WATCH_WAIT)
        self._tasks = [asyncio.ensure_future(self.registrar.run()), asyncio.ensure_future(self.cache.run())]

    def poke(self) -> None:
        if self.registrar is not None:
            self.registrar.poke()

    def withdraw_now(self, timeout: float) -> str | None:
        """From a worker thread: one registrar pass, waited for (a stop withdraws
        its container's entries before the signal). The error, if it failed; a
        Consul known to be unreachable is not waited for."""
        if self.registrar is None or self.reach.up is False:
            return "consul unreachable"
        future = asyncio.run_coroutine_threadsafe(self.registrar.sync_once(), self._loop)
        try:
            future.result(timeout)
            return None
        except Exception as e:
            future.cancel()
            return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__

    async def deregister_all(self) -> list[str]:
        return await self.registrar.deregister_all() if self.registrar else []

    def status(self) -> dict:
        r = self.registrar
        return {"address": self.cfg.url, "host_id": self.host_id,
                "reachable": self.reach.up, "failures": self.reach.failures, "last_error": self.reach.last_error,
                "resync_passes": r.passes if r else 0,
                "services_seen": len(self.cache.services) if self.cache else 0}

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for c in (getattr(self, "_writes", None), getattr(self, "_watches", None)):
            if c is not None:
                await c.close()
