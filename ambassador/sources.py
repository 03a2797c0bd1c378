"""Where an ambassador's backends come from: fixed on the command line
(`--backend PORT=IP:TARGETPORT`) or followed in Consul.

From Consul, the healthy instances of one service are split by listener port:
an instance whose meta `portlink-port` is "P/tcp" (the container port behind
it, as portlink registers it) feeds listener P; one without that meta (registered
by someone else) feeds every listener. While Consul is unreachable the watch
yields nothing, so the ambassador keeps forwarding to the last known set."""

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
