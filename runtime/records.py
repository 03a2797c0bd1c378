"""Typed records over the state store: each question about containers is one
query here, answered with dataclasses instead of rows and JSON.

The stored form of a container is unchanged: a row with the record as JSON
({"spec": ..., "exposed": [...], "for_links": true, "ip": "..."})."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, replace

from portlink.errors import InvalidArgument, NotFound
from portlink.runtime.spec import ContainerSpec
from portlink.runtime.state import Store, dumps

# Container status values
CREATING, RUNNING, EXITED = "creating", "running", "exited"
REMOVING = "removing"   # rm under way: a crash here is finished by reconcile, never undone
STATUSES = (CREATING, RUNNING, EXITED, REMOVING)


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    spec: ContainerSpec
    exposed: tuple[str, ...]
    status: str
    pid: int | None = None
    exit_code: int | None = None
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    for_links: bool = False         # an ambassador started for cross-host links
    kept_ip: str | None = None      # an ambassador keeps its address across restarts
    ip: str | None = None           # its lease now (queries that join leases)

    @classmethod
    def from_row(cls, row: sqlite3.Row, ip: str | None = None) -> "Container":
        rec = json.loads(row["spec"])
        keys = row.keys()
        get = lambda k: row[k] if k in keys else None
        return cls(id=row["id"], name=row["name"], spec=ContainerSpec.stored(rec["spec"]),
                   exposed=tuple(rec["exposed"]), status=get("status"), pid=get("pid"),
                   exit_code=get("exit_code"), created=get("created") or 0.0, started=get("started"),
                   finished=get("finished"), for_links=bool(rec.get("for_links")),
                   kept_ip=rec.get("ip"), ip=ip if ip is not None else get("ip"))

    def document(self) -> str:
        """The JSON stored in the row's spec column."""
        rec: dict = {"spec": asdict(self.spec), "exposed": list(self.exposed)}
        if self.for_links:
            rec["for_links"] = True
        if self.kept_ip:
            rec["ip"] = self.kept_ip
        return dumps(rec)

    @property
    def is_ambassador(self) -> bool:
        """Its process is portlink's forwarder (a label alone does not make one)."""
        return bool(self.spec.ambassador)

    def with_(self, **changes) -> "Container":
        return replace(self, **changes)


_WITH_IP = "SELECT c.*, l.ip FROM containers c LEFT JOIN leases l ON l.container_id = c.id"


class Records:
    def __init__(self, store: Store) -> None:
        self.store = store

    def find(self, ref: str) -> Container:
        """By name, id or unique id prefix (4+ characters)."""
        r = self.store.one(_WITH_IP + " WHERE c.name=?", ref) or self.store.one(_WITH_IP + " WHERE c.id=?", ref)
        if r is None and len(ref) >= 4:
            rows = self.store.query(_WITH_IP + " WHERE c.id LIKE ?", ref + "%")
            if len(rows) > 1:
                raise InvalidArgument(f"container id prefix {ref!r} is ambiguous")
            r = rows[0] if rows else None
        if r is None:
            raise NotFound(f"container {ref!r} not found (see `portlink ps -a`)")
        return Container.from_row(r)

    def get(self, cid: str) -> Container | None:
        r = self.store.one(_WITH_IP + " WHERE c.id=?", cid)
        return Container.from_row(r) if r is not None else None

    def named(self, name: str) -> Container | None:
        r = self.store.one(_WITH_IP + " WHERE c.name=?", name)
        return Container.from_row(r) if r is not None else None

    def all(self) -> list[Container]:
        return [Container.from_row(r) for r in self.store.query(_WITH_IP + " ORDER BY c.created")]

    def ids(self) -> list[str]:
        return [r["id"] for r in self.store.query("SELECT id FROM containers ORDER BY created")]

    def running_with_ip(self) -> list[Container]:
        """Running containers with an address: what DNS, hosts files and drift see."""
        return [Container.from_row(r) for r in self.store.query(
            "SELECT c.*, l.ip FROM containers c JOIN leases l ON l.container_id = c.id "
            "WHERE c.status=? ORDER BY c.created", RUNNING)]

    def running_ambassadors(self) -> list[Container]:
        return [c for c in self.running_with_ip() if c.is_ambassador]

    def running(self) -> list[Container]:
        return [Container.from_row(r) for r in
                self.store.query("SELECT * FROM containers WHERE status=?", RUNNING)]

    def is_running(self, cid: str, pid: int | None = None) -> bool:
        sql, args = "SELECT 1 FROM containers WHERE id=? AND status=?", [cid, RUNNING]
        if pid is not None:
            sql, args = sql + " AND pid=?", args + [pid]
        return self.store.one(sql, *args) is not None

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for r in self.store.query("SELECT status, COUNT(*) AS n FROM containers GROUP BY status"):
            out[r["status"]] = r["n"]
        return out

    def ports(self, cid: str) -> list[sqlite3.Row]:
        return self.store.query("SELECT * FROM ports WHERE container_id=? ORDER BY proto, host_port", cid)

    def published(self) -> list[tuple[Container, list[sqlite3.Row]]]:
        """Running containers with the host ports they publish."""
        by_id: dict[str, tuple[Container, list]] = {}
        for r in self.store.query("SELECT c.*, p.proto, p.container_port, p.host_port, p.host_ip "
                                  "FROM containers c JOIN ports p ON p.container_id = c.id "
                                  "WHERE c.status=? ORDER BY c.id, p.proto, p.container_port", RUNNING):
            by_id.setdefault(r["id"], (Container.from_row(r), []))[1].append(r)
        return list(by_id.values())

