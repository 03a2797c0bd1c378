"""Containers: validation, creation, start/stop/remove, exit handling.

Every object a container owns is journalled in the store before it is made
(kind, name, owner). Undo walks that journal backwards, so rollback of a failed
`run`, `stop`, removal after death and crash recovery are one code path."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field, fields, replace
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Callable

from portlink.catalog import services as registration
from portlink.errors import Conflict, InvalidArgument, NotFound, PortlinkError, RuntimeFailure
from portlink.netns import kernel_link, kernel_ns, names
from portlink.netns.firewall import FirewallDriver
from portlink.netns.model import Endpoint, NetworkSpec, PortMapping
from portlink.prom import Histogram
from portlink.runtime import ambassadors, discovery, faults, links as linkspec, logfmt, mounts, oci, ports as portspec, validate
from portlink.runtime.discovery import Seen
from portlink.runtime.images import ImageStore, check_name as check_image_name, read_image_file
from portlink.runtime.networks import NO_NETWORK, DEFAULT_NETWORK, Networks
from portlink.runtime.runc import Runc, pid_alive, signal_number, wait_gone
from portlink.runtime.state import Store, dumps

log = logging.getLogger("portlink.containers")

# Container status values
CREATING, RUNNING, EXITED = "creating", "running", "exited"
REMOVING = "removing"   # rm under way: a crash here is finished by reconcile, never undone
AMBASSADOR_RESTART = (0.2, 10.0)   # first and longest delay before an ambassador that died is restarted
AMBASSADOR_READY = 5.0              # seconds a run waits for an ambassador it starts to forward


@dataclass
class ContainerSpec:
    """What the user asked for; stored as JSON. Unknown fields are rejected."""

    image: str
    name: str = ""
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    publish: list[str] = field(default_factory=list)
    expose: list[str] = field(default_factory=list)
    network: str = DEFAULT_NETWORK
    hostname: str = ""
    dns: list[str] = field(default_factory=list)
    workdir: str = ""
    user: str = ""
    rm: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)      # --link name[:alias]
    aliases: list[str] = field(default_factory=list)    # --network-alias: more DNS names
    ambassador: dict = field(default_factory=dict)      # {service, ports, policy, drain_deadline}
    log_opts: dict = field(default_factory=dict)        # --log-opt max-size=10m / max-file=3 (over the daemon's)

    @classmethod
    def from_json(cls, data: dict) -> "ContainerSpec":
        if not isinstance(data, dict):
            raise InvalidArgument("the container spec must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgument(f"unknown field(s) in the container spec: {', '.join(unknown)}")
        if "image" not in data:
            raise InvalidArgument("no image given")
        spec = cls(**data)
        for f in ("cmd", "env", "publish", "expose", "dns", "links", "aliases"):
            v = getattr(spec, f)
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise InvalidArgument(f"field {f!r} must be a list of strings")
        if not isinstance(spec.labels, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in spec.labels.items()):
            raise InvalidArgument("field 'labels' must map strings to strings")
        if spec.ambassador:
            ambassadors.AmbassadorSpec.from_json(spec.ambassador)
        if not isinstance(spec.rm, bool):
            raise InvalidArgument("field 'rm' must be true or false")
        for f in ("image", "name", "network", "hostname", "workdir", "user"):
            if not isinstance(getattr(spec, f), str):
                raise InvalidArgument(f"field {f!r} must be a string")
        spec._check_values()
        return spec

    def _check_values(self) -> None:
        """Values, before anything is made: every message names the field."""
        check_image_name(self.image)
        if self.name:
            validate.name("container", self.name)
        validate.network_ref(self.network)
        if self.hostname:
            validate.hostname(self.hostname)
        if self.workdir:
            validate.abs_path("workdir", self.workdir)
        validate.argv("cmd", self.cmd)
        for e in self.env:
            validate.env_entry(e)
        for d in self.dns:
            validate.ip("--dns", d)
        for a in self.aliases:
            validate.name("network alias", a)
        for k, v in self.labels.items():
            validate.label(k, v)
        logfmt.parse_log_opts(self.log_opts)


def _mapping_key(p: PortMapping) -> str:
    return json.dumps([p.proto, str(p.host_ip or ""), p.host_port, str(p.container_ip), p.container_port])


def _mapping_from_key(key: str) -> PortMapping:
    proto, hip, hport, cip, cport = json.loads(key)
    return PortMapping(proto, hport, ip_address(cip), cport, ip_address(hip) if hip else None)


class Containers:
    def __init__(self, state_dir: Path, store: Store, images: ImageStore, networks: Networks,
                 firewall: FirewallDriver, default_dns: list[str]) -> None:
        self.dir = state_dir / "containers"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.netns_dir = state_dir / "netns"
        self.store, self.images, self.networks, self.fw = store, images, networks, firewall
        self.runc = Runc(state_dir / "runc")
        self.default_dns = default_dns
        self.watch: Callable[[str, int], None] = lambda cid, pid: None   # set by the daemon's reaper
        self.changed: Callable[[], None] = lambda: None   # names moved: the host refreshes DNS and hosts files
        self.consul_url: str | None = None                 # set by the host when Consul is configured
        self.remote: Callable[[str], list | None] = lambda name: None   # healthy instances of a service
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()
        # Held while the DNAT maps and the journal's port rows change, so a full
        # re-render (drift repair) never drops an element added meanwhile.
        self.fw_lock = threading.RLock()
        self.attach_time, self.start_time = Histogram(), Histogram()   # seconds (the metrics endpoint)
        self._held: set[str] = set()              # stopped or removed on purpose: never auto-restarted
        self._restarts: dict[str, list[float]] = {}   # ambassador id -> recent restart times
        self._linking: list[str] = []             # ambassadors a `run` in flight is about to link to
        self.event: Callable[..., object] = lambda type, action, name, id="", **attrs: None   # EventLog.emit
        self.before_process: Callable[[str | None, dict], None] = lambda ip, spec: None   # host: firewall trust

    # Lookup ------------------------------------------------------------------------
    def _lock(self, cid: str) -> threading.RLock:
        with self._locks_guard:
            return self._locks.setdefault(cid, threading.RLock())

    def row(self, ref: str):
        r = self.store.one("SELECT * FROM containers WHERE name=?", ref) or \
            self.store.one("SELECT * FROM containers WHERE id=?", ref)
        if r is None and len(ref) >= 4:
            rows = self.store.query("SELECT * FROM containers WHERE id LIKE ?", ref + "%")
            if len(rows) > 1:
                raise InvalidArgument(f"container id prefix {ref!r} is ambiguous")
            r = rows[0] if rows else None
        if r is None:
            raise NotFound(f"container {ref!r} not found (see `portlink ps -a`)")
        return r

    def cdir(self, cid: str) -> Path:
        return self.dir / cid

    def netns_path(self, cid: str) -> str:
        return str(self.netns_dir / (names.NETNS_PREFIX + cid[:12]))

    # run ---------------------------------------------------------------------------
    def run(self, data: dict, for_links: bool = False) -> dict:
        """`for_links`: an ambassador started for cross-host links, removed with its last linker."""
        spec = ContainerSpec.from_json(data)
        image = self.images.get(spec.image)          # NotFound names the import command
        net = None if spec.network == NO_NETWORK else self.networks.get(spec.network)
        requests = [r for p in spec.publish for r in portspec.parse_publish(p)]
        portspec.check_conflicts(requests)
        exposed = sorted({e for x in spec.expose for e in portspec.parse_expose(x)} |
                         set(image.config.exposed) | {r.key() for r in requests})
        for e in spec.env:
            validate.env_entry(e)
        for d in spec.dns:
            try:
                ip_address(d)
            except ValueError:
                raise InvalidArgument(f"invalid --dns {d!r}: not an IP address") from None
        if requests and net is None:
            raise InvalidArgument("cannot publish ports of a container on network 'none'")
        link_reqs = [linkspec.parse_link(x) for x in spec.links]
        linkspec.check_links(link_reqs)
        for a in spec.aliases:
            validate.name("network alias", a)
        registration.validate_labels(spec.labels)
        if link_reqs and net is None:
            raise InvalidArgument("--link needs a network: a container on network 'none' cannot reach another")
        remote = self._remote_links(link_reqs)
        self._check_link_targets([r for r in link_reqs if r.name not in remote], spec.network)
        if spec.ambassador:
            self._ambassador_spec(spec, net)
        cid = secrets.token_hex(32)
        name = validate.name("container", spec.name) if spec.name else "ctr-" + cid[:8]
        spec.name = name
        spec.hostname = validate.hostname(spec.hostname) if spec.hostname else cid[:12]
        spec.cmd = spec.cmd or image.config.cmd
        if not spec.cmd:
            raise InvalidArgument(f"no command given and image {image.name!r} has no default command")
        self._process(spec, image)   # validates --user against the image now, not at start
        if spec.ambassador:
            exposed = sorted(set(exposed) | set(spec.expose))
        made = []                    # ambassadors started for this run: removed if it fails
        pending = [ambassadors.container_name(n, spec.network) for n in remote]
        self._linking += pending     # not collected as unused before this container links to them
        try:
            for r in link_reqs:
                if r.name in remote:
                    amb, fresh = self._ensure_ambassador(r.name, remote[r.name], spec.network)
                    made += [amb] if fresh else []
                    spec.links[link_reqs.index(r)] = f"{amb}:{r.alias}"
            if made:
                faults.point("run.ambassador")
            return self._create(cid, name, spec, exposed, requests, for_links)
        except BaseException:
            for amb in made:
                try:
                    self.remove(amb, force=True)
                except Exception as e:
                    log.error("rollback of ambassador %s: %s", amb, e)
            raise
        finally:
            for amb in pending:
                self._linking.remove(amb)

    def _create(self, cid: str, name: str, spec: ContainerSpec, exposed: list[str], requests,
                for_links: bool = False) -> dict:
        record = {"spec": asdict(spec), "exposed": exposed, **({"for_links": True} if for_links else {})}
        with self.store.tx() as db:
            if db.execute("SELECT 1 FROM containers WHERE name=?", (name,)).fetchone():
                raise Conflict(f"container name {name!r} is already in use")
            db.execute("INSERT INTO containers(id,name,spec,status,created) VALUES (?,?,?,?,?)",
                       (cid, name, dumps(record), CREATING, time.time()))
            self._reserve_ports(db, cid, requests)
        faults.point("run.created")
        self._emit(cid, spec, "create", image=spec.image)
        try:
            self.store.record("dir", str(self.cdir(cid)), cid)
            self.cdir(cid).mkdir()
            with self._lock(cid):
                self._start(cid)
        except BaseException as e:
            errors = self._undo(cid, keep_dir=False)
            self.store.execute("DELETE FROM ports WHERE container_id=?", cid)
            self.store.execute("DELETE FROM containers WHERE id=?", cid)
            self._emit(cid, spec, "destroy", error=str(e))
            if errors:
                log.error("rollback of %s left errors: %s", name, "; ".join(errors))
            if isinstance(e, PortlinkError):
                raise
            raise RuntimeFailure(f"cannot run container {name!r}: {e}") from e
        faults.point("run.running")
        for text in spec.links:
            link = linkspec.parse_link(text)
            self._emit(cid, spec, "link", target=link.name, alias=link.alias)
        self.changed()
        return self.inspect(cid)

    def _emit(self, cid: str, spec, action: str, **attrs) -> None:
        """An event about a container; `spec` is a ContainerSpec or its stored dict."""
        get = spec.get if isinstance(spec, dict) else lambda k, d=None: getattr(spec, k, d)
        amb = get("ambassador")
        self.event("ambassador" if amb else "container", action, get("name"), cid,
                   network=get("network"), service=amb.get("service") if amb else None, **attrs)

    # ambassadors and cross-host links -------------------------------------------------
    def _remote_links(self, reqs: list[linkspec.LinkRequest]) -> dict[str, list[int]]:
        """Links to no local container but to a service in Consul: name -> its TCP ports."""
        out = {}
        for r in reqs:
            if self.store.one("SELECT 1 FROM containers WHERE name=?", r.name) is not None:
                continue
            instances = self.remote(r.name) if self.consul_url else None
            if instances:
                ports = ambassadors.ports_from_catalog(instances)
                if ports:
                    out[r.name] = ports
        return out

    def _ambassador_spec(self, spec: ContainerSpec, net) -> None:
        """Fill in an ambassador container's image, command and ports (run --ambassador)."""
        amb = ambassadors.AmbassadorSpec.from_json(spec.ambassador)
        if not self.consul_url:
            raise InvalidArgument("an ambassador follows a service in Consul: start portlinkd with --consul ADDR")
        if net is None:
            raise InvalidArgument("an ambassador needs a network: not --net none")
        ports = list(amb.ports)
        if not ports:
            ports = ambassadors.ports_from_catalog(self.remote(amb.service) or [])
        if not ports:
            raise NotFound(f"unknown remote service {amb.service!r}: no healthy instance in Consul "
                           "(give its ports with --expose to wait for it)")
        if spec.cmd or spec.image not in ("", "busybox"):
            raise InvalidArgument("an ambassador runs portlink's forwarder: give no image or command")
        spec.image = "busybox"
        spec.cmd = ambassadors.command(amb, ports, self.consul_url)
        spec.expose = sorted(set(spec.expose) | {f"{p}/tcp" for p in ports})
        spec.labels = {**spec.labels, ambassadors.LABEL: amb.service, "portlink.register": "false"}
        spec.ambassador = amb.to_json()

    def _ensure_ambassador(self, service: str, ports: list[int], network: str) -> tuple[str, bool]:
        """The running ambassador for `service` on `network`: reused, or started (True)."""
        name = ambassadors.container_name(service, network)
        row = self.store.one("SELECT * FROM containers WHERE name=?", name)
        if row is not None and row["status"] == RUNNING:
            return name, False
        if row is not None:
            self.start(name)
            self._await_ready(name)
            return name, False
        self.run({"name": name, "image": "busybox", "network": network,
                  "ambassador": {"service": service, "ports": ports}}, for_links=True)
        self._await_ready(name)
        return name, True

    def _await_ready(self, name: str, timeout: float = AMBASSADOR_READY) -> None:
        """Until a just-started ambassador forwards: its forwarder (a Python process)
        takes a moment to listen and to hear from Consul, and a connection before
        that is closed at once. A run that links to it returns when the link works
        (or when the ambassador found Consul unreachable). Asks its /stats on the
        bridge, so no probe connection shows in its counters."""
        row = self.store.one("SELECT * FROM containers WHERE name=?", name)
        ip = json.loads(row["spec"]).get("ip") if row is not None and row["status"] == RUNNING else None
        if ip is None:
            return
        url = f"http://{ip}:{ambassadors.METRICS_PORT}/stats"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(row["pid"]):
            try:
                with opener.open(url, timeout=1) as r:
                    snap = json.loads(r.read())
                listeners = snap["listeners"]
                if listeners and all(x["backends"] for x in listeners.values()):
                    return
                if snap.get("consul", {}).get("reachable") is False:
                    return            # it serves what it has; Consul's return is its own business
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                pass                  # not listening yet
            time.sleep(0.02)
        log.warning("ambassador %s: no backends after %gs; linking anyway", name, timeout)

    def _check_link_targets(self, reqs: list[linkspec.LinkRequest], network: str) -> None:
        for r in reqs:
            row = self.store.one("SELECT * FROM containers WHERE name=?", r.name)
            if row is None:
                where = " and no healthy service of that name in Consul" if self.consul_url else ""
                raise NotFound(f"cannot link to {r.name!r}: no such container on this host{where} "
                               "(see `portlink ps -a`)")
            if row["status"] != RUNNING:
                raise Conflict(f"cannot link to {r.name!r}: it is not running (start it first)")
            other = json.loads(row["spec"])["spec"]["network"]
            if other != network:
                raise InvalidArgument(f"cannot link to {r.name!r}: it is on network {other!r}, this "
                                      f"container on {network!r} (links work within one network)")

    def _reserve_ports(self, db, cid: str, requests: list[portspec.PortRequest]) -> None:
        taken = {}
        for r in db.execute("SELECT proto, host_ip, host_port, container_id FROM ports"):
            taken.setdefault((r[0], r[2]), []).append((r[1], r[3]))
        for req in requests:
            port = req.host_port
            if port is None:   # pick the lowest free ephemeral port
                port = next((p for p in portspec.EPHEMERAL if (req.proto, p) not in taken), None)
                if port is None:
                    raise Conflict(f"no free host port left for {req.key()}")
            for hip, owner in taken.get((req.proto, port), []):
                if portspec.addresses_overlap(req.host_ip, ip_address(hip) if hip else None):
                    oname = db.execute("SELECT name FROM containers WHERE id=?", (owner,)).fetchone()
                    where = f"{hip}:" if hip else ""
                    raise Conflict(f"host port {where}{port}/{req.proto} is already published by "
                                   f"container {oname[0] if oname else owner[:12]!r}")
            db.execute("INSERT INTO ports VALUES (?,?,?,?,?)",
                       (req.proto, str(req.host_ip or ""), port, cid, req.container_port))
            taken.setdefault((req.proto, port), []).append((str(req.host_ip or ""), cid))

    def _process(self, spec: ContainerSpec, image, link_env: list[str] = ()) -> oci.ProcessSpec:
        uid = gid = 0
        if spec.user:
            # Resolved inside the image: an etc/passwd symlinked to /etc/shadow reads nothing of the host's.
            read = lambda p: read_image_file(image.rootfs, p)
            uid, gid = validate.parse_user(spec.user, read("etc/passwd"), read("etc/group"))
        # Docker's order: PATH and HOSTNAME, the link variables, then the image's and the
        # user's entries replacing or appending (so -e overrides a link variable).
        base = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", f"HOSTNAME={spec.hostname}"]
        env = linkspec.merge_env(base, list(link_env), [*image.config.env, *spec.env])
        if spec.ambassador:
            env += ["PYTHONDONTWRITEBYTECODE=1"]
        return oci.ProcessSpec(args=spec.cmd, env=env,
                               cwd=spec.workdir or image.config.workdir or "/", uid=uid, gid=gid,
                               hostname=spec.hostname,
                               ro_binds=ambassadors.runtime_binds() if spec.ambassador else {})

    # start: every step journalled before it is taken ----------------------------------
    def _start(self, cid: str) -> None:
        began = time.perf_counter()
        row = self.row(cid)
        rec = json.loads(row["spec"])
        spec = ContainerSpec(**rec["spec"])
        image = self.images.get(spec.image)
        cdir = self.cdir(cid)
        rootfs = str(cdir / "rootfs")
        self.store.record("mount", rootfs, cid)
        mounts.mount_overlay(str(image.rootfs), str(cdir / "upper"), str(cdir / "work"), rootfs)
        faults.point("start.mount")

        nspath = self.netns_path(cid)
        self.store.record("netns", nspath, cid)
        kernel_ns.create_netns(nspath)
        faults.point("start.netns")
        ip = None
        if spec.network != NO_NETWORK:
            net = self.networks.get(spec.network)
            with self.store.tx() as db:
                ip = Networks.lease(db, net, cid, prefer=rec.get("ip") if spec.ambassador else None)
                self.store.record("lease", f"{net.id}/{ip}", cid, db)
            faults.point("start.lease")
            ep = self._endpoint(cid, net, ip)
            self.store.record("veth", ep.host_ifname, cid)
            t = time.perf_counter()
            kernel_link.attach(ep)
            self.attach_time.observe(time.perf_counter() - t)
            faults.point("start.veth")
            mappings = self._mappings(cid, ip)
            with self.fw_lock:
                for m in mappings:
                    self.store.record("port", _mapping_key(m), cid)
                self.fw.add_ports(mappings)
            faults.point("start.firewall")
        else:
            kernel_link.loopback_up(nspath)
        me = self._seen(cid, rec, image.config.env, str(ip) if ip else None)
        by_name = {c.name: c for c in self.seen()}
        link_env = [v for link, child in discovery.resolve_links(me, by_name) if child is not None
                    for v in linkspec.link_env(spec.name, link.alias, child.linked())]
        files = self._write_files(cid, spec, me, by_name, str(net.gateway) if ip else None)
        proc = replace(self._process(spec, image, link_env), files=files)
        bundle = cdir / "bundle"
        bundle.mkdir(exist_ok=True)
        config = oci.build_config(proc, rootfs, nspath, f"/portlink/{cid}")
        (bundle / "config.json").write_text(json.dumps(config, indent=1))
        faults.point("start.files")
        self.before_process(str(ip) if ip else None, rec["spec"])
        self.store.record("runc", cid, cid)
        pid = self.runc.run_detached(cid, bundle, cdir / "container.log", spec.log_opts)
        self.start_time.observe(time.perf_counter() - began)
        faults.point("start.runc")
        if ip is not None and spec.ambassador:
            rec["ip"] = str(ip)   # a restarted ambassador keeps its address: linkers' env vars name it
        self.store.execute("UPDATE containers SET status=?, pid=?, started=?, exit_code=NULL, finished=NULL, "
                           "spec=? WHERE id=?", RUNNING, pid, time.time(), dumps(rec), cid)
        self._emit(cid, rec["spec"], "start", pid=pid, ip=str(ip) if ip else None)
        self.watch(cid, pid)

    # names: what DNS and /etc/hosts are built from ----------------------------------
    @staticmethod
    def _seen(cid: str, rec: dict, image_env: list[str], ip: str | None) -> Seen:
        """`rec` is the stored record: {"spec": ..., "exposed": [...]}."""
        spec = ContainerSpec(**rec["spec"])
        links = tuple(linkspec.parse_link(x) for x in spec.links)
        return Seen(id=cid, name=spec.name, hostname=spec.hostname, network=spec.network, ip=ip,
                    aliases=tuple(spec.aliases), exposed=tuple(rec["exposed"]),
                    env=(*image_env, *spec.env), links=links, dns=tuple(spec.dns))

    def seen(self) -> list[Seen]:
        """Every running container with an address, as name resolution sees it."""
        rows = self.store.query("SELECT c.id, c.spec, l.ip FROM containers c JOIN leases l "
                                "ON l.container_id = c.id WHERE c.status=?", RUNNING)
        out = []
        envs: dict[str, list[str]] = {}   # one image read per image, not per container (500 → 1)
        for r in rows:
            rec = json.loads(r["spec"])
            image = rec["spec"]["image"]
            if image not in envs:
                try:
                    envs[image] = self.images.get(image).config.env
                except NotFound:
                    envs[image] = []
            out.append(self._seen(r["id"], rec, envs[image], r["ip"]))
        return out

    def published(self) -> list[registration.Published]:
        """Every running container with the ports it publishes: what Consul should list."""
        by_id: dict[str, tuple[dict, list]] = {}
        for r in self.store.query("SELECT c.id, c.spec, p.proto, p.container_port, p.host_port, p.host_ip "
                                  "FROM containers c JOIN ports p ON p.container_id = c.id "
                                  "WHERE c.status=? ORDER BY c.id, p.proto, p.container_port", RUNNING):
            spec = by_id.setdefault(r["id"], (json.loads(r["spec"])["spec"], []))
            spec[1].append(registration.PublishedPort(r["container_port"], r["proto"], r["host_port"],
                                                      r["host_ip"] or None))
        return [registration.Published(cid, spec["name"], spec.get("labels") or {}, tuple(ports))
                for cid, (spec, ports) in by_id.items()]

    def write_hosts(self, cid: str, text: str) -> None:
        """Rewrite a running container's /etc/hosts in place: the file is bind-mounted,
        so it must stay the same inode (a rename would go unseen inside)."""
        path = self.cdir(cid) / "hosts"
        try:
            if path.read_text() != text:
                with open(path, "r+") as f:
                    f.write(text)
                    f.truncate()
        except FileNotFoundError:
            pass   # removed meanwhile: nothing to follow

    def _endpoint(self, cid: str, net: NetworkSpec, ip: IPv4Address) -> Endpoint:
        return Endpoint(container_id=cid, netns_path=self.netns_path(cid), network=net,
                        address=ip, host_ifname=names.veth_name(cid))

    def _mappings(self, cid: str, ip: IPv4Address) -> list[PortMapping]:
        return [PortMapping(r["proto"], r["host_port"], ip, r["container_port"],
                            ip_address(r["host_ip"]) if r["host_ip"] else None)
                for r in self.store.query("SELECT * FROM ports WHERE container_id=? "
                                          "ORDER BY proto, host_port", cid)]

    def _write_files(self, cid: str, spec: ContainerSpec, me: Seen, by_name: dict[str, Seen],
                     gateway: str | None) -> dict[str, str]:
        cdir = self.cdir(cid)
        files = {
            "/etc/hosts": ("hosts", discovery.hosts_file(me, by_name)),
            "/etc/resolv.conf": ("resolv.conf", discovery.resolv_conf(gateway, spec.dns or self.default_dns)),
            "/etc/hostname": ("hostname", spec.hostname + "\n"),
        }
        out = {}
        for dest, (fname, text) in files.items():
            (cdir / fname).write_text(text)
            out[dest] = str(cdir / fname)
        return out

    # undo: the one teardown path ------------------------------------------------------
    def _undo(self, cid: str, keep_dir: bool = True, fault: str | None = None) -> list[str]:
        """Remove what the journal says `cid` owns, newest first; best effort.
        `fault`: the fault point to pass halfway (crash tests)."""
        errors: list[str] = []
        rows = self.store.resources(cid)
        netns_goes = any(r["kind"] == "netns" for r in rows)
        for i, r in enumerate(reversed(rows)):
            if fault and i == len(rows) // 2:
                faults.point(fault)
            kind, name = r["kind"], r["name"]
            if kind == "dir" and keep_dir:
                continue
            if kind == "veth" and netns_goes:
                # The pair goes with the namespace, in the kernel's batched cleanup:
                # deleting it here would wait ~20 ms for an RCU grace period.
                self.store.forget(kind, name)
                continue
            try:
                self._undo_one(kind, name)
                self.store.forget(kind, name)
            except Exception as e:
                errors.append(f"{kind} {name}: {e}")
        return errors

    def _undo_one(self, kind: str, name: str) -> None:
        if kind == "runc":
            err = self.runc.delete(name, self.cdir(name))   # cdir: where its log shim's pid is
            if err:
                raise RuntimeFailure(err)
        elif kind == "port":
            with self.fw_lock:   # element and journal row go together (see Host.apply_firewall)
                errs = self.fw.remove_ports([_mapping_from_key(name)])
                # An element already gone is what we want; anything else is reported.
                errs = [e for e in errs if not any(m in e for m in ("No such file", "does not exist", "matching rule"))]
                if errs:
                    raise RuntimeFailure("; ".join(errs))
                self.store.forget(kind, name)
        elif kind == "veth":
            kernel_link.delete_link(name)
        elif kind == "lease":
            net_id, ip = name.split("/")
            self.store.execute("DELETE FROM leases WHERE network_id=? AND ip=?", net_id, ip)
        elif kind == "netns":
            kernel_ns.delete_netns(name)
        elif kind == "mount":
            mounts.unmount(name)
        elif kind == "dir":
            if os.path.exists(name):
                shutil.rmtree(name)
        else:
            raise RuntimeFailure(f"unknown resource kind {kind!r}")

    # lifecycle -----------------------------------------------------------------------
    def start(self, ref: str) -> dict:
        cid = self.row(ref)["id"]
        with self._lock(cid):
            self._held.discard(cid)
            if self.row(cid)["status"] == RUNNING:
                return self.inspect(cid)
            if self.row(cid)["status"] == REMOVING:
                raise Conflict(f"container {ref!r} is being removed")
            try:
                self._start(cid)
            except BaseException as e:
                errors = self._undo(cid)
                if errors:
                    log.error("rollback of start %s left errors: %s", cid[:12], "; ".join(errors))
                if isinstance(e, PortlinkError):
                    raise
                raise RuntimeFailure(f"cannot start container {ref!r}: {e}") from e
        self.changed()
        return self.inspect(cid)

    def stop(self, ref: str, timeout: float = 10) -> dict:
        row = self.row(ref)
        cid = row["id"]
        self._held.add(cid)   # before the kill: the exit it causes must not restart an ambassador
        with self._lock(cid):
            row = self.row(cid)
            if row["status"] == RUNNING:
                pid = row["pid"]
                self.runc.kill(cid, signal_number("TERM"))
                if not wait_gone(pid, timeout):
                    self.runc.kill(cid, signal_number("KILL"))
                    wait_gone(pid, 10)
                errors = self._stopped(cid, None)
                spec = json.loads(row["spec"])["spec"]
                self._emit(cid, spec, "die", exit_code=self.store.one(
                    "SELECT exit_code FROM containers WHERE id=?", cid)["exit_code"])
                self._emit(cid, spec, "stop")
                self.changed()
                if errors:
                    raise RuntimeFailure(f"container {row['name']!r} stopped, but cleanup failed: " + "; ".join(errors))
        return self.inspect(cid)

    def _stopped(self, cid: str, code: int | None) -> list[str]:
        """The process is gone: release what a running container holds."""
        errors = self._undo(cid)
        # The pid is kept (shown only while running) so a late exit report is recognised as stale.
        self.store.execute("UPDATE containers SET status=?, finished=?, "
                           "exit_code=COALESCE(?, exit_code) WHERE id=?", EXITED, time.time(), code, cid)
        return errors

    def on_exit(self, cid: str, pid: int, code: int | None) -> None:
        """Called by the reaper when a container's init process `pid` ends."""
        with self._lock(cid):
            row = self.store.one("SELECT * FROM containers WHERE id=?", cid)
            # A late report about an earlier run (stopped, then started again) is stale.
            if row is None or row["pid"] != pid:
                return
            if code is not None:
                self.store.execute("UPDATE containers SET exit_code=? WHERE id=?", code, cid)
            if row["status"] == RUNNING:
                errors = self._stopped(cid, code)
                spec = json.loads(row["spec"])["spec"]
                self._emit(cid, spec, "die", exit_code=code)
                self.changed()
                if errors:
                    log.error("cleanup after %s exited: %s", row["name"], "; ".join(errors))
                if spec.get("rm"):
                    self.remove(cid, force=True)
                elif spec.get("ambassador") and cid not in self._held:
                    self._restart_later(cid, row["name"])

    # ambassadors are restarted when their process dies (killed, crashed, OOM) -----------
    def _restart_later(self, cid: str, name: str) -> None:
        now = time.monotonic()
        recent = [t for t in self._restarts.get(cid, []) if now - t < 60]
        first, longest = AMBASSADOR_RESTART
        delay = min(longest, first * 2 ** len(recent))   # a crash loop backs off
        self._restarts[cid] = recent + [now]
        log.warning("ambassador %s exited: restarting in %.1fs", name, delay)
        t = threading.Timer(delay, self._restart_now, (cid, name))
        t.daemon = True
        t.start()

    def _restart_now(self, cid: str, name: str) -> None:
        try:
            with self._lock(cid):
                row = self.store.one("SELECT status FROM containers WHERE id=?", cid)
                if row is None or row["status"] != EXITED or cid in self._held:
                    return   # removed, started or stopped on purpose meanwhile
                self.start(cid)
                self._emit(cid, json.loads(self.row(cid)["spec"])["spec"], "restart")
            log.info("ambassador %s restarted", name)
        except Exception as e:
            log.error("restart of ambassador %s failed: %s", name, e)
            self._restart_later(cid, name)

    def restart(self, ref: str, timeout: float = 10) -> dict:
        self.stop(ref, timeout)
        return self.start(ref)

    def remove(self, ref: str, force: bool = False) -> list[str]:
        row = self.row(ref)
        cid = row["id"]
        self._held.add(cid)
        with self._lock(cid):
            row = self.row(cid)
            if row["status"] == RUNNING and not force:
                raise Conflict(f"container {row['name']!r} is running: stop it first or use rm -f")
            # From here on a crash is finished by reconcile: the container ends up gone.
            self.store.execute("UPDATE containers SET status=? WHERE id=?", REMOVING, cid)
            faults.point("rm.marked")
            if row["status"] in (RUNNING, REMOVING) and row["pid"]:
                self.runc.kill(cid, signal_number("KILL"))
                wait_gone(row["pid"], 10)
                faults.point("rm.killed")
            self._finish_remove(cid, row["name"])
        with self._locks_guard:
            self._locks.pop(cid, None)
        self._held.discard(cid)
        self._restarts.pop(cid, None)
        self.changed()
        self._collect_ambassadors()
        return []

    def _finish_remove(self, cid: str, name: str) -> None:
        errors = self._undo(cid, keep_dir=False, fault="rm.undo")
        if errors:
            raise RuntimeFailure(f"could not remove container {name!r} entirely: " + "; ".join(errors))
        faults.point("rm.undone")
        spec = json.loads(self.row(cid)["spec"])["spec"]
        with self.store.tx() as db:
            db.execute("DELETE FROM ports WHERE container_id=?", (cid,))
            db.execute("DELETE FROM containers WHERE id=?", (cid,))
        self._emit(cid, spec, "destroy")

    def _collect_ambassadors(self) -> list[str]:
        """Remove ambassadors started for cross-host links that no container links to
        any more (the last linker was removed, or its `run` died half-way)."""
        rows = self.store.query("SELECT id, name, spec FROM containers")
        linked = {linkspec.parse_link(x).name for r in rows for x in json.loads(r["spec"])["spec"].get("links", [])}
        gone = []
        for r in rows:
            if json.loads(r["spec"]).get("for_links") and r["name"] not in linked and r["name"] not in self._linking:
                try:
                    self.remove(r["id"], force=True)
                    gone.append(f"ambassador {r['name']} (no container links to it)")
                except NotFound:
                    pass   # removed meanwhile
                except Exception as e:
                    log.error("removing unused ambassador %s: %s", r["name"], e)
        return gone

    # views ---------------------------------------------------------------------------
    def inspect(self, ref: str) -> dict:
        row = self.row(ref)
        cid = row["id"]
        rec = json.loads(row["spec"])
        spec = rec["spec"]
        lease = self.store.one("SELECT * FROM leases WHERE container_id=?", cid)
        net = None
        if spec["network"] != NO_NETWORK:
            try:
                net = self.networks.get(spec["network"])
            except NotFound:
                pass
        ports = [{"proto": r["proto"], "host_ip": r["host_ip"] or "0.0.0.0", "host_port": r["host_port"],
                  "container_port": r["container_port"]}
                 for r in self.store.query("SELECT * FROM ports WHERE container_id=? ORDER BY proto, host_port", cid)]
        return {
            "id": cid, "name": row["name"], "image": spec["image"], "status": row["status"],
            "pid": row["pid"] if row["status"] == RUNNING else None, "exit_code": row["exit_code"], "created": row["created"],
            "started": row["started"], "finished": row["finished"], "config": spec,
            "exposed": rec["exposed"],
            "network": {
                "name": spec["network"], "ip": lease["ip"] if lease else None,
                "gateway": str(net.gateway) if net else None,
                "prefixlen": net.subnet.prefixlen if net else None,
                "bridge": net.bridge if net else None,
                "veth": names.veth_name(cid) if lease else None,
                "netns": self.netns_path(cid) if row["status"] == RUNNING else None,
                "ports": ports,
            },
            "paths": {"dir": str(self.cdir(cid)), "log": str(self.cdir(cid) / "container.log"),
                      "hosts": str(self.cdir(cid) / "hosts")},
            "links": self._links_view(spec),
            "dns": {
                "server": str(net.gateway) if net else None,
                "names": ([spec["name"], spec["hostname"], cid[:12], f"{spec['name']}.{net.name}",
                           *spec.get("aliases", [])] if net else []),
                "upstreams": spec["dns"] or self.default_dns,
            },
        }

    LINK_NOTE = ("the DNS name and /etc/hosts follow the linked container live; the "
                 "environment variables were set when this container started and cannot change")

    def _links_view(self, spec: dict) -> list[dict]:
        out = []
        for text in spec.get("links", []):
            link = linkspec.parse_link(text)
            row = self.store.one("SELECT c.status, l.ip FROM containers c LEFT JOIN leases l "
                                 "ON l.container_id = c.id WHERE c.name=?", link.name)
            out.append({"name": link.name, "alias": link.alias,
                        "status": row["status"] if row else "missing",
                        "ip": row["ip"] if row else None, "note": self.LINK_NOTE})
        return out

    def list(self, all: bool = False) -> list[dict]:
        rows = self.store.query("SELECT id FROM containers ORDER BY created")
        out = []
        for r in rows:
            try:
                out.append(self.inspect(r["id"]))
            except NotFound:
                pass   # removed since the ids were read (a concurrent rm): not listed, not an error
        return out if all else [c for c in out if c["status"] == RUNNING]

    def active_mappings(self) -> list[PortMapping]:
        return [_mapping_from_key(r["name"]) for r in
                self.store.query("SELECT name FROM resources WHERE kind='port'")]

    def users_of(self, network_name: str) -> list[str]:
        return [r["name"] for r in self.store.query("SELECT name, spec FROM containers")
                if json.loads(r["spec"])["spec"]["network"] == network_name]

    def exec_argv(self, ref: str, args: list[str], env: list[str], tty: bool, workdir: str | None) -> list[str]:
        row = self.row(ref)
        if row["status"] != RUNNING:
            raise Conflict(f"container {row['name']!r} is not running")
        for e in env:
            validate.env_entry(e)
        if not args:
            raise InvalidArgument("exec needs a command")
        return self.runc.exec_argv(row["id"], args, env, tty, workdir)

    # recovery ------------------------------------------------------------------------
    def reconcile(self) -> list[str]:
        """After a (crashed) daemon restart: make the journal and the kernel agree."""
        errors: list[str] = []
        for row in self.store.query("SELECT * FROM containers"):
            cid = row["id"]
            if row["status"] == CREATING:
                # Interrupted `run`: fully gone, as if it never happened.
                errors += self._undo(cid, keep_dir=False)
                self.store.execute("DELETE FROM ports WHERE container_id=?", cid)
                self.store.execute("DELETE FROM containers WHERE id=?", cid)
                self._emit(cid, json.loads(row["spec"])["spec"], "destroy", error="interrupted by a daemon crash")
            elif row["status"] == REMOVING:
                # Interrupted `rm`: finish it (the user asked for the container to go).
                if row["pid"] and pid_alive(row["pid"]):
                    self.runc.kill(cid, signal_number("KILL"))
                    wait_gone(row["pid"], 10)
                try:
                    self._finish_remove(cid, row["name"])
                except RuntimeFailure as e:
                    errors.append(str(e))
            elif row["status"] == RUNNING and row["pid"] and pid_alive(row["pid"]) and self.runc.state(cid):
                self.watch(cid, row["pid"])
            elif row["status"] == RUNNING or any(r["kind"] != "dir" for r in self.store.resources(cid)):
                # Died while we were away, or an interrupted stop: finish the stop.
                errors += self._stopped(cid, None)
                if row["status"] == RUNNING:
                    self._emit(cid, json.loads(row["spec"])["spec"], "die", exit_code=None)
                if row["status"] == RUNNING and json.loads(row["spec"])["spec"].get("ambassador"):
                    self._restart_later(cid, row["name"])
        errors += self._collect_ambassadors()
        return errors
