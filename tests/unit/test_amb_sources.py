"""Where backends come from: --backend parsing, Consul instances split by listener
port, and following a (fake) Consul through changes and an outage."""

import asyncio
import logging
import time
from types import SimpleNamespace

import pytest

from portlink.ambassador.backends import Backend
from portlink.ambassador.forward import Ambassador
from portlink.ambassador.sources import follow_consul, parse_backend, split_instances, static_sets
from portlink.catalog.services import Instance
from portlink.catalog.watch import Reachability

T = 3.0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


async def until(cond, timeout=T, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


# -- --backend ------------------------------------------------------------------------

@pytest.mark.parametrize("text, port, backend", [
    ("5432=10.0.0.7:15432", 5432, Backend("10.0.0.7", 15432)),
    ("80=[fd00::7]:8080", 80, Backend("fd00::7", 8080)),
    (" 80 = 10.0.0.1:1 ", 80, Backend("10.0.0.1", 1)),
])
def test_parse_backend(text, port, backend):
    assert parse_backend(text) == (port, backend)


@pytest.mark.parametrize("text, names", [
    ("10.0.0.7:15432", "expected PORT=IP:TARGETPORT"),
    ("x=10.0.0.7:1", "listener port 'x'"),
    ("0=10.0.0.7:1", "listener port '0'"),
    ("70000=10.0.0.7:1", "listener port '70000'"),
    ("80=10.0.0.7", "target '10.0.0.7'"),
    ("80=db.local:5432", "target 'db.local'"),
    ("80=10.0.0.7:99999", "target '99999'"),
    ("80=fd00::7:80", "target 'fd00::7:80'"),          # IPv6 needs brackets
    ("80=10.0.0.300:80", "target '10.0.0.300'"),
])
def test_parse_backend_errors_name_the_value(text, names):
    with pytest.raises(ValueError) as e:
        parse_backend(text)
    assert names in str(e.value) and repr(text) in str(e.value)


def test_static_sets_keep_order_and_drop_repeats():
    sets = static_sets(["80=10.0.0.2:80", "80=10.0.0.1:80", "443=10.0.0.1:443", "80=10.0.0.2:80"])
    assert sets == {80: (Backend("10.0.0.2", 80), Backend("10.0.0.1", 80)), 443: (Backend("10.0.0.1", 443),)}


# -- Consul instances -> listener ports --------------------------------------------------

def inst(iid, addr, port, portmeta=None):
    meta = (("portlink-port", portmeta),) if portmeta is not None else ()
    return Instance(id=iid, service="db", address=addr, port=port, meta=meta)


def test_split_instances_by_portlink_port_meta():
    instances = [
        inst("a", "10.0.0.1", 31000, "5432/tcp"),
        inst("b", "10.0.0.2", 31001, "5432/tcp"),
        inst("c", "10.0.0.3", 31002, "6379/tcp"),
        inst("d", "10.0.0.4", 8080),               # no meta: every listener
        inst("e", "10.0.0.5", 53, "53/udp"),       # not tcp: nowhere
        inst("f", "10.0.0.6", 9, "9999/tcp"),      # no such listener: nowhere
        inst("g", "10.0.0.7", 9, "junk"),          # unreadable: nowhere
        inst("h", "10.0.0.8", 9, "6379"),          # no protocol: tcp
    ]
    sets = split_instances(instances, [5432, 6379, 11211])
    assert sets == {
        5432: (Backend("10.0.0.1", 31000), Backend("10.0.0.2", 31001), Backend("10.0.0.4", 8080)),
        6379: (Backend("10.0.0.3", 31002), Backend("10.0.0.4", 8080), Backend("10.0.0.8", 9)),
        11211: (Backend("10.0.0.4", 8080),),
    }
    assert sets[5432][0].id == "a"


def test_split_instances_with_nothing_empties_every_port():
    assert split_instances([], [1, 2]) == {1: (), 2: ()}


# -- following Consul -----------------------------------------------------------------------

def entry(sid, addr, port, portmeta=None):
    meta = {"portlink-port": portmeta} if portmeta else {}
    return {"Node": {"Node": "n1", "Address": "10.9.9.9"},
            "Service": {"ID": sid, "Service": "db", "Address": addr, "Port": port, "Tags": [], "Meta": meta}}


class FakeConsul:
    """health.service as a blocking query; `down` fails every call, blocked ones too."""

    def __init__(self, entries):
        self.entries = list(entries)
        self.index = 10
        self.down = False
        self.calls = 0
        self._changed = asyncio.Event()
        self.health = SimpleNamespace(service=self._health)

    def _bump(self):
        self.index += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def set(self, entries):
        self.entries = list(entries)
        self._bump()

    def set_down(self, down):
        self.down = down
        self._bump()

    async def _health(self, name, index=None, wait=None, passing=None):
        assert name == "db" and passing is True
        self.calls += 1
        while not self.down and index and self.index <= index:
            await self._changed.wait()
        if self.down:
            raise ConnectionError("connection refused")
        return self.index, list(self.entries)


def test_follow_consul_applies_changes_and_keeps_last_set_while_away(caplog):
    caplog.set_level(logging.WARNING)

    async def main():
        consul = FakeConsul([entry("a", "10.0.0.1", 31000, "5432/tcp"), entry("x", "10.0.0.9", 7000)])
        amb = Ambassador([5432, 6379])
        reach = Reachability("fake", settle=0.05)
        task = asyncio.ensure_future(follow_consul(amb, consul, "db", reach, wait=30))
        try:
            a, x = Backend("10.0.0.1", 31000), Backend("10.0.0.9", 7000)
            await until(lambda: amb.pools[5432].backends == (a, x), what="the first set")
            assert amb.pools[6379].backends == (x,)
            assert amb.metrics["reroutes_total"].total == 0     # the first set is no reroute

            consul.set([entry("b", "10.0.0.2", 31000, "5432/tcp"), entry("x", "10.0.0.9", 7000)])
            b = Backend("10.0.0.2", 31000)
            await until(lambda: amb.pools[5432].backends == (b, x), what="the change")
            assert amb.pools[6379].backends == (x,)
            assert amb.metrics["reroutes_total"].listeners == {5432: 1}   # 6379 did not change

            consul.set_down(True)                       # an outage: the last set stays
            await until(lambda: reach.up is False, what="the outage to be noticed")
            calls = consul.calls
            await until(lambda: consul.calls > calls + 2, what="retries")
            assert amb.pools[5432].backends == (b, x) and amb.pools[6379].backends == (x,)

            consul.entries = [entry("c", "10.0.0.3", 31000, "5432/tcp")]
            consul.set_down(False)                      # back, with news
            c = Backend("10.0.0.3", 31000)
            await until(lambda: amb.pools[5432].backends == (c,), what="the set after the outage")
            assert amb.pools[6379].backends == ()
            await until(lambda: any("reachable again" in r.getMessage() for r in caplog.records),
                        what="the return to be logged")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()
    run(main())
    assert any("unreachable" in r.getMessage() for r in caplog.records)
    assert any("reroute" in r.getMessage() and "10.0.0.1:31000" in r.getMessage() for r in caplog.records)
