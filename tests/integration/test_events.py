"""`portlink events` against a real daemon: what happened, in order, filtered,
from a time, followed live, and kept across a daemon restart."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time

import pytest

from portlink.lab.sandbox import VENV_BIN

pytestmark = pytest.mark.root

HTTPD = "mkdir -p /srv && echo up > /srv/index.html && exec httpd -f -p 80 -h /srv"


def recorded(h, *args: str) -> list[dict]:
    r = h.cli("events", "--until", "0s", "--format", "json", *args)
    assert r.returncode == 0, r.stderr
    return [json.loads(l) for l in r.stdout.splitlines()]


def brief(evs: list[dict]) -> list[tuple]:
    return [(e["type"], e["action"], e["name"]) for e in evs]


def test_lifecycle_events_in_order(nft_host):
    h = nft_host
    h.cli("network", "create", "front", check=True)
    h.cli("run", "-d", "--name", "db", "--net", "front", "busybox", "sh", "-c", HTTPD, check=True)
    h.cli("run", "-d", "--name", "web", "--net", "front", "--link", "db:sql", "busybox", "sleep", "600", check=True)
    h.cli("stop", "-t", "1", "web", check=True)
    h.cli("rm", "web", check=True)
    h.cli("rm", "-f", "db", check=True)
    h.cli("network", "rm", "front", check=True)
    evs = [e for e in recorded(h) if e["name"] != "bridge"]
    assert brief(evs) == [
        ("network", "create", "front"),
        ("container", "create", "db"), ("container", "start", "db"),
        ("container", "create", "web"), ("container", "start", "web"), ("container", "link", "web"),
        ("container", "die", "web"), ("container", "stop", "web"), ("container", "destroy", "web"),
        ("container", "destroy", "db"),
        ("network", "destroy", "front"),
    ]
    link = evs[5]
    assert link["attrs"] == {"network": "front", "target": "db", "alias": "sql"}
    start = evs[2]
    assert start["attrs"]["ip"].startswith("10.") and start["attrs"]["pid"] > 0
    assert len(start["id"]) == 64
    times = [e["time"] for e in evs]
    assert times == sorted(times)


def test_die_carries_the_exit_code_and_filters_select(nft_host):
    h = nft_host
    h.cli("run", "--name", "fails", "busybox", "sh", "-c", "exit 3")
    h.cli("run", "-d", "--name", "other", "busybox", "sleep", "600", check=True)
    dies = recorded(h, "--filter", "event=die")
    assert brief(dies) == [("container", "die", "fails")]
    assert dies[0]["attrs"]["exit_code"] == 3
    assert brief(recorded(h, "--filter", "container=other")) == \
        [("container", "create", "other"), ("container", "start", "other")]
    r = h.cli("events", "--until", "0s", "--filter", "colour=red")
    assert r.returncode == 125 and "invalid filter key 'colour'" in r.stderr


def test_since_and_text_format(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "early", "busybox", "sleep", "600", check=True)
    time.sleep(0.2)
    mark = time.time()
    h.cli("run", "-d", "--name", "late", "busybox", "sleep", "600", check=True)
    assert {e["name"] for e in recorded(h, "--since", f"{mark:.3f}")} == {"late"}
    r = h.cli("events", "--until", "0s", "--filter", "name=late", "--filter", "event=start")
    line, = r.stdout.splitlines()
    assert " container start " in line and "(name=late, " in line and line.startswith("20")


def test_follow_streams_new_events(nft_host):
    h = nft_host
    p = subprocess.Popen([str(VENV_BIN / "portlink"), "events", "--format", "json", "--filter", "event=start"],
                         stdout=subprocess.PIPE, env={**os.environ, "PORTLINK_HOST": h.socket})
    try:
        time.sleep(0.5)   # the follower is connected before the event happens
        h.cli("run", "-d", "--name", "live", "busybox", "sleep", "600", check=True)
        ready, _, _ = select.select([p.stdout], [], [], 10)
        assert ready, "no event reached the follower within 10 s"
        e = json.loads(p.stdout.readline())
        assert (e["type"], e["action"], e["name"]) == ("container", "start", "live")
    finally:
        p.kill()   # our own child
        p.wait(5)


def test_events_survive_a_daemon_restart_and_drift_is_recorded(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "a", "busybox", "sleep", "600", check=True)
    veth = h.client.get("/containers/a")["network"]["veth"]
    h.stop_daemon()
    h.start_daemon()
    h.ns.run("ip", "link", "del", veth)
    assert h.cli("system", "check").returncode == 0
    evs = recorded(h, "--filter", "type=drift")
    assert brief(evs) == [("drift", "repaired", f"veth {veth} of container a")]
    assert evs[0]["attrs"]["problem"] == "is missing"
    assert ("container", "start", "a") in brief(recorded(h))


def test_json_logs_one_line_per_event_and_no_traceback_for_user_errors():
    from portlink.lab.sandbox import SimHost
    h = SimHost.start("jsonlog", extra_args=["--log-format", "json"])
    try:
        h.cli("run", "-d", "--name", "web", "busybox", "sleep", "600", check=True)
        bad = h.cli("run", "--name", "web", "busybox", "true")            # name in use
        assert bad.returncode == 125 and "already in use" in bad.stderr
        assert h.cli("run", "--name", "x/y", "busybox", "true").returncode == 125
        h.cli("rm", "-f", "web", check=True)
        lines = [l for l in h.daemon_log().splitlines() if l.strip()]
        records = [json.loads(l) for l in lines]          # every line is one JSON object
        assert not any("exc" in r or "Traceback" in r["msg"] for r in records)
        starts = [r for r in records if r.get("event") == "start" and r.get("object_name") == "web"]
        assert len(starts) == 1 and starts[0]["object"] == "container" and starts[0]["level"] == "info"
        assert [r["event"] for r in records if r.get("object_name") == "web" and "event" in r] == \
            ["create", "start", "destroy"]
    finally:
        errors = h.destroy()
    assert not errors
