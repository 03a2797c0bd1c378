"""The store's unsynced commits (runtime/state.py): committed at once, kept
when the daemon is killed right after (as the crash tests kill it), and the
connection is back to synchronous=FULL afterwards, also after a failed one."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from portlink.runtime.state import Store

FULL = 2


def _synchronous(s: Store) -> int:
    return s.query("PRAGMA synchronous")[0][0]


def test_an_unsynced_commit_is_committed_and_leaves_the_connection_full(tmp_path):
    s = Store(tmp_path / "state.db")
    try:
        s.record("netns", "/x/netns", "c1", synced=False)
        s.forget("netns", "/nothing")
        with s.tx(synced=False) as db:
            db.execute("INSERT INTO leases VALUES ('n', '10.0.0.2', 'c1')")
        assert _synchronous(s) == FULL
        other = sqlite3.connect(tmp_path / "state.db")
        assert other.execute("SELECT kind, name FROM resources").fetchall() == [("netns", "/x/netns")]
        assert other.execute("SELECT ip FROM leases").fetchall() == [("10.0.0.2",)]
        other.close()
    finally:
        s.close()


def test_a_failed_unsynced_transaction_rolls_back_and_leaves_the_connection_full(tmp_path):
    s = Store(tmp_path / "state.db")
    try:
        with pytest.raises(RuntimeError):
            with s.tx(synced=False) as db:
                db.execute("INSERT INTO leases VALUES ('n', '10.0.0.3', 'c1')")
                raise RuntimeError("boom")
        assert s.query("SELECT * FROM leases") == []
        assert _synchronous(s) == FULL
    finally:
        s.close()


def test_an_unsynced_commit_survives_the_process_killed_right_after(tmp_path):
    db = tmp_path / "state.db"
    code = ("import os, signal, sys\n"
            "from portlink.runtime.state import Store\n"
            "s = Store(__import__('pathlib').Path(sys.argv[1]))\n"
            "s.record('mount', '/x/rootfs', 'c1', synced=False)\n"
            "s.execute('UPDATE containers SET status=? WHERE id=?', 'removing', 'none', synced=False)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    p = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, timeout=60)
    assert p.returncode == -9, p.stderr
    s = Store(db)
    try:
        assert [(r["kind"], r["name"]) for r in s.resources("c1")] == [("mount", "/x/rootfs")]
    finally:
        s.close()
