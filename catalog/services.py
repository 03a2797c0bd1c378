"""What portlink registers in Consul, as pure functions of what runs.

One Consul service instance per published port of a running container: the
name from the container (or the `portlink.service` label), the host's
advertised address and the published host port, a TCP health check, and meta
that says which host and container it belongs to. Every instance this host
owns carries `portlink-host=<host id>`, so a resync can list exactly ours and
make Consul match what runs: what registrator never managed after a crash, a
reboot or an agent restart.

Labels (all optional):
  portlink.service=NAME            service name for every published port
  portlink.service.PORT[/PROTO]=N  service name for one container port
  portlink.tags=a,b                tags
  portlink.meta.KEY=VALUE          meta
  portlink.register=false          do not register this container
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from portlink import parse
from portlink.errors import InvalidArgument, InvalidValue

ID_PREFIX = "portlink-"
META_HOST = "portlink-host"
META_CONTAINER = "portlink-container"
META_CONTAINER_ID = "portlink-container-id"
META_PORT = "portlink-port"            # "5432/tcp": the container port behind this instance
# "80/tcp,81/tcp": every container port this container serves as this service. Each
# port is its own instance, registered one PUT at a time: a host that hears of the
# first one knows them all (a link made then gets every port, not the first).
META_PORTS = "portlink-ports"
META_SPEC = "portlink-spec"            # hash of the registration: a changed one is re-registered
LABEL = "portlink."

_SERVICE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")
_META_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


@dataclass(frozen=True)
class PublishedPort:
    container_port: int
    proto: str                 # tcp | udp
    host_port: int
    host_ip: str | None = None # bound to one address (-p IP:...), else every address


@dataclass(frozen=True)
class Published:
    """A running container with the ports it publishes, as registration sees it."""

    id: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[PublishedPort, ...] = ()
    # A server-side ambassador (secure links): its TCP ports are Connect-native
    # instances of this service, one per container port it serves.
    connect: str | None = None
    # Its health check's status (runtime/health.py): starting|healthy|unhealthy; None: no check.
    health: str | None = None


@dataclass(frozen=True)
class CheckPolicy:
    interval: str = "5s"
    timeout: str = "2s"
    # Consul's floor is 1m. Should this host vanish for good, its entries go
    # critical and then away instead of being served forever.
    deregister_after: str = "1m"
    # The TTL of a container's health check: the daemon refreshes it on every resync
    # pass (and at each transition), so it only lapses (critical) if the daemon is gone.
    health_ttl: str = "90s"


# A container's health (runtime/health.py) as its Consul check's status: only
# `passing` instances are served by DNS and ambassadors (?passing).
HEALTH_STATUS = {"healthy": "passing", "starting": "warning", "unhealthy": "critical"}


@dataclass(frozen=True)
class Registration:
    id: str
    name: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()
    tcp_check: bool = True
    connect_native: bool = False      # speaks mutual TLS with Connect's CA (a server-side ambassador)
    health: str | None = None         # the container's health (HEALTH_STATUS key); None: no health check

    @property
    def health_check_id(self) -> str:
        return f"{self.id}-health"

    @property
    def health_status(self) -> str | None:
        return HEALTH_STATUS.get(self.health) if self.health else None

    def payload(self, policy: CheckPolicy = CheckPolicy()) -> dict:
        """The body of PUT /v1/agent/service/register."""
        meta = dict(self.meta)
        body: dict = {"ID": self.id, "Name": self.name, "Address": self.address, "Port": self.port,
                      "Tags": list(self.tags), "Meta": meta}
        if self.connect_native:
            body["Connect"] = {"Native": True}
        if self.tcp_check:
            body["Check"] = {
                "CheckID": f"{self.id}-tcp", "Name": f"tcp {self.address}:{self.port}",
                "TCP": f"{self.address}:{self.port}", "Interval": policy.interval,
                "Timeout": policy.timeout, "DeregisterCriticalServiceAfter": policy.deregister_after,
                # Registered only once the process runs: start passing, so the name
                # resolves at once instead of after a random first-check stagger.
                "Status": "passing",
            }
        if self.health:
            # A TTL check the daemon sets (PUT /v1/agent/check/update): no script runs in Consul.
            # The status is in the hash, so a transition re-registers even if an update was lost.
            body["Checks"] = [{"CheckID": self.health_check_id, "Name": "container health check",
                               "TTL": policy.health_ttl, "Status": self.health_status,
                               "DeregisterCriticalServiceAfter": policy.deregister_after}]
        meta[META_SPEC] = spec_hash(body)
        return body


def spec_hash(body: dict) -> str:
    doc = {k: v for k, v in body.items() if k != "Meta"}
    doc["Meta"] = {k: v for k, v in body.get("Meta", {}).items() if k != META_SPEC}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def service_name(text: str) -> str:
    """A container name as a DNS-safe service name: lower case, '_' and '.' as '-'."""
    name = re.sub(r"[^a-z0-9-]", "-", text.lower()).strip("-")[:63].strip("-")
    return name or "container"


def validate_labels(labels: Mapping[str, str]) -> None:
    """Reject portlink.* labels that could not be registered; at `run`, before anything exists."""
    for key, value in labels.items():
        if not key.startswith(LABEL):
            continue
        what = f"label {key}={value!r}"
        if key == "portlink.service" or key.startswith("portlink.service."):
            if key != "portlink.service":
                _port_key(key.removeprefix("portlink.service."), key)
            if not _SERVICE.match(value):
                raise InvalidArgument(f"invalid {what}: a service name is a DNS label "
                                      "(lower-case letters, digits and '-', at most 63)")
        elif key == "portlink.tags":
            for tag in filter(None, (t.strip() for t in value.split(","))):
                if not _TAG.match(tag):
                    raise InvalidArgument(f"invalid tag {tag!r} in {what}: use letters, digits, '_', '.', ':', '-'")
        elif key.startswith("portlink.meta."):
            mk = key.removeprefix("portlink.meta.")
            if not _META_KEY.match(mk) or mk.lower().startswith(("consul-", "portlink-")):
                raise InvalidArgument(f"invalid {what}: a meta key uses letters, digits, '_' and '-' "
                                      "and may not start with consul- or portlink-")
            if len(value) > 512:
                raise InvalidArgument(f"invalid {key}: a meta value is at most 512 characters")
        elif key == "portlink.register":
            if value.lower() not in ("true", "false"):
                raise InvalidArgument(f"invalid {what}: expected true or false")
        else:
            raise InvalidArgument(f"unknown portlink label {key!r}: known are portlink.service[.PORT], "
                                  "portlink.tags, portlink.meta.KEY and portlink.register")


def _port_key(text: str, key: str) -> tuple[int, str | None]:
    try:
        return parse.port_proto("port", text, default=None)
    except InvalidValue:
        raise InvalidArgument(f"invalid label {key!r}: expected portlink.service.PORT or PORT/tcp|udp") from None


def _name_for(c: Published, p: PublishedPort) -> str:
    for key in (f"portlink.service.{p.container_port}/{p.proto}", f"portlink.service.{p.container_port}",
                "portlink.service"):
        if key in c.labels:
            return c.labels[key]
    return service_name(c.name)


def registrations(host_id: str, advertise: str, containers: Iterable[Published]) -> list[Registration]:
    """Every instance this host should have in Consul now, sorted by id."""
    out = []
    for c in containers:
        if c.connect:
            out += _connect_registrations(host_id, advertise, c)
            continue
        if c.labels.get("portlink.register", "true").lower() == "false":
            continue
        tags = tuple(t.strip() for t in c.labels.get("portlink.tags", "").split(",") if t.strip())
        user_meta = [(k.removeprefix("portlink.meta."), v) for k, v in sorted(c.labels.items())
                     if k.startswith("portlink.meta.")]
        # Published on loopback only: no other host could reach it.
        named = [(p, _name_for(c, p)) for p in c.ports if not (p.host_ip and p.host_ip.startswith("127."))]
        served: dict[str, list[str]] = {}
        for p, name in named:
            served.setdefault(name, []).append(f"{p.container_port}/{p.proto}")
        for p, name in named:
            address = p.host_ip if p.host_ip and p.host_ip != "0.0.0.0" else advertise
            meta = (*user_meta, (META_HOST, host_id), (META_CONTAINER, c.name),
                    (META_CONTAINER_ID, c.id), (META_PORT, f"{p.container_port}/{p.proto}"),
                    (META_PORTS, ports_text(served[name])))
            out.append(Registration(
                id=f"{ID_PREFIX}{host_id}-{c.id[:12]}-{p.container_port}-{p.proto}",
                name=name, address=address, port=p.host_port, tags=tags,
                meta=meta, tcp_check=p.proto == "tcp", health=c.health))
    return sorted(out, key=lambda r: r.id)


def _connect_registrations(host_id: str, advertise: str, c: Published) -> list[Registration]:
    """A server-side ambassador's ports as Connect-native instances of the service
    it serves: meta portlink-port names the served container port (the listener
    a client-side ambassador maps it to), the address is where other hosts reach
    its published port."""
    out = []
    tcp = [p for p in c.ports if p.proto == "tcp"]
    every = ports_text(f"{p.container_port}/tcp" for p in tcp)
    for p in tcp:
        meta = ((META_HOST, host_id), (META_CONTAINER, c.name), (META_CONTAINER_ID, c.id),
                (META_PORT, f"{p.container_port}/tcp"), (META_PORTS, every))
        out.append(Registration(id=f"{ID_PREFIX}{host_id}-{c.id[:12]}-{p.container_port}-tls",
                                name=c.connect, address=p.host_ip or advertise, port=p.host_port,
                                meta=meta, connect_native=True, health=c.health))
    return out


def ports_text(ports: Iterable[str]) -> str:
    """META_PORTS's value: "P/proto" items in port order, each once."""
    return ",".join(sorted(set(ports), key=lambda t: (int(t.split("/")[0]), t)))


