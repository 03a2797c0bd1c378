"""Refresher.refresh_names over a real Store with 300 running containers: a
change looks at what it touched, not at every running container (issue 18:
each pass over every one made the 1,000th link slower than the 1st). Work is
counted, not timed: views made, Seen made, hosts files written and stat-ed,
and any listing of every linker fails the test."""

from __future__ import annotations

from ipaddress import IPv4Address
from types import SimpleNamespace

import pytest

from portlink.runtime import discovery, name_patch, refresh
from portlink.runtime.plan import Layout
from portlink.runtime.records import Container, Records
from portlink.runtime.refresh import Catalog, Refresher
from portlink.runtime.spec import ContainerSpec
from portlink.runtime.state import Store

TARGETS = 150   # t0..t149; l0..l149 each link to its t
real_rebuild = name_patch.Names.rebuild


class Images:
    def get(self, name: str):
        return SimpleNamespace(config=SimpleNamespace(env=["PATH=/bin"]))


class Dns:
    def __init__(self) -> None:
        self.snapshot = None

    def listen(self, addresses) -> list[str]:
        return []

    def update(self, snapshot) -> None:
        self.snapshot = snapshot


class World:
    def __init__(self, tmp_path) -> None:
        self.store = Store(tmp_path / "state.db")
        self.records = Records(self.store)
        self.layout = Layout(tmp_path)
        self.serial = 0
        self.ip: dict[str, str] = {}
        self.store.execute("INSERT INTO networks VALUES (?,?,?,?,?,?,?,?,NULL)",
                           "n", "n", "10.96.0.0/16", "10.96.0.1", "plb-x", 0, 1, 0.0)

    def start(self, name: str, links: list[str] = ()) -> str:
        self.serial += 1
        cid = f"{self.serial:064x}"
        spec = ContainerSpec(image="busybox", name=name, links=list(links), network="n",
                             hostname=name)
        self.records.insert(Container(id=cid, name=name, spec=spec, exposed=("80/tcp",), status="creating",
                                      created=float(self.serial)), [])
        self.ip[name] = str(IPv4Address("10.96.1.0") + self.serial)
        self.store.execute("INSERT INTO leases VALUES ('n', ?, ?)", self.ip[name], cid)
        self.records.set_running(self.records.get(cid), 1000 + self.serial)
        self.layout.cdir(cid).mkdir(parents=True)
        (self.layout.cdir(cid) / "hosts").write_text("before\n")
        return cid

    def hosts(self, cid: str) -> str:
        return (self.layout.cdir(cid) / "hosts").read_text()


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.store.close()


class Unlisted(dict):
    """The refresher's running containers by id, looked up one by one: listing them
    all (a pass over every running container) fails."""

    def _listed(self, *args):
        raise AssertionError("a change listed every running container")
    __iter__ = keys = values = items = _listed


def counting(monkeypatch, owner, name: str, counts: dict, static: bool = False) -> None:
    real = getattr(owner, name)

    def counted(*args, **kwargs):
        counts[name] = counts.get(name, 0) + 1
        return real(*args, **kwargs)
    monkeypatch.setattr(owner, name, staticmethod(counted) if static else counted)


def test_a_change_looks_only_at_what_it_touched(world, monkeypatch):
    ids = {}
    for i in range(TARGETS):
        ids[f"t{i}"] = world.start(f"t{i}")
        ids[f"l{i}"] = world.start(f"l{i}", [f"t{i}:db"])
    dns = Dns()
    r = Refresher(world.store, Images(), world.layout, dns, SimpleNamespace(sync_flows=lambda: None),
                  Catalog(False), [], 1)
    r.refresh_names()                                    # the first: every view, every linker's file
    assert f"{world.ip['t0']}\tdb " in world.hosts(ids["l0"])
    assert len(dns.snapshot.views) == 2 * TARGETS

    r._seen = Unlisted(r._seen)

    def every_linker(self):
        raise AssertionError("a change listed every linker")
    monkeypatch.setattr(refresh._LinkerIds, "__iter__", every_linker)
    monkeypatch.setattr(name_patch.Names, "rebuild", lambda *a: pytest.fail("a container change rebuilt"))
    counts: dict[str, int] = {}
    counting(monkeypatch, refresh, "seen_of", counts)
    counting(monkeypatch, name_patch, "view_of", counts)
    counting(monkeypatch, discovery, "hosts_file", counts)
    counting(monkeypatch, Refresher, "_hosts_stamp", counts, static=True)

    new = world.start("l-new", ["t7:db"])                # a linker comes
    r.refresh_names()
    assert counts == {"seen_of": 1, "view_of": 1, "hosts_file": 1, "_hosts_stamp": 1}
    assert "db" in dns.snapshot.views[world.ip["l-new"]].links
    assert f"{world.ip['t7']}\tdb " in world.hosts(new)

    counts.clear()
    world.records.set_exited(ids["t3"], 0)               # a target goes: its linker alone follows
    r.refresh_names()
    assert counts == {"view_of": 1, "hosts_file": 1, "_hosts_stamp": 1}
    assert f"{world.ip['t3']}\tdb " not in world.hosts(ids["l3"])
    assert f"{world.ip['t4']}\tdb " in world.hosts(ids["l4"])
    assert len(dns.snapshot.views) == 2 * TARGETS        # one came, one went

    counts.clear()
    with open(world.layout.cdir(ids["l9"]) / "hosts", "a") as f:   # a container scribbles on its file
        f.write("6.6.6.6\tt9\n")
    world.records.set_restart_state(ids["t100"], restart_count=1)  # a record rewritten, same names
    r.refresh_names()
    # t100's Seen made again (no view: the same names); l9's file stat-ed, put back and
    # stat-ed, and l3's, which inotify saw move when the last change wrote it.
    assert counts == {"seen_of": 1, "hosts_file": 1, "_hosts_stamp": 3}
    assert "6.6.6.6" not in world.hosts(ids["l9"])


def test_a_pass_that_fails_part_way_is_followed_by_a_full_one(world, monkeypatch):
    """What a failed pass took in (the store's changes, half-patched indexes) is not
    taken as done: the next pass rebuilds from every running container."""
    t, l1 = world.start("t"), world.start("l1", ["t:db"])
    r = Refresher(world.store, Images(), world.layout, Dns(), SimpleNamespace(sync_flows=lambda: None),
                  Catalog(False), [], 1)
    r.refresh_names()
    l2 = world.start("l2", ["t:db"])
    real = discovery.hosts_file

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the hosts text")
    monkeypatch.setattr(discovery, "hosts_file", broken)
    with pytest.raises(RuntimeError, match="a bug in the hosts text"):
        r.refresh_names()
    assert world.hosts(l2) == "before\n"
    monkeypatch.setattr(discovery, "hosts_file", real)
    rebuilt = []
    monkeypatch.setattr(name_patch.Names, "rebuild", lambda self, *a: rebuilt.append(1) or real_rebuild(self, *a))
    r.refresh_names()                                   # nothing changed since, but l2 is still owed its file
    assert rebuilt == [1]
    assert f"{world.ip['t']}\tdb " in world.hosts(l2) and f"{world.ip['t']}\tdb " in world.hosts(l1)
    assert t in r._seen and l2 in r._seen
