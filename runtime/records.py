"""Typed records over the state store: each question about containers is one
query here, answered with dataclasses instead of rows and JSON.

The stored form of a container is a row with the record as JSON
({"spec": ..., "exposed": [...], "for_links": true, "ip": "...", "pid_start": n,
"oom_killed": true, "mounts": [...], "health": {...}}); keys added later are optional, so older rows read as they were."""

from __future__ import annotations

import functools
import json
import re
import sqlite3
import time
import weakref
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from ipaddress import ip_address

from portlink.errors import Conflict, InvalidArgument, NotFound
from portlink.runtime import ports as portspec
from portlink.runtime.ports import PortRequest
from portlink.runtime.spec import ContainerSpec
from portlink.runtime.state import Store, dumps
from portlink.runtime.volspec import Mount

# Parsed documents kept (runtime records' spec column, _document_fields): room for
# 1,000 links (a linker and an ambassador each) and as many again.
DOCUMENTS_KEPT = 4096

# Container status values
CREATING, RUNNING, EXITED = "creating", "running", "exited"
REMOVING = "removing"   # rm under way: a crash here is finished by reconcile, never undone
CREATED = "created"     # made but never started (Docker's `create`): started like an exited one
STATUSES = (CREATING, CREATED, RUNNING, EXITED, REMOVING)


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
    pid_start: int | None = None    # its process's start time (procstart): a reused pid is not it
    oom_killed: bool = False        # its last run ended with the OOM killer in its cgroup
    mounts: tuple[Mount, ...] = ()  # its volumes, binds and tmpfs, resolved at create (runtime.volspec)
    # restart policy (runtime.restarts)
    restart_count: int = 0          # restarts by its policy since the user last started it
    user_stopped: bool = False      # stopped by the user: its policy does not restart it
    restarting: bool = False        # a restart by its policy is pending
    health: dict | None = None      # the last health state of this run (runtime.health: HealthState.saved)

    @classmethod
    def from_row(cls, row: sqlite3.Row, ip: str | None = None) -> "Container":
        keys = row.keys()
        get = lambda k: row[k] if k in keys else None
        return cls(id=row["id"], name=row["name"], status=get("status"), pid=get("pid"),
                   exit_code=get("exit_code"), created=get("created") or 0.0, started=get("started"),
                   finished=get("finished"), ip=ip if ip is not None else get("ip"),
                   **_document_fields(row["spec"]))

    def document(self) -> str:
        """The JSON stored in the row's spec column."""
        rec: dict = {"spec": asdict(self.spec), "exposed": list(self.exposed)}
        if self.for_links:
            rec["for_links"] = True
        if self.kept_ip:
            rec["ip"] = self.kept_ip
        if self.pid_start is not None:
            rec["pid_start"] = self.pid_start
        if self.oom_killed:
            rec["oom_killed"] = True
        if self.mounts:
            rec["mounts"] = [m.to_json() for m in self.mounts]
        if self.restart_count:
            rec["restart_count"] = self.restart_count
        if self.user_stopped:
            rec["user_stopped"] = True
        if self.restarting:
            rec["restarting"] = True
        if self.health:
            rec["health"] = self.health
        return dumps(rec)

    @property
    def is_ambassador(self) -> bool:
        """Its process is portlink's forwarder (a label alone does not make one)."""
        return bool(self.spec.ambassador)

    def with_(self, **changes) -> "Container":
        return replace(self, **changes)


@functools.lru_cache(maxsize=DOCUMENTS_KEPT)
def _document_fields(doc: str) -> dict:
    """The fields a stored document (the spec column) gives a Container, parsed
    once per distinct document: every change reads all running containers (DNS,
    hosts files, flows, health), and parsing each again made a change cost grow
    with the containers there (issue 18). A document's text is its identity, so
    a changed record is a new key. The values are shared by every Container read
    from the same text: records are read-only (changes go through `with_` and a
    write), so callers copy before they change anything."""
    rec = json.loads(doc)
    return dict(spec=ContainerSpec.stored(rec["spec"]), exposed=tuple(rec["exposed"]),
                for_links=bool(rec.get("for_links")), kept_ip=rec.get("ip"),
                pid_start=rec.get("pid_start"),   # absent in rows written before it was recorded
                oom_killed=bool(rec.get("oom_killed")),
                mounts=tuple(Mount.from_json(m) for m in rec.get("mounts") or ()),
                restart_count=rec.get("restart_count") or 0, user_stopped=bool(rec.get("user_stopped")),
                restarting=bool(rec.get("restarting")), health=rec.get("health"))


