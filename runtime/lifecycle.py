"""One container's life: create, start, stop, exit, remove, each step recorded
in the journal before it is taken (fault points between them).

No policy lives here (which ambassadors to start or restart, what to refresh
afterwards): runtime.containers composes this with runtime.ambassador_policy
and the refresher."""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from portlink.catalog.intentions import Intentions, Link
from portlink.errors import Conflict, InvalidArgument, NotFound, PortlinkError, RuntimeFailure
from portlink.prom import Histogram
from portlink.runtime import ambassadors, faults, init_proc, mount_paths, oci, seccomp, security, shim_binaries, volspec
from portlink.runtime import links as linkspec
from portlink.runtime.container_files import write_fresh
from portlink.runtime.events import EventLog
from portlink.runtime.exit_notices import ExitNotices
from portlink.runtime.images import ImageStore
from portlink.runtime.journal import Journal
from portlink.runtime.linker_identity import LinkerIdentities, is_client_side
from portlink.runtime.networks import NO_NETWORK, Networks
from portlink.runtime.plan import Layout, PortRow, apply_image_config, mount_source, plan_start, resolve_user
from portlink.runtime.procstart import is_same, process_start
from portlink.runtime.records import CREATING, REMOVING, RUNNING, Container, Records
from portlink.runtime.refresh import Refresher
from portlink.runtime.runc import Runc, Stdio, pid_alive, read_exit_file, reap_orphan, signal_number, wait_gone
from portlink.runtime.spec import ContainerSpec, Request
from portlink.runtime.token_files import TOKEN_FILE, TokenFiles
from portlink.runtime.volumes import Volumes

log = logging.getLogger("portlink.containers")


@dataclass
class LifecycleDeps:
    layout: Layout
    records: Records
    images: ImageStore
    networks: Networks
    journal: Journal
    runc: Runc
    events: EventLog
    refresher: Refresher                       # the links' names for a start (read only here)
    watch: Callable[..., None]                 # the reaper: report when (cid, pid, monitor pid) ends
    trust: Callable[[str], None]               # the firewall: an ambassador may reach Consul
    allow: Callable[[list], None]              # the firewall: what a container's links open (icc off)
    default_dns: list[str]
    start_time: Histogram
    oom_kills: Callable[[str], int | None]     # OOM kills in a container's cgroup (cgroups.oom_kills)
    tokens: TokenFiles = field(default_factory=lambda: TokenFiles(None))   # ambassadors' Consul tokens
    volumes: Volumes | None = None             # None: no volumes on this host (unit tests)
    intentions: Intentions | None = None       # secure links: a client side's intention to its service
    linkers: LinkerIdentities | None = None    # secure links: each linker dialled as its own identity
    forwarder: object | None = None            # runtime.host_forwarder.HostForwarder (plaintext client sides)


def seccomp_profile(spec: ContainerSpec) -> dict | None:
    """The container's seccomp profile read from its file (cached per file version);
    None: --security-opt seccomp=unconfined. InvalidArgument names a missing or bad file."""
    opts = security.parse_security_opts(spec.security_opt)
    return None if opts.unconfined else seccomp.load(opts.seccomp)


