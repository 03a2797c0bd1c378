"""The daemon's state store (SQLite in WAL mode in the state dir).

It records every object portlink creates, before creating it (`resources`), so
a crash at any step leaves a journal that restart reconciliation can roll back.
Leases and published ports are rows with unique keys: no address or port is
ever handed out twice, also across daemon restarts and concurrent requests."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS networks(
  id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, subnet TEXT NOT NULL, gateway TEXT NOT NULL,
  bridge TEXT UNIQUE NOT NULL, internal INTEGER NOT NULL, icc INTEGER NOT NULL,
  created REAL NOT NULL, cursor TEXT);
CREATE TABLE IF NOT EXISTS containers(
  id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, spec TEXT NOT NULL, status TEXT NOT NULL,
  pid INTEGER, exit_code INTEGER, created REAL NOT NULL, started REAL, finished REAL);
CREATE TABLE IF NOT EXISTS leases(
  network_id TEXT NOT NULL, ip TEXT NOT NULL, container_id TEXT NOT NULL,
  PRIMARY KEY(network_id, ip));
CREATE TABLE IF NOT EXISTS ports(
  proto TEXT NOT NULL, host_ip TEXT NOT NULL, host_port INTEGER NOT NULL,
  container_id TEXT NOT NULL, container_port INTEGER NOT NULL,
  PRIMARY KEY(proto, host_ip, host_port));
CREATE TABLE IF NOT EXISTS resources(
  kind TEXT NOT NULL, name TEXT NOT NULL, owner TEXT NOT NULL, created REAL NOT NULL,
  PRIMARY KEY(kind, name));
CREATE TABLE IF NOT EXISTS network_labels(
  network_id TEXT PRIMARY KEY, labels TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS volumes(
  name TEXT PRIMARY KEY, created REAL NOT NULL, anonymous INTEGER NOT NULL, creator TEXT,
  labels TEXT NOT NULL);
"""


def _logged(table: str, column: str) -> str:
    """Triggers appending `column` (a container's id) of every row of `table`
    inserted, updated (old and new id, when they differ) or deleted."""
    insert = "INSERT INTO container_changes(id)"
    return f"""
CREATE TRIGGER IF NOT EXISTS {table}_logged_insert AFTER INSERT ON {table}
BEGIN {insert} VALUES (NEW.{column}); END;
CREATE TRIGGER IF NOT EXISTS {table}_logged_update AFTER UPDATE ON {table}
BEGIN {insert} VALUES (NEW.{column});
      {insert} SELECT OLD.{column} WHERE OLD.{column} != NEW.{column}; END;
CREATE TRIGGER IF NOT EXISTS {table}_logged_delete AFTER DELETE ON {table}
BEGIN {insert} VALUES (OLD.{column}); END;
"""


# Every write of a container's row or of one of its leases, whoever makes it,
# appends the container's id to a log (triggers): a reader that keeps rows
# (records.Records) reads the ids logged since its last read and fetches only
# those rows (issue 18: reading every running row after each change grew with
# the containers there). The log is trimmed from its old end (trim_changes); a
# reader that finds it trimmed past its place reads everything again.
CHANGES = ("CREATE TABLE IF NOT EXISTS container_changes(seq INTEGER PRIMARY KEY, id TEXT NOT NULL);"
           + _logged("containers", "id") + _logged("leases", "container_id"))

