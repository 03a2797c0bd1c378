"""The journal of what each container owns: every object is recorded in the
store before it is made, as a step of a registered kind with its undo.

Rollback of a failed `run` or `start`, the release after a stop or an exit,
`rm`, and recovery after a crash all walk one owner's journal backwards
(`undo`). The kernel is an interface (`Kernel`), so order, partial failure
and an interrupted undo are unit-tested with a fake one."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from portlink.netns.model import Endpoint, NetworkSpec, Pin, PortMapping
from portlink.runtime import faults
from portlink.runtime.networks import Networks
from portlink.runtime.state import Store

if TYPE_CHECKING:
    from portlink.runtime.mounts import RootMount


class Kernel(Protocol):
    """What a container's steps do outside the store (runtime.kernel.HostKernel)."""

    def make_dir(self, path: str) -> None: ...
    def remove_dir(self, path: str) -> None: ...
    def mount_overlay(self, lower: str, upper: str, work: str, target: str) -> "RootMount": ...
    def unmount(self, target: str) -> None: ...
    def create_netns(self, path: str) -> None: ...
    def delete_netns(self, path: str) -> None: ...
    def attach(self, ep: Endpoint) -> None: ...
    def delete_link(self, name: str) -> None: ...
    def loopback_up(self, netns_path: str) -> None: ...
    def add_pin(self, pin: Pin, record: Callable[[str], None]) -> None: ...
    def remove_pin(self, key: str, forget: Callable[[], None]) -> None: ...
    def add_ports(self, mappings: list[PortMapping], record: Callable[[str], None]) -> None: ...
    def remove_port(self, key: str, forget: Callable[[], None]) -> None: ...
    def run_container(self, cid: str, start: Callable[[], int]) -> int: ...
    def delete_container(self, cid: str) -> None: ...
    def revoke_token(self, path: str) -> None: ...
    def remove_intention(self, key: str) -> None: ...
    def remove_linker(self, name: str) -> None: ...
    def unhost(self, cid: str) -> None: ...


@dataclass(frozen=True)
class Step:
    kind: str
    undo: Callable[["Journal", str], None]
    # Undone by its journal row alone when the owner's netns goes too (a veth goes
    # with its namespace in the kernel's batched cleanup: deleting it first would
    # wait ~20 ms for an RCU grace period).
    goes_with_netns: bool = False


def _undo_port(j: "Journal", key: str) -> None:
    # The element and its row go together under the firewall's lock.
    j.kernel.remove_port(key, lambda: j.store.forget("port", key))


def _undo_pin(j: "Journal", key: str) -> None:
    # Not with the netns: the element lives in the host's bridge table. Newer rows
    # (the process, the veth) are undone first, so a pin never goes while the
    # container can send; a port left unpinned meanwhile sends nothing.
    j.kernel.remove_pin(key, lambda: j.store.forget("pin", key))


def _undo_lease(j: "Journal", name: str) -> None:
    net_id, ip = name.split("/")
    j.store.execute("DELETE FROM leases WHERE network_id=? AND ip=?", net_id, ip, synced=False)


def _guard(j: "Journal"):
    """Held while a link's intention is taken or released on this host, so a release
    that finds no other local holder cannot cross a new hold being made."""
    guard = getattr(j.kernel, "intention_guard", None)
    held = guard() if guard is not None else None
    return held if held is not None else contextlib.nullcontext()


def _undo_intention(j: "Journal", name: str) -> None:
    # 'SOURCE DESTINATION' (an ambassador's own), or 'SOURCE DESTINATION HOLDER' (a
    # linker's hold: one per linking container, so two linkers of one service on
    # this host are two rows, and the intention is released with the last of them).
    parts = name.split(" ")
    with _guard(j):
        if len(parts) == 3:
            prefix = f"{parts[0]} {parts[1]} "
            others = [r["name"] for r in j.store.query("SELECT name FROM resources WHERE kind='intention'")
                      if r["name"].startswith(prefix) and r["name"] != name]
            if others:
                return
        j.kernel.remove_intention(" ".join(parts[:2]))


STEPS: dict[str, Step] = {s.kind: s for s in (
    Step("dir", lambda j, name: j.kernel.remove_dir(name)),
    Step("mount", lambda j, name: j.kernel.unmount(name)),
    Step("netns", lambda j, name: j.kernel.delete_netns(name)),
    Step("lease", _undo_lease),
    Step("pin", _undo_pin),
    Step("veth", lambda j, name: j.kernel.delete_link(name), goes_with_netns=True),
    Step("port", _undo_port),
    Step("runc", lambda j, name: j.kernel.delete_container(name)),
    Step("consul_token", lambda j, name: j.kernel.revoke_token(name)),
    Step("intention", _undo_intention),
    Step("linker", lambda j, name: j.kernel.remove_linker(name)),
    Step("hosted", lambda j, name: j.kernel.unhost(name)),
)}


