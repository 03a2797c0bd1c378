"""The journal (runtime.journal) over a fake kernel: record before make, undo
newest first, every error collected, a step failing half-way, an interrupted
undo finished by a second one."""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from portlink.errors import RuntimeFailure
from portlink.netns.model import Endpoint, NetworkSpec, PortMapping
from portlink.runtime import faults
from portlink.runtime.firewall import mapping_key, pin_key
from portlink.runtime.journal import STEPS, Journal
from portlink.runtime.state import Store

OWNER = "c1"
NET = NetworkSpec(id="n1", name="front", subnet=ip_network("10.90.0.0/29"), gateway=ip_address("10.90.0.1"),
                  bridge="plb-n1")


class FakeKernel:
    """Records calls; `fail` maps a method name to the error it raises."""

    def __init__(self, journal_store: Store | None = None) -> None:
        self.calls: list[tuple] = []
        self.fail: dict[str, Exception] = {}
        self.store = journal_store   # to see what was recorded at the moment of each call

    def _call(self, name: str, *args) -> None:
        recorded = sorted((r["kind"], r["name"]) for r in self.store.resources()) if self.store else None
        self.calls.append((name, *args, recorded))
        if name in self.fail:
            raise self.fail[name]

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: self._call(name, *args)

    def add_ports(self, mappings, record):
        for m in mappings:
            record(mapping_key(m))
        self._call("add_ports", *mappings)

    def remove_port(self, key, forget):
        self._call("remove_port", key)
        forget()

    def add_pin(self, pin, record):
        record(pin_key(pin))
        self._call("add_pin", pin)

    def remove_pin(self, key, forget):
        self._call("remove_pin", key)
        forget()

    def run_container(self, cid, start):
        self._call("run_container", cid)
        return start()


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "state.db")
    s.execute("INSERT INTO networks VALUES (?,?,?,?,?,?,?,?,NULL)", NET.id, NET.name, str(NET.subnet),
              str(NET.gateway), NET.bridge, 0, 1, 0.0)
    yield s
    s.close()


def names(calls):
    return [c[0] for c in calls]


def start_all(j: Journal, cdir: Path) -> None:
    """Every kind of step, in the order a start takes them."""
    j.make_dir(OWNER, cdir)
    j.mount(OWNER, "/images/busybox/rootfs", cdir)
    j.netns(OWNER, "/ns/plc-c1")
    ip = j.lease(OWNER, NET)
    ep = Endpoint(OWNER, "/ns/plc-c1", NET, ip, "plv-c1")
    j.pin(OWNER, ep)
    j.veth(OWNER, ep)
    j.ports(OWNER, [PortMapping("tcp", 8080, ip, 80)])
    assert j.process(OWNER, lambda: 4242) == 4242


def test_every_step_is_recorded_before_it_is_made(store, tmp_path):
    k = FakeKernel(store)
    j = Journal(store, k)
    start_all(j, tmp_path / "c1")
    made = {c[0]: c for c in k.calls}
    # The row of each object exists when the kernel is asked to make it.
    assert ("dir", str(tmp_path / "c1")) in made["make_dir"][-1]
    assert ("mount", str(tmp_path / "c1" / "rootfs")) in made["mount_overlay"][-1]
    assert ("netns", "/ns/plc-c1") in made["create_netns"][-1]
    assert ("veth", "plv-c1") in made["attach"][-1]
    # The port is pinned to the MAC its veth will get before the veth exists.
    pin = ("pin", '["plv-c1", "02:42:0a:5a:00:02", "10.90.0.2"]')
    assert pin in made["add_pin"][-1] and pin in made["attach"][-1]
    assert made["attach"][1].mac == "02:42:0a:5a:00:02"
    assert ("runc", OWNER) in made["run_container"][-1]
    assert [k for k, _ in j.owned(OWNER)] == ["dir", "mount", "netns", "lease", "pin", "veth", "port", "runc"]
    assert store.one("SELECT ip FROM leases WHERE container_id=?", OWNER)["ip"] == "10.90.0.2"


