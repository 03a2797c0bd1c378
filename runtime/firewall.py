"""The host's firewall, as the runtime uses it: one façade over the driver that
owns its lock and the allowed flows in force.

The lock is held while a DNAT element and its journal row change together, so
a full re-render from the state (network changes, drift repair) never drops an
element added meanwhile. Allowed flows (an ambassador -> the Consul agent; a
link on a network with icc off) are set elements, changed by difference:
constant cost per ambassador or link. Layer-2 pins (a container port's MAC
and address, netns.fw_l2) are a concern of their own beside the IP driver,
kept here too: an element and its journal row change together under the same
lock, and `apply_all` rebuilds them from the rows."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections import Counter
from collections.abc import Callable
from ipaddress import IPv4Address, ip_address

from portlink.catalog.config import ConsulConfig
from portlink.errors import RuntimeFailure
from portlink.netns.firewall import FirewallDriver
from portlink.netns.fw_l2 import L2Pins
from portlink.netns.model import Flow, LinkFlow, Pin, PortMapping, TrustedFlow
from portlink.runtime import discovery, networks
from portlink.runtime.plan import seen_of
from portlink.runtime.records import Records
from portlink.runtime.state import Store

log = logging.getLogger("portlink.firewall")

def mapping_key(p: PortMapping) -> str:
    """A published port as its journal name (kind 'port')."""
    return json.dumps([p.proto, str(p.host_ip or ""), p.host_port, str(p.container_ip), p.container_port])


def mapping_from_key(key: str) -> PortMapping:
    proto, hip, hport, cip, cport = json.loads(key)
    return PortMapping(proto, hport, ip_address(cip), cport, ip_address(hip) if hip else None)


def pin_key(p: Pin) -> str:
    """A layer-2 pin as its journal name (kind 'pin'): the whole element, so the
    undo deletes exactly what was added."""
    return json.dumps([p.host_ifname, p.mac, str(p.address)])


def pin_from_key(key: str) -> Pin:
    ifname, mac, ip = json.loads(key)
    return Pin(ifname, mac, ip_address(ip))


def consul_target(consul: ConsulConfig | None) -> tuple[IPv4Address, int] | None:
    """Where ambassadors reach the Consul agent, for the trusted flows. A name is
    resolved once, here; loopback gives None: a container's 127.0.0.1 is its
    own, so no flow could ever use it."""
    if consul is None:
        return None
    try:
        ip = ip_address(consul.host)
    except ValueError:
        try:
            ip = ip_address(socket.getaddrinfo(consul.host, consul.port, socket.AF_INET,
                                               socket.SOCK_STREAM)[0][4][0])
        except OSError as e:
            log.warning("cannot resolve the Consul address %s (%s): ambassadors will not reach "
                        "an agent on this host", consul.host, e)
            return None
    if ip.version != 4 or ip.is_loopback:
        log.warning("Consul at %s is not reachable from containers: ambassadors need a "
                    "non-loopback IPv4 address in --consul", consul.url)
        return None
    return ip, consul.port


class Firewall:
    def __init__(self, driver: FirewallDriver, pins: L2Pins, store: Store,
                 consul: tuple[IPv4Address, int] | None = None) -> None:
        self.driver, self.l2 = driver, pins
        self.name = driver.name
        self._store, self._records = store, Records(store)
        self._consul = consul
        self.lock = threading.RLock()
        self._flows: frozenset[Flow] = frozenset()   # in the firewall now (under lock)
        # trusted_flows' last answer, by ambassador id -> (its ip, its flow), and as a set
        self._trusted: dict[str, tuple[str, TrustedFlow]] = {}   # ambassador id -> (its ip, its flow)
        self._trusted_uses: Counter[TrustedFlow] = Counter()      # flow -> ambassadors needing it
        self._trusted_set: frozenset[TrustedFlow] = frozenset()
        self._trusted_mark = -1   # the records' mark of the last look (Records.running_ambassadors_since)

    # the whole rule set -------------------------------------------------------------
    def mappings(self) -> list[PortMapping]:
        """Every published port the journal holds."""
        return [mapping_from_key(r["name"]) for r in
                self._store.query("SELECT name FROM resources WHERE kind='port'")]

    def pins(self) -> list[Pin]:
        """Every layer-2 pin the journal holds."""
        return [pin_from_key(r["name"]) for r in
                self._store.query("SELECT name FROM resources WHERE kind='pin'")]

    def apply_all(self) -> None:
        """Re-render everything from the state, atomically (the IP rules in one
        batch, the layer-2 table in another)."""
        with self.lock:   # no DNAT element or pin added or removed between read and render
            want = self.wanted_flows()
            self.driver.apply_all(networks.read_all(self._store), self.mappings(), list(want))
            self._flows = want
            self.l2.apply_all(self.pins())

    def dump(self) -> str:
        return self.driver.dump() + self.l2.dump()

    def teardown(self) -> list[str]:
        return self.driver.teardown() + self.l2.teardown()

    # layer-2 pins: each element goes with its journal row ---------------------------------
    def add_pin(self, pin: Pin, record: Callable[[str], None]) -> None:
        with self.lock:
            record(pin_key(pin))
            self.l2.add([pin])

    def remove_pin(self, key: str, forget: Callable[[], None]) -> None:
        """Unpin one journalled port; an element already gone is what we want."""
        with self.lock:
            errs = self.l2.remove([pin_from_key(key)])
            if errs:
                raise RuntimeFailure("; ".join(errs))
            forget()

    # published ports: each element goes with its journal row ----------------------------
    def add_ports(self, mappings: list[PortMapping], record: Callable[[str], None]) -> None:
        with self.lock:
            for m in mappings:
                record(mapping_key(m))
            self.driver.add_ports(mappings)

    def remove_port(self, key: str, forget: Callable[[], None]) -> None:
        """Unpublish one journalled port; an element already gone is what we want
        (the drivers do not report it: netns.firewall.already_gone)."""
        with self.lock:
            errs = self.driver.remove_ports([mapping_from_key(key)])
            if errs:
                raise RuntimeFailure("; ".join(errs))
            forget()

    # allowed flows: ambassadors -> the Consul agent; links on icc-off networks ------------
    def trusted_flows(self) -> frozenset[TrustedFlow]:
        """(ambassador ip, Consul ip, Consul port) for every running ambassador:
        the only connections a container may open to the host itself besides DNS.
        The last answer patched for the ambassadors the store says came, went or
        changed since (Records.running_ambassadors_since): a change costs a look
        at those, not at every ambassador. Flows are counted: two ambassadors on
        two networks may share an address."""
        if self._consul is None:
            return frozenset()
        ip, port = self._consul
        with self.lock:
            delta = self._records.running_ambassadors_since(self._trusted_mark)
            self._trusted_mark = delta.mark
            rows = {c.id: c for c in delta.fresh}   # every row when changed is None
            ids = (rows.keys() | self._trusted.keys()) if delta.changed is None else delta.changed
            came, gone = set(), set()
            for cid in ids:
                old, c = self._trusted.get(cid), rows.get(cid)
                if old is not None and c is not None and old[0] == c.ip:
                    continue
                if old is not None:
                    del self._trusted[cid]
                    self._trusted_uses[old[1]] -= 1
                    if not self._trusted_uses[old[1]]:
                        del self._trusted_uses[old[1]]
                        gone.add(old[1])
                if c is not None:
                    flow = TrustedFlow(ip_address(c.ip), ip, port)
                    self._trusted[cid] = (c.ip, flow)
                    self._trusted_uses[flow] += 1
                    came.add(flow)
            if gone or came:
                self._trusted_set = (self._trusted_set - gone) | came
            return self._trusted_set

    def link_flows(self) -> frozenset[LinkFlow]:
        """What the running containers' links open on networks with icc off."""
        closed = {n.name for n in networks.read_all(self._store) if not n.icc}
        if not closed:
            return frozenset()
        return discovery.all_link_flows((seen_of(c, [], c.ip) for c in self._records.running_with_ip()), closed)

    def wanted_flows(self) -> frozenset[Flow]:
        return self.trusted_flows() | self.link_flows()

    def trust(self, ambassador_ip: str) -> None:
        """An ambassador about to start: let it reach Consul before its process
        runs, so its first connection never waits for a SYN retransmit."""
        if self._consul is not None:
            self.allow([TrustedFlow(ip_address(ambassador_ip), *self._consul)])

    def allow(self, flows: list[Flow]) -> None:
        """Flows a container about to start needs at once; the next sync keeps
        them while their containers run."""
        with self.lock:
            new = sorted(set(flows) - self._flows, key=str)
            if new:
                self.driver.add_flows(new)
                self._flows |= set(new)

    def sync_flows(self) -> None:
        """Make the allowed flows those of the running containers, by elements.
        Errors are logged, not raised: the container change that called this has
        happened; the next change retries."""
        with self.lock:
            want = self.wanted_flows()
            gone, new = sorted(self._flows - want, key=str), sorted(want - self._flows, key=str)
            for e in self.driver.remove_flows(gone):
                log.error("firewall: %s", e)
            have = self._flows - set(gone)
            try:
                self.driver.add_flows(new)
                have |= set(new)
            except RuntimeFailure as e:
                log.error("firewall: cannot allow %s: %s", ", ".join(map(str, new)), e)
            self._flows = frozenset(have)
