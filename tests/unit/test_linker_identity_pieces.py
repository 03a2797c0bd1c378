"""Per-linker identity, the pure parts and the forwarder over loopback: the
linkers map file, choosing the identity by the client's address (and a real
mutual-TLS pair dialling as the linker), the Identity following a changing set
of leaves, the intention's holders across hosts (an in-memory Consul), and the
journal releasing a host's hold with its last local linker."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest

from portlink import linker_map
from portlink.ambassador.backends import Backend
from portlink.ambassador.forward import Ambassador
from portlink.ambassador.identity import Identity
from portlink.ambassador.secure import Linkers
from portlink.ambassador.tls import Authorizer, ClientTLS, ServerTLS
from portlink.catalog.config import ConsulConfig
from portlink.catalog.intentions import MARK, Intentions, Link, holders, made_by_links
from portlink.catalog.watch import RateLimit, Reachability
from portlink.errors import RuntimeFailure
from portlink.runtime.journal import Journal
from portlink.runtime.state import Store
from test_amb_identity import FakeAgent, fake_build, leaf, roots, until
from connect_certs import CA
from portlink.ambassador.tls_context import build, private_dir
from test_amb_tls import FakeAuthz, FakeIdentity, T, refused, run

WEB = linker_map.Linker("web", "a" * 64, linker_map.token_name("a" * 64))
API = linker_map.Linker("api", "b" * 64, linker_map.token_name("b" * 64))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = CA.make(d, "ca")
    keys = private_dir(d / "keys")
    return {name: build(ca.roots(), ca.leaf(name), keys) for name in ("web", "api", "frontdb", "intruder")}


# -- the map file ---------------------------------------------------------------------------

def test_the_map_round_trips_and_is_replaced_whole(tmp_path):
    assert linker_map.read(tmp_path) == {}                       # none written yet
    linker_map.write(tmp_path, {"10.88.0.7": WEB, "10.88.0.8": API})
    assert linker_map.read(tmp_path) == {"10.88.0.7": WEB, "10.88.0.8": API}
    inode = os.stat(tmp_path / linker_map.FILE).st_ino
    linker_map.write(tmp_path, {"10.88.0.8": API})
    st = os.stat(tmp_path / linker_map.FILE)
    assert st.st_ino != inode                                    # a rename: a reader never sees half
    assert stat.S_IMODE(st.st_mode) == 0o644                     # the ambassador's user reads it
    assert sorted(os.listdir(tmp_path)) == [linker_map.FILE]     # no temporary left
    assert linker_map.read(tmp_path) == {"10.88.0.8": API}


@pytest.mark.parametrize("doc, what", [
    ("{", "not JSON"),
    ('{"version": 2, "linkers": {}}', "version"),
    ('{"version": 1, "linkers": {"10.0.0.1": {"identity": "web"}}}', "expected {identity, container, token}"),
    ('{"version": 1, "linkers": {"nope": {"identity": "web", "container": "%s", "token": "%s"}}}'
     % (WEB.container, WEB.token), "not an IPv4 address"),
    ('{"version": 1, "linkers": {"10.0.0.1": {"identity": "Web_1", "container": "%s", "token": "%s"}}}'
     % (WEB.container, WEB.token), "not a service identity name"),
    ('{"version": 1, "linkers": {"10.0.0.1": {"identity": "web", "container": "%s", "token": "../x"}}}'
     % WEB.container, "token file"),
])
def test_a_bad_map_is_refused_naming_the_problem(doc, what):
    with pytest.raises(linker_map.MapError, match=what.replace("{", r"\{").replace("}", r"\}")):
        linker_map.loads(doc)


def test_one_token_per_identity_the_oldest_sorting_linkers():
    web2 = linker_map.Linker("web", "0" * 64, linker_map.token_name("0" * 64))
    m = {"10.0.0.1": WEB, "10.0.0.2": API, "10.0.0.3": web2}
    assert linker_map.tokens(m) == {"web": web2.token, "api": API.token}
    del m["10.0.0.3"]                                             # that linker goes: the other's token
    assert linker_map.tokens(m) == {"web": WEB.token, "api": API.token}


# -- choosing the identity by source ----------------------------------------------------------

class FakeLinkers:
    def __init__(self, by_ip):
        self.by_ip = by_ip

    def identity_of(self, ip):
        return self.by_ip.get(ip)


def test_the_identity_is_the_linkers_own_by_address(pki):
    ident = FakeIdentity({"amb-own": pki["intruder"], "web": pki["web"]})
    links = FakeLinkers({"10.0.0.7": "web", "10.0.0.9": "api"})      # api has no certificate yet
    own = ClientTLS(ident, "amb-own", "frontdb", linkers=links)
    assert own.choose("10.0.0.7") == ("web", "")
    assert own.choose("10.0.0.8") == ("amb-own", "")                  # a sidecar: anyone else as itself
    assert own.choose("10.0.0.9")[0] is None and "no certificate yet" in own.choose("10.0.0.9")[1]
    made = ClientTLS(ident, "amb-own", "frontdb", linkers=links, refuse_unlinked=True)
    assert made.choose("10.0.0.7") == ("web", "")
    source, why = made.choose("10.0.0.8")
    assert source is None and "10.0.0.8 is not a linker" in why


def test_over_mutual_tls_a_linker_is_dialled_as_itself_and_a_stranger_gets_nothing(pki):
    async def t():
        authz = FakeAuthz()
        accepted = []

        async def serve(r, w):
            accepted.append(1)
            w.write(b"hello")
            await w.drain()
            w.close()
        backend = await asyncio.start_server(serve, "127.0.0.1", 0)
        server = Ambassador([0], host="127.0.0.1", tls_in={0: ServerTLS(
            FakeIdentity({"frontdb": pki["frontdb"]}), "frontdb", Authorizer(authz, ttl=0), handshake_timeout=T)})
        server.apply(0, [Backend("127.0.0.1", backend.sockets[0].getsockname()[1])])
        await server.start()
        links = FakeLinkers({"127.0.0.1": "web"})
        ident = FakeIdentity({"amb-own": pki["intruder"], "web": pki["web"]})
        clients = []
        try:
            for refuse in (False, True):
                client = Ambassador([0], host="127.0.0.1", tls_out=ClientTLS(
                    ident, "amb-own", "frontdb", T, linkers=links, refuse_unlinked=refuse))
                client.apply(0, [Backend("127.0.0.1", server.listeners[0].port)])
                await client.start()
                clients.append(client)
            r, w = await asyncio.open_connection("127.0.0.1", clients[0].listeners[0].port)
            assert await r.read() == b"hello"
            w.close()
            assert authz.calls[-1][1].endswith("/svc/web")              # the linker's leaf, not the ambassador's
            links.by_ip.clear()                                          # 127.0.0.1 is no linker now
            r, w = await asyncio.open_connection("127.0.0.1", clients[0].listeners[0].port)
            assert await r.read() == b"hello"                            # a sidecar: as itself
            w.close()
            assert authz.calls[-1][1].endswith("/svc/intruder")
            before = len(accepted)
            r, w = await asyncio.open_connection("127.0.0.1", clients[1].listeners[0].port)
            assert await refused(r, w)                                   # made for links: refused
            assert clients[1].metrics["unlinked_source_total"].total == 1
            assert len(accepted) == before and len(authz.calls) == 2     # nothing was dialled
        finally:
            for c in clients:
                await c.stop()
            await server.stop()
            backend.close()
    run(t())


def test_reused_links_are_kept_per_linker_a_link_made_as_web_never_carries_api(pki):
    """Warm connections and reused links (ambassador/warm.py, link.py) present one
    identity; with linkers each has its own pool, and an ambassador that refuses
    non-linkers makes none as itself (its own identity has no intention)."""
    async def t():
        authz = FakeAuthz()

        async def serve(r, w):
            w.write(b"hello")
            await w.drain()
            w.close()
        backend = await asyncio.start_server(serve, "127.0.0.1", 0)
        server = Ambassador([0], host="127.0.0.1", tls_in={0: ServerTLS(
            FakeIdentity({"frontdb": pki["frontdb"]}), "frontdb", Authorizer(authz, ttl=0), handshake_timeout=T)})
        server.apply(0, [Backend("127.0.0.1", backend.sockets[0].getsockname()[1])])
        await server.start()
        links = FakeLinkers({"127.0.0.1": "web", "127.0.0.2": "api"})
        ident = FakeIdentity({"amb-own": pki["intruder"], "web": pki["web"], "api": pki["api"]})
        client = Ambassador([0], host="127.0.0.1", tls_out=ClientTLS(
            ident, "amb-own", "frontdb", T, linkers=links, refuse_unlinked=True, warm=1))
        client.apply(0, [Backend("127.0.0.1", server.listeners[0].port)])
        await client.start()
        lst = client.listeners[0]
        try:
            assert lst.warm is None                       # nothing is made as the ambassador itself
            for ip in ("127.0.0.1", "127.0.0.2", "127.0.0.1", "127.0.0.2", "127.0.0.1"):
                r, w = await asyncio.open_connection("127.0.0.1", lst.port, local_addr=(ip, 0))
                assert await asyncio.wait_for(r.read(), T) == b"hello"
                w.close()
                want = "web" if ip == "127.0.0.1" else "api"
                assert authz.calls[-1][1].endswith(f"/svc/{want}")   # the claim's identity: the client's own
                await until(lambda: all(p.snapshot()["busy"] == 0 for p in lst.warm_pools()), "links back")
            assert not any(c[1].endswith("/svc/intruder") for c in authz.calls)
            assert sorted(lst.linker_warm) == ["api", "web"]
            assert lst.linker_warm["web"].reused >= 2 and lst.linker_warm["api"].reused >= 1
            assert client.snapshot()["listeners"][str(lst.port)]["warm"]["identities"] == 2
            ident.contexts.pop("api")                      # api left: its pool goes at the next update
            lst.update_warm()
            assert sorted(lst.linker_warm) == ["web"]
        finally:
            await client.stop()
            await server.stop()
            backend.close()
    run(t())


# -- the Identity follows a changing set of leaves --------------------------------------------

def test_identity_follows_added_and_removed_services_each_with_its_own_api():
    async def t():
        own, web_api, web_api2 = FakeAgent(), FakeAgent(), FakeAgent()
        ident = Identity(own, ["amb-own"], key_dir=None, reach=Reachability("fake", settle=0.01),
                         build=fake_build([]), limit=lambda: RateLimit(rate=10000, burst=10000, tokens=10000))
        assert ident.follow({"web": web_api}) == []                 # before run: started with it
        task = asyncio.ensure_future(ident.run())
        try:
            own.answer("roots", 3, roots("r1"))
            own.answer("amb-own", 4, leaf("amb-own"))
            await asyncio.wait_for(ident.ready.wait(), T)
            web_api.answer("web", 5, leaf("web", "0a"))
            await until(lambda: ident.current("web") is not None, "web's contexts")
            assert "web" not in own.asked                                # fetched with web's own token
            ident.follow({"web": web_api, "api": own})
            own.answer("api", 6, leaf("api", "0b"))
            await until(lambda: ident.current("api") is not None, "api's contexts, added while running")
            unused = ident.follow({"web": web_api2})                     # web's token changed, api gone
            assert unused == [web_api, own] and ident.current("api") is None
            assert ident.current("web").leaf.serial == "0a"              # the last contexts stay meanwhile
            web_api2.answer("web", 7, leaf("web", "0c"))
            await until(lambda: ident.current("web").leaf.serial == "0c", "web's leaf through the new api")
            own.answer("roots", 8, roots("r2"))                          # rotation: every service rebuilt
            await until(lambda: ident.current("web").roots.active_id == "r2", "web on the new roots")
            assert ident.current("amb-own").roots.active_id == "r2"
            assert set(ident.snapshot()["services"]) == {"amb-own", "web"}
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    asyncio.run(t())


def test_linkers_read_the_map_and_its_tokens_and_keep_the_last_good_map(tmp_path):
    async def t():
        class Ident:
            followed = None

            def follow(self, extra):
                self.followed = dict(extra)
                return []

            def current(self, service):
                return object() if service == "web" else None
        (tmp_path / WEB.token).write_text("secret-web\n")
        db = linker_map.Linker("db", "c" * 64, "")                      # no token: Consul without ACLs
        linker_map.write(tmp_path, {"10.0.0.7": WEB, "10.0.0.8": API, "10.0.0.9": db})   # api's token is missing
        ident, own = Ident(), object()
        lk = Linkers(tmp_path, ident, ConsulConfig(host="127.0.0.1", port=1), Reachability("fake"), own=own)
        lk.reload()
        assert set(ident.followed) == {"web", "db"} and lk.errors == 1    # api's token unreadable: named
        assert ident.followed["web"].consul.token == "secret-web"         # web's leaf with web's token
        assert ident.followed["db"] is own and list(lk.apis) == [WEB.token]
        assert lk.identity_of("10.0.0.7") == "web" and lk.identity_of("10.0.0.8") is None
        assert lk.snapshot()["sources"] == {"10.0.0.7": {"identity": "web", "ready": True},
                                            "10.0.0.9": {"identity": "db", "ready": False}}
        (tmp_path / linker_map.FILE).write_text("{broken")
        lk.reload()
        assert lk.identity_of("10.0.0.7") == "web" and lk.errors == 2     # the last good map holds
        for api in lk.apis.values():
            await api.consul.close()
    asyncio.run(t())


# -- intentions: holders per host --------------------------------------------------------------

class FakeConsul:
    """The exact-intention endpoint in memory; `after_put` runs once, right after a PUT landed."""

    def __init__(self):
        self.items: dict[str, dict] = {}
        self.after_put = None

    def send(self, method, path, body):
        if method == "GET":
            return (200, dict(self.items[path])) if path in self.items else (404, "not found")
        if method == "PUT":
            self.items[path] = dict(body)
            if self.after_put is not None:
                hook, self.after_put = self.after_put, None
                hook(path)
            return 200, True
        self.items.pop(path, None)
        return 200, True


CFG = ConsulConfig(host="127.0.0.1", port=8500)
LINK = Link("web", "frontdb")


def test_an_intention_is_held_per_host_and_goes_with_its_last_holder():
    consul = FakeConsul()
    a, b = (Intentions(CFG, h, "lab", send=consul.send) for h in ("aaaa", "bbbb"))
    a.ensure(LINK, "linker web")
    [path] = consul.items
    assert holders(consul.items[path]) == ["aaaa"] and made_by_links(consul.items[path])
    b.ensure(LINK, "linker web")
    a.ensure(LINK, "linker web")                          # already held: no change
    assert holders(consul.items[path]) == ["aaaa", "bbbb"]
    a.remove(LINK)
    assert holders(consul.items[path]) == ["bbbb"] and consul.items[path]["Action"] == "allow"
    a.remove(LINK)                                        # not held by a: nothing
    b.remove(LINK)
    assert consul.items == {}


def test_a_persons_intention_is_never_touched():
    consul = FakeConsul()
    a = Intentions(CFG, "aaaa", "lab", send=consul.send)
    a.ensure(LINK, "linker web")
    [path] = consul.items
    consul.items[path] = {"Action": "deny", "Description": f"by hand {MARK.format('aaaa')}"}
    a.ensure(LINK, "linker web")
    a.remove(LINK)
    assert consul.items[path]["Action"] == "deny"
    consul.items[path] = {"Action": "allow", "Description": "by hand"}     # no mark: a person's allow
    a.remove(LINK)
    assert consul.items[path] == {"Action": "allow", "Description": "by hand"}


def test_a_hold_lost_to_another_hosts_crossing_write_is_made_again():
    consul = FakeConsul()
    b = Intentions(CFG, "bbbb", "lab", send=consul.send)
    # Host a read "none" as b did, and its PUT lands right after b's: b's mark is gone
    # when b reads back, so b adds it again over a's.
    consul.after_put = lambda path: consul.items.update(
        {path: {"Action": "allow", "Description": MARK.format("aaaa")}})
    b.ensure(LINK, "linker web")
    [item] = consul.items.values()
    assert holders(item) == ["aaaa", "bbbb"] and item["Action"] == "allow"


def test_a_hold_that_keeps_being_overwritten_is_an_error_not_a_loop():
    class Stubborn(FakeConsul):
        def send(self, method, path, body):
            if method == "PUT":
                body = {"Action": "allow", "Description": MARK.format("cccc")}
            return super().send(method, path, body)
    a = Intentions(CFG, "aaaa", "lab", send=Stubborn().send)
    with pytest.raises(RuntimeFailure, match="overwritten 5 times"):
        a.ensure(LINK, "linker web")


# -- the journal: a host's hold released with its last local linker ---------------------------

class HoldKernel:
    def __init__(self):
        self.removed: list[str] = []

    def remove_intention(self, key):
        self.removed.append(key)


def test_the_host_releases_an_intention_with_its_last_local_linker(tmp_path):
    kernel = HoldKernel()
    j = Journal(Store(tmp_path / "state.db"), kernel)
    made = []
    for cid in ("c1", "c2"):                      # two linkers of service web on this host
        j.intention(cid, f"web frontdb {cid}", lambda: made.append(cid))
    j.intention("amb", "amb-x-host frontdb", lambda: None)     # a sidecar's own: not a linker's hold
    assert made == ["c1", "c2"]
    assert j.undo("c1", keep=()) == [] and kernel.removed == []      # c2 still holds it
    assert j.undo("c2", keep=()) == [] and kernel.removed == ["web frontdb"]
    assert j.undo("amb", keep=()) == [] and kernel.removed == ["web frontdb", "amb-x-host frontdb"]
    assert Link.from_key("web frontdb c1") == Link("web", "frontdb")


def test_the_map_holds_json_a_person_can_read(tmp_path):
    linker_map.write(tmp_path, {"10.88.0.7": WEB})
    doc = json.loads(Path(tmp_path / linker_map.FILE).read_text())
    assert doc == {"version": 1, "linkers": {"10.88.0.7": {"identity": "web", "container": WEB.container,
                                                          "token": "aaaaaaaaaaaa.token"}}}


# -- the daemon's side of the map ---------------------------------------------------------------

class NoRecords:
    def get(self, cid):
        return None           # the ambassador is not running: nobody to signal


class RevokeLog:
    enabled = True

    def __init__(self):
        self.revoked: list[str] = []

    def revoke(self, path):
        self.revoked.append(Path(path).name)


def test_the_daemon_adds_and_removes_entries_only_its_own_and_releases_tokens_with_the_dir(tmp_path):
    from portlink.runtime import ambassadors
    from portlink.runtime.linker_identity import LinkerIdentities
    tokens = RevokeLog()
    ids = LinkerIdentities(NoRecords(), lambda aid: tmp_path / aid / ambassadors.LINKERS_DIR, tokens, None)
    (tmp_path / "amb1").mkdir()
    ids.add("amb1", "10.88.0.7", WEB)
    ids.add("amb1", "10.88.0.8", API)
    d = tmp_path / "amb1" / ambassadors.LINKERS_DIR
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o755 and linker_map.read(d) == {"10.88.0.7": WEB, "10.88.0.8": API}
    ids.remove(f"amb1 10.88.0.7 {API.container}")       # not that linker's entry (an address reused): kept
    assert set(linker_map.read(d)) == {"10.88.0.7", "10.88.0.8"}
    ids.remove(f"amb1 10.88.0.7 {WEB.container}")
    assert linker_map.read(d) == {"10.88.0.8": API}
    ids.remove(f"gone 10.88.0.8 {API.container}")       # the ambassador's dir is gone already: nothing
    (d / API.token).write_text("secret")
    ids.release_dir(str(tmp_path / "amb1"))
    assert tokens.revoked == [API.token]
