"""Ambassador policy: which ambassadors a host runs and keeps running.

A link to a name that is no local container but a healthy service in Consul
is served by the shared ambassador of that service on the linker's network
(started, restarted or reused here); an ambassador whose process dies is
restarted with backoff, keeping its address; one started for links is removed
once no container links to it; a change of a service's instances is a
reroute event for each ambassador following it. The mechanics of a container
are runtime.lifecycle's; the firewall's trusted flows are runtime.firewall's."""

from __future__ import annotations

import dataclasses
import secrets
import logging
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Iterator

from portlink.errors import InvalidArgument, NotFound
from portlink.runtime import ambassadors
from portlink.runtime import links as linkspec
from portlink.runtime.events import EventLog
from portlink.runtime.lifecycle import Lifecycle
from portlink.runtime.linker_identity import poll_stats
from portlink.runtime.networks import NO_NETWORK
from portlink.runtime.records import EXITED, RUNNING, Container, Records
from portlink.runtime.restart_policy import backoff
from portlink.runtime.refresh import Catalog
from portlink.runtime.runc import pid_alive
from portlink.runtime.spec import Request

log = logging.getLogger("portlink.containers")

RESTART_DELAY = (0.2, 10.0)   # first and longest delay before an ambassador that died is restarted
READY_WAIT = 5.0              # seconds a run waits for an ambassador it starts to forward


