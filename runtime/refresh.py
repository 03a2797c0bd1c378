"""The consequences of a change, from one place: after a container or network
changes, the trusted flows follow the running ambassadors, the resolver's
snapshot and the linking containers' /etc/hosts follow the state (patched for
the containers that changed, runtime.name_patch; rebuilt when a network did),
and the listeners (the Consul registrar) are told."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping

from portlink.catalog.services import Instance
from portlink.dns.server import DnsServer
from portlink.errors import NotFound, PortlinkError
from portlink.runtime import discovery, networks
from portlink.runtime.container_files import rewrite_in_place
from portlink.runtime.discovery import Seen
from portlink.runtime.file_watch import FileWatch
from portlink.runtime.firewall import Firewall
from portlink.runtime.images import ImageStore
from portlink.runtime.name_patch import Names, Running
from portlink.runtime.plan import Layout, seen_of
from portlink.runtime.records import RUNNING, Records
from portlink.runtime.state import Store

log = logging.getLogger("portlink.host")


class Catalog:
    """Consul's healthy instances by service, as the daemon last saw them
    (None: no Consul configured). `ask`: one read of a service straight from
    Consul (catalog.lookup), for a name the cache does not hold yet."""

    def __init__(self, enabled: bool, ask: Callable[[str], tuple[Instance, ...]] | None = None) -> None:
        self.services: dict[str, tuple[Instance, ...]] | None = {} if enabled else None
        self.ask = ask

    @property
    def enabled(self) -> bool:
        return self.services is not None

    def instances(self, service: str) -> tuple[Instance, ...]:
        return (self.services or {}).get(service.lower(), ())

    def instances_now(self, service: str) -> tuple[Instance, ...]:
        """The cache's instances, else Consul's own answer: a service registered
        a moment ago is in Consul before this host's watch brings it. A Consul
        that cannot answer counts as no instance (logged): the caller's refusal
        names the service."""
        cached = self.instances(service)
        if cached or self.ask is None or not self.enabled:
            return cached
        try:
            return self.ask(service)
        except PortlinkError as e:
            log.warning("consul: %s", e)
            return ()


class Refresher:
    def __init__(self, store: Store, images: ImageStore, layout: Layout, dns: DnsServer, firewall: Firewall,
                 catalog: Catalog, upstreams: list[str], ttl: int) -> None:
        self.store, self.records, self.images, self.layout = store, Records(store), images, layout
        self.dns, self.fw, self.catalog = dns, firewall, catalog
        self.upstreams, self.ttl = upstreams, ttl
        self._lock = threading.Lock()
        self._names = Names()                    # the resolver's snapshot, as the last refresh made it
        self._listening: list[str] | None = None  # the gateways served since the last listen without errors
        self._answers = discovery.ConsulAnswers()
        self._listeners: list[Callable[[], None]] = []
        self._bad_hosts: set[str] = set()   # containers whose hosts file failed: logged once
        self._hosts_stamps: dict[str, tuple] = {}   # id -> its hosts file's stamp when it last held our text
        self._hosts_watch = FileWatch()              # which of those files moved since (inotify)
        self._seen: dict[str, Seen] = {}     # id -> its Seen in the last seen()
        self._seen_mark = -1                  # the records' mark then (Records.running_with_ip_since)

    def subscribe(self, fn: Callable[[], None]) -> None:
        """`fn` is called after every change (the registrar's poke)."""
        self._listeners.append(fn)

    def changed(self) -> None:
        self.fw.sync_flows()   # first: a new ambassador's first call to Consul is on its way
        self.refresh_names()
        for fn in self._listeners:
            fn()

    def seen(self) -> list[Seen]:
        """Every running container with an address, as name resolution sees it, in start order."""
        return self._running().ordered()

    def _running(self) -> Running:
        """seen() by id, and the ids changed since the last call: the last answer
        patched for the containers the store says changed since
        (Records.running_with_ip_since), at a cost that follows the change. A
        running container's view is made once, from its record and its image's
        env then, as Docker fixes a container's env at its creation."""
        delta = self.records.running_with_ip_since(self._seen_mark)
        self._seen_mark = delta.mark
        envs: dict[str, list[str]] = {}   # one image read per image, not per container (500 → 1)
        kept = self._seen
        if delta.changed is None:
            kept.clear()
        else:
            for cid in delta.changed:
                kept.pop(cid, None)
        for c in delta.fresh:
            kept[c.id] = seen_of(c, self._image_env(c.spec.image, envs), c.ip)
        rows = delta.rows
        return Running(kept, lambda: [kept[c.id] for c in rows], delta.changed)

    def seen_named(self, names: Iterable[str]) -> dict[str, Seen]:
        """Those of seen() named in `names`, by name: what a start needs of its links,
        one indexed read per name instead of every running row."""
        out, envs = {}, {}
        for name in set(names):
            c = self.records.named(name)
            if c is not None and c.status == RUNNING and c.ip:
                out[name] = seen_of(c, self._image_env(c.spec.image, envs), c.ip)
        return out

    def _image_env(self, image: str, envs: dict[str, list[str]]) -> list[str]:
        if image not in envs:
            try:
                envs[image] = self.images.get(image).config.env
            except NotFound:
                envs[image] = []
        return envs[image]

    def refresh_names(self) -> None:
        """Bring the resolver's snapshot and the linking containers' /etc/hosts up to
        the state; called after every change that moves a name. Only what the
        changed containers touch is redone (runtime.name_patch)."""
        with self._lock:
            try:
                self._refresh_names()
            except BaseException:
                # What the failed pass took in is not known to be done: the next one
                # starts from every running container, as after a restart (a rebuild).
                self._seen_mark = -1
                self._names.invalidate()
                raise

    def _refresh_names(self) -> None:
        nets = networks.read_all(self.store)
        running = self._running()
        gateways = {n.name: str(n.gateway) for n in nets}   # also --add-host NAME:host-gateway
        if self._listening != sorted(gateways.values()):
            errors = self.dns.listen(gateways.values())
            for e in errors:
                log.error("%s", e)
            self._listening = None if errors else sorted(gateways.values())
        done = self._names.refresh(nets, running, self.upstreams, self.ttl,
                                   lambda: self._answers(self.catalog.services))
        self.dns.update(done.snapshot)
        by_id, by_name = running.by_id, self._names.by_name
        if running.changed is None:
            gone = (self._bad_hosts | self._hosts_stamps.keys() | self._hosts_watch.keys()) - by_id.keys()
        else:
            gone = {cid for cid in running.changed if cid not in by_id}
        self._bad_hosts -= gone       # forget the removed
        for cid in gone:
            self._hosts_stamps.pop(cid, None)
        self._hosts_watch.forget(gone)
        # A file that failed is tried again; one its container wrote since we did
        # is put back (the patch alone would leave it as written; _scribbled finds it).
        redo = done.hosts | self._bad_hosts | self._scribbled(_LinkerIds(by_id))
        for cid in redo:
            c = by_id.get(cid)
            if c is not None and c.links:
                self.write_hosts(c.id, discovery.hosts_file(c, by_name, gateways.get(c.network)), c.name)

    @staticmethod
    def _hosts_stamp(containers: str, cid: str) -> tuple | None:
        # A str path: a Path made per linker per change was 2/3 of the cost (9 → 3 ms at 1,000).
        try:
            st = os.stat(f"{containers}/{cid}/hosts", follow_symlinks=False)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _scribbled(self, linkers: Collection[str]) -> set[str]:
        """Of `linkers`, those whose hosts file changed since it last held our text (by
        its stamp: a same-size write within the clock's tick of ours waits for the next
        change that touches the container, or its restart). Only the files inotify saw
        move, and those it does not watch (lost), are stat-ed: every one only when
        its queue overflowed."""
        containers = str(self.layout.containers)
        watch = self._hosts_watch
        moved = watch.changed()
        maybe = linkers if moved is None else [cid for cid in moved | watch.lost() if cid in linkers]
        return {cid for cid in maybe if self._hosts_stamps.get(cid) != self._hosts_stamp(containers, cid)}

    def refresh_services(self) -> None:
        """Consul's catalog changed, nothing local did: the last snapshot with the
        new services (no store queries, no hosts files), waited for."""
        with self._lock:
            self._swap_services(wait=True)

    def apply_services(self) -> bool:
        """The same from the daemon's event loop, as soon as the catalog cache has the
        change: no thread hop, no wait for the resolver's thread, only the services
        that changed converted (~50 µs with 100 services). False when a full refresh
        holds the lock: the caller runs refresh_services in a thread instead, after it."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._swap_services(wait=False)
        finally:
            self._lock.release()
        return True

    def _swap_services(self, wait: bool) -> None:
        if self._names.snapshot is None:
            return      # no refresh yet: the first one reads the catalog as it is then
        self._names.use(discovery.with_services(self._names.snapshot, self.catalog.services, self._answers))
        (self.dns.update if wait else self.dns.offer)(self._names.snapshot)

    def write_hosts(self, cid: str, text: str, name: str = "") -> bool:
        """Rewrite a running container's /etc/hosts in place (the file is bind-mounted,
        so it must stay the same inode). The container can write that file: a failure
        is this container's alone, logged once (until it succeeds again), and never
        raised into the refresh that covers every other container. Returns whether
        the file now holds `text`."""
        try:
            rewrite_in_place(self.layout.cdir(cid) / "hosts", text)
        except FileNotFoundError:
            return False   # removed meanwhile: nothing to follow
        except (OSError, PortlinkError) as e:
            if cid not in self._bad_hosts:
                self._bad_hosts.add(cid)
                log.error("cannot update /etc/hosts of container %s: %s", name or cid[:12], e)
            return False
        self._bad_hosts.discard(cid)
        self._hosts_stamps[cid] = self._hosts_stamp(str(self.layout.containers), cid)
        if not self._hosts_watch.watched(cid):
            self._hosts_watch.watch(cid, f"{self.layout.containers}/{cid}/hosts")
        return True


class _LinkerIds(Collection[str]):
    """The ids of `by_id`'s containers that have links: asked one by one (a change's
    few files); listed only when every file must be looked at."""

    def __init__(self, by_id: Mapping[str, Seen]) -> None:
        self.by_id = by_id

    def __contains__(self, cid: object) -> bool:
        c = self.by_id.get(cid)   # type: ignore[call-overload]
        return c is not None and bool(c.links)

    def __iter__(self) -> Iterator[str]:
        return (cid for cid, c in self.by_id.items() if c.links)

    def __len__(self) -> int:
        return sum(1 for _ in self)
