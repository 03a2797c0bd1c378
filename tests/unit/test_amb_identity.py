"""The connect identity follower against a fake agent (blocking queries answered
from queues the test fills), and real SSLContexts from openssl-made certificates."""

import asyncio
import os
import ssl
import stat

import pytest

from connect_certs import CA
from portlink.ambassador.identity import Identity
from portlink.ambassador.tls_context import ContextError, Contexts, build, private_dir
from portlink.catalog.connect import Leaf, Roots
from portlink.catalog.watch import RateLimit, Reachability

T = 5.0
TD = "td.consul"


def roots(active="r1", *pems):
    return Roots(TD, active, pems or (f"PEM-{active}",))


def leaf(service, serial="01"):
    return Leaf(service, f"spiffe://{TD}/ns/default/dc/dc1/svc/{service}", serial, f"CERT-{serial}", "KEY", "x")


class FakeAgent:
    """Each endpoint answers from its queue; an empty queue blocks, as a blocking query does."""

    def __init__(self):
        self.q: dict[str, asyncio.Queue] = {}
        self.asked: dict[str, list[int]] = {}

    def queue(self, what):
        return self.q.setdefault(what, asyncio.Queue())

    def answer(self, what, index, data):
        self.queue(what).put_nowait((index, data))

    async def _next(self, what, index):
        self.asked.setdefault(what, []).append(index)
        got = await self.queue(what).get()
        if isinstance(got, Exception):
            raise got
        return got

    async def roots(self, index, wait):
        return await self._next("roots", index)

    async def leaf(self, service, index, wait):
        return await self._next(service, index)


def fake_build(log):
    def b(r, lf, key_dir):
        if lf.serial == "bad":
            raise ContextError(f"cannot load the connect certificates of {lf.service}")
        log.append((r.active_id, lf.service, lf.serial))
        return Contexts(server=("server", r.active_id, lf.serial), client=("client", r.active_id, lf.serial),
                        leaf=lf, roots=r)
    return b


async def until(cond, what):
    deadline = asyncio.get_running_loop().time() + T
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


def with_identity(test, services=("frontdb", "web")):
    async def go():
        agent, built = FakeAgent(), []
        reach = Reachability("fake", settle=0.01)
        ident = Identity(agent, services, key_dir=None, reach=reach, build=fake_build(built),
                         limit=lambda: RateLimit(rate=10000, burst=10000, tokens=10000))
        task = asyncio.ensure_future(ident.run())
        try:
            await asyncio.wait_for(test(agent, ident, built), T * 4)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    asyncio.run(go())


def test_ready_once_roots_and_every_leaf_are_known_and_queries_block_on_the_last_index():
    async def t(agent, ident, built):
        agent.answer("roots", 7, roots("r1"))
        agent.answer("frontdb", 9, leaf("frontdb", "0a"))
        await until(lambda: ident.current("frontdb") is not None, "frontdb contexts")
        assert not ident.ready.is_set() and ident.current("web") is None
        agent.answer("web", 11, leaf("web", "0b"))
        await asyncio.wait_for(ident.ready.wait(), T)
        assert ident.current("web").client == ("client", "r1", "0b")
        assert ident.trust_domain == TD
        await until(lambda: len(agent.asked.get("web", [])) == 2, "the second web query")
        assert agent.asked["roots"][:2] == [0, 7] and agent.asked["frontdb"][:2] == [0, 9]
        assert agent.asked["web"] == [0, 11]
        assert ident.rotations == 0
        assert ident.snapshot()["services"]["web"]["serial"] == "0b"
    with_identity(t)


