"""The journal's kernel on a real host: thin calls into portlink.netns, the
overlay mounts, runc and the firewall façade (no decisions here)."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable

from portlink.catalog.intentions import Intentions, Link
from portlink.errors import RuntimeFailure
from portlink.netns import kernel_link, kernel_ns
from portlink.netns.model import Endpoint, Pin, PortMapping
from portlink.prom import Histogram
from portlink.runtime import mounts
from portlink.runtime.firewall import Firewall
from portlink.runtime.plan import Layout
from portlink.runtime.runc import Runc
from portlink.runtime.token_files import TokenFiles

log = logging.getLogger("portlink.consul")


class HostKernel:
    def __init__(self, layout: Layout, runc: Runc, firewall: Firewall, attach_time: Histogram,
                 tokens: TokenFiles | None = None, intentions: Intentions | None = None) -> None:
        self.layout, self.runc, self.fw = layout, runc, firewall
        self.intentions = intentions                # secure links: the links' intentions
        self.tokens = tokens or TokenFiles(None)   # ambassadors' Consul tokens
        self.attach_time = attach_time   # seconds per veth attach (the metrics endpoint)
        self.linkers = None              # runtime.linker_identity.LinkerIdentities (secure links), set by the host
        self.forwarder = None            # runtime.host_forwarder.HostForwarder, set by the host
        self._intention_guard = threading.Lock()
        self._roots: dict[str, mounts.RootMount] = {}   # target -> a root not yet undone
        self._roots_lock = threading.Lock()
        self._netns_dir: str | None = None   # the namespace files' dir, once made a mount of its own
        self._netns_dir_lock = threading.Lock()

    def intention_guard(self) -> threading.Lock:
        return self._intention_guard

    def remove_linker(self, name: str) -> None:
        if self.linkers is not None:
            self.linkers.remove(name)

    def unhost(self, cid: str) -> None:
        if self.forwarder is not None:
            self.forwarder.detach(cid)

    def make_dir(self, path: str) -> None:
        os.mkdir(path)

    def remove_dir(self, path: str) -> None:
        if self.linkers is not None:
            self.linkers.release_dir(path)   # a client side removed under its linkers: log their tokens out
        if os.path.exists(path):
            shutil.rmtree(path)

    def mount_overlay(self, lower: str, upper: str, work: str, target: str) -> mounts.RootMount:
        root = mounts.detached_overlay(lower, upper, work, target)
        with self._roots_lock:
            old = self._roots.pop(target, None)
            self._roots[target] = root
        if old is not None:
            old.close()
        return root

    def unmount(self, target: str) -> None:
        with self._roots_lock:
            root = self._roots.pop(target, None)
        if root is not None:
            root.close()
        mounts.unmount(target)   # a root an older portlink mounted here

    def create_netns(self, path: str) -> None:
        # Under the dir's lock: the last file's removal cannot take the dir's mount
        # (and this file with it) between the check and the file.
        d = os.path.dirname(path)
        with self._netns_dir_lock:
            if self._netns_dir != d:
                kernel_ns.own_mount(d)     # before the first file (kernel_ns.own_mount)
                self._netns_dir = d
            kernel_ns.create_netns(path)

    def delete_netns(self, path: str) -> None:
        kernel_ns.delete_netns(path)
        self.release_netns_dir(os.path.dirname(path))

    def release_netns_dir(self, d: str | None = None) -> bool:
        """The dir's own mount goes with its last file, as it came with the first
        (a host with no container holds no mount). True: unmounted now."""
        d = d or str(self.layout.netns_dir)
        with self._netns_dir_lock:
            try:
                with os.scandir(d) as entries:
                    if next(entries, None) is not None:
                        return False
            except FileNotFoundError:
                pass
            self._netns_dir = None
            return kernel_ns.drop_own_mount(d)

    def attach(self, ep: Endpoint) -> None:
        t = time.perf_counter()
        kernel_link.attach(ep)
        self.attach_time.observe(time.perf_counter() - t)

    def delete_link(self, name: str) -> None:
        kernel_link.delete_link(name)

    def loopback_up(self, netns_path: str) -> None:
        kernel_link.loopback_up(netns_path)

    def add_pin(self, pin: Pin, record: Callable[[str], None]) -> None:
        self.fw.add_pin(pin, record)

    def remove_pin(self, key: str, forget: Callable[[], None]) -> None:
        self.fw.remove_pin(key, forget)

    def add_ports(self, mappings: list[PortMapping], record: Callable[[str], None]) -> None:
        self.fw.add_ports(mappings, record)

    def remove_port(self, key: str, forget: Callable[[], None]) -> None:
        self.fw.remove_port(key, forget)

    def run_container(self, cid: str, start: Callable[[], int]) -> int:
        return start()

    def delete_container(self, cid: str) -> None:
        err = self.runc.delete(cid, self.layout.cdir(cid))   # the dir: where its log shim's pid is
        if err:
            raise RuntimeFailure(err)

    def revoke_token(self, path: str) -> None:
        self.tokens.revoke(path)

    def remove_intention(self, key: str) -> None:
        """Removing an ambassador must not wait for Consul: a failure is logged with
        what to delete by hand, not raised."""
        link = Link.from_key(key)
        if self.intentions is None:
            log.warning("intention %s => %s left behind (no --secure-links now): delete it with "
                        "`consul intention delete %s %s`", link.source, link.destination, link.source, link.destination)
            return
        try:
            self.intentions.remove(link)
        except RuntimeFailure as e:
            log.warning("intention %s => %s could not be deleted (%s): delete it with "
                        "`consul intention delete %s %s`", link.source, link.destination, e,
                        link.source, link.destination)