_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class _Running:
    """A query of running rows, in two forms: every row, and the rows of some ids
    (`{}`: their placeholders). Both carry `row_order` (the rowid): with `created`
    it orders the answer, as the full form's ORDER BY does."""
    full: str
    some: str


_RUNNING_WITH_IP = _Running(
    full="SELECT c.*, c.rowid AS row_order, l.ip FROM containers c JOIN leases l ON l.container_id = c.id "
         "WHERE c.status=? ORDER BY c.created, c.rowid",
    some="SELECT c.*, c.rowid AS row_order, l.ip FROM containers c JOIN leases l ON l.container_id = c.id "
         "WHERE c.status=? AND c.id IN ({})")
_RUNNING = _Running(full="SELECT *, rowid AS row_order FROM containers WHERE status=? ORDER BY created, rowid",
                    some="SELECT *, rowid AS row_order FROM containers WHERE status=? AND id IN ({})")
_FETCH_SOME = 200     # more ids changed than this: one read of every row instead
_CHANGES_KEPT = 4096  # entries of the store's change log kept for readers behind (state.CHANGES)
_HISTORY = 64         # generations of changed ids a view keeps for since()


@dataclass(frozen=True)
class RunningDelta:
    """An answer and what changed since the caller's last: `mark` is passed back
    next time; `changed` holds the ids whose rows came, went or changed since
    the mark given, or is None: treat every row as new. `fresh`: the rows of
    `changed` in the answer (those not there went), so a consumer's cost
    follows the change, not the rows (every row when `changed` is None)."""
    mark: int
    rows: list[Container]
    changed: frozenset[str] | None
    fresh: list[Container]


@dataclass
class _View:
    """The running rows of one query, kept between reads: patched from the change
    log, so a change costs a read of the rows it touched, not of every row; the
    rows it did not touch are handed on as the same Container objects.
    `ambassadors` is the subset whose process is an ambassador."""
    version: int
    seq: int
    rows: dict[str, Container]          # by id, in order: patched in place, listed by copy
    ambassadors: dict[str, Container]
    order: dict[str, tuple[float, int]]
    gen: int = 0
    history: "deque[tuple[int, frozenset[str] | None]]" = field(default_factory=lambda: deque(maxlen=_HISTORY))

    def since(self, mark: int) -> frozenset[str] | None:
        if mark == self.gen:
            return frozenset()
        if mark > self.gen or not self.history or self.history[0][0] > mark + 1:
            return None
        out: set[str] = set()
        for gen, ids in self.history:
            if gen > mark:
                if ids is None:
                    return None
                out |= ids
        return frozenset(out)


def _patch(rows: dict[str, Container], changed: frozenset[str], fresh: list[Container],
           order: dict[str, tuple[float, int]]) -> dict[str, Container]:
    """`rows` (by id, in order) without `changed` and with `fresh` in their places:
    appended when they all come last, as a new container's row does (a restart
    in an old place sorts them all again)."""
    for cid in changed:
        rows.pop(cid, None)
    if not fresh:
        return rows
    fresh = sorted(fresh, key=lambda c: order[c.id])
    if rows and order[fresh[0].id] < order[next(reversed(rows))]:
        return {c.id: c for c in sorted([*rows.values(), *fresh], key=lambda c: order[c.id])}
    rows.update((c.id, c) for c in fresh)
    return rows


_WITH_IP = "SELECT c.*, l.ip FROM containers c LEFT JOIN leases l ON l.container_id = c.id"
# Per store, per query: its _View, shared by every Records over the store.
_KEPT: "weakref.WeakKeyDictionary[Store, dict[str, _View]]" = weakref.WeakKeyDictionary()