def test_new_leaf_and_new_roots_make_new_contexts_and_leave_the_old_objects_alone():
    async def t(agent, ident, built):
        agent.answer("roots", 5, roots("r1"))
        agent.answer("web", 5, leaf("web", "01"))
        await asyncio.wait_for(ident.ready.wait(), T)
        first = ident.current("web")
        agent.answer("web", 6, leaf("web", "02"))                     # a renewed leaf
        await until(lambda: ident.current("web").leaf.serial == "02", "the new leaf")
        assert first.leaf.serial == "01" and first.server == ("server", "r1", "01")   # held by old connections
        assert ident.rotations == 1
        agent.answer("roots", 8, roots("r2", "PEM-r2", "PEM-r1"))       # a root rotation: both trusted
        await until(lambda: ident.current("web").roots.active_id == "r2", "the new roots")
        assert ident.current("web").client == ("client", "r2", "02")
        assert ident.rotations == 2
        n = len(built)
        agent.answer("web", 9, leaf("web", "02"))                     # index moved, same leaf: nothing to do
        agent.answer("roots", 10, roots("r2", "PEM-r2", "PEM-r1"))
        await until(lambda: len(agent.asked["roots"]) >= 4 and len(agent.asked["web"]) >= 4, "more queries")
        assert len(built) == n
    with_identity(t, services=("web",))


def test_index_going_backwards_starts_over_at_zero_once():
    async def t(agent, ident, built):
        agent.answer("roots", 50, roots("r1"))
        agent.answer("web", 50, leaf("web"))
        await asyncio.wait_for(ident.ready.wait(), T)
        agent.answer("roots", 3, roots("r1"))          # a restored snapshot: the index went back
        agent.answer("roots", 4, roots("r1"))
        agent.answer("roots", 0, roots("r1"))          # nonsense 0: never block at 0 twice
        await until(lambda: len(agent.asked["roots"]) == 5, "five roots queries")
        assert agent.asked["roots"] == [0, 50, 0, 4, 1]
    with_identity(t, services=("web",))


def test_build_failure_and_agent_errors_keep_the_last_contexts():
    async def t(agent, ident, built):
        agent.answer("roots", 5, roots("r1"))
        agent.answer("web", 5, leaf("web", "01"))
        await asyncio.wait_for(ident.ready.wait(), T)
        good = ident.current("web")
        agent.answer("web", 6, leaf("web", "bad"))
        await until(lambda: ident.build_errors == 1, "the failed build")
        assert ident.current("web") is good
        agent.queue("web").put_nowait(ConnectionRefusedError("agent down"))
        await until(lambda: ident.reach.up is False, "the agent marked unreachable")
        assert ident.current("web") is good
        agent.answer("web", 7, leaf("web", "03"))      # back: picked up by itself, from index 0
        await until(lambda: ident.current("web").leaf.serial == "03", "the leaf after the outage")
        assert agent.asked["web"][:4] == [0, 5, 6, 0]   # after an error the current state is read
    with_identity(t, services=("web",))


def test_no_services_is_refused():
    with pytest.raises(ValueError, match="at least one service"):
        Identity(FakeAgent(), [], None, Reachability("x"))


# -- real contexts -------------------------------------------------------------------

def test_build_real_contexts_from_pems_and_leave_no_key_file(tmp_path):
    ca = CA.make(tmp_path)
    keys = private_dir(tmp_path / "keys")
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o700
    c = build(ca.roots(), ca.leaf("web"), keys)
    assert os.listdir(keys) == []                  # written, loaded, removed
    assert c.server.verify_mode == ssl.CERT_REQUIRED and c.client.verify_mode == ssl.CERT_REQUIRED
    assert c.client.check_hostname is False
    assert c.server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert len(c.client.get_ca_certs()) == 1


def test_build_with_a_key_that_does_not_match_names_the_service(tmp_path):
    ca = CA.make(tmp_path)
    a, b = ca.leaf("web"), ca.leaf("web")
    mixed = Leaf(a.service, a.uri, a.serial, a.cert_pem, b.key_pem, a.valid_before)
    keys = private_dir(tmp_path / "keys")
    with pytest.raises(ContextError, match="web"):
        build(ca.roots(), mixed, keys)
    assert os.listdir(keys) == []


def test_private_dir_tightens_an_existing_directory(tmp_path):
    d = tmp_path / "k"
    d.mkdir(mode=0o755)
    private_dir(d)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
