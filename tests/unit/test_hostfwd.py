"""The host forwarder's pure parts: its control protocol and its registry of
ambassadors (real loopback sockets stand in for ones made in namespaces)."""

from __future__ import annotations

import array
import asyncio
import json
import os
import socket

import pytest

from portlink.ambassador import hostfwd
from portlink.ambassador import hostfwd_proto as proto
from portlink.ambassador.backends import Backend
from portlink.catalog.services import META_PORT, Instance


def add_doc(**over) -> dict:
    doc = {"op": "add", "id": "c1", "name": "amb-a-bridge", "key": "c1@1:2", "service": "a", "ports": [80],
           "policy": "drain", "drain_deadline": 10, "consul": "http://10.0.0.1:8500"}
    return {**doc, **over}


def enc(doc) -> bytes:
    return json.dumps(doc).encode()


# -- protocol -------------------------------------------------------------------------------

def test_add_feed_remove_list_parse():
    a = proto.parse_request(enc(add_doc(ports=[80, 443])), 3)
    assert a == proto.Add("c1", "amb-a-bridge", "c1@1:2", "a", (80, 443), "drain", 10.0, "http://10.0.0.1:8500")
    assert proto.parse_request(proto.add_message(a), 3) == a
    inst = Instance("i1", "a", "10.0.0.9", 5432, meta=((META_PORT, "80/tcp"),))
    f = proto.parse_request(proto.feed_message("c1", [inst], True), 0)
    assert f.id == "c1" and f.reachable is True
    assert (f.instances[0].address, f.instances[0].port, f.instances[0].meta_get(META_PORT)) == ("10.0.0.9", 5432, "80/tcp")
    assert proto.parse_request(b'{"op": "remove", "id": "c1"}', 0) == proto.Remove("c1")
    assert proto.parse_request(b'{"op": "list"}', 0) == proto.List()


@pytest.mark.parametrize("data, nfds, words", [
    (b"{nope", 0, "not JSON"),
    (b"[1]", 0, "JSON object"),
    (b'{"op": "explode"}', 0, "unknown op 'explode'"),
    (b'{"op": "list"}', 1, "takes no file descriptors"),
    (enc(add_doc()), 1, "needs 2 file descriptors"),
    (enc(add_doc(ports=[80, 80])), 3, "distinct TCP ports"),
    (enc(add_doc(ports=[0])), 2, "distinct TCP ports"),
    (enc(add_doc(policy="yolo")), 2, "unknown policy 'yolo'"),
    (enc(add_doc(drain_deadline=-1)), 2, "drain_deadline"),
    (enc(add_doc(id="")), 2, "field 'id'"),
    (enc({"op": "feed", "id": "c1", "instances": {}, "reachable": None}), 0, "'instances' must be a list"),
    (enc({"op": "feed", "id": "c1", "instances": [{"address": "10.0.0.1", "port": 70000, "native": False}],
          "reachable": None}), 0, "port 70000 is not a port"),
    (enc({"op": "feed", "id": "c1", "instances": [], "reachable": "yes"}), 0, "'reachable'"),
    (b"x" * (proto.MAX_MESSAGE + 1), 0, "over the"),
])
def test_bad_requests_name_the_problem(data, nfds, words):
    with pytest.raises(proto.ProtocolError, match=words):
        proto.parse_request(data, nfds)


def test_reply_parsing():
    assert proto.parse_reply(proto.reply(True, x=1)) == {"ok": True, "x": 1}
    with pytest.raises(proto.ProtocolError, match="closed the control connection"):
        proto.parse_reply(b"")
    with pytest.raises(proto.ProtocolError, match="not"):
        proto.parse_reply(b'{"fine": 1}')


def test_loopback_backends_are_not_dialable_from_the_host():
    assert not hostfwd.dialable(Backend("127.0.0.1", 80))
    assert not hostfwd.dialable(Backend("::1", 80))
    assert not hostfwd.dialable(Backend("0.0.0.0", 80))
    assert not hostfwd.dialable(Backend("localhost", 80))
    assert hostfwd.dialable(Backend("10.1.0.5", 80))


# -- the registry, on loopback --------------------------------------------------------------

def listening() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def fetch(port: int, payload: bytes = b"ping") -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(payload)
    await w.drain()
    w.write_eof()
    data = await asyncio.wait_for(r.read(), 5)
    w.close()
    return data


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await asyncio.wait_for(r.read(), 5)
    w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def echo_backend(tag: bytes) -> tuple[asyncio.AbstractServer, int]:
    async def handle(r, w):
        data = await r.read()
        w.write(tag + data)
        await w.drain()
        w.close()
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