class Records:
    def __init__(self, store: Store) -> None:
        self.store = store

    def find(self, ref: str) -> Container:
        """By name, id or unique id prefix (4+ characters)."""
        r = self.store.one(_WITH_IP + " WHERE c.name=?", ref) or self.store.one(_WITH_IP + " WHERE c.id=?", ref)
        if r is None and len(ref) >= 4:
            # A prefix is hex (ids are token_hex): anything else, LIKE's `_` and `%`
            # included, names no container. substr compares characters, no pattern.
            if not _HEX.fullmatch(ref):
                raise NotFound(f"container {ref!r} not found: no such name, and an id prefix is lowercase hex "
                               "(see `portlink ps -a`)")
            rows = self.store.query(_WITH_IP + " WHERE substr(c.id, 1, ?) = ?", len(ref), ref)
            if len(rows) > 1:
                raise InvalidArgument(f"container id prefix {ref!r} is ambiguous")
            r = rows[0] if rows else None
        if r is None:
            raise NotFound(f"container {ref!r} not found (see `portlink ps -a`)")
        return Container.from_row(r)

    def get(self, cid: str) -> Container | None:
        r = self.store.one(_WITH_IP + " WHERE c.id=?", cid)
        return Container.from_row(r) if r is not None else None

    def current(self, cid: str, ref: str | None = None) -> Container:
        """The container now; NotFound if it was removed meanwhile (a racing rm)."""
        c = self.get(cid)
        if c is None:
            raise NotFound(f"container {ref or cid!r} not found (see `portlink ps -a`)")
        return c

    def named(self, name: str) -> Container | None:
        r = self.store.one(_WITH_IP + " WHERE c.name=?", name)
        return Container.from_row(r) if r is not None else None

    def all(self) -> list[Container]:
        return [Container.from_row(r) for r in self.store.query(_WITH_IP + " ORDER BY c.created")]

    def quoting(self, name: str) -> list[Container]:
        """The containers whose stored record holds a JSON string starting with
        `name` (a link to it is "name" or "name:alias"): a superset for the caller
        to check, found by SQLite in the stored text, so a question about one name
        does not read every container into Python (issue 18)."""
        return [Container.from_row(r) for r in
                self.store.query(_WITH_IP + " WHERE instr(c.spec, ?) > 0", json.dumps(name)[:-1])]

    def ids(self) -> list[str]:
        return [r["id"] for r in self.store.query("SELECT id FROM containers ORDER BY created")]

    def running_with_ip(self) -> list[Container]:
        """Running containers with an address: what DNS, hosts files and drift see."""
        return self._view(_RUNNING_WITH_IP).rows

    def running_with_ip_since(self, mark: int) -> RunningDelta:
        """running_with_ip, and the ids changed since `mark` (-1: none known)."""
        return self._view(_RUNNING_WITH_IP, mark)

    def running_ambassadors(self) -> list[Container]:
        """Those of running_with_ip that are ambassadors: asked by the flows, the
        kernel path and the forwarder on each change."""
        return self._view(_RUNNING_WITH_IP, ambassadors=True).rows

    def running_ambassadors_since(self, mark: int) -> RunningDelta:
        """running_ambassadors, and the ids changed since `mark`: a superset (any
        running row's change is named, ambassador or not)."""
        return self._view(_RUNNING_WITH_IP, mark, ambassadors=True)

    def running(self) -> list[Container]:
        """Every running container (the health monitor asks five times a second)."""
        return self._view(_RUNNING).rows

    def _view(self, q: _Running, mark: int = -1, ambassadors: bool = False) -> RunningDelta:
        """The running rows by `q`, brought up to the store: with nothing written
        since the last read, the kept answer; else patched with the rows of the
        ids the change log names. Inside a transaction (a rollback would take the
        log back) every row is read and nothing is kept."""
        pick = (lambda v: v.ambassadors) if ambassadors else (lambda v: v.rows)
        with self.store.reading():
            version = self.store.version()
            if version is None:
                rows = [Container.from_row(r) for r in self.store.query(q.full, RUNNING)]
                rows = [c for c in rows if c.is_ambassador] if ambassadors else rows
                return RunningDelta(-1, rows, None, rows)
            per_store = _KEPT.setdefault(self.store, {})
            view = per_store.get(q.full)
            if view is None or view.version != version:
                view = self._refresh(q, view, version)
                per_store[q.full] = view
            rows, changed = pick(view), view.since(mark)
            listed = list(rows.values())
            if changed is None:
                return RunningDelta(view.gen, listed, None, listed)
            fresh = sorted((rows[cid] for cid in changed if cid in rows), key=lambda c: view.order[c.id])
            return RunningDelta(view.gen, listed, changed, fresh)

    def _refresh(self, q: _Running, view: _View | None, version: int) -> _View:
        """`view` brought up to the store (under its lock): patched, or read whole
        when there is none, the log was trimmed past it, or too much changed."""
        seq, first, ids = self.store.changes_since(view.seq if view is not None else 0)
        if view is not None and not ids:
            view.version = version
            view.seq = seq
            return view
        if view is None or (first is not None and first > view.seq + 1) or len(ids) > _FETCH_SOME:
            rows = self.store.query(q.full, RUNNING)
            order = {r["id"]: (r["created"], r["row_order"]) for r in rows}
            built = {r["id"]: Container.from_row(r) for r in rows}   # callers are told to redo all (changed None)
            new = _View(version, seq, built, {cid: c for cid, c in built.items() if c.is_ambassador}, order,
                        gen=view.gen + 1 if view is not None else 0)
            if view is not None:
                new.history.extend(view.history)
            new.history.append((new.gen, None))
        else:
            changed = frozenset(ids)
            rows = self.store.query(q.some.format(",".join("?" * len(ids))), RUNNING, *ids)
            order = view.order
            for cid in changed:
                order.pop(cid, None)
            fresh = []
            for r in rows:
                order[r["id"]] = (r["created"], r["row_order"])
                fresh.append(Container.from_row(r))
            # In place: the answers handed out are copies (_view), and this view replaces the old.
            new = _View(version, seq, _patch(view.rows, changed, fresh, order),
                        _patch(view.ambassadors, changed, [c for c in fresh if c.is_ambassador], order), order,
                        gen=view.gen + 1, history=view.history)
            new.history.append((new.gen, changed))
        if seq - (first or seq) > 2 * _CHANGES_KEPT:
            self.store.trim_changes(_CHANGES_KEPT)
            new.version = self.store.version()
        return new

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

    # writes -------------------------------------------------------------------------------
    def insert(self, c: Container, publish: list[PortRequest]) -> None:
        """A new container (status CREATING) and its host ports, in one transaction."""
        # Not synced: nothing is made before the journal's first synced step.
        with self.store.tx(synced=False) as db:
            if db.execute("SELECT 1 FROM containers WHERE name=?", (c.name,)).fetchone():
                raise Conflict(f"container name {c.name!r} is already in use")
            db.execute("INSERT INTO containers(id,name,spec,status,created) VALUES (?,?,?,?,?)",
                       (c.id, c.name, c.document(), CREATING, c.created))
            _reserve_ports(db, c.id, publish)

    def delete(self, cid: str) -> None:
        with self.store.tx() as db:
            db.execute("DELETE FROM ports WHERE container_id=?", (cid,))
            db.execute("DELETE FROM containers WHERE id=?", (cid,))

    def set_running(self, c: Container, pid: int) -> None:
        self.store.execute("UPDATE containers SET status=?, pid=?, started=?, exit_code=NULL, finished=NULL, "
                           "spec=? WHERE id=?", RUNNING, pid, time.time(),
                           c.with_(oom_killed=False, restarting=False, health=None).document(),
                           c.id)

    def set_exited(self, cid: str, code: int | None, oom_killed: bool = False) -> None:
        """Exited; an unknown code (None) keeps the one recorded. The pid is kept (shown
        only while running) so a late exit report is recognised as stale. Not synced:
        lost in a power cut, recovery finds the container dead and records it again."""
        with self.store.tx(synced=False) as db:
            if oom_killed:
                row = db.execute("SELECT * FROM containers WHERE id=?", (cid,)).fetchone()
                if row is not None:
                    doc = Container.from_row(row).with_(oom_killed=True).document()
                    db.execute("UPDATE containers SET spec=? WHERE id=?", (doc, cid))
            db.execute("UPDATE containers SET status=?, finished=?, exit_code=COALESCE(?, exit_code) "
                       "WHERE id=?", (EXITED, time.time(), code, cid))

    def set_restart_state(self, cid: str, **changes) -> Container | None:
        """restart_count, user_stopped, restarting (runtime.restarts) changed in the
        record, in one transaction; the container after, None if it is gone."""
        with self.store.tx() as db:
            row = db.execute("SELECT * FROM containers WHERE id=?", (cid,)).fetchone()
            if row is None:
                return None
            c = Container.from_row(row).with_(**changes)
            db.execute("UPDATE containers SET spec=? WHERE id=?", (c.document(), cid))
        return c

    def set_created(self, cid: str) -> None:
        """Made but not started: its create ends here (a crash now keeps it)."""
        self.store.execute("UPDATE containers SET status=? WHERE id=?", CREATED, cid)

    def set_health(self, cid: str, pid: int, saved: dict) -> bool:
        """The run's last health state kept in its record, if `pid` is still the
        running process (a late result of an earlier run is dropped)."""
        with self.store.tx() as db:
            row = db.execute("SELECT * FROM containers WHERE id=? AND status=? AND pid=?",
                             (cid, RUNNING, pid)).fetchone()
            if row is None:
                return False
            db.execute("UPDATE containers SET spec=? WHERE id=?",
                       (Container.from_row(row).with_(health=saved).document(), cid))
        return True

    def set_exit_code(self, cid: str, code: int) -> None:
        # Not synced: its monitor's exit file keeps the code.
        self.store.execute("UPDATE containers SET exit_code=? WHERE id=?", code, cid, synced=False)

    def set_removing(self, cid: str) -> None:
        # Not synced: lost in a power cut, the container is there to remove again.
        self.store.execute("UPDATE containers SET status=? WHERE id=?", REMOVING, cid, synced=False)

    def ports(self, cid: str) -> list[sqlite3.Row]:
        return self.store.query("SELECT * FROM ports WHERE container_id=? ORDER BY proto, host_port", cid)

    def all_ports(self) -> list[sqlite3.Row]:
        return self.store.query("SELECT * FROM ports ORDER BY proto, host_port")

    def published(self) -> list[tuple[Container, list[sqlite3.Row]]]:
        """Running containers with the host ports they publish."""
        by_id: dict[str, tuple[Container, list]] = {}
        for r in self.store.query("SELECT c.*, p.proto, p.container_port, p.host_port, p.host_ip "
                                  "FROM containers c JOIN ports p ON p.container_id = c.id "
                                  "WHERE c.status=? ORDER BY c.id, p.proto, p.container_port", RUNNING):
            by_id.setdefault(r["id"], (Container.from_row(r), []))[1].append(r)
        return list(by_id.values())


