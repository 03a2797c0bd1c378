"""A recorded pid is the container's only while its start time matches: after
a reboot the same pid may be another process, and reconcile must see the
container as dead rather than adopt a stranger."""

from __future__ import annotations

import json
import signal
import sqlite3

import pytest

from helpers import wait_for
from portlink.runtime.procstart import process_start

pytestmark = pytest.mark.root


def _doc(h, name: str) -> dict:
    with sqlite3.connect(h.state_dir / "state.db") as db:
        return json.loads(db.execute("SELECT spec FROM containers WHERE name=?", (name,)).fetchone()[0])


def test_a_pid_with_another_start_time_is_a_dead_container(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "kept", "busybox", "sleep", "600", check=True)
    h.cli("run", "-d", "--name", "reused", "busybox", "sleep", "600", check=True)
    pid = h.client.get("/containers/reused")["pid"]
    assert _doc(h, "reused")["pid_start"] == process_start(pid)
    h.stop_daemon(signal.SIGKILL)
    # As after a reboot: the recorded pid is alive, but it started at another time.
    doc = _doc(h, "reused")
    doc["pid_start"] += 1
    with sqlite3.connect(h.state_dir / "state.db") as db:
        db.execute("UPDATE containers SET spec=? WHERE name=?", (json.dumps(doc), "reused"))
    h.start_daemon()
    info = wait_for(lambda: (lambda i: i if i["status"] == "exited" else None)(h.client.get("/containers/reused")))
    assert info and info["status"] == "exited" and info["network"]["ip"] is None
    assert h.client.get("/containers/kept")["status"] == "running"   # its start time matches
    assert h.cli("rm", "-f", "reused").returncode == 0
