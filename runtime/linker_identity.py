"""Per-linker identity (secure links): a container that links through a
client-side ambassador is dialled to the other host as ITS OWN service, not
as the shared ambassador.

Before the linker's process starts, for each secure client-side ambassador
it links to, three journal steps (owned by the linker, so its stop, exit,
`rm` and crash recovery undo them):
- `consul_token`: a token minted through the host's JWT auth method with
  claim identity=<the linker's service> (runtime.token_files), written into
  the ambassador's linkers directory (`<ambassador dir>/linkers`, bound
  read-only into it): a token that may fetch that one leaf;
- `linker`: the linker's address -> {identity, container, token} in the
  ambassador's map (portlink.linker_map), then SIGHUP to the ambassador;
- `intention`: `<linker service> -> <target service> allow`, held per linker
  (catalog.intentions: per host in Consul).
Then it waits until the ambassador's /stats shows the linker's address with
a ready certificate, so the linker's first connection is dialled as it.

The linker's identity is the name the registrar would register it under
(catalog.services.served_name: its `portlink.service` label, else its
container name made a DNS label)."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from portlink import linker_map
from portlink.catalog.intentions import Intentions, Link
from portlink.catalog.services import served_name
from portlink.runtime import ambassadors, security
from portlink.runtime import links as linkspec
from portlink.runtime.procstart import is_same
from portlink.runtime.records import RUNNING, Container, Records
from portlink.runtime.token_files import TokenFiles

log = logging.getLogger("portlink.containers")

READY_WAIT = 5.0      # seconds a linker's start waits for the ambassador to have its certificate


def is_client_side(c: Container | None) -> bool:
    """A secure client-side ambassador: one that dials as identities (secure links)."""
    amb = c.spec.ambassador if c is not None else None
    return bool(amb and amb.get("identity") and not amb.get("backends"))


def linker_identity(c: Container) -> str:
    return served_name(c.name, c.spec.labels or {})


def poll_stats(ip: str, done: Callable[[dict], bool], alive: Callable[[], bool], timeout: float) -> bool:
    """Ask an ambassador's /stats (on the bridge, so no probe shows in its
    counters) until `done(snapshot)`; False after `timeout` or once it died."""
    url = f"http://{ip}:{ambassadors.METRICS_PORT}/stats"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            with opener.open(url, timeout=1) as r:
                if done(json.loads(r.read())):
                    return True
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass                  # not listening yet
        time.sleep(0.02)
    return False


class LinkerIdentities:
    def __init__(self, records: Records, linkers_dir: Callable[[str], Path], tokens: TokenFiles,
                 intentions: Intentions | None, wait: float = READY_WAIT) -> None:
        """`linkers_dir`: an ambassador's id -> its linkers directory."""
        self.records, self.linkers_dir, self.tokens = records, linkers_dir, tokens
        self.intentions, self.wait = intentions, wait
        self._lock = threading.Lock()      # one read-modify-write of a map at a time

    def ambassadors_of(self, c: Container) -> list[Container]:
        """The secure client-side ambassadors `c` links to (each once)."""
        out: dict[str, Container] = {}
        for text in c.spec.links:
            target = self.records.named(linkspec.parse_link(text).name)
            if is_client_side(target) and target.spec.network == c.spec.network:
                out.setdefault(target.id, target)
        return list(out.values())

    def prepare_dir(self, amb_id: str) -> Path:
        """A client side's linkers directory, before its process starts (its bind's source)."""
        d = self.linkers_dir(amb_id)
        d.mkdir(mode=0o755, exist_ok=True)
        os.chmod(d, 0o755)       # the ambassador's user lists and reads it; its tokens are 0400 its own
        return d

    def attach(self, j, c: Container, ip: str) -> None:
        """The journal steps of `c`'s identity at each ambassador it links to, and
        the wait until each has its certificate (see the module's doc)."""
        if c.is_ambassador:
            return
        for amb in self.ambassadors_of(c):
            identity = linker_identity(c)
            service = amb.spec.ambassador["service"]
            d = self.prepare_dir(amb.id)
            # No --ambassador-key (Consul without ACLs): no token, the ambassador asks as itself.
            token = linker_map.token_name(c.id) if self.tokens.enabled else ""
            path = d / token
            if self.tokens.enabled:
                j.consul_token(c.id, str(path), lambda: self.tokens.issue(
                    path, c.id, service, security.AMBASSADOR_UID, security.AMBASSADOR_GID, identity))
            entry = linker_map.Linker(identity, c.id, token)
            j.linker(c.id, f"{amb.id} {ip} {c.id}", lambda: self.add(amb.id, ip, entry))
            if self.intentions is not None:
                link = Link(identity, service)
                j.intention(c.id, f"{link.key} {c.id}", lambda: self.intentions.ensure(link, f"linker {c.name}"))
            self.await_ready(amb, ip, identity)

    def add(self, amb_id: str, ip: str, entry: linker_map.Linker) -> None:
        d = self.prepare_dir(amb_id)
        with self._lock:
            m = self._read(d)
            m[ip] = entry
            linker_map.write(d, m)
        self.notify(amb_id)

    def remove(self, name: str) -> None:
        """Undo of a `linker` step ('AMBASSADOR-ID IP LINKER-ID'): the entry goes
        (only if still that linker's), and the ambassador is told at once: the
        address may be leased to another container next."""
        amb_id, ip, cid = name.split(" ")
        d = self.linkers_dir(amb_id)
        if not d.is_dir():
            return                  # the ambassador is gone, and its map with it
        with self._lock:
            m = self._read(d)
            if ip not in m or m[ip].container != cid:
                return
            del m[ip]
            linker_map.write(d, m)
        self.notify(amb_id)

    def release_dir(self, container_dir: str) -> None:
        """A container's dir is going (`rm`): if it is a client side's with linkers'
        tokens still in it (a person removed it under running linkers), log them
        out now; the linkers' own undo then finds nothing left to do."""
        d = Path(container_dir) / ambassadors.LINKERS_DIR
        if not d.is_dir():
            return
        for f in sorted(d.glob("*.token")):
            self.tokens.revoke(str(f))

    @staticmethod
    def _read(d: Path) -> dict[str, linker_map.Linker]:
        try:
            return linker_map.read(d)
        except linker_map.MapError as e:
            # Only this daemon writes it: rebuilt from the journal's entries is a later
            # improvement; starting over loses at most the entries it could not read.
            log.error("linkers map in %s is unreadable (%s): starting a new one", d, e)
            return {}

    def notify(self, amb_id: str) -> None:
        """SIGHUP: re-read the map. Only to the ambassador's own process (the pid
        with its start time); as PID 1 of its namespace it ignores the signal until
        it installed its handler, and then reads the map at start anyway."""
        a = self.records.get(amb_id)
        if a is None or a.status != RUNNING or not a.pid or not is_same(a.pid, a.pid_start):
            return
        try:
            os.kill(a.pid, signal.SIGHUP)
        except ProcessLookupError:
            pass

    def await_ready(self, amb: Container, ip: str, identity: str) -> None:
        """Until the ambassador dials `ip`'s clients as `identity` (its certificate
        fetched): the linker's first connection must not be refused."""
        a = self.records.get(amb.id)
        if a is None or a.status != RUNNING or not a.ip:
            return                  # it reads the map when it starts
        want = {"identity": identity, "ready": True}
        hup = [time.monotonic()]

        def done(snap: dict) -> bool:
            tls = snap.get("tls") or {}
            if (tls.get("linkers") or {}).get("sources", {}).get(ip) == want:
                return True
            if time.monotonic() - hup[0] > 0.5:
                hup[0] = time.monotonic()
                self.notify(amb.id)     # a SIGHUP before its handler was lost: again
            return False
        if not poll_stats(a.ip, done, lambda: a.pid is not None and is_same(a.pid, a.pid_start), self.wait):
            log.warning("ambassador %s: no certificate for linker %s (%s) after %gs; starting it anyway",
                        amb.name, identity, ip, self.wait)
