"""The ambassador's mutual-TLS flags and their assembly (kept apart from main.py's
plaintext options so the two evolve separately).

    --tls-serve [PORT=]SERVICE   server side: listener PORT (every listener without
                                 PORT=) serves SERVICE's identity to authorized clients
    --tls-dial SOURCE            client side: dial backends presenting SOURCE's leaf
    --tls-target SERVICE         ... and require them to be SERVICE (default --service)
    --tls-keys DIR               private directory for the leaf files while loading
    --tls-warm N                 client side: warm connections kept per backend (0: none, the default)
    --authorize-cache S          seconds an authorize answer is reused (1; 0: never)

Identity on the client side is one per ambassador (SOURCE); see the report /
README for the per-linker alternative."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import re
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
        for flag, v in (("--tls-target", a.tls_target), ("--tls-keys", a.tls_keys), ("--tls-warm", a.tls_warm)):
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
                      warm=warm), consul


class Secure:
    """The identity follower and the per-listener TLS hooks of one ambassador process."""

    def __init__(self, opts: TLSOptions, consul, reach, service: str | None = None) -> None:
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

    def ambassador_options(self, listen, connect_timeout: float) -> dict:
        from portlink.ambassador.tls import ClientTLS, ServerTLS
        if self.opts.dial_as:
            self.client_tls = ClientTLS(self.identity, self.opts.dial_as, self.opts.dial_to, connect_timeout,
                                        warm=self.opts.warm)
            return {"tls_out": self.client_tls}
        return {"tls_in": {p: ServerTLS(self.identity, s, self.authorizer) for p, s in self.opts.serve.items()}}

    async def start(self, stop: asyncio.Event) -> bool:
        """Follow the agent; True once every identity has certificates (listening
        before that would refuse every client), False if `stop` came first."""
        from portlink.ambassador.tls_context import private_dir
        private_dir(self.key_dir)
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
        return ready.done() and not ready.cancelled()

    async def stop(self) -> None:
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
        return snap
