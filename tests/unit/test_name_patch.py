"""runtime.name_patch: a snapshot patched for the containers a change touched is
the snapshot discovery.build_snapshot makes from the same running list, and
every linker whose /etc/hosts differs is among those it names, over random
sequences of changes (start, stop, a new address, new links or aliases, a
record rewritten with the same values)."""

from __future__ import annotations

import random
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

import pytest

from portlink.netns.model import NetworkSpec
from portlink.runtime import discovery
from portlink.runtime.discovery import Seen
from portlink.runtime.links import LinkRequest
from portlink.runtime.name_patch import Names, Running

NETS = [NetworkSpec("n1", "links", IPv4Network("10.96.0.0/20"), IPv4Address("10.96.0.1"), "plb-1"),
        NetworkSpec("n2", "back", IPv4Network("10.97.0.0/24"), IPv4Address("10.97.0.1"), "plb-2", internal=True)]
UPSTREAMS = ["192.0.2.53"]
NAMES = [f"c{i}" for i in range(14)]


class World:
    """Running containers in start order (as Records.running_with_ip gives them)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.running, self.serial = rng, [], 0

    def seen(self, name: str, cid: str | None = None) -> Seen:
        rng = self.rng
        net = rng.choice(NETS + [NETS[0]])
        used = {c.ip for c in self.running}
        ip = next(str(h) for h in rng.sample(list(net.subnet.hosts())[:60], 60) if str(h) not in used)
        links = tuple(LinkRequest(rng.choice(NAMES), rng.choice(["db", "cache", "DB"]))
                      for _ in range(rng.choice([0, 0, 1, 2])))
        self.serial += 1
        return Seen(id=cid or f"{self.serial:012x}" * 2, name=name,
                    hostname=rng.choice([name, f"h-{name}"]), network=net.name, ip=rng.choice([ip, ip, ip, None]),
                    aliases=tuple(rng.sample(["web", "api", "Shared"], rng.choice([0, 1, 2]))),
                    exposed=tuple(rng.sample(["80/tcp", "53/udp", "6379/tcp"], rng.choice([0, 1, 2]))),
                    links=links, dns=rng.choice([(), ("198.51.100.1",)]))

    def step(self) -> None:
        rng, names = self.rng, {c.name for c in self.running}
        op = rng.choice(["start", "start", "stop", "move", "relink", "same", "many"])
        if op == "start" or not self.running:
            free = [n for n in NAMES if n not in names]
            if free:
                self.running.append(self.seen(rng.choice(free)))
        elif op == "stop":
            self.running.remove(rng.choice(self.running))
        elif op == "move":           # restarted: a new address, the same id and place
            i = rng.randrange(len(self.running))
            self.running[i] = replace(self.running[i], ip=self.seen(self.running[i].name).ip)
        elif op == "relink":          # recreated under the same id with other links and aliases
            i = rng.randrange(len(self.running))
            self.running[i] = self.seen(self.running[i].name, self.running[i].id)
        elif op == "same":            # a record written again with the same values: a new object
            i = rng.randrange(len(self.running))
            self.running[i] = replace(self.running[i])
        else:
            for _ in range(3):
                self.step()


def hosts_texts(running: list[Seen]) -> dict[str, str]:
    by_name = {c.name: c for c in running}
    gw = {n.name: str(n.gateway) for n in NETS}
    return {c.id: discovery.hosts_file(c, by_name, gw[c.network]) for c in running if c.links}


def told(last: dict[str, Seen], running: list[Seen]) -> Running:
    """`running` as the Refresher gives it: by id, with the ids whose Seen came, went
    or was made again since `last` (the objects of the last refresh)."""
    now = {c.id: c for c in running}
    changed = frozenset(cid for cid in now.keys() | last.keys() if last.get(cid) is not now.get(cid))
    return Running(now, lambda: running, changed)


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("delta", [False, True], ids=["by-identity", "changed-ids"])
def test_a_patch_is_the_rebuild_for_random_changes(seed, delta):
    rng = random.Random(seed)
    world, names = World(rng), Names()
    first = names.refresh(NETS, Running.of([]), UPSTREAMS, 1, lambda: None)
    assert first.rebuilt and first.hosts == set()
    before, last = {}, {}
    for _ in range(60):
        world.step()
        running = list(world.running)
        given = told(last, running) if delta else Running.of(running)
        last = {c.id: c for c in running}
        done = names.refresh(NETS, given, UPSTREAMS, 1, lambda: pytest.fail("a patch asks for no services"))
        assert not done.rebuilt
        assert done.snapshot == discovery.build_snapshot(NETS, running, UPSTREAMS, 1)
        after = hosts_texts(running)
        stale = {cid for cid, text in after.items() if before.get(cid) != text}
        assert stale <= done.hosts, "a linker's hosts file changed but was not named"
        before = after


def test_a_network_or_upstream_change_rebuilds():
    rng = random.Random(1)
    world, names = World(rng), Names()
    for _ in range(10):
        world.step()
    names.refresh(NETS, Running.of(world.running), UPSTREAMS, 1, lambda: None)
    assert not names.refresh(NETS, Running.of(world.running), UPSTREAMS, 1, lambda: None).rebuilt
    done = names.refresh(NETS[:1], Running.of(world.running), UPSTREAMS, 1, lambda: {})
    assert done.rebuilt and done.snapshot == discovery.build_snapshot(NETS[:1], world.running, UPSTREAMS, 1, {})
    assert done.hosts == {c.id for c in world.running if c.links}
    assert names.refresh(NETS[:1], Running.of(world.running), ["192.0.2.54"], 1, lambda: None).rebuilt


def test_an_untouched_change_keeps_the_snapshot_and_names_no_hosts_file():
    rng = random.Random(2)
    world, names = World(rng), Names()
    for _ in range(10):
        world.step()
    snap = names.refresh(NETS, Running.of(world.running), UPSTREAMS, 1, lambda: None).snapshot
    again = names.refresh(NETS, Running.of([replace(c) for c in world.running]), UPSTREAMS, 1, lambda: None)
    assert again.snapshot is snap and again.hosts == set()


def test_only_the_linkers_of_a_changed_container_are_named():
    a = Seen(id="a" * 64, name="db", hostname="db", network="links", ip="10.96.0.2", exposed=("80/tcp",))
    x = Seen(id="b" * 64, name="x", hostname="x", network="links", ip="10.96.0.3", links=(LinkRequest("db", "db"),))
    y = Seen(id="c" * 64, name="y", hostname="y", network="links", ip="10.96.0.4", links=(LinkRequest("z", "z"),))
    names = Names()
    names.refresh(NETS, Running.of([a, x, y]), UPSTREAMS, 1, lambda: None)
    moved = replace(a, ip="10.96.0.9")
    done = names.refresh(NETS, Running.of([moved, x, y]), UPSTREAMS, 1, lambda: None)
    assert done.hosts == {x.id}
    assert done.snapshot.views["10.96.0.3"].links["db"][0].address == "10.96.0.9"
    assert "10.96.0.2" not in done.snapshot.views