def test_undo_is_newest_first_and_keeps_the_dir_unless_asked(store, tmp_path):
    k = FakeKernel()
    j = Journal(store, k)
    start_all(j, tmp_path / "c1")
    k.calls.clear()
    assert j.undo(OWNER) == []
    # The veth goes with its namespace (no delete_link), after the pin, which does
    # not (it is in the host's table); the lease is a row, not a kernel call.
    assert names(k.calls) == ["delete_container", "remove_port", "remove_pin", "delete_netns", "unmount"]
    assert j.owned(OWNER) == [("dir", str(tmp_path / "c1"))]
    assert store.one("SELECT 1 FROM leases WHERE container_id=?", OWNER) is None
    k.calls.clear()
    assert j.undo(OWNER, keep=()) == []
    assert names(k.calls) == ["remove_dir"] and j.owned(OWNER) == []


def test_a_veth_is_deleted_when_its_namespace_stays(store, tmp_path):
    k = FakeKernel()
    j = Journal(store, k)
    start_all(j, tmp_path / "c1")
    k.calls.clear()
    j.undo(OWNER, keep=("dir", "netns"))
    assert "delete_link" in names(k.calls) and "delete_netns" not in names(k.calls)


def test_every_error_is_collected_and_the_failed_rows_stay(store, tmp_path):
    k = FakeKernel()
    j = Journal(store, k)
    start_all(j, tmp_path / "c1")
    k.fail = {"delete_container": RuntimeFailure("runc: container busy"), "unmount": OSError(16, "busy")}
    errors = j.undo(OWNER, keep=())
    assert errors == [f"runc {OWNER}: runc: container busy", f"mount {tmp_path / 'c1' / 'rootfs'}: [Errno 16] busy"]
    # Everything else was still undone; what failed stays journalled for the next try.
    assert sorted(kind for kind, _ in j.owned(OWNER)) == ["mount", "runc"]
    k.fail = {}
    assert j.undo(OWNER, keep=()) == [] and j.owned(OWNER) == []


def test_a_step_failing_half_way_is_rolled_back_with_the_rest(store, tmp_path):
    k = FakeKernel()
    k.fail = {"attach": RuntimeFailure("RTNETLINK answers: File exists")}
    j = Journal(store, k)
    with pytest.raises(RuntimeFailure):
        start_all(j, tmp_path / "c1")
    # The failed step was recorded before it was tried: rollback covers it too.
    assert [kind for kind, _ in j.owned(OWNER)] == ["dir", "mount", "netns", "lease", "pin", "veth"]
    k.calls.clear()
    assert j.undo(OWNER, keep=()) == []
    assert names(k.calls) == ["remove_pin", "delete_netns", "unmount", "remove_dir"]
    assert j.owned(OWNER) == [] and store.query("SELECT * FROM leases") == []


def test_an_interrupted_undo_is_finished_by_the_next(store, tmp_path, monkeypatch):
    k = FakeKernel()
    j = Journal(store, k)
    start_all(j, tmp_path / "c1")

    class Killed(BaseException):
        pass

    def die(name):
        if name == "rm.undo":
            raise Killed()
    monkeypatch.setattr(faults, "point", die)   # the crash tests SIGKILL here; a unit test raises
    with pytest.raises(Killed):
        j.undo(OWNER, keep=(), fault="rm.undo")
    left = [kind for kind, _ in j.owned(OWNER)]
    assert left == ["dir", "mount", "netns", "lease"]   # newest half undone, oldest half still recorded
    monkeypatch.setattr(faults, "point", lambda name: None)
    assert j.undo(OWNER, keep=()) == [] and j.owned(OWNER) == []


def test_an_unknown_kind_is_an_error_not_a_crash(store):
    store.record("tunnel", "x", OWNER)
    assert Journal(store, FakeKernel()).undo(OWNER) == ["tunnel x: unknown resource kind 'tunnel'"]


def test_every_kind_a_start_makes_has_an_undo():
    assert set(STEPS) == {"dir", "mount", "netns", "lease", "pin", "veth", "port", "runc", "consul_token",
                          "intention", "linker", "hosted"}


def test_a_hosted_ambassador_is_recorded_before_its_attach_and_dropped_first(store, tmp_path):
    k = FakeKernel(store)
    j = Journal(store, k)
    start_all(j, tmp_path / "c1")
    seen = []
    j.hosted(OWNER, lambda: seen.append(sorted((r["kind"], r["name"]) for r in store.resources())))
    assert ("hosted", OWNER) in seen[0]
    k.calls.clear()
    assert j.undo(OWNER) == []
    # The host forwarder lets go of its listeners before the process and namespace go.
    assert names(k.calls)[0] == "unhost" and k.calls[0][1] == OWNER