# Before the log, rows carried a revision bumped by a trigger, read for every
# running row at each change: a state dir from then loses the trigger and its
# index (the column stays, unread).
BEFORE_CHANGES = """
DROP TRIGGER IF EXISTS containers_rev;
DROP INDEX IF EXISTS containers_keys;
"""
INDEXES = """
CREATE INDEX IF NOT EXISTS containers_by_status ON containers(status, created);
CREATE INDEX IF NOT EXISTS leases_by_container ON leases(container_id, ip);
"""


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit returns once the WAL is on disk, so what a request was told
        # survives a power cut too (NORMAL survives only a killed process). Cost:
        # about 6.5 ms per run+rm, 17 commits (bench/store_sync.py). A commit marked
        # synced=False is NORMAL: it survives a killed daemon, and the WAL is written in
        # order, so the next synced commit puts it on disk too. Only a row whose loss in
        # a power cut recovery copes with is written so (a volatile kernel object's
        # record, a forgotten step: its undo is redone; see runtime/journal.py).
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._db.executescript(BEFORE_CHANGES + CHANGES + INDEXES)
        self._lock = threading.RLock()

    @contextmanager
    def tx(self, synced: bool = True) -> Iterator[sqlite3.Connection]:
        """One serialised write transaction: check-then-insert is atomic inside it.
        synced=False: its commit does not wait for the disk (see __init__)."""
        with self._lock:
            if not synced:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if not synced:
                    self._db.execute("PRAGMA synchronous=FULL")

    def query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Several queries that see the same data: no write of this store comes
        between them (the daemon is the store's only writer, through this lock)."""
        with self._lock:
            yield

    def version(self) -> int | None:
        """A number that grows with every row written through this store (SQLite's
        total_changes; the daemon is its only writer): the same number, the same
        data, for caches over queries. None inside a transaction: a rollback does
        not take the count back."""
        with self._lock:
            return None if self._db.in_transaction else self._db.total_changes

    def changes_since(self, seq: int) -> tuple[int, int | None, list[str]]:
        """The change log (CHANGES) after `seq`: (its last seq, its first, the
        distinct ids logged). A first seq above `seq` + 1 means entries a reader
        at `seq` needed were trimmed."""
        with self._lock:
            # Apart: MIN and MAX in one SELECT scan the whole log; each alone reads one end of the key.
            first, last = self._db.execute("SELECT (SELECT MIN(seq) FROM container_changes), "
                                           "(SELECT MAX(seq) FROM container_changes)").fetchone()
            if last is None or last <= seq:
                return seq if last is None else last, first, []
            ids = [r[0] for r in self._db.execute("SELECT DISTINCT id FROM container_changes WHERE seq > ?", (seq,))]
            return last, first, ids

    def trim_changes(self, keep: int) -> None:
        """Drop all but the newest `keep` entries of the change log (never the
        newest one: seq keeps growing from it)."""
        with self.tx(synced=False) as db:
            db.execute("DELETE FROM container_changes WHERE seq <= (SELECT MAX(seq) FROM container_changes) - ?",
                       (max(keep, 1),))

    def one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        rows = self.query(sql, *args)
        return rows[0] if rows else None

    def execute(self, sql: str, *args: Any, synced: bool = True) -> None:
        with self.tx(synced) as db:
            db.execute(sql, args)

    # The journal of created objects ------------------------------------------------
    def record(self, kind: str, name: str, owner: str, db: sqlite3.Connection | None = None,
               synced: bool = True) -> None:
        """Call before creating `name`: a crash after creation still finds it.
        Pass `db` to record inside a transaction already open (see tx()).
        synced=False only for an object a power cut takes too (a mount, a netns)."""
        args = (kind, name, owner, time.time())
        if db is not None:
            db.execute("INSERT OR REPLACE INTO resources VALUES (?,?,?,?)", args)
        else:
            self.execute("INSERT OR REPLACE INTO resources VALUES (?,?,?,?)", *args, synced=synced)

    def forget(self, kind: str, name: str) -> None:
        """After the object is gone. Not synced: lost in a power cut, the row makes
        recovery undo the object again, and every undo finds a missing object fine
        (after a reboot none of the kernel's objects are there either)."""
        self.execute("DELETE FROM resources WHERE kind=? AND name=?", kind, name, synced=False)

    def resources(self, owner: str | None = None) -> list[sqlite3.Row]:
        if owner is None:
            return self.query("SELECT * FROM resources ORDER BY created")
        return self.query("SELECT * FROM resources WHERE owner=? ORDER BY created", owner)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
