"""Server-side ambassadors (secure links): "I actually talk to frontdb".

With --secure-links every running container with exposed TCP ports (--expose,
the image's, or -p ones) gets a companion ambassador `srv-<name>` on its
network: it listens on each exposed port P, accepts only mutual TLS clients
that Consul authorizes to reach the container's service (intentions, default
deny) and forwards to `<container ip>:P` over the local bridge. Its ports are
published on the host's advertise address at ports the runtime picks, and the
registrar registers them as Connect-native instances of the service
(catalog.services). It is an ordinary ambassador container (journalled,
restarted if it dies) and goes when the served container stops or goes, or
when its address or ports change (then it is made again).

`server_request` is the pure "what should run"; `ServerSides.sync` makes the
host match it and runs after every container change and once Consul's
advertise address is known."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

from portlink import parse
from portlink.catalog.services import served_name
from portlink.errors import NotFound
from portlink.runtime import ambassadors
from portlink.runtime.ambassador_policy import AmbassadorPolicy
from portlink.runtime.lifecycle import Lifecycle
from portlink.runtime.networks import NO_NETWORK
from portlink.runtime.records import RUNNING, Container, Records

log = logging.getLogger("portlink.containers")


def tcp_ports(exposed) -> list[int]:
    out = set()
    for e in exposed:
        try:
            port, proto = parse.port_proto("exposed port", e, default="tcp")
        except ValueError:
            continue
        if proto == "tcp":
            out.add(port)
    return sorted(out)


def server_request(c: Container, advertise: str) -> dict | None:
    """The run request of `c`'s server-side ambassador; None if it needs none."""
    if c.status != RUNNING or c.is_ambassador or c.spec.network == NO_NETWORK or not c.ip:
        return None
    if (c.spec.labels or {}).get("portlink.register", "true").lower() == "false":
        return None
    ports = tcp_ports(c.exposed)
    if not ports:
        return None
    return {"name": ambassadors.server_name(c.name), "image": "busybox", "network": c.spec.network,
            "ambassador": {"service": served_name(c.name, c.spec.labels or {}),
                           "backends": {str(p): f"{c.ip}:{p}" for p in ports}},
            "publish": [f"{advertise}::{p}/tcp" for p in ports],
            # A link: on an --icc off network it opens exactly these ports to the served container.
            "links": [f"{c.name}:{c.name}"]}


def is_server_side(c: Container) -> bool:
    return bool(c.spec.ambassador and c.spec.ambassador.get("backends"))


def served_container(side: Container) -> str | None:
    """The name of the container a server side serves (its one link)."""
    return side.spec.links[0].split(":")[0] if side.spec.links else None


def advertised(side: Container, served: Container | None, withdrawn: set[str],
               starting: frozenset[str] = frozenset()) -> bool:
    """Whether a server side belongs in Consul: once it listens (not `starting`,
    by name: its instance starts passing, and a TCP check before the listener
    failed it for a check interval) and while the container it serves runs and
    is not being stopped. It outlives that container by a moment (it is removed
    on the exit); advertised again then, it drew new connections to nothing."""
    return served is not None and served.status == RUNNING and served.id not in withdrawn and \
        side.id not in withdrawn and side.name not in starting


class ServerSides:
    def __init__(self, records: Records, lifecycle: Lifecycle, policy: AmbassadorPolicy,
                 run: Callable[[dict], dict], changed: Callable[[], None]) -> None:
        self.records, self.life, self.policy, self.run, self.changed = records, lifecycle, policy, run, changed
        self.advertise: str | None = None     # set once Consul's is known: until then nothing is served
        self.starting: frozenset[str] = frozenset()   # names started by sync, not yet listening: not advertised
        self._lock = threading.Lock()

    def sync(self) -> list[str]:
        """Start, replace or remove server sides so they match what runs; what changed."""
        if self.advertise is None:
            return []
        done: list[str] = []
        with self._lock:
            everyone = self.records.all()
            want = {r["name"]: r for r in (server_request(c, self.advertise) for c in everyone) if r}
            have = {c.name: c for c in everyone if is_server_side(c)}
            for name, c in have.items():
                w = want.get(name)
                if w is not None and w["ambassador"] == {k: c.spec.ambassador.get(k) for k in ("service", "backends")}:
                    continue
                self._remove(c)
                done.append(f"removed {name}")
            for name, w in want.items():
                if name in have and f"removed {name}" not in done:
                    continue
                if self.records.named(name) is not None:
                    log.warning("cannot serve %s over secure links: a container named %s exists",
                                w["ambassador"]["service"], name)
                    continue
                # Registered once it listens: the run's own refresh must not advertise it.
                self.starting |= {name}
                try:
                    self.run(w)
                    self.policy.await_ready(name)
                    done.append(f"started {name}")
                except Exception as e:
                    log.error("server-side ambassador %s for %s: %s", name, w["ambassador"]["service"], e)
                finally:
                    self.starting -= {name}
        if done:
            self.changed()
        return done

    def quiesce(self, served: Container) -> bool:
        """Before `served` is stopped: its server side stops accepting (SIGUSR2), so
        a client side dialling it now is refused and fails over to another host,
        while the streams it carries drain until the container ends. False: none runs."""
        side = self.records.named(ambassadors.server_name(served.name))
        if side is None or not is_server_side(side):
            return False
        return self.life.while_running(side.id, lambda: self.life.d.runc.kill(side.id, signal.SIGUSR2))

    def _remove(self, c: Container) -> None:
        try:
            self.policy.hold(c.id)
            self.life.remove(c, force=True)
            self.policy.forget(c.id)
        except NotFound:
            pass
        except Exception as e:
            log.error("removing server-side ambassador %s: %s", c.name, e)
