"""Records over a real Store on a tmp path: id-prefix lookup takes hex only
(no LIKE patterns), and the row's document keeps the process start time while
older rows without it stay readable."""

from __future__ import annotations

import json

import pytest

from portlink.errors import InvalidArgument, NotFound
from portlink.runtime.records import RUNNING, Container, Records
from portlink.runtime.spec import ContainerSpec
from portlink.runtime.state import Store

DEAD = "dead" + "0" * 60
BEEF = "dea1" + "1" * 60     # 'dea' + any character: what `dea_` matched under LIKE


@pytest.fixture
def records(tmp_path):
    s = Store(tmp_path / "state.db")
    r = Records(s)
    for cid, name in ((DEAD, "one"), (BEEF, "two")):
        r.insert(Container(id=cid, name=name, spec=ContainerSpec(image="busybox", name=name),
                           exposed=(), status="creating", created=1.0), [])
    yield r
    s.close()


@pytest.mark.parametrize("ref", ["dea_", "dead_", "dea%", "%%%%", "____", "dea\\", "DEAD", "dead0 "])
def test_a_non_hex_prefix_names_no_container(records, ref):
    with pytest.raises(NotFound) as e:
        records.find(ref)
    assert str(e.value) == (f"container {ref!r} not found: no such name, and an id prefix is lowercase hex "
                            "(see `portlink ps -a`)")


def test_hex_prefixes_and_names(records):
    assert records.find("dead").id == DEAD
    assert records.find("dea1").id == BEEF
    assert records.find("one").id == DEAD and records.find(BEEF).id == BEEF
    with pytest.raises(NotFound, match="container 'dea' not found"):
        records.find("dea")   # too short for a prefix
    records.insert(Container(id="dead1" + "2" * 59, name="three", spec=ContainerSpec(image="busybox",
                   name="three"), exposed=(), status="creating", created=2.0), [])
    with pytest.raises(InvalidArgument, match="container id prefix 'dead' is ambiguous"):
        records.find("dead")


def test_pid_start_is_stored_and_old_rows_read(records):
    c = records.get(DEAD)
    assert c.pid_start is None
    records.set_running(c.with_(pid_start=123456), 42)
    got = records.get(DEAD)
    assert (got.status, got.pid, got.pid_start) == (RUNNING, 42, 123456)
    assert json.loads(records.store.one("SELECT spec FROM containers WHERE id=?", DEAD)["spec"])["pid_start"] == 123456
    # a row written before start times were recorded has no key: None, the pid alone is trusted
    assert "pid_start" not in json.loads(records.store.one("SELECT spec FROM containers WHERE id=?", BEEF)["spec"])
    assert records.get(BEEF).pid_start is None


def test_health_is_kept_for_the_running_pid_only_and_a_new_run_clears_it(records):
    saved = {"pid": 42, "Status": "healthy", "FailingStreak": 0, "Log": []}
    assert not records.set_health(DEAD, 42, saved)          # not running: nothing to keep
    records.set_running(records.get(DEAD), 42)
    assert not records.set_health(DEAD, 41, saved)          # a late result of another run
    assert records.get(DEAD).health is None
    assert records.set_health(DEAD, 42, saved)
    assert records.get(DEAD).health == saved
    records.set_restart_state(DEAD, restart_count=1)         # other writers keep it
    assert records.get(DEAD).health == saved
    records.set_running(records.get(DEAD), 43)               # a new run starts over
    assert records.get(DEAD).health is None
    assert "health" not in json.loads(records.store.one("SELECT spec FROM containers WHERE id=?", DEAD)["spec"])


