"""One portlink host: the state store, images, networks, containers and the
firewall, wired together; set-up at daemon start, reconciliation and prune."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path

from portlink.catalog import services as registration
from portlink.catalog.ambassador_tokens import AmbassadorTokens
from portlink.catalog.config import ConsulConfig
from portlink.catalog.intentions import Intentions
from portlink.catalog.lookup import passing_instances
from portlink.catalog.services import Registration
from portlink.dns.forward import ForwardConfig
from portlink.dns.server import DnsServer, ServerConfig
from portlink.dns.zone import DEFAULT_TTL
from portlink.errors import InvalidArgument, NotFound, RuntimeFailure
from portlink.netns import kernel_link, kernel_ns, names
from portlink.netns.firewall import make_driver
from portlink.netns.fw_l2 import L2Pins
from portlink.prom import Histogram
from portlink.runtime import ambassadors, cgroups, discovery, durable, launch_ns, link_datapath, mounts
from portlink.runtime.ambassador_policy import AmbassadorPolicy
from portlink.runtime.containers import Containers
from portlink.runtime.events import EventLog
from portlink.runtime.firewall import Firewall, consul_target
from portlink.runtime.images import ImageStore
from portlink.runtime.journal import Journal
from portlink.runtime.kernel import HostKernel
from portlink.runtime.lifecycle import Lifecycle, LifecycleDeps
from portlink.runtime.link_views import LinkViews
from portlink.runtime.linker_identity import LinkerIdentities
from portlink.runtime.logfmt import LogLimits
from portlink.runtime.networks import DEFAULT_NETWORK, Networks
from portlink.runtime.plan import Layout
from portlink.runtime.health_monitor import HealthMonitor
from portlink.runtime.host_forwarder import ForwarderConfig, HostForwarder
from portlink.runtime import security
from portlink.runtime.procstart import process_start
from portlink.runtime.reaper import Reaper
from portlink.runtime.records import RUNNING, Container, Records
from portlink.runtime.refresh import Catalog, Refresher
from portlink.runtime.runc import Runc
from portlink.runtime.server_sides import ServerSides, advertised, is_server_side, served_container
from portlink.runtime.state import Store
from portlink.runtime.token_files import TokenFiles
from portlink.runtime.views import Views
from portlink.runtime.volumes import Volumes

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
    ambassador_tokens: AmbassadorTokens | None = None    # None: ambassadors get no Consul token (no ACLs)
    secure_links: bool = False                           # mutual TLS both halves, intentions from links
    link_datapath: str = "proxy"                         # plaintext client sides: "kernel" = nft DNAT (runtime.link_datapath)
    advertise: str | None = None                         # address registered in Consul (default: towards Consul)
    consul_check_interval: float = 5.0                   # TCP health check of each registered port
    consul_resync: float = 30.0                          # a full resync at least this often (drift repair)
    log_limits: LogLimits = field(default_factory=LogLimits)   # containers' logs (run --log-opt overrides)

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
        if self.secure_links and self.consul is None:
            raise InvalidArgument("--secure-links uses Consul Connect's CA and intentions: give --consul ADDR too")
        if self.link_datapath not in link_datapath.DATAPATHS:
            raise InvalidArgument(f"invalid --link-datapath {self.link_datapath!r}: use proxy or kernel")
        if self.link_datapath == "kernel" and self.secure_links:
            raise InvalidArgument("--link-datapath kernel is for plaintext links: with --secure-links every "
                                  "link is mutual TLS through the forwarder (use --link-datapath proxy)")
        if not 1 <= self.consul_resync <= 86400:
            raise InvalidArgument(f"invalid --consul-resync {self.consul_resync}: expected 1 to 86400 seconds")


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
    durable.write_file(path, (hid + "\n").encode())   # a crash must not leave an empty id: a new one orphans entries
    return hid


@dataclass
class Metrics:
    attach_time: Histogram = field(default_factory=Histogram)   # seconds per veth attach
    start_time: Histogram = field(default_factory=Histogram)    # seconds from start to process running


class Host:
    """The composition root: every collaborator is made here, once, and passed
    to those that use it."""

    def __init__(self, cfg: HostConfig) -> None:
        self.cfg = cfg
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # runc starts containers from a namespace without our mounts (runtime.launch_ns),
        # where the netns files are reached through our root.
        self.layout = layout = Layout(cfg.state_dir, via_daemon_root=f"/proc/{os.getpid()}/root")
        layout.containers.mkdir(parents=True, exist_ok=True)
        self.store = Store(cfg.state_dir / "state.db")
        self.records = Records(self.store)
        self.fw = Firewall(make_driver(cfg.firewall, cfg.dns_port), L2Pins(), self.store,
                           consul_target(cfg.consul))
        self.images = ImageStore(cfg.state_dir / "images")
        self.events = EventLog(cfg.state_dir / "events.jsonl")
        self.catalog = Catalog(enabled=cfg.consul is not None,
                               ask=(lambda name: passing_instances(cfg.consul, name)) if cfg.consul else None)
        self.dns = DnsServer(ServerConfig(port=cfg.dns_port, forward=ForwardConfig(timeout=cfg.dns_timeout)))
        self.refresher = Refresher(self.store, self.images, layout, self.dns, self.fw, self.catalog,
                                   cfg.dns, cfg.dns_ttl)
        self.networks = Networks(self.store, self.fw, self.events, self.refresher.changed, cfg.default_subnet)
        self.runc = Runc(layout.runc_root, log_defaults=cfg.log_limits,
                         launch=launch_ns.LaunchNamespace(str(cfg.state_dir)))
        self.metrics = Metrics()
        self.reaper = Reaper()
        self.volumes = Volumes(self.store, layout, self.events)
        tokens = TokenFiles(cfg.ambassador_tokens)
        self.host_id = _host_id(cfg.state_dir)
        intentions = Intentions(cfg.consul, self.host_id, socket.gethostname()) if cfg.secure_links else None
        self.kernel = kernel = HostKernel(layout, self.runc, self.fw, self.metrics.attach_time, tokens, intentions)
        journal = Journal(self.store, kernel)
        # Plaintext client-side ambassadors: one forwarder process for them all (README:
        # How ambassadors run); it follows this daemon's catalog, never Consul itself.
        self.forwarder = kernel.forwarder = HostForwarder(
            ForwarderConfig(cfg.state_dir, cfg.consul.url, security.AMBASSADOR_UID, security.AMBASSADOR_GID),
            self.records, layout.netns_path, self.catalog.instances) if cfg.consul else None
        linkers = None
        if cfg.secure_links:
            linkers = kernel.linkers = LinkerIdentities(
                self.records, lambda aid: layout.cdir(aid) / ambassadors.LINKERS_DIR, tokens, intentions)
        life = Lifecycle(LifecycleDeps(
            layout=layout, records=self.records, images=self.images, networks=self.networks, journal=journal,
            runc=self.runc, events=self.events, refresher=self.refresher, watch=self.reaper.watch,
            trust=self.fw.trust, allow=self.fw.allow, default_dns=cfg.dns, start_time=self.metrics.start_time,
            oom_kills=lambda cid: cgroups.oom_kills(layout.cgroups_path(cid)), tokens=tokens,
            volumes=self.volumes, intentions=intentions, linkers=linkers, forwarder=self.forwarder))
        self.ambassadors = AmbassadorPolicy(self.records, life, self.catalog,
                                            cfg.consul.url if cfg.consul else None, self.events,
                                            self.refresher.changed, self.host_id, cfg.secure_links)
        self.ambassadors.forwarder = self.forwarder
        self.health = HealthMonitor(self.records, self.images, self.runc, self.events)
        self.containers = Containers(self.records, life, self.ambassadors, self.refresher,
                                     Views(self.records, layout, cfg.dns, self.health.view))
        self.servers = None
        if cfg.secure_links:
            self.servers = ServerSides(self.records, life, self.ambassadors,
                                       lambda data: self.containers.run(data), self.refresher.changed)
            self.containers.servers = self.servers
        self.lifecycle = life
        # Plaintext client sides' kernel path (or, in proxy mode, the removal of one left behind).
        self.link_datapath = link_datapath.KernelLinks(cfg.link_datapath == "kernel", self.records,
                                                       layout.netns_path, self.catalog, self.events,
                                                       since=process_start(os.getpid()))
        self.refresher.subscribe(self.link_datapath.sync)
        self.links = LinkViews(self.records, self.host_id, intentions.get if intentions else None)

    def registrations(self, advertise: str) -> list[Registration]:
        """What this host should have in Consul now (blocking: reads the store).
        A container being stopped (and its server side) is withdrawn already."""
        gone = self.containers.withdrawn
        published = [registration.Published(c.id, c.name, c.spec.labels or {}, tuple(
            registration.PublishedPort(r["container_port"], r["proto"], r["host_port"], r["host_ip"] or None)
            for r in rows), connect=c.spec.ambassador["service"] if is_server_side(c) else None,
            health=self._health(c))
            for c, rows in self.records.published() if c.id not in gone and self._serves(c, gone)]
        return registration.registrations(self.host_id, advertise, published)

    def _serves(self, c: Container, gone: set[str]) -> bool:
        """Not a server side, or one advertised now (server_sides.advertised)."""
        if not is_server_side(c):
            return True
        starting = self.servers.starting if self.servers is not None else frozenset()
        return advertised(c, self._served(c), gone, starting)

    def _served(self, side: Container) -> Container | None:
        """The container a server side serves, if it exists."""
        name = served_container(side)
        return self.records.named(name) if name else None

    def _health(self, c: Container) -> str | None:
        """The health its Consul check follows: a server-side ambassador (secure links)
        follows the container it serves, the one it links to."""
        if is_server_side(c):
            served = self._served(c)
            return self.health.status(served) if served is not None and served.status == RUNNING else None
        return self.health.status(c)

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
        repaired = self.volumes.reconcile()   # before containers: a start needs its volumes' dirs
        repaired += self.containers.reconcile()
        self.fw.apply_all()
        repaired += self.sweep()
        self.refresher.refresh_names()
        self.link_datapath.sync()
        self.reaper.start(self.containers.on_exit)
        if self.forwarder is not None:
            # Found (it outlives a daemon restart) or started, serving the running hosted ambassadors.
            repaired += self.forwarder.resume()
        self.health.start()
        # Restart policies after a daemon restart or a reboot: once the host is whole again.
        repaired += [f"restarting {n} (its restart policy)" for n in self.containers.restarts.resume()]
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
        nsdir = self.layout.netns_dir
        if nsdir.is_dir():
            for f in nsdir.iterdir():
                if ("netns", str(f)) not in known:
                    kernel_ns.delete_netns(str(f))
                    swept.append(f"netns {f}")
        ids = set(self.records.ids())
        for cid in self.runc.list_ids():
            if cid not in ids:
                self.runc.delete(cid)
                swept.append(f"runc {cid[:12]}")
        if self.layout.containers.is_dir():
            for d in self.layout.containers.iterdir():
                if d.name not in ids:
                    mounts.unmount(str(d / "rootfs"))
                    shutil.rmtree(d, ignore_errors=True)
                    swept.append(f"dir {d}")
        for s in swept:
            log.warning("swept leaked %s", s)
        return swept

    def prune(self, volumes: bool = False) -> dict:
        """Remove everything portlink created on this host; best effort, all errors kept.
        Volumes hold data: they stay unless `volumes` (then every unused one goes)."""
        errors: list[str] = []
        removed: list[str] = []
        for c in self.containers.list(all=True):
            try:
                self.containers.remove(c["id"], force=True)
                removed.append(f"container {c['name']}")
            except NotFound:
                removed.append(f"container {c['name']}")   # went with the container it served
            except Exception as e:
                errors.append(f"container {c['name']}: {e}")
        for n in self.networks.list():
            errs = self.networks.drop(n)
            errors += errs
            if not errs:
                removed.append(f"network {n.name}")
        if volumes:
            try:
                removed += [f"volume {v}" for v in self.volumes.prune(all=True)]
            except Exception as e:
                errors.append(f"volumes: {e}")
        errors += self.fw.teardown()
        try:
            removed += self.sweep()
        except Exception as e:
            errors.append(f"sweep: {e}")
        try:
            if self.kernel.release_netns_dir():
                removed.append(f"mount {self.layout.netns_dir}")
        except OSError as e:
            errors.append(f"mount {self.layout.netns_dir}: {e}")
        return {"removed": removed, "errors": errors}

    def close(self) -> None:
        if self.forwarder is not None:
            self.forwarder.close()     # it keeps serving: the next daemon finds it
        self.health.close()
        self.containers.restarts.close()
        self.reaper.close()
        self.dns.stop()
        self.store.close()
        if self.runc.launch is not None:
            self.runc.launch.close()
