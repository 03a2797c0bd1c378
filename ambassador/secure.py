"""The ambassador's mutual-TLS flags and their assembly (kept apart from main.py's
plaintext options so the two evolve separately).

    --tls-serve [PORT=]SERVICE   server side: listener PORT (every listener without
                                 PORT=) serves SERVICE's identity to authorized clients
    --tls-dial SOURCE            client side: dial backends presenting SOURCE's leaf
    --tls-target SERVICE         ... and require them to be SERVICE (default --service)
    --tls-keys DIR               private directory for the leaf files while loading
    --tls-warm N                 client side: warm connections kept per backend (0: none, the default)
    --authorize-cache S          seconds an authorize answer is reused (1; 0: never)
    --tls-linkers DIR            client side: the linkers map (portlink.linker_map) and
                                 their token files: a connection from a linker's address
                                 is dialled as the linker's own identity
    --tls-unlinked own|refuse    ... and one from any other address: as SOURCE (own, the
                                 default: a sidecar anyone may point at) or refused
                                 (refuse: an ambassador made for links)

The map is re-read on SIGHUP (the daemon sends it after each change) and
whenever the file changed (checked every second, for a signal that came
before the handler)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import math
import os
import re
import signal
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from portlink import parse
from portlink.errors import InvalidArgument

log = logging.getLogger("portlink.ambassador")

_SERVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
WAIT_LOG = 10.0          # seconds between "still waiting for certificates" lines


@dataclass(frozen=True)
class TLSOptions:
    serve: Mapping[int, str]          # server side: listener port -> the service it is
    dial_as: str | None = None        # client side: the identity presented
    dial_to: str | None = None        # client side: the identity required of backends
    key_dir: str | None = None        # None: a fresh private dir under $TMPDIR
    authorize_ttl: float = 1.0
    warm: int = 0                     # client side: warm connections per backend (ambassador/warm.py)
    linkers: str | None = None        # client side: the linkers map's directory (portlink.linker_map)
    unlinked: str = "own"             # client side, a source that is no linker: "own" identity or "refuse"


def add_tls_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("mutual TLS (Consul Connect)")
    g.add_argument("--tls-serve", action="append", default=[], metavar="[PORT=]SERVICE",
                   help="accept only mutual TLS clients authorized to reach SERVICE (repeatable per port)")
    g.add_argument("--tls-dial", metavar="SOURCE", help="dial backends over mutual TLS as service SOURCE")
    g.add_argument("--tls-target", metavar="SERVICE", help="the service backends must prove to be "
                   "(default: --service)")
    g.add_argument("--tls-keys", metavar="DIR", help="private directory for certificate files while they "
                   "load (default: a new one under $TMPDIR)")
    g.add_argument("--tls-warm", default=None, metavar="N",
                   help="client side: mutual TLS connections kept handshaken per backend, so a new "
                        "client skips the handshake (0: none, the default)")
    g.add_argument("--tls-linkers", metavar="DIR", help="client side: dial as each linking container's own "
                   "identity, from the linkers map in DIR (written by portlinkd)")
    g.add_argument("--tls-unlinked", default=None, metavar="own|refuse",
                   help="client side with --tls-linkers: a client that is no linker is dialled as SOURCE "
                        "(own, the default) or refused (refuse)")
    g.add_argument("--authorize-cache", default="1", metavar="S",
                   help="seconds an authorization answer is reused (1)")


def _service(text: str, flag: str) -> str:
    if not _SERVICE.match(text):
        raise ValueError(f"invalid {flag} {text!r}: expected a Consul service name (letters, digits, '_', '.', '-')")
    return text


def tls_options(a: argparse.Namespace, listen: tuple[int, ...], service: str | None, consul,
                env: Mapping[str, str] | None) -> tuple[TLSOptions | None, object]:
    """(TLSOptions or None, the Consul config, made from --consul if not made yet).
    ValueError names the first bad value."""
    if not (a.tls_serve or a.tls_dial):
        for flag, v in (("--tls-target", a.tls_target), ("--tls-keys", a.tls_keys), ("--tls-warm", a.tls_warm),
                        ("--tls-linkers", a.tls_linkers), ("--tls-unlinked", a.tls_unlinked)):
            if v is not None:
                raise ValueError(f"{flag} is only used with --tls-serve or --tls-dial")
        return None, consul
    if a.tls_serve and a.tls_dial:
        raise ValueError("give --tls-serve (server side) or --tls-dial (client side), not both")
    serve: dict[int, str] = {}
    every: str | None = None
    for spec in a.tls_serve:
        port, sep, name = spec.rpartition("=")
        if not sep:
            if every is not None:
                raise ValueError(f"--tls-serve {spec}: a SERVICE for every port is already given ({every})")
            every = _service(spec.strip(), "--tls-serve")
            continue
        p = parse.port("--tls-serve port", port.strip())
        if p not in listen:
            raise ValueError(f"--tls-serve {spec}: {p} is not a --listen port")
        if p in serve:
            raise ValueError(f"--tls-serve names port {p} twice")
        serve[p] = _service(name.strip(), "--tls-serve")
    if a.tls_serve:
        for p in listen:
            if p not in serve:
                if every is None:
                    raise ValueError(f"--listen {p} has no --tls-serve {p}=SERVICE: every listener of a "
                                     "server side speaks mutual TLS")
                serve[p] = every
    dial_as = _service(a.tls_dial, "--tls-dial") if a.tls_dial else None
    dial_to = None
    if dial_as:
        dial_to = _service(a.tls_target, "--tls-target") if a.tls_target else service
        if dial_to is None:
            raise ValueError("--tls-dial needs --tls-target SERVICE (or --service NAME): the identity "
                             "backends must prove")
    elif a.tls_target:
        raise ValueError("--tls-target is only used with --tls-dial")
    warm = 0
    if a.tls_warm is not None:
        if not dial_as:
            raise ValueError("--tls-warm is only used with --tls-dial")
        try:
            warm = int(a.tls_warm.strip())
        except ValueError:
            warm = -1
        if not 0 <= warm <= 64:
            raise ValueError(f"invalid --tls-warm {a.tls_warm!r}: expected 0 to 64 connections per backend")
    if a.tls_linkers is not None and not dial_as:
        raise ValueError("--tls-linkers is only used with --tls-dial")
    if a.tls_unlinked is not None:
        if a.tls_linkers is None:
            raise ValueError("--tls-unlinked is only used with --tls-linkers")
        if a.tls_unlinked not in ("own", "refuse"):
            raise ValueError(f"invalid --tls-unlinked {a.tls_unlinked!r}: expected own or refuse")
    ttl = parse.duration("--authorize-cache", a.authorize_cache)
    if not math.isfinite(ttl) or not 0 <= ttl <= 3600:
        raise ValueError(f"invalid --authorize-cache {a.authorize_cache!r}: expected 0 to 3600 seconds")
    if consul is None:
        from portlink.catalog.config import from_sources
        try:
            consul = from_sources(address=a.consul, env=env)
        except InvalidArgument as e:
            raise ValueError(str(e)) from None
        if consul is None:
            raise ValueError("mutual TLS needs the local Consul agent: give --consul ADDR (or CONSUL_HTTP_ADDR)")
    return TLSOptions(serve=serve, dial_as=dial_as, dial_to=dial_to, key_dir=a.tls_keys, authorize_ttl=ttl,
                      warm=warm, linkers=a.tls_linkers, unlinked=a.tls_unlinked or "own"), consul


class Secure:
    """The identity follower and the per-listener TLS hooks of one ambassador process."""

    def __init__(self, opts: TLSOptions, consul, reach, service: str | None = None, config=None) -> None:
        """`consul`: the client of the ambassador's own token; `config`: its
        ConsulConfig (a linker's leaf is fetched with the linker's token)."""
        from portlink.ambassador.identity import Identity
        from portlink.ambassador.tls import Authorizer
        from portlink.catalog.connect import AgentConnect
        self.opts = opts
        self.made_dir = opts.key_dir is None
        self.key_dir = Path(opts.key_dir or tempfile.mkdtemp(prefix="portlink-connect-"))
        api = AgentConnect(consul)
        services = list(dict.fromkeys([*opts.serve.values(), *([opts.dial_as] if opts.dial_as else [])]))
        self.identity = Identity(api, services, self.key_dir, reach)
        self.authorizer = Authorizer(api.authorize, ttl=opts.authorize_ttl)
        self.task: asyncio.Task | None = None
        self.client_tls = None
        self.linkers = (Linkers(Path(opts.linkers), self.identity, config, reach, own=api)
                        if opts.linkers and config is not None else None)

    def ambassador_options(self, listen, connect_timeout: float) -> dict:
        from portlink.ambassador.tls import ClientTLS, ServerTLS
        if self.opts.dial_as:
            self.client_tls = ClientTLS(self.identity, self.opts.dial_as, self.opts.dial_to, connect_timeout,
                                        warm=self.opts.warm, linkers=self.linkers,
                                        refuse_unlinked=self.opts.unlinked == "refuse")
            return {"tls_out": self.client_tls}
        return {"tls_in": {p: ServerTLS(self.identity, s, self.authorizer) for p, s in self.opts.serve.items()}}

    async def start(self, stop: asyncio.Event) -> bool:
        """Follow the agent; True once every identity has certificates (listening
        before that would refuse every client), False if `stop` came first."""
        from portlink.ambassador.tls_context import private_dir
        private_dir(self.key_dir)
        if self.linkers is not None:
            self.linkers.start()
        self.task = asyncio.ensure_future(self.identity.run())
        ready = asyncio.ensure_future(self.identity.ready.wait())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not ready.done() and not stopped.done():
                await asyncio.wait({ready, stopped, self.task}, timeout=WAIT_LOG,
                                   return_when=asyncio.FIRST_COMPLETED)
                if self.task.done():
                    self.task.result()          # a bug: let it surface
                if not ready.done() and not stopped.done():
                    log.warning("still waiting for connect certificates of %s from the consul agent (%s)",
                                ", ".join(self.identity.services), self.identity.reach.last_error or "no answer yet")
        finally:
            for f in (ready, stopped):
                f.cancel()
        if ready.done() and not ready.cancelled() and self.linkers is not None:
            await self.linkers.settle(stop)
        return ready.done() and not ready.cancelled()

    async def stop(self) -> None:
        if self.linkers is not None:
            await self.linkers.stop()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.made_dir:
            try:
                os.rmdir(self.key_dir)     # empty: every file is removed once loaded
            except OSError as e:
                log.warning("could not remove key directory %s: %s", self.key_dir, e.strerror or e)

    def snapshot(self) -> dict:
        snap = self.identity.snapshot()
        snap["authorize"] = {"cache_seconds": self.opts.authorize_ttl, "cached": len(self.authorizer.cache),
                             "errors": self.authorizer.errors}
        if self.client_tls is not None:
            snap["dial_handshakes"] = dict(self.client_tls.handshakes)
            snap["unlinked"] = "refuse" if self.client_tls.refuse_unlinked else "own"
        if self.linkers is not None:
            snap["linkers"] = self.linkers.snapshot()
        return snap


class Linkers:
    """The linkers map of a client-side ambassador, followed: source address ->
    identity for ClientTLS, and each identity's leaf followed by the Identity
    with that linker's own token (a token that may fetch only that leaf)."""

    POLL = 1.0     # seconds between checks of the file (SIGHUP is the fast path)

    def __init__(self, directory: Path, identity, config, reach, own=None, client_timeout: float = 40.0) -> None:
        """`own`: the api with the ambassador's own token, for a linker without a
        token of its own (Consul without ACLs: the map names none)."""
        self.directory, self.identity, self.config, self.reach = directory, identity, config, reach
        self.own = own
        self.client_timeout = client_timeout
        self.by_ip: dict = {}                      # ip -> portlink.linker_map.Linker
        self.apis: dict[str, object] = {}          # token file name -> AgentConnect with that token
        self.loads = 0                             # maps applied
        self.errors = 0                            # maps (or token files) that could not be read
        self._seen: tuple | None = None
        self._task: asyncio.Task | None = None
        self._closing: set[asyncio.Task] = set()

    def identity_of(self, ip: str) -> str | None:
        x = self.by_ip.get(ip)
        return x.identity if x is not None else None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.reload()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        except (NotImplementedError, RuntimeError, ValueError):
            pass        # not the main thread (tests): the poll reads it
        self._task = asyncio.ensure_future(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.POLL)
            self.reload(only_if_changed=True)

    def _stamp(self) -> tuple | None:
        from portlink.linker_map import FILE
        try:
            st = os.stat(self.directory / FILE)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def reload(self, only_if_changed: bool = False) -> None:
        from portlink import linker_map
        from portlink.catalog.connect import AgentConnect
        stamp = self._stamp()
        if only_if_changed and stamp == self._seen:
            return
        self._seen = stamp
        try:
            by_ip = linker_map.read(self.directory)
        except (OSError, linker_map.MapError) as e:
            self.errors += 1
            log.error("linkers map in %s: %s; keeping the last one", self.directory, e)
            return
        wanted = linker_map.tokens(by_ip)
        apis: dict[str, object] = {}
        follow: dict[str, object] = {}
        for identity, token_file in wanted.items():
            api = self.apis.get(token_file) if token_file else self.own
            if api is None:
                try:
                    secret = (self.directory / token_file).read_text().strip()
                except OSError as e:
                    self.errors += 1
                    log.error("linker identity %s: cannot read its token %s: %s", identity, token_file,
                              e.strerror or e)
                    continue
                cfg = dataclasses.replace(self.config, token=secret or None)
                api = AgentConnect(cfg.client(timeout=self.client_timeout))
            if token_file:
                apis[token_file] = api
            follow[identity] = api
        changed = by_ip != self.by_ip
        self.by_ip = {ip: x for ip, x in by_ip.items() if x.identity in follow}
        self.apis = apis
        for api in self.identity.follow(follow):
            if api not in apis.values() and api is not self.own:
                t = asyncio.ensure_future(api.consul.close())
                self._closing.add(t)
                t.add_done_callback(self._closing.discard)
        self.loads += 1
        if changed:
            log.info("linkers: %s", ", ".join(f"{ip}={x.identity}" for ip, x in sorted(self.by_ip.items()))
                     or "none")

    async def settle(self, stop: asyncio.Event, wait: float = 5.0) -> None:
        """At start (a restart, with linkers running): listen once the linkers' leaves
        are in too, or after `wait`, so their first connections are not refused."""
        deadline = asyncio.get_running_loop().time() + wait
        while not stop.is_set() and asyncio.get_running_loop().time() < deadline:
            if all(self.identity.current(x.identity) is not None for x in self.by_ip.values()):
                return
            await asyncio.sleep(0.02)
        missing = sorted({x.identity for x in self.by_ip.values() if self.identity.current(x.identity) is None})
        if missing:
            log.warning("listening without the certificates of linkers %s yet", ", ".join(missing))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
        for api in self.apis.values():
            await api.consul.close()     # not `own`: the ambassador's own client, closed by its owner
        await asyncio.gather(*self._closing, return_exceptions=True)

    def snapshot(self) -> dict:
        """For /stats (the daemon waits on it before a linker starts): each linker's
        address, identity and whether its certificate is ready."""
        return {"loads": self.loads, "errors": self.errors,
                "sources": {ip: {"identity": x.identity, "ready": self.identity.current(x.identity) is not None}
                            for ip, x in sorted(self.by_ip.items())}}
