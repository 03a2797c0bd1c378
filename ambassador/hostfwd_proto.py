"""The host forwarder's control protocol (pure: no sockets here).

portlinkd talks to the host forwarder (ambassador/hostfwd.py) over a unix
SOCK_SEQPACKET socket: one message is one datagram holding one JSON object, and
the listening sockets of an `add` ride along as SCM_RIGHTS file descriptors
(made by portlinkd inside the ambassador's network namespace: a socket keeps
the namespace it was made in). Every request gets one reply datagram,
{"ok": true, ...} or {"ok": false, "error": "..."}.

    {"op": "add", "id": CID, "name": NAME, "key": NETNS-KEY, "service": SVC,
     "ports": [P, ...], "policy": keep|drain|close, "drain_deadline": S,
     "consul": URL}                      fds: one listener per port, then metrics
    {"op": "feed", "id": CID, "instances": [INSTANCE, ...], "reachable": true|false|null}
    {"op": "remove", "id": CID}
    {"op": "list"}                       reply: {"ok": true, "ambassadors": {CID: KEY}}

INSTANCE is {"id", "address", "port", "portlink_port", "native"} (a healthy
instance of the service as the daemon's catalog has it). `key` names the
namespace the sockets were made in: an `add` of an id already held with the
same key keeps what runs (its connections too) and closes the new fds."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from portlink import parse
from portlink.catalog.services import META_PORT, Instance
from portlink.reroute import POLICIES

MAX_MESSAGE = 256 * 1024      # a feed of a few thousand instances fits
MAX_FDS = 64                  # ports of one ambassador + its metrics socket
OPS = ("add", "feed", "remove", "list")


class ProtocolError(ValueError):
    """A message that is not what portlinkd sends: the reply names the problem."""


@dataclass(frozen=True)
class Add:
    id: str
    name: str
    key: str
    service: str
    ports: tuple[int, ...]
    policy: str
    drain_deadline: float
    consul: str


@dataclass(frozen=True)
class Feed:
    id: str
    instances: tuple[Instance, ...]
    reachable: bool | None


@dataclass(frozen=True)
class Remove:
    id: str


@dataclass(frozen=True)
class List:
    pass


def _str(doc: dict, field: str, limit: int = 255) -> str:
    v = doc.get(field)
    if not isinstance(v, str) or not v or len(v) > limit:
        raise ProtocolError(f"field {field!r} must be a non-empty string of at most {limit} characters, "
                            f"not {v!r}"[:300])
    return v


def instance_json(i: Instance) -> dict:
    return {"id": i.id, "address": i.address, "port": i.port, "portlink_port": i.meta_get(META_PORT),
            "native": i.native}


def _instance(service: str, x: object) -> Instance:
    if not isinstance(x, dict):
        raise ProtocolError(f"instance {x!r}: expected an object"[:300])
    addr, port, meta, native = x.get("address"), x.get("port"), x.get("portlink_port"), x.get("native")
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        # Consul allows a host name as a service address; the forwarder dials it as given.
        if not isinstance(addr, str) or not addr or len(addr) > 253:
            raise ProtocolError(f"instance address {addr!r} is not an address"[:300]) from None
    if not parse.is_port(port):
        raise ProtocolError(f"instance port {port!r} is not a port number"[:300])
    if meta is not None and not isinstance(meta, str):
        raise ProtocolError(f"instance portlink_port {meta!r}: expected a string or null"[:300])
    if not isinstance(native, bool) or not isinstance(x.get("id", ""), str):
        raise ProtocolError(f"instance {x!r}: expected a string id and a boolean native"[:300])
    return Instance(id=x.get("id", ""), service=service, address=addr, port=port,
                    meta=((META_PORT, meta),) if meta is not None else (), native=native)


def parse_request(data: bytes, nfds: int):
    """One datagram (and how many fds came with it) -> Add | Feed | Remove | List.
    ProtocolError names what is wrong; the caller closes the fds then."""
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(data)} bytes is over the {MAX_MESSAGE}-byte limit")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("expected a JSON object {\"op\": ...}")
    op = doc.get("op")
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r}: expected one of {', '.join(OPS)}"[:300])
    if op != "add" and nfds:
        raise ProtocolError(f"op {op!r} takes no file descriptors ({nfds} came)")
    if op == "list":
        return List()
    cid = _str(doc, "id", 64)
    if op == "remove":
        return Remove(cid)
    if op == "feed":
        inst, reach = doc.get("instances"), doc.get("reachable")
        if not isinstance(inst, list):
            raise ProtocolError("field 'instances' must be a list")
        if reach not in (True, False, None):
            raise ProtocolError(f"field 'reachable' must be true, false or null, not {reach!r}"[:300])
        return Feed(cid, tuple(_instance("", x) for x in inst), reach)
    ports = doc.get("ports")
    if not isinstance(ports, list) or not ports or not all(parse.is_port(p) for p in ports) \
            or len(set(ports)) != len(ports):
        raise ProtocolError(f"field 'ports' must be a non-empty list of distinct TCP ports, not {ports!r}"[:300])
    if nfds != len(ports) + 1:
        raise ProtocolError(f"add of {len(ports)} port(s) needs {len(ports) + 1} file descriptors "
                            f"(one per port, then metrics), {nfds} came")
    policy = doc.get("policy")
    if policy not in POLICIES:
        raise ProtocolError(f"unknown policy {policy!r}: expected one of {', '.join(POLICIES)}"[:300])
    deadline = doc.get("drain_deadline")
    if type(deadline) not in (int, float) or not 0 < deadline <= 3600:
        raise ProtocolError(f"field 'drain_deadline' must be 0 to 3600 seconds, not {deadline!r}"[:300])
    return Add(cid, _str(doc, "name", 63), _str(doc, "key", 255), _str(doc, "service", 128), tuple(ports),
               policy, float(deadline), _str(doc, "consul", 255))


def add_message(a: Add) -> bytes:
    return json.dumps({"op": "add", "id": a.id, "name": a.name, "key": a.key, "service": a.service,
                       "ports": list(a.ports), "policy": a.policy, "drain_deadline": a.drain_deadline,
                       "consul": a.consul}).encode()


def feed_message(cid: str, instances, reachable: bool | None) -> bytes:
    return json.dumps({"op": "feed", "id": cid, "instances": [instance_json(i) for i in instances],
                       "reachable": reachable}, separators=(",", ":")).encode()


def reply(ok: bool, error: str | None = None, **extra) -> bytes:
    return json.dumps({"ok": ok, **({"error": error} if error else {}), **extra}).encode()


def parse_reply(data: bytes) -> dict:
    """A reply; ProtocolError if it is not one (a forwarder gone mad, or gone)."""
    if not data:
        raise ProtocolError("the host forwarder closed the control connection")
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise ProtocolError(f"reply is not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("ok"), bool):
        raise ProtocolError(f"reply {doc!r} is not {{\"ok\": ...}}"[:300])
    return doc