def inst(port: int, meta_port: int) -> dict:
    return {"id": f"i{port}", "address": "127.0.0.1", "port": port, "portlink_port": f"{meta_port}/tcp",
            "native": False}


async def add(reg: hostfwd.Registry, cid: str, key: str = "k") -> tuple[dict, int, int]:
    lst, met = listening(), listening()
    port, mport = lst.getsockname()[1], met.getsockname()[1]
    # As the daemon does: the fds are dup'ed into the message; the sender closes its own.
    fds = [os.dup(lst.fileno()), os.dup(met.fileno())]
    lst.close(), met.close()
    r = json.loads(await reg.handle(enc(add_doc(id=cid, name=f"amb-{cid}", key=key, ports=[80])), fds))
    return r, port, mport


def test_many_ambassadors_each_with_its_own_backends_and_metrics():
    async def go():
        reg = hostfwd.Registry(dialable=lambda b: True)
        s1, p1 = await echo_backend(b"one:")
        s2, p2 = await echo_backend(b"two:")
        r1, l1, m1 = await add(reg, "c1")
        r2, l2, m2 = await add(reg, "c2")
        assert r1 == r2 == {"ok": True, "kept": False}
        for cid, p in (("c1", p1), ("c2", p2)):
            r = json.loads(await reg.handle(enc({"op": "feed", "id": cid, "instances": [inst(p, 80)],
                                                 "reachable": True}), []))
            assert r == {"ok": True, "ready": True}
        assert await fetch(l1) == b"one:ping"
        assert await fetch(l2) == b"two:ping"
        assert await fetch(l2) == b"two:ping"
        status, body = await http_get(m1, "/stats")
        snap1 = json.loads(body)
        assert status == 200 and snap1["listeners"]["80"]["backends"] == [f"127.0.0.1:{p1}"]
        assert snap1["consul"] == {"service": "a", "url": "http://10.0.0.1:8500", "reachable": True,
                                   "instances": "host forwarder"}
        snap2 = json.loads((await http_get(m2, "/stats"))[1])
        assert snap1["metrics"]["connections_total"]["total"] == 1
        assert snap2["metrics"]["connections_total"]["total"] == 2
        status, text = await http_get(m2, "/metrics")
        assert status == 200 and b'portlink_ambassador_connections_total 2' in text.split(b'\n'), text
        # A reroute reaches that ambassador alone.
        await reg.handle(enc({"op": "feed", "id": "c1", "instances": [inst(p2, 80)], "reachable": True}), [])
        assert await fetch(l1) == b"two:ping"
        assert reg.held["c2"].amb.pools[80].backends == (Backend("127.0.0.1", p2),)
        assert reg.held["c2"].feeds == 1 and reg.held["c1"].feeds == 2
        # Removing one leaves the other serving; its ports are closed.
        assert json.loads(await reg.handle(b'{"op": "remove", "id": "c1"}', [])) == {"ok": True, "removed": True}
        with pytest.raises(ConnectionRefusedError):
            await fetch(l1)
        assert await fetch(l2) == b"two:ping"
        assert json.loads(await reg.handle(b'{"op": "list"}', [])) == {"ok": True, "ambassadors": {"c2": "k"}}
        await reg.stop()
        s1.close(), s2.close()
    asyncio.run(go())


def test_a_feed_reply_says_whether_the_ambassador_forwards():
    """ready: every listener has a backend, whatever Consul's reachability: what a run
    that links to it waits for, instead of asking its /stats."""
    async def go():
        reg = hostfwd.Registry(dialable=lambda b: True)
        lst = [listening() for _ in range(3)]
        fds = [os.dup(s.fileno()) for s in lst]
        for s in lst:
            s.close()
        r = json.loads(await reg.handle(enc(add_doc(ports=[80, 81])), fds))
        assert r["ok"], r

        async def feed(instances, reachable):
            return json.loads(await reg.handle(enc({"op": "feed", "id": "c1", "instances": instances,
                                                    "reachable": reachable}), []))
        assert await feed([], None) == {"ok": True, "ready": False}
        # Consul lost is no backend: the daemon's watch may be in its backoff while the
        # agent answered the run (CI: that run's link closed every connection).
        assert await feed([], False) == {"ok": True, "ready": False}
        assert await feed([inst(7001, 80), inst(7002, 81)], False) == {"ok": True, "ready": True}
        assert await feed([inst(7001, 80)], True) == {"ok": True, "ready": False}   # 81 has none
        assert await feed([inst(7001, 80), inst(7002, 81)], True) == {"ok": True, "ready": True}
        assert await feed([], True) == {"ok": True, "ready": False}
        await reg.stop()
    asyncio.run(go())


