"""portlink networks: a bridge, a subnet with persistent IPAM, firewall rules."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Address, ip_address, ip_network

from portlink.errors import Conflict, InvalidArgument, NotFound
from portlink.netns import ipam, kernel_link, names
from portlink.netns.model import NetworkSpec
from portlink.runtime import validate
from portlink.runtime.state import Store
from portlink.runtime.events import EventLog

DEFAULT_NETWORK = "bridge"
NO_NETWORK = "none"   # loopback only


_USERS = "SELECT name, spec FROM containers"


def _users(rows, network: str) -> list[str]:
    """Containers (any status) on `network`, from the rows of _USERS."""
    return sorted(r[0] for r in rows if json.loads(r[1])["spec"]["network"] == network)


def read_all(store: Store) -> list[NetworkSpec]:
    return [_spec(r) for r in store.query("SELECT * FROM networks ORDER BY name")]


def _spec(row) -> NetworkSpec:
    return NetworkSpec(id=row["id"], name=row["name"], subnet=ip_network(row["subnet"]),
                       gateway=ip_address(row["gateway"]), bridge=row["bridge"],
                       internal=bool(row["internal"]), icc=bool(row["icc"]))


class Networks:
    def __init__(self, store: Store, firewall, events: EventLog, changed: Callable[[], None],
                 default_subnet: str) -> None:
        """`firewall`: re-rendered whole on every change (runtime.firewall.Firewall);
        `changed`: told after every change (DNS listens on every gateway)."""
        self.store = store
        self.default_subnet = default_subnet
        self._apply_firewall = firewall.apply_all
        self.changed = changed
        self.event = events.emit
        # Held through create and remove: the name and subnet checks and the insert are one
        # step (two concurrent creates never get one auto subnet), and a network is seen
        # by get() only once its bridge and rules exist (`_pending`: rows not ready yet).
        self._lock = threading.RLock()
        self._pending: set[str] = set()

    def list(self) -> list[NetworkSpec]:
        return read_all(self.store)

    def users(self, name: str) -> list[str]:
        """Containers (any status) on the network `name`."""
        return _users(self.store.query(_USERS), name)

    def get(self, ref: str) -> NetworkSpec:
        row = self.store.one("SELECT * FROM networks WHERE name=?", ref) or \
            self.store.one("SELECT * FROM networks WHERE id=?", ref)
        if row is None and len(ref) >= 6:
            rows = self.store.query("SELECT * FROM networks WHERE id LIKE ?", ref + "%")
            row = rows[0] if len(rows) == 1 else None
        if row is None and ref == DEFAULT_NETWORK:
            # The default network comes back on first use, also after `system prune`;
            # concurrent first uses: one creates it, the others wait and find it.
            with self._lock:
                row = self.store.one("SELECT * FROM networks WHERE name=?", ref)
                if row is None:
                    return self.create(DEFAULT_NETWORK, subnet=self.default_subnet)
        if row is not None and row["id"] in self._pending:
            with self._lock:   # being created: wait until its bridge and rules exist
                return self.get(ref)
        if row is None:
            raise NotFound(f"network {ref!r} not found (see `portlink network ls`)")
        return _spec(row)

    def create(self, name: str, subnet: str | None = None, gateway: str | None = None,
               internal: bool = False, icc: bool = True, labels: dict[str, str] | None = None) -> NetworkSpec:
        validate.name("network", name)
        labels = labels or {}
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in labels.items()):
            raise InvalidArgument("field 'labels' must map strings to strings")
        for what, value in (("subnet", subnet), ("gateway", gateway)):
            if value is not None and not isinstance(value, str):
                raise InvalidArgument(f"field {what!r} must be a string, not {value!r}")
        for what, value in (("internal", internal), ("icc", icc)):
            if not isinstance(value, bool):
                raise InvalidArgument(f"field {what!r} must be true or false, not {value!r}")
        if name == NO_NETWORK:
            raise InvalidArgument(f"network name {name!r} is reserved")
        with self._lock:
            return self._create(name, subnet, gateway, internal, icc, labels)

    def labels(self, nid: str) -> dict[str, str]:
        """The labels given at create (Docker's network Labels: compose finds its networks by them)."""
        row = self.store.one("SELECT labels FROM network_labels WHERE network_id=?", nid)
        return json.loads(row["labels"]) if row else {}

    def _create(self, name: str, subnet: str | None, gateway: str | None, internal: bool,
                icc: bool, labels: dict[str, str]) -> NetworkSpec:
        existing = [(n.name, n.subnet) for n in self.list()]
        if any(n == name for n, _ in existing):
            raise Conflict(f"network {name!r} already exists")
        if subnet:
            net = ipam.parse_subnet(subnet)
            ipam.check_overlap(net, existing)
        else:
            if gateway:
                raise InvalidArgument("--gateway needs --subnet")
            net = ipam.auto_subnet(s for _, s in existing)
        gw = ipam.parse_gateway(gateway, net)
        nid = secrets.token_hex(32)
        spec = NetworkSpec(id=nid, name=name, subnet=net, gateway=gw,
                           bridge=names.bridge_name(nid), internal=internal, icc=icc)
        self._pending.add(nid)
        try:
            with self.store.tx() as db:
                db.execute("INSERT INTO networks VALUES (?,?,?,?,?,?,?,?,NULL)",
                           (nid, name, str(net), str(gw), spec.bridge, int(internal), int(icc), time.time()))
                if labels:
                    db.execute("INSERT INTO network_labels VALUES (?,?)", (nid, json.dumps(labels)))
            self.store.record("bridge", spec.bridge, nid)
            try:
                kernel_link.ensure_bridge(spec)
                self._apply_firewall()
            except BaseException:
                self.drop(spec)
                raise
        finally:
            self._pending.discard(nid)
        self.event("network", "create", name, nid, subnet=str(net), internal=internal, icc=icc)
        self.changed()
        return spec

    def drop(self, spec: NetworkSpec, unused: bool = False) -> list[str]:
        """Remove the network's row, firewall rules and bridge, collecting errors.
        `unused`: refuse (Conflict) if a container uses it, checked in the same
        transaction as the delete, so a concurrent `run` either is seen here or
        finds the network gone."""
        errors = []
        with self._lock:   # no create picks this subnet while the old bridge still has it
            with self.store.tx() as db:
                users = _users(db.execute(_USERS), spec.name) if unused else []
                if users:
                    raise Conflict(f"network {spec.name!r} is in use by containers: {', '.join(users)}")
                db.execute("DELETE FROM networks WHERE id=?", (spec.id,))
                db.execute("DELETE FROM network_labels WHERE network_id=?", (spec.id,))
            for step in (self._apply_firewall, lambda: kernel_link.delete_link(spec.bridge)):
                try:
                    step()
                except Exception as e:
                    errors.append(f"network {spec.name}: {e}")
            if not errors:
                self.store.forget("bridge", spec.bridge)
        self.event("network", "destroy", spec.name, spec.id)
        self.changed()
        return errors

    def remove(self, ref: str) -> list[str]:
        spec = self.get(ref)
        if spec.name == DEFAULT_NETWORK:
            raise InvalidArgument(f"network {DEFAULT_NETWORK!r} is the default network and cannot be removed")
        return self.drop(spec, unused=True)

    # IPAM: called inside the caller's transaction ------------------------------------
    @staticmethod
    def lease(db, spec: NetworkSpec, container_id: str, prefer: str | None = None) -> IPv4Address:
        """The next free address (round robin); `prefer`: this one if it is free."""
        row = db.execute("SELECT cursor FROM networks WHERE id=?", (spec.id,)).fetchone()
        if row is None:   # removed since the caller looked it up
            raise NotFound(f"network {spec.name!r} was removed (see `portlink network ls`)")
        used = Leased({r[0] for r in db.execute("SELECT ip FROM leases WHERE network_id=?", (spec.id,))})
        if prefer:
            want = ip_address(prefer)
            if want in spec.subnet and want != spec.gateway and want not in used and \
                    want not in (spec.subnet.network_address, spec.subnet.broadcast_address):
                db.execute("INSERT INTO leases VALUES (?,?,?)", (spec.id, str(want), container_id))
                return want
        cur = row[0]
        ip = ipam.next_free(spec.subnet, spec.gateway, used, ip_address(cur) if cur else None)
        db.execute("INSERT INTO leases VALUES (?,?,?)", (spec.id, str(ip), container_id))
        db.execute("UPDATE networks SET cursor=? WHERE id=?", (str(ip), spec.id))
        return ip


class Leased:
    """A network's leased addresses as stored (dotted text), asked with addresses:
    a lease reads every other one, and parsing each (1,000 links: 2,000 leases)
    cost more than the few candidates it checks."""

    def __init__(self, texts: set[str]) -> None:
        self.texts = texts

    def __contains__(self, ip: object) -> bool:
        return str(ip) in self.texts

    def __len__(self) -> int:
        return len(self.texts)