def test_a_document_is_parsed_once_and_a_changed_one_is_read_anew(records):
    # Every change reads all running containers: a record whose document did not
    # change must not be parsed again, and one that changed must never be served stale.
    from portlink.runtime import records as recmod
    records.set_running(records.get(DEAD), 4242)
    recmod._document_fields.cache_clear()
    for _ in range(3):
        assert records.get(DEAD).name == "one"   # a row read again: its document is not parsed again
    info = recmod._document_fields.cache_info()
    assert (info.misses, info.hits) == (1, 2)
    records.set_restart_state(DEAD, restart_count=3, user_stopped=True)
    c = records.get(DEAD)
    assert (c.restart_count, c.user_stopped, c.pid) == (3, True, 4242)
    assert recmod._document_fields.cache_info().misses == 2
    # Two containers with the same document text still keep their own row columns.
    a, b = records.get(DEAD), records.get(BEEF)
    assert (a.id, a.status, b.id, b.status) == (DEAD, RUNNING, BEEF, "creating")


def test_the_parsed_documents_are_bounded():
    from portlink.runtime import records as recmod
    assert recmod._document_fields.cache_info().maxsize == recmod.DOCUMENTS_KEPT >= 2 * 1000


def test_running_with_ip_is_kept_until_the_store_writes(records):
    # One change reads the running containers several times with nothing written
    # between: the answer is kept, and any write (a lease, an exit, a journal row)
    # makes the next read a fresh one; a read inside a transaction is never kept.
    from portlink.runtime import records as recmod
    store = records.store
    store.execute("INSERT INTO leases VALUES ('n', '10.0.0.2', ?)", DEAD)
    records.set_running(records.get(DEAD), 4242)
    first = records.running_with_ip()
    assert [(c.name, c.ip) for c in first] == [("one", "10.0.0.2")]
    first.clear()   # a caller's list is its own
    again = Records(store).running_with_ip()   # another Records over the same store shares it
    assert [(c.name, c.ip) for c in again] == [("one", "10.0.0.2")]
    assert recmod._KEPT[store][recmod._RUNNING_WITH_IP.full].version == store.version()
    store.execute("UPDATE leases SET ip='10.0.0.3' WHERE container_id=?", DEAD)
    assert [c.ip for c in records.running_with_ip()] == ["10.0.0.3"]
    store.record("port", "x", DEAD)   # any row written counts, even one no query here reads
    store.execute("INSERT INTO leases VALUES ('n', '10.0.0.4', ?)", BEEF)
    records.set_running(records.get(BEEF), 4343)
    assert [c.name for c in records.running_with_ip()] == ["one", "two"]
    with pytest.raises(RuntimeError):
        with store.tx() as db:
            assert store.version() is None
            db.execute("UPDATE containers SET status='exited' WHERE id=?", (DEAD,))
            assert [c.name for c in records.running_with_ip()] == ["two"]   # seen in it, not kept
            raise RuntimeError("rolled back")
    assert [c.name for c in records.running_with_ip()] == ["one", "two"]


def test_a_row_unchanged_since_the_last_read_is_not_built_again(records):
    store = records.store
    for cid, ip in ((DEAD, "10.0.0.2"), (BEEF, "10.0.0.3")):
        store.execute("INSERT INTO leases VALUES ('n', ?, ?)", ip, cid)
        records.set_running(records.get(cid), 4242)
    one, two = records.running_with_ip()
    store.record("port", "y", DEAD)   # a write: the next read asks the store again
    assert [c is k for c, k in zip(records.running_with_ip(), (one, two))] == [True, True]
    records.set_restart_state(BEEF, restart_count=1)   # only two's document changed
    one2, two2 = records.running_with_ip()
    assert one2 is one and two2 is not two and two2.restart_count == 1 and two.restart_count == 0


