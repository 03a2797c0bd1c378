"""The host forwarder: one process per host serving every client-side
ambassador portlinkd runs (plaintext links).

    python -P -m portlink.ambassador.hostfwd --control-fd N

Each ambassador stays a portlink container (its own namespace, address, lease
and DNS name; its process only a busybox `sleep`). portlinkd makes the
ambassador's listening sockets, and its metrics socket on port 9102, inside
that namespace and hands them over the control socket (ambassador/hostfwd_proto.py);
it feeds each one its service's instances from its own catalog cache, so this
process holds no Consul connection at all. Here each ambassador is a
HostedAmbassador: its listeners, pools and metrics of its own (forward.Ambassador)
and its own /metrics and /stats on its own address, many in one event loop.

It runs as the ambassadors' user with no capabilities (runtime.security): started
by portlinkd as root (the interpreter may live where that user cannot read, a
pyenv under /root), it imports what it runs, then drops to `--user` and sets
no_new_privs before it takes any request (drop_privileges). Watched by portlinkd (runtime/host_forwarder.py). `--control-fd`: an
inherited listening unix SOCK_SEQPACKET socket; portlinkd connects to it (again
after a restart of its own) and the newest connection is the one served.
A bad message gets an error reply and changes nothing. SIGTERM stops it."""

from __future__ import annotations

import argparse
import array
import asyncio
import ipaddress
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterable, Sequence

from portlink.ambassador import hostfwd_proto as proto
from portlink.ambassador.backends import Backend
from portlink.ambassador.forward import Ambassador
from portlink.ambassador.sources import split_instances
from portlink.ambassador.stats_http import StatsServer

log = logging.getLogger("portlink.hostfwd")

PROG = "portlink-hostfwd"


def dialable(b: Backend) -> bool:
    """This process runs in the host's namespace, not the ambassador's: a backend on
    loopback or the unspecified address would reach the host itself (its Consul
    agent, its daemons), which an ambassador container never could. Refused."""
    try:
        ip = ipaddress.ip_address(b.address)
    except ValueError:
        return b.address.lower() not in ("localhost", "localhost.localdomain")
    return not (ip.is_loopback or ip.is_unspecified)


class HostedAmbassador:
    """One ambassador in the host forwarder: listeners on sockets made in its
    namespace, backends fed by portlinkd, its own metrics endpoint."""

    def __init__(self, add: proto.Add, dialable=dialable) -> None:
        self.spec, self.dialable = add, dialable
        self.amb = Ambassador(add.ports, policy=add.policy, drain_deadline=add.drain_deadline)
        self.reachable: bool | None = None
        self.stats_server: StatsServer | None = None
        self.feeds = 0

    async def start(self, listeners: Sequence[socket.socket], metrics: socket.socket) -> None:
        await self.amb.start(dict(zip(self.spec.ports, listeners)))
        try:
            self.stats_server = StatsServer(self.stats)
            await self.stats_server.start(sock=metrics)
        except BaseException:
            await self.amb.stop(0.5)
            raise

    def feed(self, instances: Iterable, reachable: bool | None) -> None:
        # Client sides dial plaintext: a Connect-native instance (a server side) speaks mTLS only.
        instances = [i for i in instances if not i.native]
        for port, backends in split_instances(instances, self.spec.ports).items():
            ok = tuple(b for b in backends if self.dialable(b))
            if len(ok) != len(backends):
                log.warning("%s: refusing loopback backends %s", self.spec.name,
                            [b.label for b in backends if b not in ok])
            self.amb.apply(port, ok)
        self.reachable = reachable
        self.feeds += 1

    def ready(self) -> bool:
        """Forwarding: every listener has a backend. What a run that links to it
        waits for. Consul known lost does not count: portlinkd's watch may still be
        in its backoff while the agent already answered the run's own question, and
        a run that returned then found its link closing every connection (CI). With
        Consul really lost a run is refused before it waits, unless this host's
        catalog holds instances, which then are its backends."""
        pools = self.amb.pools
        return bool(pools) and all(p.backends for p in pools.values())

    def stats(self) -> tuple[str, dict]:
        """The same /metrics and /stats as a `python -m portlink.ambassador` of its own."""
        snap = self.amb.snapshot()
        snap["consul"] = {"service": self.spec.service, "url": self.spec.consul, "reachable": self.reachable,
                          "instances": "host forwarder"}
        return self.amb.metrics.render(), snap

    async def stop(self, grace: float = 2.0) -> None:
        if self.stats_server is not None:
            await self.stats_server.cleanup()
        await self.amb.stop(grace)


