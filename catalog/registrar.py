"""Keeps this host's entries in Consul equal to what runs here.

Every pass is a full resync, not an event replay: list the agent's services
that carry this host's id, compute what should be there from the state store,
register what is missing or changed and deregister the rest. A pass runs after
every container change, after Consul comes back from an outage (an agent
restart loses a dev agent's services), and periodically to repair drift. So
nothing stale survives a daemon crash, a host reboot or an agent restart:
registrator's top complaints."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from portlink.catalog.services import META_HOST, CheckPolicy, Registration, diff
from portlink.catalog.watch import Backoff, Reachability

log = logging.getLogger("portlink.consul")


@dataclass
class SyncResult:
    registered: list[str] = field(default_factory=list)
    deregistered: list[str] = field(default_factory=list)


class Registrar:
    def __init__(self, consul, host_id: str, desired: Callable[[], list[Registration]],
                 reach: Reachability, policy: CheckPolicy = CheckPolicy(), every: float = 30.0) -> None:
        self.consul = consul
        self.host_id = host_id
        self.desired = desired          # blocking (reads the store): run in an executor
        self.reach = reach
        self.policy = policy
        self.every = every
        self.passes = 0
        self.last = SyncResult()
        self._wake = asyncio.Event()
        self._pass = asyncio.Lock()     # one pass at a time: a stop's withdrawal runs one of its own
        # Told of each change made: (action "register"/"deregister", service id, service name).
        self.on_change: Callable[[str, str, str], None] = lambda action, sid, service: None
        self._loop = asyncio.get_running_loop()
        reach.on_up(self.poke)

    def poke(self) -> None:
        """Ask for a pass soon; safe from any thread."""
        self._loop.call_soon_threadsafe(self._wake.set)

    async def ours(self) -> dict[str, dict]:
        return await self.consul.agent.services(filter_expr=f'Meta["{META_HOST}"] == "{self.host_id}"')

    async def sync_once(self) -> SyncResult:
        async with self._pass:
            return await self._sync_once()

    async def _sync_once(self) -> SyncResult:
        want = await self._loop.run_in_executor(None, self.desired)
        have = await self.ours()
        register, deregister = diff(want, have, self.policy)
        done = SyncResult()
        for sid in deregister:
            await self.consul.agent.service.deregister(sid)
            done.deregistered.append(sid)
            self.on_change("deregister", sid, (have.get(sid) or {}).get("Service", ""))
        for r in register:
            await self._register(r)
            done.registered.append(r.id)
            self.on_change("register", r.id, r.name)
        await self._update_health(want, set(done.registered))
        for sid in done.registered:
            log.info("consul: registered %s", sid)
        for sid in done.deregistered:
            log.info("consul: deregistered %s", sid)
        return done

    async def _register(self, r: Registration) -> None:
        # The raw endpoint: py-consul's helper cannot set a check's initial status.
        body = json.dumps(r.payload(self.policy))
        await self.consul.http.put(_ok, "/v1/agent/service/register",
                                   params=[("replace-existing-checks", "true")],
                                   headers=self.consul.prepare_headers(), data=body)

    async def _update_health(self, want: list[Registration], fresh: set[str]) -> None:
        """Each container health check's status set again: refreshes its TTL (a check
        registered in this pass got its status with the registration)."""
        for r in want:
            if r.health_status is None or r.id in fresh:
                continue
            body = json.dumps({"Status": r.health_status, "Output": f"container {r.health}"})
            try:
                await self.consul.http.put(_ok, f"/v1/agent/check/update/{r.health_check_id}",
                                           headers=self.consul.prepare_headers(), data=body)
            except RuntimeError as e:   # Consul answered: its check is gone; the next change re-registers
                log.warning("consul: cannot update %s: %s", r.health_check_id, e)

    async def deregister_all(self) -> list[str]:
        """Remove every entry of this host (prune); returns the errors."""
        errors = []
        try:
            ids = list(await self.ours())
        except Exception as e:
            return [f"consul: cannot list this host's services: {e}"]
        for sid in ids:
            try:
                await self.consul.agent.service.deregister(sid)
            except Exception as e:
                errors.append(f"consul: deregister {sid}: {e}")
        return errors

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            self._wake.clear()
            try:
                self.last = await self.sync_once()
                self.passes += 1
                backoff.reset()
                self.reach.ok()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.reach.failed(e)
                await asyncio.sleep(backoff.next())
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), self.every)
            except asyncio.TimeoutError:
                pass


def _ok(response):
    if response.code != 200:
        raise RuntimeError(f"HTTP {response.code}: {response.body.strip()[:200]}")
    return True