def test_bad_messages_are_refused_and_disturb_no_other_ambassador():
    async def go():
        reg = hostfwd.Registry(dialable=lambda b: True)
        srv, p = await echo_backend(b"ok:")
        _, l1, _ = await add(reg, "c1")
        await reg.handle(enc({"op": "feed", "id": "c1", "instances": [inst(p, 80)], "reachable": True}), [])
        before = open_fds()
        # garbage, with a stray fd: refused, the fd closed
        stray = os.open("/dev/null", os.O_RDONLY)
        r = json.loads(await reg.handle(b"\x00garbage", [stray]))
        assert r["ok"] is False and "not JSON" in r["error"]
        # an add whose fds are not listening sockets: refused, closed
        r = json.loads(await reg.handle(enc(add_doc(id="c9")), [os.open("/dev/null", os.O_RDONLY),
                                                                os.open("/dev/null", os.O_RDONLY)]))
        assert r["ok"] is False and "socket" in r["error"]
        connected = socket.socket()
        r = json.loads(await reg.handle(enc(add_doc(id="c9")), [os.dup(connected.fileno()), os.dup(connected.fileno())]))
        connected.close()
        assert r["ok"] is False and "listening TCP socket" in r["error"]
        # a feed of an unknown ambassador, a feed with a bad instance
        r = json.loads(await reg.handle(enc({"op": "feed", "id": "zz", "instances": [], "reachable": None}), []))
        assert r["ok"] is False and "no ambassador zz" in r["error"]
        r = json.loads(await reg.handle(enc({"op": "feed", "id": "c1", "instances": [{"address": "x y z" * 100}],
                                             "reachable": None}), []))
        assert r["ok"] is False and "address" in r["error"]
        assert open_fds() == before, "a refused message left a file descriptor open"
        assert list(reg.held) == ["c1"]
        assert reg.held["c1"].amb.pools[80].backends == (Backend("127.0.0.1", p),)
        assert await fetch(l1) == b"ok:ping"
        await reg.stop()
        srv.close()
    asyncio.run(go())


def test_add_again_in_the_same_namespace_keeps_it_a_new_namespace_replaces_it():
    async def go():
        reg = hostfwd.Registry(dialable=lambda b: True)
        srv, p = await echo_backend(b"ok:")
        _, l1, _ = await add(reg, "c1", key="ns1")
        await reg.handle(enc({"op": "feed", "id": "c1", "instances": [inst(p, 80)], "reachable": True}), [])
        first = reg.held["c1"]
        before = open_fds()
        r, l_new, _ = await add(reg, "c1", key="ns1")
        assert r == {"ok": True, "kept": True} and reg.held["c1"] is first
        assert open_fds() == before, "the duplicate's fds were kept"
        assert await fetch(l1) == b"ok:ping"
        r, l2, _ = await add(reg, "c1", key="ns2")
        assert r == {"ok": True, "kept": False} and reg.held["c1"] is not first
        with pytest.raises(ConnectionRefusedError):
            await fetch(l1)
        await reg.stop()
        srv.close()
    asyncio.run(go())


def test_loopback_backends_are_refused_by_default():
    async def go():
        reg = hostfwd.Registry()
        await add(reg, "c1")
        await reg.handle(enc({"op": "feed", "id": "c1", "instances": [inst(5432, 80),
                              {**inst(5432, 80), "address": "10.9.9.9"}], "reachable": True}), [])
        assert reg.held["c1"].amb.pools[80].backends == (Backend("10.9.9.9", 5432),)
        await reg.stop()
    asyncio.run(go())


def test_control_socket_carries_fds_and_a_bad_datagram_gets_an_error_reply():
    """serve_connection over a real SOCK_SEQPACKET pair, as portlinkd talks to it."""
    async def go():
        reg = hostfwd.Registry(dialable=lambda b: True)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        task = asyncio.get_running_loop().create_task(hostfwd.serve_connection(reg, theirs))
        loop = asyncio.get_running_loop()

        def ask(data: bytes, fds=()):
            if fds:
                ours.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            else:
                ours.send(data)
            return json.loads(ours.recv(1 << 20))
        lst, met = listening(), listening()
        r = await loop.run_in_executor(None, ask, enc(add_doc()), [lst.fileno(), met.fileno()])
        assert r == {"ok": True, "kept": False}
        r = await loop.run_in_executor(None, ask, b"]]]")
        assert r["ok"] is False and "not JSON" in r["error"]
        r = await loop.run_in_executor(None, ask, b'{"op": "list"}')
        assert r == {"ok": True, "ambassadors": {"c1": "c1@1:2"}}
        ours.close()
        await asyncio.wait_for(task, 5)      # EOF ends the connection, the ambassadors stay
        assert list(reg.held) == ["c1"]
        await reg.stop()
        lst.close(), met.close()
    asyncio.run(go())
