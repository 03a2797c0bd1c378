"""Containers: the operations the API offers (run, start, stop, restart, rm,
exec, inspect, ps) and recovery after a restart.

A request flows one way: the spec is checked once (runtime.spec), what needs
the state is checked (lifecycle.check_*), cross-host links get their
ambassadors (runtime.ambassador_policy), the container is created and started
step by step in the journal (runtime.lifecycle over runtime.plan), and then
the consequences follow from one place (runtime.refresh: trusted flows, DNS,
hosts files, Consul)."""

from __future__ import annotations

import logging

from portlink.errors import Conflict, InvalidArgument, NotFound, RuntimeFailure
from portlink.runtime import ambassadors, faults
from portlink.runtime import links as linkspec
from portlink.runtime.ambassador_policy import AmbassadorPolicy
from portlink.runtime.lifecycle import Lifecycle
from portlink.runtime.records import REMOVING, RUNNING, Records
from portlink.runtime.refresh import Refresher
from portlink.runtime.restarts import Restarts
from portlink.runtime.spec import Request
from portlink.runtime.views import Views

log = logging.getLogger("portlink.containers")


class Containers:
    def __init__(self, records: Records, lifecycle: Lifecycle, ambassadors: AmbassadorPolicy,
                 refresher: Refresher, views: Views) -> None:
        self.records, self.life, self.amb = records, lifecycle, ambassadors
        self.refresher, self.views = refresher, views
        # Secure links (runtime.server_sides): told of every change of a container it
        # might serve. None: no server sides.
        self.servers = None
        # Restart policies (run --restart): one timer per pending restart.
        self.restarts = Restarts(records, lifecycle, self._restarted)
        # A graceful stop leaves Consul before its signal (daemon.start_consul): the ids
        # being withdrawn, and the hook that takes them out now (None: no Consul).
        self.withdrawn: set[str] = set()
        self.withdraw = None

    def _restarted(self, c) -> None:
        self.refresher.changed()
        self._serve(c)

    def _serve(self, c) -> None:
        """A container that is no ambassador changed: its server side follows."""
        if self.servers is not None and not (c and c.is_ambassador):
            self.servers.sync()

    # run ---------------------------------------------------------------------------------
    def run(self, data: dict, for_links: bool = False) -> dict:
        """`for_links`: an ambassador started for cross-host links, removed with its last linker."""
        return self._make(data, for_links, start=True)

    def create(self, data: dict) -> dict:
        """Made and checked as `run` does, but not started (status "created"; Docker's
        `create`): `start` runs it. Cross-host links get their ambassadors now."""
        return self._make(data, False, start=False)

    def _make(self, data: dict, for_links: bool, start: bool) -> dict:
        req = Request.parse(data)
        self.life.check_refs(req)
        remote = self.amb.remote_links(req.links)
        self._check_link_targets([r for r in req.links if r.name not in remote], req.spec.network)
        if req.spec.ambassador:
            self.amb.fill(req, for_links)
        self.life.check_process(req)
        self.life.check_mounts(req)
        made: list[str] = []         # ambassadors started for this run: removed if it fails
        pending = [ambassadors.container_name(s, req.spec.network) for s in remote]
        try:
            with self.amb.linking(pending):
                for i, r in enumerate(req.links):
                    if r.name in remote:
                        name, todo = self.amb.shared(r.name, remote[r.name], req.spec.network)
                        if todo is not None:
                            self.run(todo, for_links=True)
                            made.append(name)
                            self.amb.await_ready(name)
                        req.spec.links[i] = f"{name}:{r.alias}"
                if made:
                    faults.point("run.ambassador")
                c = self.life.create(req, for_links, start)
        except BaseException:
            for name in made:
                try:
                    self.remove(name, force=True)
                except Exception as e:
                    log.error("rollback of ambassador %s: %s", name, e)
            raise
        for text in c.spec.links:
            link = linkspec.parse_link(text)
            self.life.emit(c, "link", target=link.name, alias=link.alias)
        self.refresher.changed()
        self._serve(c)
        try:
            return self.views.inspect(c.id)
        except NotFound:
            return self.views.last(c)   # it ran, exited and was removed (--rm) meanwhile

    def _check_link_targets(self, reqs: list[linkspec.LinkRequest], network: str) -> None:
        for r in reqs:
            other = self.records.named(r.name)
            if other is None:
                where = " and no healthy service of that name in Consul" if self.amb.consul_url else ""
                raise NotFound(f"cannot link to {r.name!r}: no such container on this host{where} "
                               "(see `portlink ps -a`)")
            if other.status != RUNNING:
                raise Conflict(f"cannot link to {r.name!r}: it is not running (start it first)")
            if other.spec.network != network:
                raise InvalidArgument(f"cannot link to {r.name!r}: it is on network {other.spec.network!r}, "
                                      f"this container on {network!r} (links work within one network)")

    # lifecycle ---------------------------------------------------------------------------
    def start(self, ref: str) -> dict:
        c = self.records.find(ref)
        self.amb.release(c.id)
        self.restarts.started_by_user(c.id)
        self.life.start(c, ref)
        self.refresher.changed()
        self._serve(c)
        return self.views.inspect(c.id)

    def stop(self, ref: str, timeout: float = 10) -> dict:
        c = self.records.find(ref)
        self.amb.hold(c.id)   # before the kill: the exit it causes must not restart an ambassador
        self.restarts.stopped_by_user(c.id)   # ... nor a container by its policy
        try:
            if self.withdraw is not None and c.status == RUNNING and not c.is_ambassador:
                # Out of Consul first: new connections go elsewhere while this one
                # finishes what it serves (its open streams drain through the ambassadors).
                self.withdrawn.add(c.id)
                self.withdraw(c)
            errors = self.life.stop(c.id, timeout)
        finally:
            self.withdrawn.discard(c.id)
        if errors is not None:
            self.refresher.changed()
            self._serve(c)
            if errors:
                raise RuntimeFailure(f"container {c.name!r} stopped, but cleanup failed: " + "; ".join(errors))
        return self.views.inspect(c.id)

    def restart(self, ref: str, timeout: float = 10) -> dict:
        self.stop(ref, timeout)
        return self.start(ref)

    def remove(self, ref: str, force: bool = False, volumes: bool = False) -> int | None:
        """`volumes`: its anonymous volumes too (rm -v). Returns the exit code its
        last run recorded (None: none), which a foreground `run --rm` reports."""
        c = self.records.find(ref)
        self.amb.hold(c.id)
        self.restarts.removed(c.id)
        found = self.life.remove(c, force, ref, volumes)
        self.amb.forget(c.id)
        collected = self.amb.collect(after=found)
        # A container that was not running moves no name, flow or registration (its
        # exit or stop refreshed them): `run --rm` spares its removal a refresh.
        if found.status in (RUNNING, REMOVING) or collected:
            self.refresher.changed()
        self._serve(c)
        return found.exit_code

    def on_exit(self, cid: str, pid: int, code: int | None) -> None:
        """Called by the reaper when a container's init process `pid` ends."""
        c = self.life.exited(cid, pid, code)
        if c is None:
            return
        self.refresher.changed()
        if c.spec.rm:
            self.remove(cid, force=True)
        elif c.is_ambassador:
            self.amb.exited(cid, c.name)
        else:
            self.restarts.exited(cid)   # its policy decides first: a restart is due in 100 ms
            self._serve(c)

    def exec_argv(self, ref: str, args: list[str], env: list[str], tty: bool, workdir: str | None) -> list[str]:
        return self.life.exec_argv(self.records.find(ref), args, env, tty, workdir)

    # views -------------------------------------------------------------------------------
    def inspect(self, ref: str) -> dict:
        return self.views.inspect(ref)

    def list(self, all: bool = False) -> list[dict]:
        return self.views.list(all)

    # recovery ----------------------------------------------------------------------------
    def reconcile(self) -> list[str]:
        """After a (crashed) daemon restart: make the journal and the kernel agree."""
        errors: list[str] = []
        for c in self.records.all():
            errs, died = self.life.recover(c)
            errors += errs
            if died and c.is_ambassador:
                self.amb.exited(c.id, c.name)
        errors += self.amb.collect()
        return errors