class Journal:
    """Most steps are not synced on their own: the next synced commit (the runc
    step's, before the container's process) puts them on disk too (the WAL is
    written in order). A power cut before it loses some of the last rows: the
    kernel's objects (mount, netns, lease, veth, nftables elements) are gone with
    it, and a new container's dir, left on disk, is swept at start as a crash
    between making and recording leaves it (Host.sweep: recovery forgets the
    CREATING row, the dir then has none). Synced: the runc step (runc's state
    stays on disk, and a container that ran before keeps its row, so only the
    journal finds it) and steps with an object elsewhere (a Consul token, an
    intention, a linker)."""

    def __init__(self, store: Store, kernel: Kernel) -> None:
        self.store, self.kernel = store, kernel

    # do: record, then make ------------------------------------------------------------
    def make_dir(self, owner: str, path: Path) -> None:
        self.store.record("dir", str(path), owner, synced=False)
        self.kernel.make_dir(str(path))

    def mount(self, owner: str, lower: str, cdir: Path) -> "RootMount":
        """The container's root, for its monitor to attach at cdir/rootfs."""
        rootfs = str(cdir / "rootfs")
        self.store.record("mount", rootfs, owner, synced=False)
        return self.kernel.mount_overlay(lower, str(cdir / "upper"), str(cdir / "work"), rootfs)

    def netns(self, owner: str, path: str) -> None:
        self.store.record("netns", path, owner, synced=False)
        self.kernel.create_netns(path)

    def lease(self, owner: str, net: NetworkSpec, prefer: str | None = None) -> IPv4Address:
        """An address on `net`, leased and recorded in one transaction."""
        with self.store.tx(synced=False) as db:
            ip = Networks.lease(db, net, owner, prefer=prefer)
            self.store.record("lease", f"{net.id}/{ip}", owner, db)
        return ip

    def pin(self, owner: str, ep: Endpoint) -> None:
        """Pin the port to its MAC and address before the veth exists (the element
        names the port by its host-side name): the container never sends unpinned."""
        self.kernel.add_pin(ep.pin, lambda key: self.store.record("pin", key, owner, synced=False))

    def veth(self, owner: str, ep: Endpoint) -> None:
        self.store.record("veth", ep.host_ifname, owner, synced=False)
        self.kernel.attach(ep)

    def ports(self, owner: str, mappings: list[PortMapping]) -> None:
        self.kernel.add_ports(mappings, lambda key: self.store.record("port", key, owner, synced=False))

    def consul_token(self, owner: str, path: str, issue: Callable[[], object]) -> None:
        """An ambassador's Consul token (its file's path): logged out by the undo."""
        self.store.record("consul_token", path, owner)
        issue()

    def intention(self, owner: str, key: str, make: Callable[[], object]) -> None:
        """A link's intention (secure links; key 'SOURCE DESTINATION', or with a
        third word, the holding linker's id): released by the undo."""
        with _guard(self):
            self.store.record("intention", key, owner)
            make()

    def linker(self, owner: str, name: str, add: Callable[[], object]) -> None:
        """A linker's entry in a client-side ambassador's linkers map
        ('AMBASSADOR-ID IP LINKER-ID', runtime.linker_identity): removed by the undo."""
        self.store.record("linker", name, owner)
        add()

    def hosted(self, owner: str, attach: Callable[[], object]) -> None:
        """An ambassador served by the host forwarder (its listeners handed over):
        the undo has the forwarder drop them."""
        self.store.record("hosted", owner, owner)
        attach()

    def process(self, owner: str, start: Callable[[], int]) -> int:
        self.store.record("runc", owner, owner)
        return self.kernel.run_container(owner, start)

    # undo: newest first, best effort ------------------------------------------------------
    def owned(self, owner: str) -> list[tuple[str, str]]:
        return [(r["kind"], r["name"]) for r in self.store.resources(owner)]

    def undo(self, owner: str, keep: tuple[str, ...] = ("dir",), fault: str | None = None) -> list[str]:
        """Remove what the journal says `owner` owns, newest first, except the kinds
        in `keep`; every error is collected. `fault`: the fault point to pass halfway."""
        errors: list[str] = []
        rows = self.owned(owner)
        netns_goes = "netns" not in keep and any(kind == "netns" for kind, _ in rows)
        for i, (kind, name) in enumerate(reversed(rows)):
            if fault and i == len(rows) // 2:
                faults.point(fault)
            if kind in keep:
                continue
            step = STEPS.get(kind)
            if step is None:
                errors.append(f"{kind} {name}: unknown resource kind {kind!r}")
                continue
            if step.goes_with_netns and netns_goes:
                self.store.forget(kind, name)
                continue
            try:
                step.undo(self, name)
                self.store.forget(kind, name)
            except Exception as e:
                errors.append(f"{kind} {name}: {e}")
        return errors
