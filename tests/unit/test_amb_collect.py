"""Collecting the ambassadors of cross-host links no container links to any more
(runtime.ambassador_policy.collect) over a real Store: after a removal only the
removed container's targets are looked at, and no removal reads every container
(issue 18: at 2,000 containers each `rm` read and built them all)."""

from __future__ import annotations

import pytest

from portlink.runtime.ambassador_policy import AmbassadorPolicy
from portlink.runtime.records import RUNNING, Container, Records
from portlink.runtime.spec import ContainerSpec
from portlink.runtime.state import Store


class Removals:
    """The lifecycle's remove, recorded (the policy's collaborator)."""

    def __init__(self, records: Records) -> None:
        self.records, self.removed = records, []

    def remove(self, c: Container, force: bool) -> Container:
        self.removed.append(c.name)
        self.records.store.execute("DELETE FROM containers WHERE id=?", c.id)
        return c


@pytest.fixture
def world(tmp_path):
    store = Store(tmp_path / "state.db")
    records = Records(store)
    life = Removals(records)
    policy = AmbassadorPolicy(records, life, catalog=None, consul_url="http://127.0.0.1:8500", events=None,
                              changed=lambda: None)
    n = iter(range(1000))

    def add(name: str, links=(), for_links=False, hostname="") -> Container:
        i = next(n)
        spec = ContainerSpec(image="busybox", name=name, links=list(links), hostname=hostname)
        c = Container(id=f"{i:064x}", name=name, spec=spec,
                      exposed=(), status=RUNNING, created=float(i), for_links=for_links)
        records.insert(c, [])
        return c
    yield policy, records, life, add
    store.close()


def test_the_last_linkers_removal_collects_its_ambassador_alone(world, monkeypatch):
    policy, records, life, add = world
    add("amb-db-bridge", for_links=True)
    add("amb-db-bridge2", for_links=True)       # a name the first one's is a prefix of
    add("amb-cache-bridge", for_links=True)      # unlinked already: not this removal's business
    web = add("web", links=["amb-db-bridge:db"])
    add("api", links=["amb-db-bridge:sql", "amb-db-bridge2:db"])
    monkeypatch.setattr(Records, "all", lambda self: pytest.fail("a removal read every container"))
    life.records.store.execute("DELETE FROM containers WHERE id=?", web.id)
    assert policy.collect(after=web) == []                      # api still links to both
    api = records.named("api")
    life.records.store.execute("DELETE FROM containers WHERE id=?", api.id)
    assert policy.collect(after=api) == ["ambassador amb-db-bridge (no container links to it)",
                                         "ambassador amb-db-bridge2 (no container links to it)"]
    assert life.removed == ["amb-db-bridge", "amb-db-bridge2"]
    assert records.named("amb-cache-bridge") is not None


def test_a_link_named_only_in_some_other_field_does_not_keep_an_ambassador(world):
    policy, records, life, add = world
    add("amb-db-bridge", for_links=True)
    web = add("web", links=["amb-db-bridge:db"])
    add("other", hostname="amb-db-bridge")
    assert '"amb-db-bridge' in records.store.one("SELECT spec FROM containers WHERE name='other'")["spec"]
    records.store.execute("DELETE FROM containers WHERE id=?", web.id)
    assert policy.collect(after=web) == ["ambassador amb-db-bridge (no container links to it)"]


def test_an_ambassador_a_run_is_about_to_link_to_is_kept(world):
    policy, records, life, add = world
    add("amb-db-bridge", for_links=True)
    web = add("web", links=["amb-db-bridge:db"])
    records.store.execute("DELETE FROM containers WHERE id=?", web.id)
    with policy.linking(["amb-db-bridge"]):
        assert policy.collect(after=web) == []
    assert policy.collect() == ["ambassador amb-db-bridge (no container links to it)"]


def test_the_full_sweep_finds_every_unlinked_one(world):
    policy, records, life, add = world
    add("amb-a-bridge", for_links=True)
    add("amb-b-bridge", for_links=True)
    add("sidecar")                                    # not made for links: never collected
    add("web", links=["amb-a-bridge:a"])
    assert policy.collect() == ["ambassador amb-b-bridge (no container links to it)"]
    assert life.removed == ["amb-b-bridge"]