def served_name(name: str, labels: Mapping[str, str]) -> str:
    """The service a container is served as over secure links: its `portlink.service`
    label or its name (per-port names are for plaintext registrations only)."""
    return labels.get("portlink.service") or service_name(name)


def diff(desired: list[Registration], actual: Mapping[str, Mapping], policy: CheckPolicy = CheckPolicy()
         ) -> tuple[list[Registration], list[str]]:
    """(to register, ids to deregister) so that `actual` (the agent's services of
    this host, by id) becomes `desired`. Unchanged instances are left alone."""
    want = {r.id: r for r in desired}
    register = [r for r in desired
                if (actual.get(r.id) or {}).get("Meta", {}).get(META_SPEC) != r.payload(policy)["Meta"][META_SPEC]]
    return register, sorted(i for i in actual if i not in want)


@dataclass(frozen=True)
class Instance:
    """One healthy instance of a service, as discovery (DNS, ambassadors) sees it."""

    id: str
    service: str
    address: str
    port: int
    node: str = ""
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()
    native: bool = False       # Connect-native: speaks mutual TLS only (a server-side ambassador)

    def meta_get(self, key: str, default: str | None = None) -> str | None:
        return dict(self.meta).get(key, default)


def parse_health(entries: list[dict]) -> tuple[Instance, ...]:
    """/v1/health/service/<name> entries -> instances, in a stable order."""
    out = []
    for e in entries or ():
        node, svc = e.get("Node") or {}, e.get("Service") or {}
        address = svc.get("Address") or node.get("Address") or ""
        if not address or not svc.get("Port"):
            continue
        out.append(Instance(id=svc.get("ID", ""), service=svc.get("Service", ""), address=address,
                            port=int(svc["Port"]), node=node.get("Node", ""),
                            tags=tuple(svc.get("Tags") or ()), meta=tuple(sorted((svc.get("Meta") or {}).items())),
                            native=bool((svc.get("Connect") or {}).get("Native"))))
    return tuple(sorted(out, key=lambda i: (i.address, i.port, i.id)))