class Lifecycle:
    def __init__(self, d: LifecycleDeps) -> None:
        self.d = d
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()
        # A followed log (runtime.api_streams) ends when the process does, before the cleanup.
        self.exits = ExitNotices()

    def lock(self, cid: str) -> threading.RLock:
        with self._locks_guard:
            return self._locks.setdefault(cid, threading.RLock())

    def drop_lock(self, cid: str) -> None:
        with self._locks_guard:
            self._locks.pop(cid, None)

    def while_running(self, cid: str, fn: Callable[[], object], pid: int | None = None) -> bool:
        """Run `fn` under the container's lock if it is still running (with `pid`):
        a stop in progress finishes first. False: it was not running."""
        with self.lock(cid):
            if not self.d.records.is_running(cid, pid):
                return False
            fn()
            return True

    def emit(self, c: Container, action: str, **attrs) -> None:
        amb = c.spec.ambassador
        self.d.events.emit("ambassador" if amb else "container", action, c.spec.name, c.id,
                           network=c.spec.network, service=amb.get("service") if amb else None, **attrs)

    # create ------------------------------------------------------------------------------
    def check_refs(self, req: Request) -> None:
        """The image and the network exist (NotFound names the command that lists them)."""
        self.d.images.get(req.spec.image)
        if req.spec.network != NO_NETWORK:
            self.d.networks.get(req.spec.network)

    def check_process(self, req: Request) -> None:
        """A command to run, --user known to the image and a readable seccomp
        profile: checked now, not at start."""
        spec = req.spec
        image = self.d.images.get(spec.image)
        apply_image_config(spec, image.config)
        if not spec.entrypoint and not spec.cmd:
            raise InvalidArgument(f"no command given and image {image.name!r} has no default command")
        resolve_user(spec.user, image)
        seccomp_profile(req.spec)
        if spec.init:
            init_proc.binary()
        if ambassadors.runs_pause(spec):
            shim_binaries.find(shim_binaries.PAUSE)

    # volumes and mounts ------------------------------------------------------------------------
    def check_mounts(self, req: Request) -> None:
        """Before anything is made: --volumes-from names a container, a bind's host
        path exists, the image's VOLUMEs are paths. Resolves the mounts (anonymous
        volumes named) into req.resolved_mounts."""
        others: list[volspec.Mount] = []
        for vf in req.volumes_from:
            try:
                other = self.d.records.find(vf.container)
            except NotFound:
                raise NotFound(f"--volumes-from {vf.container!r}: no such container (see `portlink ps -a`)") from None
            others += [volspec.shared(m, vf.mode) for m in other.mounts if m.type != volspec.TMPFS]
        for m in req.mounts:
            if m.type == volspec.BIND and not os.path.exists(m.source):
                raise InvalidArgument(f"bind source {m.source!r} does not exist on the host: create it first "
                                      "(portlink does not create host paths for -v, unlike docker)")
        image = self.d.images.get(req.spec.image)
        req.resolved_mounts = volspec.resolve(req.mounts, others, image.config.volumes,
                                              lambda: secrets.token_hex(32))
        if req.resolved_mounts and self.d.volumes is None:
            raise InvalidArgument("this host keeps no volumes")

    def make_volumes(self, c: Container, image) -> None:
        """The volumes `c` names, made if missing (recorded with `c` as their maker, so
        a failed run takes them back), and an empty one seeded from the image."""
        if not any(m.type == volspec.VOLUME for m in c.mounts):
            return
        self.d.volumes.ensure(c.mounts, c.id)
        faults.point("run.volumes")
        for m in c.mounts:
            if m.type == volspec.VOLUME and not m.nocopy:
                self.d.volumes.seed(m.source, image.rootfs, m.target)

    def mount_targets(self, c: Container, rootfs: str) -> dict[str, str]:
        """Each mount's destination resolved in the rootfs (runtime.mount_paths); a
        source gone since the container was made is named."""
        pairs = []
        for m in c.mounts:
            src = mount_source(m, self.d.layout)
            if src is not None and not os.path.exists(src):
                what = f"volume {m.source!r}" if m.type == volspec.VOLUME else "bind source"
                raise InvalidArgument(f"cannot mount {m.target}: {what} {src} no longer exists on the host")
            pairs.append((m, src))
        return mount_paths.resolve_targets(rootfs, pairs)

    def drop_volumes(self, c: Container, anonymous_only: bool) -> list[str]:
        """After `c` is gone: its anonymous volumes (rm -v, --rm), or every volume its
        failed run made; one still used by another container stays."""
        if self.d.volumes is None:
            return []
        names = ([m.source for m in c.mounts if m.type == volspec.VOLUME and m.anonymous] if anonymous_only
                 else self.d.volumes.made_by(c.id))
        return self.d.volumes.remove_unused(names)

    def create(self, req: Request, for_links: bool = False, start: bool = True) -> Container:
        """Record, reserve and start (`start` False: stop at CREATED, as Docker's
        `create`); on any failure everything is undone."""
        spec = req.spec
        image = self.d.images.get(spec.image)
        cid = secrets.token_hex(32)
        spec.name = spec.name or "ctr-" + cid[:8]
        spec.hostname = spec.hostname or cid[:12]
        exposed = tuple(sorted(set(req.expose) | set(image.config.exposed)))
        if not req.resolved_mounts:
            self.check_mounts(req)
        c = Container(id=cid, name=spec.name, spec=spec, exposed=exposed, status=CREATING,
                      created=time.time(), for_links=for_links, mounts=req.resolved_mounts)
        self.d.records.insert(c, req.publish)
        faults.point("run.created")
        self.emit(c, "create", image=spec.image)
        try:
            self.make_volumes(c, image)
            self.d.journal.make_dir(cid, self.d.layout.cdir(cid))
            with self.lock(cid):
                if start:
                    self.start_now(cid)
                else:
                    self.d.records.set_created(cid)
        except BaseException as e:
            errors = self.forget(c, error=str(e))
            if errors:
                log.error("rollback of %s left errors: %s", c.name, "; ".join(errors))
            if isinstance(e, PortlinkError):
                raise
            raise RuntimeFailure(f"cannot run container {c.name!r}: {e}") from e
        if not start:
            return self.d.records.current(cid)
        faults.point("run.running")
        # Gone already only if its process ended and `--rm` removed it meanwhile.
        return self.d.records.get(cid) or c.with_(status=REMOVING)

    def forget(self, c: Container, error: str) -> list[str]:
        """A container that never ran to the end of its create: as if it never was."""
        errors = self.d.journal.undo(c.id, keep=())
        self.d.records.delete(c.id)
        errors += self.drop_volumes(c, anonymous_only=False)
        self.emit(c, "destroy", error=error)
        return errors

    # start: every step journalled before it is taken --------------------------------------
    def start_now(self, cid: str) -> None:
        """Start a recorded container (caller holds its lock); undo on failure is the caller's."""
        began = time.perf_counter()
        c = self.d.records.current(cid)
        j, layout = self.d.journal, self.d.layout
        image = self.d.images.get(c.spec.image)
        cdir = layout.cdir(cid)
        root = j.mount(cid, str(image.rootfs), cdir)
        faults.point("start.mount")
        targets = self.mount_targets(c, root.view)
        # Host paths bound in: runc, in the launch namespace, must find what we see.
        binds = [mount_source(m, layout) for m in c.mounts if m.type == volspec.BIND]
        nspath = layout.netns_path(cid)
        j.netns(cid, nspath)
        faults.point("start.netns")
        net = ip = None
        if c.spec.network != NO_NETWORK:
            net = self.d.networks.get(c.spec.network)
            ip = j.lease(cid, net, prefer=c.kept_ip if c.is_ambassador else None)
            faults.point("start.lease")
        ports = [PortRow(r["proto"], r["host_port"], r["container_port"], r["host_ip"])
                 for r in self.d.records.ports(cid)]
        peers = self.d.refresher.seen_named(linkspec.parse_link(x).name for x in c.spec.links)
        hosted = ambassadors.is_hosted(c.spec) and self.d.forwarder is not None
        # A hosted ambassador's process never talks to Consul: no token for it.
        token = str(cdir / TOKEN_FILE) if c.is_ambassador and self.d.tokens.enabled and not hosted else None
        if token is not None and self.d.linkers is not None and is_client_side(c):
            self.d.linkers.prepare_dir(cid)    # its linkers map's directory, bound into it
        plan = plan_start(c, image.config, resolve_user(c.spec.user, image), layout, net, ip, ports,
                          peers, self.d.default_dns, profile=seccomp_profile(c.spec), token_file=token,
                          mount_targets=targets, init_binary=init_proc.binary() if c.spec.init else None,
                          pause_binary=shim_binaries.find(shim_binaries.PAUSE) if ambassadors.runs_pause(c.spec) else None)
        amb = c.spec.ambassador
        # Secure links: a server side is the service it serves, a client side its own identity.
        identity = (amb["service"] if amb.get("backends") else amb.get("identity")) if amb else None
        if token is not None:
            # Owned by the user the plan runs the ambassador as, mode 0400; logged out when this run ends.
            user = plan.config["process"]["user"]
            j.consul_token(cid, token, lambda: self.d.tokens.issue(
                Path(token), cid, amb["service"], user["uid"], user["gid"], identity))
        if amb and amb.get("identity") and amb.get("unlinked") != "refuse" and self.d.intentions is not None:
            # A sidecar a person runs dials unlinked clients as itself: its own intention,
            # before its process. One made for links refuses them: it needs none (each
            # linker's own is made with the linker, runtime.linker_identity).
            link = Link(amb["identity"], amb["service"])
            j.intention(cid, link.key, lambda: self.d.intentions.ensure_own(link, c.name))
        if plan.endpoint is not None:
            j.pin(cid, plan.endpoint)
            faults.point("start.pin")
            j.veth(cid, plan.endpoint)
            faults.point("start.veth")
            j.ports(cid, plan.mappings)
            faults.point("start.firewall")
        else:
            j.kernel.loopback_up(nspath)
        for fname, text in plan.files.values():
            write_fresh(cdir / fname, text)   # an earlier run's container wrote there: replace, never follow
        self.d.runc.check_mount_options(oci.mount_options(plan.config))
        if c.is_ambassador:
            ambassadors.open_ancestors(Path(root.view), oci.bind_destinations(plan.config))
        stdio = Stdio(tty=c.spec.tty, stdin=c.spec.interactive)
        if stdio.tty:   # a pty from runc, handed to the monitor (--console-socket)
            plan.config["process"]["terminal"] = True
            if not any(e.startswith("TERM=") for e in plan.config["process"]["env"]):
                plan.config["process"]["env"].append("TERM=xterm")   # as docker run -t
        bundle = cdir / "bundle"
        bundle.mkdir(exist_ok=True)
        (bundle / "config.json").write_text(json.dumps(plan.config, indent=1))
        faults.point("start.files")
        if ip is not None and c.is_ambassador:
            self.d.trust(str(ip))
        if plan.link_flows:
            self.d.allow(plan.link_flows)   # before its process: a first connection must not be dropped
        if ip is not None and self.d.linkers is not None and not c.is_ambassador:
            # Token, map entry, intention; waits until the ambassador has its certificate.
            self.d.linkers.attach(j, c, str(ip))
        pid = j.process(cid, lambda: self.d.runc.run_detached(cid, bundle, cdir / "container.log",
                                                               c.spec.log_opts, stdio, root, binds))
        root.close()   # attached in its monitor's namespace: ours is not needed any more
        if hosted:
            # Its listeners, made in its namespace, handed to the host forwarder and fed.
            j.hosted(cid, lambda: self.d.forwarder.attach(c))
        self.d.start_time.observe(time.perf_counter() - began)
        faults.point("start.runc")
        if ip is not None and c.is_ambassador:
            c = c.with_(kept_ip=str(ip))   # a restarted ambassador keeps its address: linkers' env vars name it
        # The start time with the pid: after a reboot the pid may be another process's.
        self.d.records.set_running(c.with_(pid_start=process_start(pid)), pid)
        self.emit(c, "start", pid=pid, ip=str(ip) if ip else None)
        self.d.watch(cid, pid, self.d.runc.monitor_pid(cid, cdir))

    def start(self, c: Container, ref: str) -> None:
        """Start a stopped container; a failed start is undone entirely."""
        with self.lock(c.id):
            now = self.d.records.current(c.id, ref)
            if now.status == RUNNING:
                return
            if now.status == REMOVING:
                raise Conflict(f"container {ref!r} is being removed")
            try:
                self.start_now(c.id)
            except BaseException as e:
                errors = self.d.journal.undo(c.id)
                if errors:
                    log.error("rollback of start %s left errors: %s", c.id[:12], "; ".join(errors))
                if isinstance(e, PortlinkError):
                    raise
                raise RuntimeFailure(f"cannot start container {ref!r}: {e}") from e

    # stop, exit ------------------------------------------------------------------------------
    def stop(self, cid: str, timeout: float) -> list[str] | None:
        """Stop a running container (TERM, then KILL after `timeout`); the errors of
        its cleanup. None: it was not running."""
        with self.lock(cid):
            c = self.d.records.current(cid)
            if c.status != RUNNING:
                return None
            self.d.runc.kill(cid, signal_number(c.spec.stop_signal or "TERM"))
            if not wait_gone(c.pid, timeout):
                self.d.runc.kill(cid, signal_number("KILL"))
                wait_gone(c.pid, 10)
            errors = self.release(cid, None)
            self.emit_die(c, self.d.records.current(cid).exit_code)
            self.emit(c, "stop")
        return errors

    def release(self, cid: str, code: int | None) -> list[str]:
        """The process is gone: release what a running container holds. Whether the
        OOM killer struck is read first: undoing the runc step deletes the cgroup.
        An unknown code is read from the exit file once the monitor is gone (undoing
        the runc step waits for it)."""
        oom_killed = bool(self.d.oom_kills(cid))
        errors = self.d.journal.undo(cid)
        if code is None:
            code = read_exit_file(self.d.layout.cdir(cid))
        self.d.records.set_exited(cid, code, oom_killed)
        return errors

    def monitor_lost(self, c: Container) -> bool:
        """Did the container's monitor end before its init (killed)? The container
        is then stopped by its release: its output would have nowhere to go, and
        its exit code could not be known."""
        if read_exit_file(self.d.layout.cdir(c.id)) is not None or not c.pid:
            return False
        if not (pid_alive(c.pid) and is_same(c.pid, c.pid_start)):
            return False
        log.error("the monitor of container %s ended before the container: stopping it "
                  "(its exit code is unknown; see %s)", c.name, self.d.layout.cdir(c.id) / "logshim.log")
        return True

    def emit_die(self, c: Container, code: int | None, **attrs) -> None:
        """`die` once release recorded the end, and `oom` before it when the OOM killer
        took a process of the container (as Docker's events go)."""
        now = self.d.records.get(c.id)
        oom_killed = bool(now and now.oom_killed)
        if oom_killed:
            self.emit(c, "oom")
        self.emit(c, "die", exit_code=code, oom_killed=oom_killed, **attrs)

    def exited(self, cid: str, pid: int, code: int | None) -> Container | None:
        """The reaper saw `pid` end. Returns the container if this ended its run."""
        # No code: the report is its monitor's end (runtime.reaper), so the log has all
        # of the output; a code came from waiting for an init without one.
        monitor_ended = code is None
        with self.lock(cid):
            c = self.d.records.get(cid)
            # A late report about an earlier run (stopped, then started again) is stale.
            if c is None or c.pid != pid:
                return None
            if code is None:
                code = read_exit_file(self.d.layout.cdir(cid))
            if code is not None:
                # Not synced on its own: the exit file keeps the code (read again on recovery).
                self.d.records.set_exit_code(cid, code)
            if monitor_ended:
                # A followed log ends now, with the code recorded, not after the cleanup.
                self.exits.ended(cid, pid)
            if c.status != RUNNING:
                return None
            lost = code is None and self.monitor_lost(c)
            errors = self.release(cid, code)
            if lost:
                reap_orphan(c.pid)   # reparented to the daemon (a subreaper) when its monitor died
            code = self.d.records.current(cid).exit_code
            self.emit_die(c, code, **({"error": "monitor died"} if lost else {}))
            if errors:
                log.error("cleanup after %s exited: %s", c.name, "; ".join(errors))
            return c

    # remove ------------------------------------------------------------------------------------
    def remove(self, c: Container, force: bool, ref: str | None = None, volumes: bool = False) -> Container:
        """`volumes`: its anonymous volumes go too (rm -v; always with --rm).
        Returns the container as its removal found it (status, exit code)."""
        with self.lock(c.id):
            c = self.d.records.current(c.id, ref)
            if c.status == RUNNING and not force:
                raise Conflict(f"container {c.name!r} is running: stop it first or use rm -f")
            # From here on a crash is finished by reconcile: the container ends up gone.
            self.d.records.set_removing(c.id)
            faults.point("rm.marked")
            if c.status in (RUNNING, REMOVING) and c.pid:
                self.d.runc.kill(c.id, signal_number("KILL"))
                wait_gone(c.pid, 10)
                faults.point("rm.killed")
            self.finish_remove(c, volumes)
        self.drop_lock(c.id)
        return c

    def finish_remove(self, c: Container, volumes: bool = False) -> None:
        errors = self.d.journal.undo(c.id, keep=(), fault="rm.undo")
        if errors:
            raise RuntimeFailure(f"could not remove container {c.name!r} entirely: " + "; ".join(errors))
        faults.point("rm.undone")
        self.d.records.delete(c.id)
        self.emit(c, "destroy")
        if volumes or c.spec.rm:
            errors = self.drop_volumes(c, anonymous_only=True)
            if errors:   # the container is gone: what is left is a volume `volume prune` finds
                log.error("container %s removed, but not all its volumes: %s", c.name, "; ".join(errors))

    # recovery -----------------------------------------------------------------------------
    def recover(self, c: Container) -> tuple[list[str], bool]:
        """After a daemon restart, one container's journal and kernel made to agree.
        Returns the errors, and whether a container recorded as running had died."""
        if c.status == CREATING:
            # Interrupted `run`: fully gone, as if it never happened.
            return self.forget(c, error="interrupted by a daemon crash"), False
        if c.status == REMOVING:
            # Interrupted `rm`: finish it (the user asked for the container to go).
            if c.pid and is_same(c.pid, c.pid_start):
                self.d.runc.kill(c.id, signal_number("KILL"))
                wait_gone(c.pid, 10)
            try:
                self.finish_remove(c)
            except RuntimeFailure as e:
                return [str(e)], False
            return [], False
        if c.status == RUNNING and c.pid and is_same(c.pid, c.pid_start) and self.d.runc.state(c.id):
            monitor = self.d.runc.monitor_pid(c.id, self.d.layout.cdir(c.id))
            if monitor is not None:
                self.d.watch(c.id, c.pid, monitor)
                return [], False
        if c.status == RUNNING or any(kind != "dir" for kind, _ in self.d.journal.owned(c.id)):
            # Died while we were away (its monitor wrote the code), its monitor died, or
            # an interrupted stop: finish the stop.
            lost = c.status == RUNNING and self.monitor_lost(c)
            errors = self.release(c.id, None)
            if c.status == RUNNING:
                self.emit_die(c, self.d.records.current(c.id).exit_code,
                              **({"error": "monitor died"} if lost else {}))
                return errors, True
            return errors, False
        return [], False

    def exec_argv(self, c: Container, args: list[str], env: list[str], tty: bool, workdir: str | None) -> list[str]:
        """`args`, `env` and `workdir` were checked with the request (validate.exec_body)."""
        if c.status != RUNNING:
            raise Conflict(f"container {c.name!r} is not running")
        if not args:
            raise InvalidArgument("exec needs a command")
        return self.d.runc.exec_argv(c.id, args, env, tty, workdir)