class Registry:
    """The ambassadors of this host, by container id. Each request touches one
    ambassador alone: a bad one is refused and the others carry on."""

    def __init__(self, dialable=dialable) -> None:
        self.held: dict[str, HostedAmbassador] = {}
        self.dialable = dialable     # which backends may be dialled (tests: loopback too)

    async def handle(self, data: bytes, fds: list[int]) -> bytes:
        """One request -> its reply. Every fd is owned here: used or closed."""
        try:
            req = proto.parse_request(data, len(fds))
        except proto.ProtocolError as e:
            _close(fds)
            log.error("bad control message: %s", e)
            return proto.reply(False, str(e))
        try:
            if isinstance(req, proto.List):
                return proto.reply(True, ambassadors={cid: h.spec.key for cid, h in self.held.items()})
            if isinstance(req, proto.Remove):
                h = self.held.pop(req.id, None)
                if h is None:
                    return proto.reply(True, removed=False)
                await h.stop()
                log.info("%s: removed", h.spec.name)
                return proto.reply(True, removed=True)
            if isinstance(req, proto.Feed):
                h = self.held.get(req.id)
                if h is None:
                    return proto.reply(False, f"no ambassador {req.id[:12]} here")
                h.feed(req.instances, req.reachable)
                return proto.reply(True, ready=h.ready())
            return await self._add(req, fds)
        except Exception as e:   # one ambassador's trouble: the others go on
            log.exception("control request %s failed", type(req).__name__)
            return proto.reply(False, f"{type(req).__name__.lower()} failed: {e}")

    async def _add(self, req: proto.Add, fds: list[int]) -> bytes:
        old = self.held.get(req.id)
        if old is not None and old.spec.key == req.key:
            _close(fds)                  # the same namespace: keep what runs, and its connections
            return proto.reply(True, kept=True)
        try:
            socks = [socket.socket(fileno=fd) for fd in fds]
        except OSError as e:
            _close(fds)
            return proto.reply(False, f"not a socket: {e.strerror or e}")
        fds = []
        bad = [s for s in socks if s.type != socket.SOCK_STREAM or s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 1]
        if bad:
            for s in socks:
                s.close()
            return proto.reply(False, "every fd of an add must be a listening TCP socket")
        if old is not None:              # restarted in a new namespace: the old sockets are dead
            self.held.pop(req.id)
            await old.stop(0.5)
        h = HostedAmbassador(req, self.dialable)
        try:
            await h.start(socks[:-1], socks[-1])
        except BaseException:
            for s in socks:
                s.close()
            raise
        self.held[req.id] = h
        log.info("%s: serving ports %s of service %s (policy %s)", req.name, ",".join(map(str, req.ports)),
                 req.service, req.policy)
        return proto.reply(True, kept=False)

    async def stop(self) -> None:
        held, self.held = self.held, {}
        await asyncio.gather(*(h.stop() for h in held.values()), return_exceptions=True)


def _close(fds: Iterable[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


TRUNCATED = b"\0truncated"     # stands for a datagram or fd list over the limits


async def _recv(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> tuple[bytes, list[int]]:
    """One datagram and its fds (b"" at EOF)."""
    while True:
        try:
            fds = array.array("i")
            data, anc, flags, _ = conn.recvmsg(proto.MAX_MESSAGE + 1, socket.CMSG_SPACE(proto.MAX_FDS * fds.itemsize))
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
            if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
                _close(fds)
                return TRUNCATED, []
            return data, list(fds)
        except BlockingIOError:
            waiter = loop.create_future()
            loop.add_reader(conn.fileno(), lambda: waiter.done() or waiter.set_result(None))
            try:
                await waiter
            finally:
                loop.remove_reader(conn.fileno())


async def serve_connection(registry: Registry, conn: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    conn.setblocking(False)
    try:
        while True:
            data, fds = await _recv(loop, conn)
            if not data and not fds:
                return
            if data is TRUNCATED:
                answer = proto.reply(False, f"message over {proto.MAX_MESSAGE} bytes or {proto.MAX_FDS} fds: dropped")
            else:
                answer = await registry.handle(data, fds)
            await loop.sock_sendall(conn, answer)
    except (ConnectionError, OSError) as e:
        log.warning("control connection lost: %s", e)
    finally:
        conn.close()


async def run(control: socket.socket, stop: asyncio.Event | None = None) -> int:
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    registry = Registry()
    control.setblocking(False)
    current: asyncio.Task | None = None

    async def accept() -> None:
        nonlocal current
        while True:
            conn, _ = await loop.sock_accept(control)
            if current is not None:          # portlinkd restarted: serve the newest connection
                current.cancel()
            current = loop.create_task(serve_connection(registry, conn))

    acceptor = loop.create_task(accept())
    log.info("host forwarder ready (pid %d)", os.getpid())
    try:
        await stop.wait()
    finally:
        acceptor.cancel()
        if current is not None:
            current.cancel()
        await registry.stop()
        log.info("host forwarder stopped")
    return 0


PR_SET_NO_NEW_PRIVS = 38


def drop_privileges(uid: int, gid: int) -> None:
    """Become uid:gid with no supplementary groups and no capabilities (a uid change
    from 0 clears them), and never regain any (no_new_privs). Raises if any is left."""
    import ctypes
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    with open("/proc/self/status") as f:
        caps = {k: v.strip() for k, _, v in (line.partition(":") for line in f) if k.startswith("Cap")}
    if any(int(caps[k], 16) for k in ("CapPrm", "CapEff", "CapAmb")) or os.getuid() != uid or os.geteuid() != uid:
        raise OSError(f"privileges remain after the drop: {caps}")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    p = argparse.ArgumentParser(prog=PROG, description="portlink's host forwarder (started by portlinkd)")
    p.add_argument("--control-fd", type=int, required=True, metavar="N",
                   help="an inherited listening unix SOCK_SEQPACKET socket portlinkd connects to")
    p.add_argument("--user", metavar="UID:GID", help="drop to this user before serving (started as root)")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        control = socket.socket(fileno=a.control_fd)
    except OSError as e:
        print(f"{PROG}: error: --control-fd {a.control_fd}: {e.strerror or e}", file=sys.stderr)
        return 2
    if control.family != socket.AF_UNIX or control.type != socket.SOCK_SEQPACKET:
        print(f"{PROG}: error: --control-fd {a.control_fd} is not a unix SOCK_SEQPACKET socket", file=sys.stderr)
        return 2
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    if a.user:
        # Everything the loop runs is imported by now (plaintext: no TLS modules).
        try:
            uid, gid = (int(x) for x in a.user.split(":"))
            drop_privileges(uid, gid)
        except (ValueError, OSError) as e:
            print(f"{PROG}: error: --user {a.user}: {e}", file=sys.stderr)
            return 2
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run(control))


if __name__ == "__main__":
    sys.exit(main())