def test_a_change_reads_the_rows_it_touched_only(records):
    """The ids the change log names since the last read, and the full rows of
    those only: any write of a row or of its lease is logged (triggers), whoever
    wrote it."""
    store = records.store
    for cid, ip in ((DEAD, "10.0.0.2"), (BEEF, "10.0.0.3")):
        store.execute("INSERT INTO leases VALUES ('n', ?, ?)", ip, cid)
        records.set_running(records.get(cid), 4242)
    records.running_with_ip()
    store.execute("UPDATE containers SET exit_code=7 WHERE id=?", BEEF, synced=False)   # written by hand
    asked: list[str] = []
    store._db.set_trace_callback(asked.append)
    try:
        one, two = records.running_with_ip()
    finally:
        store._db.set_trace_callback(None)
    assert (one.id, two.id, two.exit_code) == (DEAD, BEEF, 7)
    documents = [q for q in asked if q.startswith("SELECT c.*")]
    assert len(documents) == 1 and BEEF in documents[0] and DEAD not in documents[0], asked
    assert not any("ORDER BY" in q for q in asked), asked   # no read of every running row
    store.execute("UPDATE leases SET ip='10.0.0.9' WHERE container_id=?", DEAD)   # a lease's write names its container
    assert [c.ip for c in records.running_with_ip()] == ["10.0.0.9", "10.0.0.3"]
    store.execute("DELETE FROM leases WHERE container_id=?", BEEF)
    assert [c.name for c in records.running_with_ip()] == ["one"]
    store.execute("DELETE FROM containers WHERE id=?", DEAD)
    assert records.running_with_ip() == []


def test_rows_keep_their_order_when_patched(records):
    """Patched or read whole, the answer is in the order of (created, rowid): a
    restarted older container goes back to its place, not to the end."""
    store = records.store
    for cid, ip in ((DEAD, "10.0.0.2"), (BEEF, "10.0.0.3")):
        store.execute("INSERT INTO leases VALUES ('n', ?, ?)", ip, cid)
        records.set_running(records.get(cid), 4242)
    records.set_exited(DEAD, 0)
    assert [c.name for c in records.running()] == ["two"]
    records.insert(Container(id="ab" * 32, name="three", spec=ContainerSpec(image="busybox", name="three"),
                             exposed=(), status="creating", created=0.5), [])
    records.set_running(records.get(DEAD), 4343)
    records.set_running(records.get("ab" * 32), 4444)
    assert [c.name for c in records.running()] == ["three", "one", "two"]
    full = [dict(r) for r in store.query("SELECT name FROM containers WHERE status=? ORDER BY created, rowid", RUNNING)]
    assert [r["name"] for r in full] == ["three", "one", "two"]


def test_a_reader_behind_a_trimmed_log_reads_every_row(records, monkeypatch):
    from portlink.runtime import records as recmod
    store = records.store
    monkeypatch.setattr(recmod, "_CHANGES_KEPT", 2)
    records.set_running(records.get(DEAD), 4242)
    assert [c.name for c in records.running()] == ["one"]
    one = records.running()[0]
    for i in range(6):   # more than 2 * 2 entries: the next read trims the log to 2
        store.record("port", f"p{i}", DEAD)
        records.set_restart_state(BEEF, restart_count=i)
    records.running()
    assert store.one("SELECT COUNT(*) AS n FROM container_changes")["n"] == 2
    records.set_running(records.get(BEEF), 4343)
    # A second view (another query) whose place in the log was trimmed away.
    store.execute("INSERT INTO leases VALUES ('n', '10.0.0.2', ?)", DEAD)
    delta = records.running_with_ip_since(-1)
    assert [c.name for c in delta.rows] == ["one"] and delta.changed is None
    mark = delta.mark
    records.set_exited(DEAD, 0)
    later = records.running_with_ip_since(mark)
    assert later.rows == [] and later.changed == frozenset({DEAD})
    names = [c.name for c in records.running()]
    assert names == ["two"] and one.name == "one"


