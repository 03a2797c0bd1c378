"""Where an ambassador's backends come from: fixed on the command line
(`--backend PORT=IP:TARGETPORT`), followed in Consul (standalone), or fed by
the daemon (`--instances-file PATH`: its catalog's instances of the service,
portlink.instances_feed; so one Consul watch per service serves every
ambassador of a host).

From Consul, the healthy instances of one service are split by listener port:
an instance whose meta `portlink-port` is "P/tcp" (the container port behind
it, as portlink registers it) feeds listener P; one without that meta (registered
by someone else) feeds every listener. While Consul is unreachable the watch
yields nothing, so the ambassador keeps forwarding to the last known set; fed
by the daemon, the same holds while the daemon says its catalog does not reach
Consul (or the file cannot be read)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from portlink import parse
from portlink.ambassador.backends import Backend
from portlink.catalog.services import META_PORT, Instance
from portlink.catalog.watch import Reachability, watch_service

log = logging.getLogger("portlink.ambassador")


# The command line's values (ValueError, from portlink.parse; surrounding space is ignored).

def parse_port(text: str, what: str) -> int:
    return parse.port(what, text.strip())


def parse_ip(text: str, what: str) -> str:
    return str(parse.ip(what, text.strip()))


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    """'IP:PORT' or '[IPv6]:PORT'."""
    return parse.hostport(what, text.strip())


def parse_backend(text: str) -> tuple[int, Backend]:
    """'PORT=IP:TARGETPORT' -> (listener port, backend)."""
    port, sep, target = text.partition("=")
    if not sep:
        raise ValueError(f"invalid --backend {text!r}: expected PORT=IP:TARGETPORT")
    try:
        listen = parse_port(port, "listener port")
        ip, target_port = parse_hostport(target, "target")
    except ValueError as e:
        raise ValueError(f"invalid --backend {text!r}: {e}") from None
    return listen, Backend(ip, target_port)


def static_sets(specs: Iterable[str]) -> dict[int, tuple[Backend, ...]]:
    """Repeatable --backend values -> backends per listener port, in the given order."""
    out: dict[int, list[Backend]] = {}
    for spec in specs:
        port, b = parse_backend(spec)
        if b not in out.setdefault(port, []):
            out[port].append(b)
    return {p: tuple(bs) for p, bs in out.items()}


def instance_port(inst: Instance) -> int | None | bool:
    """The listener port an instance feeds: an int, None for every port, or
    False for none (a udp port or meta that does not parse)."""
    meta = inst.meta_get(META_PORT)
    if meta is None:
        return None
    try:
        return parse.port_proto("portlink-port", meta, protos=("tcp",))[0]
    except ValueError:
        return False


def split_instances(instances: Iterable[Instance], ports: Iterable[int]) -> dict[int, tuple[Backend, ...]]:
    """Backends per listener port (every port present, maybe empty)."""
    out: dict[int, list[Backend]] = {p: [] for p in ports}
    for inst in instances:
        target = instance_port(inst)
        if target is False:
            continue
        b = Backend(inst.address, inst.port, inst.id)
        for p in (out if target is None else [target] if target in out else []):
            if b not in out[p]:
                out[p].append(b)
    return {p: tuple(bs) for p, bs in out.items()}


async def follow_consul(ambassador, consul, service: str, reach: Reachability, wait: float = 30.0,
                        connect: bool = False) -> None:
    """Apply every change of `service` in Consul to the ambassador's pools, until cancelled.
    `connect`: follow its mesh-capable instances (server-side ambassadors)."""
    ports = list(ambassador.pools)
    while True:
        try:
            async for instances in watch_service(consul, service, reach, wait, connect=connect):
                if not connect:
                    # A Connect-native instance (a server-side ambassador) speaks only mutual TLS.
                    instances = [i for i in instances if not i.native]
                for port, backends in split_instances(instances, ports).items():
                    ambassador.apply(port, backends)
        except asyncio.CancelledError:
            raise
        except Exception:
            # watch() survives Consul errors itself; anything else is a bug: log, keep the
            # last backends, start over.
            log.exception("following service %s in consul failed; retrying", service)
            await asyncio.sleep(1.0)


def apply_instances(ambassador, instances: Iterable[Instance], connect: bool) -> None:
    """One set of healthy instances onto the ambassador's pools. `connect`: only the
    mesh-capable ones (a client side dialling mutual TLS); otherwise not those: a
    Connect-native instance (a server-side ambassador) speaks only mutual TLS."""
    instances = [i for i in instances if i.native == connect]
    for port, backends in split_instances(instances, list(ambassador.pools)).items():
        ambassador.apply(port, backends)


class Told:
    """Consul's reachability as the daemon last said it, not logged: a secure
    client side's own watches (CA roots, leaves) log theirs already, once per outage."""

    def __init__(self) -> None:
        self.up: bool | None = None

    def ok(self) -> None:
        self.up = True

    def failed(self, err: BaseException) -> None:
        self.up = False


class FedInstances:
    """The instances file the daemon writes (portlink.instances_feed), applied on
    each change; its `reachable` goes to `reach` (the daemon's word for Consul,
    logged once per outage like a watch's). A file that is missing or bad keeps
    the last set."""

    def __init__(self, ambassador, service: str, reach: Reachability, connect: bool = False) -> None:
        self.ambassador, self.service, self.reach, self.connect = ambassador, service, reach, connect
        self.loads = 0      # sets applied
        self.errors = 0     # files that could not be used

    def on_text(self, text: str | None) -> None:
        from portlink import instances_feed
        if text is None:
            return          # not written yet (the daemon writes it before the process starts)
        try:
            feed = instances_feed.loads(text)
            if feed.service.lower() != self.service.lower():
                raise instances_feed.FeedError(f"it is service {feed.service!r}'s, not {self.service!r}'s")
        except instances_feed.FeedError as e:
            self.errors += 1
            log.error("instances file: %s; keeping the last backends", e)
            return
        if feed.reachable is True:
            self.reach.ok()
        elif feed.reachable is False:
            self.reach.failed(ConnectionError("portlinkd's catalog does not reach it"))
        apply_instances(self.ambassador, feed.instances, self.connect)
        self.loads += 1


async def follow_file(ambassador, path, service: str, reach: Reachability, connect: bool = False) -> None:
    """Apply every instances file the daemon writes at `path` (SIGHUP, or a poll), until cancelled."""
    from pathlib import Path
    from portlink.followed_file import Follower
    await Follower(Path(path), FedInstances(ambassador, service, reach, connect).on_text).run()