class AmbassadorPolicy:
    def __init__(self, records: Records, lifecycle: Lifecycle, catalog: Catalog, consul_url: str | None,
                 events: EventLog, changed: Callable[[], None], host_id: str = "",
                 secure: bool = False) -> None:
        """`changed`: the consequences of a restart (the refresher's). `secure`
        (--secure-links): client sides dial over mutual TLS as an identity of
        their own on this host (`host_id`)."""
        self.records, self.lifecycle, self.catalog = records, lifecycle, catalog
        self.consul_url, self.events, self.changed = consul_url, events, changed
        self.host_id, self.secure = host_id, secure
        # runtime.host_forwarder.HostForwarder: plaintext client sides run in it (None: each its own process)
        self.forwarder = None
        self._held: set[str] = set()              # stopped or removed on purpose: never auto-restarted
        self._restarts: dict[str, list[float]] = {}   # ambassador id -> recent restart times
        self._linking: list[str] = []             # ambassadors a `run` in flight is about to link to
        self._guard = threading.Lock()

    # cross-host links ------------------------------------------------------------------
    def remote_links(self, reqs: list[linkspec.LinkRequest]) -> dict[str, list[int]]:
        """Links to no local container but to a service in Consul: name -> its TCP ports."""
        out = {}
        for r in reqs:
            if self.records.named(r.name) is not None or not self.consul_url:
                continue
            ports = ambassadors.ports_from_catalog(self.catalog.instances_now(r.name))
            if ports:
                out[r.name] = ports
        return out

    def fill(self, req: Request, for_links: bool = False) -> None:
        """Fill in an ambassador container's image, command and ports (run --ambassador).
        `for_links`: the shared ambassador of cross-host links (served by the host
        forwarder when plaintext); a sidecar someone runs keeps a process of its own."""
        spec = req.spec
        amb = ambassadors.AmbassadorSpec.from_json(spec.ambassador)
        if not self.consul_url:
            raise InvalidArgument("an ambassador follows a service in Consul: start portlinkd with --consul ADDR")
        if spec.network == NO_NETWORK:
            raise InvalidArgument("an ambassador needs a network: not --net none")
        if (amb.identity or amb.server_side) and not self.secure:
            raise InvalidArgument("an ambassador's identity and backends are for secure links: "
                                  "start portlinkd with --secure-links")
        if amb.server_side:
            ports = [p for p, _ in amb.backends]
        else:
            ports = list(amb.ports) or ambassadors.ports_from_catalog(self.catalog.instances_now(amb.service))
        if not ports:
            raise NotFound(f"unknown remote service {amb.service!r}: no healthy instance in Consul "
                           "(give its ports with --expose to wait for it)")
        if spec.cmd or spec.image not in ("", "busybox"):
            raise InvalidArgument("an ambassador runs portlink's forwarder: give no image or command")
        if spec.user or spec.cap_add or spec.security_opt:
            raise InvalidArgument("an ambassador runs as its own user with no capabilities and the default "
                                  "seccomp profile: give no --user, --cap-add or --security-opt")
        ambassadors.check_readable(ambassadors.runtime_binds())
        spec.image = "busybox"
        if self.secure and not amb.server_side:
            # Its Connect identity: one per ambassador and host (the intention's source).
            spec.name = spec.name or f"amb-{amb.service}-{secrets.token_hex(3)}"[:63]
            amb = dataclasses.replace(amb, identity=ambassadors.identity_name(spec.name, self.host_id))
        if for_links and self.forwarder is not None and ambassadors.hostable(amb):
            # Served by the host forwarder: the container holds its namespace, address and
            # name; its process only sleeps (killed at once on stop: nothing to flush).
            amb = dataclasses.replace(amb, ports=tuple(sorted(set(ports))))
            spec.cmd = list(ambassadors.HOSTED_CMD)
            spec.stop_signal = "KILL"
        else:
            spec.cmd = ambassadors.command(amb, ports, self.consul_url)
        spec.expose = sorted(set(spec.expose) | {f"{p}/tcp" for p in ports})
        req.expose = sorted(set(req.expose) | set(spec.expose))
        spec.labels = {**spec.labels, ambassadors.LABEL: amb.service, "portlink.register": "false"}
        spec.ambassador = amb.to_json()

    def shared(self, service: str, ports: list[int], network: str) -> tuple[str, dict | None]:
        """The shared ambassador for `service` on `network`: its name, and the
        request to run it if there is none yet (a stopped one is started here)."""
        name = ambassadors.container_name(service, network)
        c = self.records.named(name)
        if c is not None and c.status != RUNNING:
            self.release(c.id)
            self.lifecycle.start(c, name)
            self.await_ready(name)
        if c is not None:
            return name, None
        # Made for links: a client at no linker's address is refused (each linker is
        # dialled as its own identity, runtime.linker_identity).
        amb = {"service": service, "ports": ports, **({"unlinked": "refuse"} if self.secure else {})}
        return name, {"name": name, "image": "busybox", "network": network, "ambassador": amb}

    def feed_all(self) -> None:
        """Consul lost or back (no catalog change says so): every hosted ambassador hears it."""
        if self.forwarder is None:
            return
        for c in self.records.running_ambassadors():
            if ambassadors.is_hosted(c.spec):
                self.forwarder.feed(c)

    def await_ready(self, name: str, timeout: float = READY_WAIT) -> None:
        """Until a just-started ambassador forwards: its forwarder (a Python process)
        takes a moment to listen and to hear from Consul, and a connection before
        that is closed at once. A run that links to it returns when the link works
        (or when an ambassador with a process of its own found Consul unreachable:
        a hosted one waits for backends, runtime.host_forwarder). Asks its /stats
        on the bridge, so no probe connection shows in its counters."""
        c = self.records.named(name)
        if c is None or c.status != RUNNING or not c.ip:
            return
        if self.forwarder is not None and ambassadors.is_hosted(c.spec):
            # The host forwarder's reply to each feed says whether it forwards: no
            # request to its /stats, and no poll's sleep (issue 18).
            ready = self.forwarder.wait_ready(c.id, timeout)
            if ready is not None:
                if not ready:
                    log.warning("ambassador %s: no backends after %gs; linking anyway", name, timeout)
                return

        def done(snap: dict) -> bool:
            listeners = snap["listeners"]
            if listeners and all(x["backends"] for x in listeners.values()):
                return True
            return snap.get("consul", {}).get("reachable") is False   # it serves what it has
        if poll_stats(c.ip, done, lambda: pid_alive(c.pid), timeout):
            return
        log.warning("ambassador %s: no backends after %gs; linking anyway", name, timeout)

    @contextmanager
    def linking(self, names: list[str]) -> Iterator[None]:
        """Ambassadors a `run` in flight is about to link to: never collected meanwhile."""
        with self._guard:
            self._linking += names
        try:
            yield
        finally:
            with self._guard:
                for n in names:
                    self._linking.remove(n)

    def collect(self, after: Container | None = None) -> list[str]:
        """Remove ambassadors started for links that no container links to any more
        (the last linker was removed, or its `run` died half-way). `after`: the
        container just removed, whose link targets alone are looked at (reading
        every container at each removal made it cost O(containers): issue 18)."""
        if after is None:
            everyone = self.records.all()
            linked = {linkspec.parse_link(x).name for c in everyone for x in c.spec.links}
            unlinked = [c for c in everyone if c.for_links and c.name not in linked]
        else:
            targets = {linkspec.parse_link(x).name for x in after.spec.links}
            unlinked = [t for t in map(self.records.named, sorted(targets))
                        if t is not None and t.for_links and not self._linked(t.name)]
        gone = []
        for c in unlinked:
            if c.name in self._linking:
                continue
            try:
                self.hold(c.id)
                self.lifecycle.remove(c, force=True)
                self.forget(c.id)
                gone.append(f"ambassador {c.name} (no container links to it)")
            except NotFound:
                pass   # removed meanwhile
            except Exception as e:
                log.error("removing unused ambassador %s: %s", c.name, e)
        return gone

    def _linked(self, name: str) -> bool:
        return any(linkspec.parse_link(x).name == name for c in self.records.quoting(name) for x in c.spec.links)

    # restarts ---------------------------------------------------------------------------
    def hold(self, cid: str) -> None:
        """Stopped or removed on purpose: the exit this causes is not restarted."""
        self._held.add(cid)

    def release(self, cid: str) -> None:
        self._held.discard(cid)

    def forget(self, cid: str) -> None:
        self._held.discard(cid)
        self._restarts.pop(cid, None)

    def exited(self, cid: str, name: str) -> None:
        """An ambassador's process died (killed, crashed, OOM): restart it later."""
        if cid in self._held:
            return
        now = time.monotonic()
        recent = [t for t in self._restarts.get(cid, []) if now - t < 60]
        first, longest = RESTART_DELAY
        delay = backoff(first, longest, len(recent))   # a crash loop backs off
        self._restarts[cid] = recent + [now]
        log.warning("ambassador %s exited: restarting in %.1fs", name, delay)
        t = threading.Timer(delay, self._restart_now, (cid, name))
        t.daemon = True
        t.start()

    def _restart_now(self, cid: str, name: str) -> None:
        try:
            with self.lifecycle.lock(cid):
                c = self.records.get(cid)
                if c is None or c.status != EXITED or cid in self._held:
                    return   # removed, started or stopped on purpose meanwhile
                self.lifecycle.start(c, cid)
                self.lifecycle.emit(c, "restart")
            self.changed()
            log.info("ambassador %s restarted", name)
        except Exception as e:
            log.error("restart of ambassador %s failed: %s", name, e)
            self.exited(cid, name)

    # reroutes ---------------------------------------------------------------------------
    def reroutes(self, before: dict, now: dict) -> None:
        """Consul's instances changed: a reroute event for each local ambassador
        whose service's backends differ (naming them before and after)."""
        backends = lambda svc, d: sorted(f"{i.address}:{i.port}" for i in d.get(svc, ()))
        changed = {s for s in before.keys() | now.keys() if before.get(s) != now.get(s)}
        if not changed:
            return
        if self.forwarder is not None:
            # The host forwarder's only source is this catalog: what it serves for the
            # changed services is fed (one being started reads the catalog when served).
            self.forwarder.feed_services(changed)
        for c in self.records.running_ambassadors():
            service = c.spec.ambassador["service"]
            old, new = backends(service, before), backends(service, now)
            if old != new:
                self.events.emit("ambassador", "reroute", c.name, c.id, service=service, backends=new, previous=old)