def test_a_delta_names_what_changed_since_the_callers_mark(records):
    store = records.store
    for cid, ip in ((DEAD, "10.0.0.2"), (BEEF, "10.0.0.3")):
        store.execute("INSERT INTO leases VALUES ('n', ?, ?)", ip, cid)
    records.set_running(records.get(DEAD), 4242)
    first = records.running_with_ip_since(-1)
    assert first.changed is None and [c.name for c in first.rows] == ["one"]
    assert records.running_with_ip_since(first.mark).changed == frozenset()
    records.set_running(records.get(BEEF), 4343)
    store.record("port", "x", DEAD)   # a write that names no container
    second = records.running_with_ip_since(first.mark)
    assert second.changed == frozenset({BEEF}) and [c.name for c in second.rows] == ["one", "two"]
    assert [c.name for c in second.fresh] == ["two"] and second.fresh[0] is second.rows[1]
    records.set_restart_state(DEAD, restart_count=2)
    third = records.running_with_ip_since(second.mark)
    assert third.changed == frozenset({DEAD}) and [c.name for c in third.fresh] == ["one"]
    both = records.running_with_ip_since(first.mark)   # two steps at once: fresh in the rows' order
    assert both.changed == frozenset({DEAD, BEEF}) and [c.name for c in both.fresh] == ["one", "two"]
    records.set_exited(BEEF, 0)
    gone = records.running_with_ip_since(third.mark)
    assert gone.changed == frozenset({BEEF}) and gone.fresh == []   # changed, not there: it went
    assert records.running_with_ip_since(-1).fresh == records.running_with_ip_since(-1).rows   # all new
    assert records.running_with_ip_since(third.mark + 5).changed is None   # not a mark this view gave
    with pytest.raises(RuntimeError):
        with store.tx():
            assert records.running_with_ip_since(third.mark).changed is None   # in a transaction: all of it
            raise RuntimeError("rolled back")


def test_a_store_from_before_the_change_log_gets_it(tmp_path):
    import sqlite3
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE containers(id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, spec TEXT NOT NULL,
          status TEXT NOT NULL, pid INTEGER, exit_code INTEGER, created REAL NOT NULL, started REAL,
          finished REAL, rev INTEGER NOT NULL DEFAULT 0);
        CREATE TRIGGER containers_rev AFTER UPDATE ON containers FOR EACH ROW WHEN NEW.rev = OLD.rev
        BEGIN UPDATE containers SET rev = OLD.rev + 1 WHERE id = NEW.id; END;
        CREATE INDEX containers_keys ON containers(status, created, id, rev);
        INSERT INTO containers(id, name, spec, status, created) VALUES ('a', 'x', '{}', 'created', 1);""")
    db.commit()
    db.close()
    store = Store(path)
    store.execute("UPDATE containers SET status='running' WHERE id='a'")
    assert store.one("SELECT rev FROM containers WHERE id='a'")["rev"] == 0   # no longer bumped
    assert store.changes_since(0)[2] == ["a"]
    store.close()
    again = Store(path)   # opened again: nothing made twice
    names = {r["name"] for r in again.query("SELECT name FROM sqlite_master WHERE type IN ('index', 'trigger')")}
    assert {"containers_by_status", "leases_by_container", "containers_logged_update"} <= names
    assert not {"containers_rev", "containers_keys"} & names


def test_running_is_kept_until_the_store_writes(records):
    # The health monitor asks five times a second: with nothing written between,
    # the same Containers come back without a query's rows being built again.
    records.set_running(records.get(DEAD), 4242)
    first = records.running()
    assert [c.name for c in first] == ["one"]
    assert [c is k for c, k in zip(records.running(), first)] == [True]
    records.set_running(records.get(BEEF), 4343)
    again = records.running()
    assert [c.name for c in again] == ["one", "two"]
    assert again[0] is first[0]   # its row did not change
    records.set_exited(DEAD, 0)
    assert [c.name for c in records.running()] == ["two"]


def test_running_ambassadors_are_kept_until_the_store_writes(records):
    from portlink.runtime import records as recmod
    store = records.store
    for cid, ip in ((DEAD, "10.0.0.2"), (BEEF, "10.0.0.3")):
        store.execute("INSERT INTO leases VALUES ('n', ?, ?)", ip, cid)
        records.set_running(records.get(cid), 4242)
    assert records.running_ambassadors() == []
    view = recmod._KEPT[store][recmod._RUNNING_WITH_IP.full]
    assert (view.version, view.ambassadors) == (store.version(), {})
    amb = records.get(BEEF)
    amb.spec.ambassador = {"service": "db"}
    store.execute("UPDATE containers SET spec=? WHERE id=?", amb.document(), BEEF)   # a write: asked again
    got = records.running_ambassadors()
    assert [c.name for c in got] == ["two"]
    got.clear()   # a caller's list is its own
    assert [c.name for c in Records(store).running_ambassadors()] == ["two"]
