"""The event log: filters, times, rotation, followers (no root needed)."""

from __future__ import annotations

import json

import pytest

from portlink.errors import InvalidArgument
from portlink.runtime import events
from portlink.runtime.events import Event, EventLog


def ev(type="container", action="start", name="web", id="abcdef123456", **attrs) -> Event:
    return Event(100.0, type, action, name, id, attrs)


def test_filters_parse_and_match():
    f = events.parse_filters(["type=container", "event=die", "event=stop"])
    assert f == {"type": {"container"}, "event": {"die", "stop"}}
    assert events.matches(ev(action="die"), f)
    assert events.matches(ev(action="stop"), f)
    assert not events.matches(ev(action="start"), f)
    assert not events.matches(ev(type="network", action="die"), f)


def test_container_filter_takes_names_ids_and_ambassadors():
    assert events.matches(ev(), events.parse_filters(["container=web"]))
    assert events.matches(ev(), events.parse_filters(["container=abcd"]))
    assert not events.matches(ev(), events.parse_filters(["container=abc"]))   # too short for an id prefix
    assert events.matches(ev(type="ambassador", name="amb-db-bridge"), events.parse_filters(["container=amb-db-bridge"]))
    assert not events.matches(ev(type="consul", name="web"), events.parse_filters(["container=web"]))


def test_network_and_service_filters():
    assert events.matches(ev(network="front"), events.parse_filters(["network=front"]))
    assert events.matches(ev(type="network", name="front"), events.parse_filters(["network=front"]))
    assert not events.matches(ev(network="back"), events.parse_filters(["network=front"]))
    assert events.matches(ev(type="consul", service="db"), events.parse_filters(["service=db"]))


@pytest.mark.parametrize("bad", ["type", "=x", "colour=red", "type="])
def test_bad_filters_are_refused_by_name(bad):
    with pytest.raises(InvalidArgument, match="filter"):
        events.parse_filters([bad])


def test_times():
    assert events.parse_time(None) is None
    assert events.parse_time("1700000000.5") == 1700000000.5
    assert events.parse_time("10m", now=1000.0) == 400.0
    assert events.parse_time("2h", now=10000.0) == 2800.0
    assert events.parse_time("0s", now=5.0) == 5.0
    with pytest.raises(InvalidArgument, match="invalid time 'yesterday'"):
        events.parse_time("yesterday")


def test_emit_read_since_until_and_filter(tmp_path, monkeypatch):
    log = EventLog(tmp_path / "events.jsonl")
    clock = iter([10.0, 20.0, 30.0])
    monkeypatch.setattr(events.time, "time", lambda: next(clock))
    log.emit("container", "create", "web", "a" * 64, network="bridge")
    log.emit("container", "start", "web", "a" * 64, pid=42, ip=None)
    log.emit("network", "create", "front", "b" * 64)
    got = list(log.read())
    assert [(e.time, e.type, e.action, e.name) for e in got] == \
        [(10.0, "container", "create", "web"), (20.0, "container", "start", "web"), (30.0, "network", "create", "front")]
    assert got[1].attrs == {"pid": 42}, "None attributes are left out"
    assert [e.action for e in log.read(since=15, until=25)] == ["start"]
    assert [e.name for e in log.read(filters=events.parse_filters(["type=network"]))] == ["front"]
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert [json.loads(l)["action"] for l in lines] == ["create", "start", "create"]


def test_rotation_bounds_the_disk_and_keeps_order(tmp_path):
    log = EventLog(tmp_path / "events.jsonl", max_bytes=2000, keep=2)
    for i in range(200):
        log.emit("container", "start", f"c{i}")
    files = log.files()
    assert [p.name for p in files] == ["events.jsonl.2", "events.jsonl.1", "events.jsonl"]
    assert all(p.stat().st_size <= 2000 for p in files)
    names = [e.name for e in log.read()]
    assert names == sorted(names, key=lambda n: int(n[1:])), "oldest first, across files"
    assert names[-1] == "c199"


def test_a_line_cut_by_a_crash_is_skipped(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    log.emit("container", "start", "web")
    with open(tmp_path / "events.jsonl", "a") as f:
        f.write('{"time": 1, "type": "contai')
    assert [e.name for e in log.read()] == ["web"]


def test_followers_get_what_came_after(tmp_path):
    log = EventLog(tmp_path / "events.jsonl", memory=3)
    seen = log.seq
    log.emit("container", "start", "a")
    seen, new = log.after(seen)
    assert [e.name for e in new] == ["a"]
    assert log.after(seen) == (seen, [])
    for n in "bcdef":
        log.emit("container", "start", n)
    seen, new = log.after(seen)
    assert [e.name for e in new] == ["d", "e", "f"], "a slow follower gets what memory holds"


def test_a_full_disk_does_not_fail_the_operation(tmp_path):
    log = EventLog(tmp_path / "missing-dir" / "events.jsonl")
    e = log.emit("container", "start", "web")
    assert e.name == "web" and log.seq == 1
