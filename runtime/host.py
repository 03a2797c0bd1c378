"""One portlink host: the state store, images, networks, containers and the
firewall, wired together; set-up at daemon start, reconciliation and prune."""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, ip_address
from pathlib import Path

from portlink.catalog import services as registration
from portlink.catalog.config import ConsulConfig
from portlink.catalog.services import Instance, Registration

from portlink.dns.forward import ForwardConfig
from portlink.dns.server import DnsServer, ServerConfig
from portlink.dns.zone import DEFAULT_TTL
from portlink.errors import InvalidArgument, RuntimeFailure
from portlink.netns import kernel_link, kernel_ns, names
from portlink.netns.firewall import make_driver
from portlink.netns.model import TrustedFlow
from portlink.runtime import discovery, mounts
from portlink.runtime.containers import RUNNING, Containers
from portlink.runtime.events import EventLog
from portlink.runtime.images import ImageStore
from portlink.runtime.networks import DEFAULT_NETWORK, Networks
from portlink.runtime.state import Store

log = logging.getLogger("portlink.host")


@dataclass
class HostConfig:
    state_dir: Path
    firewall: str = "nftables"
    default_subnet: str = "10.77.0.0/16"
    dns: list[str] = field(default_factory=list)       # upstreams: ip or ip:port
    dns_port: int = 53                                   # the resolver, on each gateway address
    dns_ttl: int = DEFAULT_TTL
    dns_timeout: float = 2.0                             # per upstream
    consul: ConsulConfig | None = None                   # None: a single host on its own state
    advertise: str | None = None                         # address registered in Consul (default: towards Consul)
    consul_check_interval: float = 5.0                   # TCP health check of each registered port
    consul_resync: float = 30.0                          # a full resync at least this often (drift repair)

    def __post_init__(self) -> None:
        discovery.upstream_list(self.dns)   # raises on a bad --dns
        if not 0 <= self.dns_ttl <= 86400:
            raise InvalidArgument(f"invalid --dns-ttl {self.dns_ttl}: expected 0 to 86400 seconds")
        if not 0.05 <= self.dns_timeout <= 30:
            raise InvalidArgument(f"invalid --dns-timeout {self.dns_timeout}: expected 0.05 to 30 seconds")
        if self.advertise is not None:
            try:
                if ip_address(self.advertise).version != 4:
                    raise ValueError
            except ValueError:
                raise InvalidArgument(f"invalid --advertise {self.advertise!r}: expected an IPv4 address") from None
        if not 1 <= self.consul_check_interval <= 3600:
            raise InvalidArgument(f"invalid --consul-check-interval {self.consul_check_interval}: "
                                  "expected 1 to 3600 seconds (Consul's floor is 1 s)")
        if not 1 <= self.dns_port <= 65535:
            raise InvalidArgument(f"invalid --dns-port {self.dns_port}: expected 1 to 65535")
        if not 1 <= self.consul_resync <= 86400:
            raise InvalidArgument(f"invalid --consul-resync {self.consul_resync}: expected 1 to 86400 seconds")


def _consul_ip(consul: ConsulConfig | None) -> IPv4Address | None:
    """The address ambassadors reach the Consul agent at, for the firewall's
    trusted flows. A name is resolved once, here; loopback gives None: a
    container's 127.0.0.1 is its own, so no flow could ever use it."""
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
    return ip


def _host_id(state_dir: Path) -> str:
    """This host's identity in Consul: random once, kept with the state, so a
    restarted daemon finds (and cleans) its own entries and no other host's."""
    path = state_dir / "host-id"
    try:
        hid = path.read_text().strip()
        if len(hid) == 12 and all(ch in "0123456789abcdef" for ch in hid):
            return hid
    except FileNotFoundError:
        pass
    hid = secrets.token_hex(6)
    path.write_text(hid + "\n")
    return hid


