"""Restarts containers by their restart policy (runtime.restart_policy decides).

One timer per pending restart: a stop, start or rm by the user cancels it, and
none fires once the daemon is shutting down. The pending restart, the count
and a stop by the user are kept in the container's record, so the next daemon
start (after a daemon restart or a reboot) brings back what its policy says.
Ambassadors are not this module's: runtime.ambassador_policy restarts them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from portlink.runtime import restart_policy as policy
from portlink.runtime.lifecycle import Lifecycle
from portlink.runtime.records import EXITED, Container, Records

log = logging.getLogger("portlink.containers")


class Restarts:
    def __init__(self, records: Records, lifecycle: Lifecycle, changed: Callable[[Container], None]) -> None:
        """`changed`: the consequences of a restart (refresh, server sides)."""
        self.records, self.life, self.changed = records, lifecycle, changed
        self._timers: dict[str, threading.Timer] = {}
        self._streaks: dict[str, int] = {}   # restarts in a container's current crash loop
        self._closed = False
        self._guard = threading.Lock()

    # what the user does ----------------------------------------------------------------
    def stopped_by_user(self, cid: str) -> None:
        """Before a stop's signal: neither the exit it causes nor a pending restart follows."""
        self._cancel(cid)
        with self.life.lock(cid):   # after a restart under way: its record write must not undo this one
            self.records.set_restart_state(cid, user_stopped=True, restarting=False)

    def started_by_user(self, cid: str) -> None:
        """A start by the user: the policy counts afresh (as Docker's)."""
        self._cancel(cid)
        self._streaks.pop(cid, None)
        with self.life.lock(cid):
            self.records.set_restart_state(cid, user_stopped=False, restarting=False, restart_count=0)

    def removed(self, cid: str) -> None:
        self._cancel(cid)
        self._streaks.pop(cid, None)

    def close(self) -> None:
        """The daemon is shutting down: no restart fires from now on (the records keep
        what is pending; the next start resumes it)."""
        with self._guard:
            self._closed = True
            timers, self._timers = list(self._timers.values()), {}
        for t in timers:
            t.cancel()

    # what the containers do ----------------------------------------------------------------
    def exited(self, cid: str) -> None:
        """A container's run ended (the reaper saw it, release recorded it)."""
        c = self.records.get(cid)
        if c is None or c.status != EXITED or c.is_ambassador or c.spec.rm:
            return
        p = c.spec.restart_policy
        if not policy.should_restart(p, c.exit_code, c.restart_count, c.user_stopped):
            if p.name != policy.NO:
                log.info("container %s exited (%s): policy %s does not restart it", c.name, c.exit_code, p.text)
            return
        up = (c.finished or 0) - (c.started or 0)
        streak = policy.next_streak(self._streaks.get(cid, 0), up)
        self._streaks[cid] = streak + 1
        self._schedule(c, policy.delay(streak))

    def resume(self) -> list[str]:
        """At the daemon's start: what each exited container's policy says now (it or
        the host restarted). Returns the names of the containers to be restarted."""
        names = []
        for c in self.records.all():
            if c.status != EXITED or c.is_ambassador or c.spec.rm:
                continue
            p = c.spec.restart_policy
            if policy.should_restart(p, c.exit_code, c.restart_count, c.user_stopped, daemon_start=True):
                if c.user_stopped:   # `always` comes back with the daemon: no longer stopped by the user
                    c = self.records.set_restart_state(c.id, user_stopped=False)
                self._schedule(c, policy.FIRST_DELAY)
                names.append(c.name)
            elif c.restarting:
                self.records.set_restart_state(c.id, restarting=False)
        return names

    # timers ------------------------------------------------------------------------------
    def _schedule(self, c: Container, delay: float) -> None:
        with self._guard:
            if self._closed:
                return
            old = self._timers.pop(c.id, None)
            if old is not None:
                old.cancel()
            self.records.set_restart_state(c.id, restarting=True)
            t = threading.Timer(delay, self._fire, (c.id,))
            t.daemon = True
            t.name = f"restart-{c.id[:12]}"
            self._timers[c.id] = t
        log.info("container %s exited (%s): restarting in %.1fs (policy %s)",
                 c.name, c.exit_code, delay, c.spec.restart_policy.text)
        t.start()

    def _cancel(self, cid: str) -> None:
        with self._guard:
            t = self._timers.pop(cid, None)
        if t is not None:
            t.cancel()

    def _fire(self, cid: str) -> None:
        with self._guard:
            if self._closed or self._timers.get(cid) is not threading.current_thread():
                return   # cancelled, replaced, or the daemon is shutting down
            del self._timers[cid]
        try:
            with self.life.lock(cid):
                c = self.records.get(cid)
                # Started, stopped or removed by the user meanwhile: theirs wins.
                if self._closed or c is None or c.status != EXITED or not c.restarting or c.user_stopped:
                    return
                c = self.records.set_restart_state(cid, restart_count=c.restart_count + 1)
                self.life.start(c, cid)
                self.life.emit(c, "restart", restart_count=c.restart_count)
        except Exception as e:
            # A start that fails is a run that failed: the policy decides again, backing off.
            log.error("restart of container %s failed: %s", cid[:12], e)
            self.records.set_restart_state(cid, restarting=False)
            self.exited(cid)
            return
        self.changed(c)
