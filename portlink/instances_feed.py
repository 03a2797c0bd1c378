"""The instances of a client-side ambassador's service as the daemon's catalog
sees them, fed to the ambassador so it holds no Consul watch of its own (one
watch per service per host: the daemon's). The daemon writes it
(runtime.ambassador_policy), the ambassador follows it (ambassador.sources);
the format is this module's alone.

One JSON file, `instances.json`, beside the linkers map in the per-ambassador
directory bound read-only into it (portlink.followed_file):

    {"version": 1, "service": "frontdb", "reachable": true,
     "instances": [{"id": "...", "address": "10.0.0.1", "port": 5432,
                    "portlink_port": "80/tcp", "native": false}]}

Only healthy (passing) instances are listed: the daemon's catalog asks Consul
for those alone. `reachable`: whether the daemon's catalog reaches Consul (null:
not asked yet); while it does not, the instances are the last known."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

from portlink import followed_file
from portlink.catalog.services import META_PORT, Instance

FILE = "instances.json"
VERSION = 1


class FeedError(ValueError):
    """A file that is not what the daemon writes."""


@dataclass(frozen=True)
class Feed:
    service: str
    instances: tuple[Instance, ...]
    reachable: bool | None


def _one(i: Instance) -> dict:
    return {"id": i.id, "address": i.address, "port": i.port, "portlink_port": i.meta_get(META_PORT),
            "native": i.native}


def dumps(feed: Feed) -> str:
    return json.dumps({"version": VERSION, "service": feed.service, "reachable": feed.reachable,
                       "instances": [_one(i) for i in feed.instances]}, separators=(",", ":")) + "\n"


def _instance(service: str, x: object) -> Instance:
    if not isinstance(x, dict):
        raise FeedError(f"instance {x!r}: expected an object")
    addr, port, meta, native = x.get("address"), x.get("port"), x.get("portlink_port"), x.get("native")
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        # Consul allows a host name as a service address; the forwarder dials it as given.
        if not isinstance(addr, str) or not addr or len(addr) > 253:
            raise FeedError(f"instance address {addr!r} is not an address") from None
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise FeedError(f"instance port {port!r} is not a port number")
    if meta is not None and not isinstance(meta, str):
        raise FeedError(f"instance portlink_port {meta!r}: expected a string or null")
    if not isinstance(native, bool) or not isinstance(x.get("id", ""), str):
        raise FeedError(f"instance {x!r}: expected a string id and a boolean native")
    return Instance(id=x.get("id", ""), service=service, address=addr, port=port,
                    meta=((META_PORT, meta),) if meta is not None else (), native=native)


def loads(text: str) -> Feed:
    """The feed; FeedError names what is wrong (the reader keeps its last good set then)."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise FeedError(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("instances"), list) \
            or not isinstance(doc.get("service"), str) or doc.get("reachable") not in (True, False, None):
        raise FeedError(f'expected {{"version": {VERSION}, "service": "...", "reachable": true|false|null, '
                        '"instances": [...]}}')
    service = doc["service"]
    return Feed(service, tuple(_instance(service, x) for x in doc["instances"]), doc["reachable"])


def write(directory: Path, feed: Feed) -> None:
    """Replace the file atomically; no fsync: it is rewritten at every start and change."""
    followed_file.write(directory, FILE, dumps(feed), durable=False)