class Host:
    def __init__(self, cfg: HostConfig) -> None:
        self.cfg = cfg
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store = Store(cfg.state_dir / "state.db")
        self.fw = make_driver(cfg.firewall, cfg.dns_port)
        self._trusted: frozenset[TrustedFlow] = frozenset()   # in the firewall now (under fw_lock)
        self._consul_ip = _consul_ip(cfg.consul)
        self.images = ImageStore(cfg.state_dir / "images")
        self.networks = Networks(self.store, self.apply_firewall, cfg.default_subnet)
        self.containers = Containers(cfg.state_dir, self.store, self.images, self.networks,
                                     self.fw, cfg.dns)
        self.dns = DnsServer(ServerConfig(port=cfg.dns_port, forward=ForwardConfig(timeout=cfg.dns_timeout)))
        self._names_lock = threading.Lock()
        self._names: tuple | None = None     # (networks, running) as the last refresh read them
        self.host_id = _host_id(cfg.state_dir)
        # Consul's healthy instances by service, for DNS (None: no Consul configured).
        self.services: dict[str, tuple[Instance, ...]] | None = {} if cfg.consul else None
        self.after_change: list[Callable[[], None]] = []    # the daemon adds the registrar's poke
        self.containers.changed = self.networks.changed = self._changed
        self.events = EventLog(cfg.state_dir / "events.jsonl")
        self.containers.event = self.networks.event = self.events.emit
        self.containers.before_process = self.trust_before_start
        if cfg.consul:
            self.containers.consul_url = cfg.consul.url
            self.containers.remote = lambda name: (self.services or {}).get(name.lower())

    def _changed(self) -> None:
        self.sync_trusted()   # first: a new ambassador's first call to Consul is on its way
        self.refresh_names()
        for fn in self.after_change:
            fn()

    def ambassadors(self) -> list[tuple[str, str, str]]:
        """Running ambassadors: (name, id, service)."""
        rows = self.store.query("SELECT id, name, spec FROM containers WHERE status=?", RUNNING)
        return [(r["name"], r["id"], amb["service"]) for r in rows
                if (amb := json.loads(r["spec"])["spec"].get("ambassador"))]

    def registrations(self, advertise: str) -> list[Registration]:
        """What this host should have in Consul now (blocking: reads the store)."""
        return registration.registrations(self.host_id, advertise, self.containers.published())

    def refresh_names(self) -> None:
        """Rebuild the resolver's snapshot and the linking containers' /etc/hosts
        from the state; called after every change that moves a name."""
        with self._names_lock:
            nets = self.networks.list()
            running = self.containers.seen()
            by_name = {c.name: c for c in running}
            errors = self.dns.listen(str(n.gateway) for n in nets)
            for e in errors:
                log.error("%s", e)
            self._names = (nets, running)
            self.dns.update(discovery.build_snapshot(nets, running, self.cfg.dns, self.cfg.dns_ttl,
                                                     self.services))
            for c in running:
                if c.links:
                    self.containers.write_hosts(c.id, discovery.hosts_file(c, by_name))

    def refresh_services(self) -> None:
        """Consul's catalog changed, nothing local did: rebuild the snapshot from
        the containers and networks the last refresh read (no store queries, no
        hosts files), so a Consul change reaches answers in a few milliseconds."""
        with self._names_lock:
            if self._names is None:
                return
            nets, running = self._names
            self.dns.update(discovery.build_snapshot(nets, running, self.cfg.dns, self.cfg.dns_ttl,
                                                     self.services))

    def apply_firewall(self) -> None:
        with self.containers.fw_lock:   # no DNAT element added or removed between read and render
            want = self.trusted_flows()
            self.fw.apply_all(self.networks.list(), self.containers.active_mappings(), sorted(want))
            self._trusted = want

    def trusted_flows(self) -> frozenset[TrustedFlow]:
        """(ambassador ip, Consul ip, Consul port) for every running ambassador:
        the only connections a container may open to the host itself besides DNS.
        An ambassador is a container whose spec has `ambassador` (its process is
        portlink's forwarder); a portlink.ambassador label alone does not make one."""
        if self._consul_ip is None:
            return frozenset()
        rows = self.store.query("SELECT c.spec, l.ip FROM containers c JOIN leases l "
                                "ON l.container_id = c.id WHERE c.status=?", RUNNING)
        return frozenset(TrustedFlow(ip_address(r["ip"]), self._consul_ip, self.cfg.consul.port)
                         for r in rows if json.loads(r["spec"])["spec"].get("ambassador"))

    def trust_before_start(self, ip: str | None, spec: dict) -> None:
        """An ambassador about to start: let it reach Consul before its process
        runs, so its first connection never waits for a SYN retransmit."""
        if not (ip and spec.get("ambassador") and self._consul_ip is not None):
            return
        flow = TrustedFlow(ip_address(ip), self._consul_ip, self.cfg.consul.port)
        with self.containers.fw_lock:
            if flow not in self._trusted:
                self.fw.add_trusted([flow])
                self._trusted |= {flow}

    def sync_trusted(self) -> None:
        """Make the firewall's trusted flows those of the running ambassadors, by
        elements (constant cost per change). Errors are logged, not raised: the
        container change that called this has happened; the next change retries."""
        with self.containers.fw_lock:
            want = self.trusted_flows()
            gone, new = sorted(self._trusted - want), sorted(want - self._trusted)
            for e in self.fw.remove_trusted(gone):
                if not any(m in e for m in ("No such file", "does not exist", "matching rule")):   # gone already
                    log.error("firewall: %s", e)
            have = self._trusted - set(gone)
            try:
                self.fw.add_trusted(new)
                have |= set(new)
            except RuntimeFailure as e:
                log.error("firewall: cannot let ambassadors reach Consul: %s", e)
            self._trusted = frozenset(have)

    def setup(self) -> list[str]:
        """Bring the host to the recorded state; returns what had to be repaired."""
        try:
            kernel_ns.write_sysctl("net.ipv4.ip_forward", "1")
            # icc and isolation of bridged traffic are enforced in the ip forward hook.
            kernel_ns.write_sysctl("net.bridge.bridge-nf-call-iptables", "1")
        except OSError as e:
            raise RuntimeFailure(f"cannot set the host's forwarding sysctls: {e}") from None
        self._switch_firewall_driver()
        self.dns.start()   # before the default network appears: it listens on every gateway
        self.images.ensure_busybox()
        for net in self.networks.list():
            kernel_link.ensure_bridge(net)
        self.networks.get(DEFAULT_NETWORK)   # creates it on first start
        repaired = self.containers.reconcile()
        self.apply_firewall()
        repaired += self.sweep()
        self.refresh_names()
        return repaired

    def _switch_firewall_driver(self) -> None:
        marker = self.cfg.state_dir / "firewall-driver"
        old = marker.read_text().strip() if marker.exists() else None
        if old and old != self.fw.name:
            errs = make_driver(old).teardown()
            log.info("firewall driver changed from %s to %s%s", old, self.fw.name,
                     f" (teardown errors: {errs})" if errs else "")
        marker.write_text(self.fw.name + "\n")

    def sweep(self) -> list[str]:
        """Remove prefixed objects in this host that no journal row accounts for
        (what a crash between creating and recording could leave)."""
        known = {(r["kind"], r["name"]) for r in self.store.resources()}
        swept: list[str] = []
        for ifname in kernel_link.list_links():
            kind = "bridge" if ifname.startswith(names.BRIDGE_PREFIX) else "veth"
            if (kind, ifname) not in known:
                kernel_link.delete_link(ifname)
                swept.append(f"{kind} {ifname}")
        nsdir = self.containers.netns_dir
        if nsdir.is_dir():
            for f in nsdir.iterdir():
                if ("netns", str(f)) not in known:
                    kernel_ns.delete_netns(str(f))
                    swept.append(f"netns {f}")
        ids = {r["id"] for r in self.store.query("SELECT id FROM containers")}
        for cid in self.containers.runc.list_ids():
            if cid not in ids:
                self.containers.runc.delete(cid)
                swept.append(f"runc {cid[:12]}")
        if self.containers.dir.is_dir():
            for d in self.containers.dir.iterdir():
                if d.name not in ids:
                    mounts.unmount(str(d / "rootfs"))
                    shutil.rmtree(d, ignore_errors=True)
                    swept.append(f"dir {d}")
        for s in swept:
            log.warning("swept leaked %s", s)
        return swept

    def prune(self) -> dict:
        """Remove everything portlink created on this host; best effort, all errors kept."""
        errors: list[str] = []
        removed: list[str] = []
        for c in self.containers.list(all=True):
            try:
                self.containers.remove(c["id"], force=True)
                removed.append(f"container {c['name']}")
            except Exception as e:
                errors.append(f"container {c['name']}: {e}")
        for n in self.networks.list():
            errs = self.networks._drop(n)
            errors += errs
            if not errs:
                removed.append(f"network {n.name}")
        errors += self.fw.teardown()
        try:
            removed += self.sweep()
        except Exception as e:
            errors.append(f"sweep: {e}")
        return {"removed": removed, "errors": errors}

    def close(self) -> None:
        self.dns.stop()
        self.store.close()