def _reserve_ports(db, cid: str, requests: list[portspec.PortRequest]) -> None:
    """Host ports for `requests`, checked and inserted in the caller's transaction."""
    taken: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for r in db.execute("SELECT proto, host_ip, host_port, container_id FROM ports"):
        taken.setdefault((r[0], r[2]), []).append((r[1], r[3]))
    for req in requests:
        port = req.host_port
        if port is None:   # pick the lowest free ephemeral port
            port = next((p for p in portspec.EPHEMERAL if (req.proto, p) not in taken), None)
            if port is None:
                raise Conflict(f"no free host port left for {req.key()}")
        for hip, owner in taken.get((req.proto, port), []):
            if portspec.addresses_overlap(req.host_ip, ip_address(hip) if hip else None):
                oname = db.execute("SELECT name FROM containers WHERE id=?", (owner,)).fetchone()
                where = f"{hip}:" if hip else ""
                raise Conflict(f"host port {where}{port}/{req.proto} is already published by "
                               f"container {oname[0] if oname else owner[:12]!r}")
        db.execute("INSERT INTO ports VALUES (?,?,?,?,?)",
                   (req.proto, str(req.host_ip or ""), port, cid, req.container_port))
        taken.setdefault((req.proto, port), []).append((str(req.host_ip or ""), cid))
