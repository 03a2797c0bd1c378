"""Blocking-query watches, reachability and the registrar, against fakes: no
Consul, no network. Every loop is bounded in time."""

import asyncio
import json
import logging
from types import SimpleNamespace

import pytest

from portlink.catalog.registrar import Registrar, SyncResult
from portlink.catalog.services import META_HOST, META_SPEC, CheckPolicy, Instance, Registration
from portlink.catalog.watch import Backoff, CatalogCache, RateLimit, Reachability, next_index, watch

LIMIT = 2.0   # seconds any single test may spend waiting


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, LIMIT * 2))


async def until(cond, timeout=LIMIT, what="condition"):
    async def poll():
        while not cond():
            await asyncio.sleep(0.005)
    try:
        await asyncio.wait_for(poll(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def fast() -> RateLimit:
    return RateLimit(rate=1e6, burst=1e6, tokens=1e6)


def messages(caplog, text):
    return [r for r in caplog.records if r.name == "portlink.consul" and text in r.getMessage()]


# -- next_index --------------------------------------------------------------

@pytest.mark.parametrize("prev, got, want", [
    (0, 5, 5),        # first answer
    (5, 5, 5),        # nothing new
    (5, 9, 9),        # moved on
    (9, 5, 0),        # went backwards: start over
    (1, 0, 1),        # backwards to 0: 0 would not block, so 1
    (0, 0, 1),        # never block on 0
    (0, -3, 1),
    (0, 1, 1),
])
def test_next_index(prev, got, want):
    assert next_index(prev, got) == want


@pytest.mark.parametrize("stuck", [0, -1])
def test_next_index_never_zero_twice_when_server_keeps_returning_zero(stuck):
    index, seen = 7, []
    for _ in range(20):
        index = next_index(index, stuck)
        seen.append(index)
    assert all(not (a == 0 and b == 0) for a, b in zip(seen, seen[1:])), seen
    assert all(i in (0, 1) for i in seen)


# -- RateLimit / Backoff -------------------------------------------------------

def test_rate_limit_burst_then_spacing():
    rl = RateLimit(rate=10.0, burst=3.0, tokens=3.0, stamp=100.0)
    assert [rl.delay(now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rl.delay(now=100.0) == pytest.approx(0.1)
    assert rl.delay(now=100.0) == pytest.approx(0.2)


def test_rate_limit_refills_over_time_up_to_burst():
    rl = RateLimit(rate=10.0, burst=3.0, tokens=0.0, stamp=0.0)
    assert rl.delay(now=0.0) == pytest.approx(0.1)          # empty bucket: wait one interval
    assert rl.delay(now=0.3) == 0.0                         # 0.3 s earned 3 tokens, one owed, one taken
    assert rl.delay(now=0.3) == pytest.approx(0.0)
    assert rl.delay(now=0.3) == pytest.approx(0.1)
    assert rl.delay(now=1000.0) == 0.0                       # a long pause refills only up to `burst`
    assert [rl.delay(now=1000.0) for _ in range(2)] == [0.0, 0.0]
    assert rl.delay(now=1000.0) == pytest.approx(0.1)


def test_rate_limit_steady_rate():
    rl = RateLimit(rate=20.0, burst=5.0, tokens=0.0, stamp=0.0)
    # one query every 1/rate seconds never waits
    assert all(rl.delay(now=(i + 1) / 20.0) == pytest.approx(0.0) for i in range(50))


def test_backoff_doubles_caps_and_resets():
    b = Backoff(first=0.05, cap=1.0)
    assert [b.next() for _ in range(7)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    b.reset()
    assert b.next() == pytest.approx(0.05)
    assert b.next() == pytest.approx(0.1)


# -- watch() -----------------------------------------------------------------

class Script:
    """A fetch that plays (index, data) answers or raises exceptions in order,
    then blocks forever (like a blocking query nothing changes)."""

    def __init__(self, steps):
        self.steps = list(steps)
        self.indexes = []
        self.exhausted = asyncio.Event()

    async def __call__(self, index):
        self.indexes.append(index)
        if not self.steps:
            self.exhausted.set()
            await asyncio.Event().wait()
        step = self.steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step


class FakeReach:
    def __init__(self):
        self.calls = []

    def ok(self):
        self.calls.append("ok")

    def failed(self, err):
        self.calls.append(("failed", type(err).__name__))


async def drain(steps, reach=None, limit=None):
    """Run watch() over the script to its end; (items yielded, indexes asked, reach)."""
    script = Script(steps)
    reach = reach or FakeReach()
    out = []

    async def consume():
        async for item in watch(script, reach, limit or fast()):
            out.append(item)

    task = asyncio.ensure_future(consume())
    try:
        await asyncio.wait_for(script.exhausted.wait(), LIMIT)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return out, script.indexes, reach


def test_watch_yields_first_result():
    out, indexes, reach = run(drain([(5, "a")]))
    assert out == ["a"]
    assert indexes == [0, 5]
    assert reach.calls == ["ok"]


def test_watch_yields_first_result_even_if_empty():
    out, _, _ = run(drain([(3, ())]))
    assert out == [()]


def test_watch_skips_unchanged_data_with_new_index():
    out, indexes, _ = run(drain([(5, "a"), (6, "a"), (9, "a"), (10, "b"), (11, "b"), (12, "a")]))
    assert out == ["a", "b", "a"]
    assert indexes == [0, 5, 6, 9, 10, 11, 12]


def test_watch_index_rules_applied():
    # backwards -> 0, then a server stuck at 0 -> 1
    out, indexes, _ = run(drain([(5, "a"), (3, "b"), (0, "c"), (4, "d")]))
    assert out == ["a", "b", "c", "d"]
    assert indexes == [0, 5, 0, 1, 4]


def test_watch_retries_after_failure_from_index_zero_without_stale_duplicate():
    steps = [(5, "a"), ConnectionError("refused"), OSError("reset"), (7, "a"), (8, "b")]
    out, indexes, reach = run(drain(steps))
    assert out == ["a", "b"]                 # "a" again after the outage is not news
    assert indexes == [0, 5, 0, 0, 7, 8]     # the first query after a failure reads the current state
    assert reach.calls == ["ok", ("failed", "ConnectionError"), ("failed", "OSError"), "ok", "ok"]


def test_watch_first_fetch_fails():
    out, indexes, reach = run(drain([TimeoutError(), (2, "x")]))
    assert out == ["x"]
    assert indexes == [0, 0, 2]
    assert reach.calls == [("failed", "TimeoutError"), "ok"]


def test_watch_yields_change_that_happened_during_outage():
    out, _, _ = run(drain([(5, "a"), ConnectionError(), (9, "b")]))
    assert out == ["a", "b"]


def test_watch_respects_rate_limit():
    async def go():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        # no burst: 4 queries at 20/s take at least 3 intervals (~0.15 s)
        out, _, _ = await drain([(1, "a"), (2, "b"), (3, "c")],
                                limit=RateLimit(rate=20.0, burst=1.0, tokens=1.0))
        return out, loop.time() - t0
    out, took = run(go())
    assert out == ["a", "b", "c"]
    assert took >= 0.12


# -- Reachability ------------------------------------------------------------

def test_reachability_logs_once_per_outage_and_calls_on_up(caplog):
    caplog.set_level(logging.INFO, logger="portlink.consul")

    async def go():
        reach = Reachability("http://c:8500", settle=0.1)
        ups = []
        reach.on_up(lambda: ups.append("up"))
        reach.ok()
        assert (reach.up, ups) == (True, [])               # the first answer is no return
        reach.ok()
        assert ups == []                                    # only a return from failure calls back
        reach.failed(ConnectionError("refused"))
        reach.failed(ConnectionError("refused"))
        reach.failed(OSError("reset"))
        assert reach.up is False
        assert reach.failures == 3
        assert reach.last_error == "OSError: reset"
        assert len(messages(caplog, "unreachable")) == 1
        reach.ok()
        assert ups == ["up"]                                # told at once, before the settle delay
        assert not messages(caplog, "reachable again")      # but not logged yet
        await asyncio.sleep(0.3)
        assert len(messages(caplog, "reachable again")) == 1
        reach.ok()
        await asyncio.sleep(0.2)
        assert len(messages(caplog, "reachable again")) == 1
        # a second outage: a second pair
        reach.failed(ConnectionError("refused"))
        reach.ok()
        await asyncio.sleep(0.3)

    run(go())
    unreachable = messages(caplog, "unreachable")
    assert len(unreachable) == 2
    assert "http://c:8500" in unreachable[0].getMessage()
    assert "ConnectionError: refused" in unreachable[0].getMessage()
    assert len(messages(caplog, "reachable again")) == 2
    assert all(r.levelno == logging.WARNING for r in messages(caplog, "reachable"))


def test_reachability_first_failure_before_any_answer_is_logged(caplog):
    caplog.set_level(logging.INFO, logger="portlink.consul")

    async def go():
        reach = Reachability("c", settle=0.05)
        reach.failed(TimeoutError())
        assert reach.last_error == "TimeoutError"
        reach.ok()
        await asyncio.sleep(0.2)

    run(go())
    assert len(messages(caplog, "unreachable")) == 1
    assert len(messages(caplog, "reachable again")) == 1


def test_reachability_flapping_within_settle_is_one_outage(caplog):
    caplog.set_level(logging.INFO, logger="portlink.consul")

    async def go():
        reach = Reachability("c", settle=0.4)
        reach.ok()
        for _ in range(5):                  # down, up, down, ... all within `settle`
            reach.failed(ConnectionError())
            await asyncio.sleep(0.01)
            reach.ok()
            await asyncio.sleep(0.01)
        reach.failed(ConnectionError())
        await asyncio.sleep(0.5)            # still down when the settle time is over
        assert not messages(caplog, "reachable again")
        reach.ok()
        await asyncio.sleep(0.6)

    run(go())
    assert len(messages(caplog, "unreachable")) == 1
    assert len(messages(caplog, "reachable again")) == 1


def test_reachability_return_must_hold_for_settle_before_it_is_reported(caplog):
    # The docstring: "a return is only reported once it has held for `settle`
    # seconds: one outage, one pair of log lines". Here no up-period lasts
    # `settle`, yet the timer armed by the first ok() fires while a later,
    # short-lived ok() holds.
    caplog.set_level(logging.INFO, logger="portlink.consul")

    async def go():
        reach = Reachability("c", settle=0.4)
        reach.failed(ConnectionError())     # t=0.0  outage starts
        reach.ok()                          # t=0.0  (arms the settle timer)
        await asyncio.sleep(0.1)
        reach.failed(ConnectionError())     # t=0.1  down again
        await asyncio.sleep(0.2)
        reach.ok()                          # t=0.3  up for 0.2 s only (< settle)
        await asyncio.sleep(0.2)
        reach.failed(ConnectionError())     # t=0.5  down again: still the same outage
        assert len(messages(caplog, "reachable again")) == 0
        assert len(messages(caplog, "unreachable")) == 1
        reach.ok()                          # t=0.5  finally stays up
        await asyncio.sleep(0.8)

    run(go())
    assert len(messages(caplog, "unreachable")) == 1
    assert len(messages(caplog, "reachable again")) == 1


def test_watch_with_flapping_consul_logs_one_pair(caplog):
    caplog.set_level(logging.INFO, logger="portlink.consul")

    async def go():
        reach = Reachability("c", settle=0.5)
        steps = [(1, "a"), ConnectionError(), (2, "a"), ConnectionError(), (3, "a"), ConnectionError(), (4, "b")]
        out, _, _ = await drain(steps, reach=reach)
        assert out == ["a", "b"]
        assert reach.failures == 3 and reach.up is True
        assert len(messages(caplog, "unreachable")) == 1
        assert not messages(caplog, "reachable again")
        await until(lambda: messages(caplog, "reachable again"), what="reachable again")
        await asyncio.sleep(0.1)

    run(go())
    assert len(messages(caplog, "unreachable")) == 1
    assert len(messages(caplog, "reachable again")) == 1


# -- CatalogCache --------------------------------------------------------------

def entry(service, sid, addr, port, node="n1"):
    return {"Node": {"Node": node, "Address": "10.0.0.250"},
            "Service": {"ID": sid, "Service": service, "Address": addr, "Port": port, "Tags": [], "Meta": {}}}


class FakeConsul:
    """Blocking queries over a shared raft-like index; `down` makes every call
    (including the ones already blocked) fail."""

    def __init__(self, data):
        self.data = {name: list(entries) for name, entries in data.items()}
        self.index = 10
        self.down = False
        self.calls = []
        self._changed = asyncio.Event()
        self.catalog = SimpleNamespace(services=self._services)
        self.health = SimpleNamespace(service=self._health)

    def _bump(self):
        self.index += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def set(self, name, entries):
        self.data[name] = list(entries)
        self._bump()

    def remove(self, name):
        del self.data[name]
        self._bump()

    def set_down(self, down):
        self.down = down
        self._bump()

    async def _block(self, index):
        while not self.down and index and self.index <= index:
            await self._changed.wait()
        if self.down:
            raise ConnectionError("connection refused")

    async def _services(self, index=None, wait=None):
        self.calls.append(("services", index, wait))
        await self._block(index)
        return self.index, {name: [] for name in self.data}

    async def _health(self, name, index=None, wait=None, passing=None):
        self.calls.append(("health", name, index, wait, passing))
        await self._block(index)
        return self.index, list(self.data.get(name, []))


def names_of(snapshot):
    return {name: [(i.address, i.port) for i in inst] for name, inst in snapshot.items()}


async def start_cache(consul, reach, wait=30.0):
    seen = []
    cache = CatalogCache(consul, reach, seen.append, wait=wait)
    task = asyncio.ensure_future(cache.run())
    return cache, task, seen


async def stop(task):
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_catalog_cache_follows_services_and_publishes_lower_case():
    async def go():
        consul = FakeConsul({"Web": [entry("Web", "w1", "10.0.0.1", 80)], "db": [entry("db", "d1", "10.0.0.2", 5432)]})
        reach = Reachability("c", settle=0.05)
        cache, task, seen = await start_cache(consul, reach, wait=7.0)
        try:
            await asyncio.wait_for(cache.ready.wait(), LIMIT)
            await until(lambda: seen and names_of(seen[-1]) == {"web": [("10.0.0.1", 80)], "db": [("10.0.0.2", 5432)]},
                        what="first snapshot")
            assert seen[-1]["web"] == (Instance("w1", "Web", "10.0.0.1", 80, "n1"),)
            assert set(cache.services) == {"Web", "db"}            # kept under Consul's own spelling

            consul.set("Cache", [entry("Cache", "c1", "10.0.0.3", 6379)])    # a service appears
            await until(lambda: names_of(seen[-1]).get("cache") == [("10.0.0.3", 6379)], what="added service")

            consul.set("db", [entry("db", "d1", "10.0.0.2", 5432), entry("db", "d2", "10.0.0.1", 5433)])
            await until(lambda: names_of(seen[-1])["db"] == [("10.0.0.1", 5433), ("10.0.0.2", 5432)],
                        what="instance change")

            consul.remove("Web")                                   # a service goes away
            await until(lambda: "web" not in seen[-1], what="removed service")
            assert names_of(seen[-1]) == {"cache": [("10.0.0.3", 6379)],
                                          "db": [("10.0.0.1", 5433), ("10.0.0.2", 5432)]}
            assert set(cache.services) == {"Cache", "db"}
            assert set(cache._tasks) == {"Cache", "db"}
        finally:
            await stop(task)
        assert all(t.done() for t in cache._tasks.values())        # run() leaves no watch behind
        health = [c for c in consul.calls if c[0] == "health"]
        assert health and all(c[3] == "7s" and c[4] is True for c in health)
        assert all(c[2] == "7s" for c in consul.calls if c[0] == "services")
        assert consul.calls[0] == ("services", None, "7s")     # index 0 is sent as no index

    run(go())


def test_catalog_cache_empty_catalog_is_ready():
    async def go():
        consul = FakeConsul({})
        cache, task, seen = await start_cache(consul, Reachability("c", settle=0.05))
        try:
            await asyncio.wait_for(cache.ready.wait(), LIMIT)
            assert seen[-1] == {}
        finally:
            await stop(task)

    run(go())


def test_catalog_cache_not_ready_until_every_service_read():
    async def go():
        consul = FakeConsul({"a": [entry("a", "a1", "10.0.0.1", 1)], "b": [entry("b", "b1", "10.0.0.2", 2)]})
        slow = asyncio.Event()
        real = consul.health.service

        async def health(name, **kw):
            if name == "b":
                await slow.wait()
            return await real(name, **kw)
        consul.health = SimpleNamespace(service=health)
        cache, task, seen = await start_cache(consul, Reachability("c", settle=0.05))
        try:
            await until(lambda: "a" in cache.services, what="service a")
            await asyncio.sleep(0.05)
            assert not cache.ready.is_set()
            slow.set()
            await asyncio.wait_for(cache.ready.wait(), LIMIT)
            assert set(seen[-1]) == {"a", "b"}
        finally:
            await stop(task)

    run(go())


def test_catalog_cache_keeps_last_known_state_while_consul_is_away():
    async def go():
        consul = FakeConsul({"web": [entry("web", "w1", "10.0.0.1", 80)]})
        reach = Reachability("c", settle=0.05)
        cache, task, seen = await start_cache(consul, reach)
        try:
            await asyncio.wait_for(cache.ready.wait(), LIMIT)
            await until(lambda: seen and "web" in seen[-1], what="first snapshot")
            before, published = dict(seen[-1]), len(seen)

            consul.set_down(True)
            await until(lambda: reach.failures >= 4, what="failures")
            assert reach.up is False
            assert len(seen) == published                   # nothing published while away
            assert cache.services == {"web": before["web"]}
            assert set(cache._tasks) == {"web"}              # no watch dropped

            # Consul comes back unchanged: no new snapshot, nothing duplicated
            consul.set_down(False)
            await until(lambda: reach.up is True, what="back up")
            await asyncio.sleep(0.1)
            assert seen[-1] == before

            # and changes are picked up again by themselves
            consul.set("web", [entry("web", "w2", "10.0.0.9", 81)])
            await until(lambda: names_of(seen[-1]) == {"web": [("10.0.0.9", 81)]}, what="change after outage")
        finally:
            await stop(task)

    run(go())


def test_catalog_cache_sees_changes_made_during_outage():
    async def go():
        consul = FakeConsul({"web": [entry("web", "w1", "10.0.0.1", 80)]})
        reach = Reachability("c", settle=0.05)
        cache, task, seen = await start_cache(consul, reach)
        try:
            await asyncio.wait_for(cache.ready.wait(), LIMIT)
            await until(lambda: seen and "web" in seen[-1], what="first snapshot")
            consul.set_down(True)
            await until(lambda: reach.failures >= 2, what="failures")
            consul.data = {"api": [entry("api", "a1", "10.0.0.5", 9000)]}    # changed behind our back
            consul.set_down(False)
            await until(lambda: names_of(seen[-1]) == {"api": [("10.0.0.5", 9000)]}, what="state after outage")
        finally:
            await stop(task)

    run(go())


# -- Registrar -----------------------------------------------------------------

class FakeAgent:
    """The bits of py-consul's client the registrar uses, with an in-memory agent."""

    def __init__(self, services=None, fail_deregister=(), put_code=200, fail_list=False):
        self.services = dict(services or {})
        self.filters = []
        self.ops = []
        self.puts = []
        self.fail_deregister = set(fail_deregister)
        self.put_code = put_code
        self.fail_list = fail_list
        self.agent = SimpleNamespace(services=self._services, service=SimpleNamespace(deregister=self._deregister))
        self.http = SimpleNamespace(put=self._put)

    def prepare_headers(self):
        return {"X-Consul-Token": "secret"}

    async def _services(self, filter_expr=None):
        self.filters.append(filter_expr)
        if self.fail_list:
            raise ConnectionError("refused")
        return {k: dict(v) for k, v in self.services.items()}

    async def _deregister(self, sid):
        self.ops.append(("deregister", sid))
        if sid in self.fail_deregister:
            raise RuntimeError("boom")
        self.services.pop(sid, None)
        return True

    async def _put(self, callback, path, params=None, headers=None, data=""):
        body = json.loads(data)
        self.puts.append({"path": path, "params": params, "headers": headers, "body": body})
        if path.startswith("/v1/agent/check/update/"):
            self.ops.append(("update", path.rsplit("/", 1)[1], body["Status"]))
            return callback(SimpleNamespace(code=self.put_code, body=""))
        self.ops.append(("register", body["ID"]))
        resp = SimpleNamespace(code=self.put_code, body="  permission denied  ")
        result = callback(resp)
        self.services[body["ID"]] = {"ID": body["ID"], "Service": body["Name"], "Port": body["Port"],
                                     "Address": body["Address"], "Tags": body["Tags"], "Meta": body["Meta"]}
        return result


def reg(n, port=None):
    return Registration(id=f"portlink-h1-{n:012d}-80-tcp", name=f"s{n}", address="192.0.2.1",
                        port=port or 8000 + n, meta=((META_HOST, "h1"),))


def agent_view(r, policy=CheckPolicy()):
    body = r.payload(policy)
    return {"ID": r.id, "Service": r.name, "Port": r.port, "Address": r.address, "Meta": body["Meta"]}


def test_registrar_sync_once():
    policy = CheckPolicy(interval="9s")
    same, changed, new = reg(1), reg(2), reg(3)
    consul = FakeAgent({
        same.id: agent_view(same, policy),
        changed.id: agent_view(reg(2, port=1234), policy),
        "portlink-h1-zz-1-tcp": {"Meta": {META_HOST: "h1", META_SPEC: "old"}},
        "portlink-h1-aa-1-tcp": {"Meta": {META_HOST: "h1"}},
    })

    async def go():
        r = Registrar(consul, "h1", lambda: [same, changed, new], Reachability("c"), policy)
        first = await r.sync_once()
        second = await r.sync_once()
        return first, second

    first, second = run(go())
    assert first == SyncResult(registered=[changed.id, new.id],
                               deregistered=["portlink-h1-aa-1-tcp", "portlink-h1-zz-1-tcp"])
    assert second == SyncResult()                                  # converged: nothing more to do
    assert consul.filters == ['Meta["portlink-host"] == "h1"'] * 2
    assert sorted(consul.services) == sorted([same.id, changed.id, new.id])
    assert [p["body"] for p in consul.puts] == [changed.payload(policy), new.payload(policy)]
    for p in consul.puts:
        assert p["path"] == "/v1/agent/service/register"
        assert p["params"] == [("replace-existing-checks", "true")]
        assert p["headers"] == {"X-Consul-Token": "secret"}
    assert [op for op in consul.ops if op[0] == "deregister"] == [
        ("deregister", "portlink-h1-aa-1-tcp"), ("deregister", "portlink-h1-zz-1-tcp")]


def test_registrar_sets_the_health_of_a_re_registered_instance_too():
    # Consul's agent keeps a TTL check's status across a re-registration: a health
    # transition (a new hash: re-registered) must also be set by check/update.
    from dataclasses import replace
    policy = CheckPolicy()
    healthy = replace(reg(1), health="healthy")
    sick = replace(healthy, health="unhealthy")
    consul = FakeAgent({healthy.id: agent_view(healthy, policy)})
    want = [sick]

    async def go():
        r = Registrar(consul, "h1", lambda: want, Reachability("c"), policy)
        await r.sync_once()
        want[:] = [replace(reg(2), health="starting")]   # a new instance: set too, harmless
        await r.sync_once()

    run(go())
    assert consul.ops == [("register", sick.id), ("update", sick.health_check_id, "critical"),
                          ("deregister", sick.id), ("register", reg(2).id),
                          ("update", reg(2).health_check_id, "warning")]


def test_registrar_filter_names_this_host():
    consul = FakeAgent()

    async def go():
        r = Registrar(consul, "host-42", lambda: [], Reachability("c"))
        assert await r.sync_once() == SyncResult()

    run(go())
    assert consul.filters == ['Meta["portlink-host"] == "host-42"']


def test_registrar_register_error_is_raised():
    consul = FakeAgent(put_code=403)

    async def go():
        r = Registrar(consul, "h1", lambda: [reg(1)], Reachability("c"))
        with pytest.raises(RuntimeError, match="HTTP 403: permission denied"):
            await r.sync_once()

    run(go())


def test_registrar_deregister_all_collects_errors():
    consul = FakeAgent({"a": {}, "b": {}, "c": {}, "d": {}}, fail_deregister={"b", "c"})

    async def go():
        r = Registrar(consul, "h1", lambda: [], Reachability("c"))
        return await r.deregister_all()

    errors = run(go())
    assert errors == ["consul: deregister b: boom", "consul: deregister c: boom"]
    assert consul.ops == [("deregister", "a"), ("deregister", "b"), ("deregister", "c"), ("deregister", "d")]
    assert sorted(consul.services) == ["b", "c"]
    assert consul.filters == ['Meta["portlink-host"] == "h1"']


def test_registrar_deregister_all_list_failure():
    consul = FakeAgent({"a": {}}, fail_list=True)

    async def go():
        r = Registrar(consul, "h1", lambda: [], Reachability("c"))
        return await r.deregister_all()

    assert run(go()) == ["consul: cannot list this host's services: refused"]
    assert consul.ops == []


def test_registrar_needs_a_running_loop():
    with pytest.raises(RuntimeError):
        Registrar(FakeAgent(), "h1", lambda: [], Reachability("c"))


def test_registrar_resyncs_when_consul_returns():
    consul = FakeAgent()
    calls = []

    def desired():
        calls.append(1)
        return [reg(1)]

    async def go():
        reach = Reachability("c", settle=0.05)
        r = Registrar(consul, "h1", desired, reach, every=60.0)
        task = asyncio.ensure_future(r.run())
        try:
            await until(lambda: r.passes >= 1, what="first pass")
            await asyncio.sleep(0.1)
            assert [p["body"]["ID"] for p in consul.puts] == [reg(1).id]
            passes = r.passes
            consul.services.clear()                  # the agent restarted and forgot everything
            reach.failed(ConnectionError())
            reach.ok()                               # back: a pass at once, not after `every`
            await until(lambda: r.passes > passes, what="resync after return")
            assert list(consul.services) == [reg(1).id]
            assert [p["body"]["ID"] for p in consul.puts] == [reg(1).id, reg(1).id]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(go())
