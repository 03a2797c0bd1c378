"""The small Docker commands over a running container: kill -s, wait, top, port.
Each is one call on the host's records, lifecycle and runc; the API
(runtime/api_ops.py) runs them in its thread pool."""

from __future__ import annotations

import logging
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from portlink.errors import Conflict, InvalidArgument, NotFound, RuntimeFailure
from portlink.runtime import cgroups, proc_table, signals
from portlink.runtime import container_copy, copy_offline
from portlink.runtime.container_copy import ContainerRoot, CopyPath
from portlink.runtime.plan import mount_source
from portlink.runtime.records import REMOVING, RUNNING, Container

log = logging.getLogger("portlink.containers")
EXIT_CODE_WAIT = 5.0      # seconds the reaper may take to record an exit code after the status
PS_TIMEOUT = 30
UNKNOWN_CODE = -1         # an exit code nobody saw (the daemon was down when the container ended)


WAIT_CONDITIONS = ("not-running", "next-exit", "removed")   # Docker's wait ?condition=


@dataclass
class WaitPoint:
    """Where a wait began: the run it waits for (its pid), and Docker's condition:
    not-running (portlink's wait), next-exit (a run that ends after this point,
    even one not started yet: a foreground `docker run` waits before its start),
    removed (`docker run --rm`)."""

    cid: str
    name: str
    pid: int | None
    since: float
    condition: str = "not-running"
    finished: float | None = None      # the run before this point's end (next-exit)


class ContainerOps:
    def __init__(self, host) -> None:
        self.h = host
        self.records = host.records

    # kill --------------------------------------------------------------------------------
    def kill(self, ref: str, sig_text: str = "KILL") -> dict:
        """Docker's kill: the signal to the container's init process. KILL or its
        stop signal end the run for good: its restart policy does not bring it back
        (Docker's ExitOnNext), as after a stop."""
        sig = signals.parse_signal(sig_text)
        c = self.records.find(ref)
        if c.status != RUNNING:
            raise Conflict(f"cannot kill container {ref!r}: it is not running")
        ending = sig in (signals.parse_signal("KILL"), signals.parse_signal(c.spec.stop_signal or "TERM"))
        if ending:
            self.h.containers.amb.hold(c.id)
            self.h.containers.restarts.stopped_by_user(c.id)
        life = self.h.containers.life
        if not life.while_running(c.id, lambda: self.h.runc.kill(c.id, sig), c.pid):
            raise Conflict(f"cannot kill container {ref!r}: it is not running")
        self.h.events.emit("container", "kill", c.name, c.id, signal=signals.name_of(sig))
        return {"id": c.id, "name": c.name, "signal": signals.name_of(sig)}

    # wait --------------------------------------------------------------------------------
    def wait_point(self, ref: str, condition: str = "not-running") -> WaitPoint:
        if condition not in WAIT_CONDITIONS:
            raise InvalidArgument(f"invalid condition {condition!r}: expected {', '.join(WAIT_CONDITIONS)}")
        c = self.records.find(ref)
        return WaitPoint(c.id, c.name, c.pid if c.status == RUNNING else None, time.time(), condition, c.finished)

    def wait_poll(self, w: WaitPoint) -> int | None:
        """The exit code once the run `w` waits for has ended; None: still running.
        A run replaced already (its policy restarted it) gives the code its `die`
        event recorded; a run removed meanwhile (--rm) too."""
        c = self.records.get(w.cid)
        if c is not None and w.condition == "removed":
            return None
        if c is not None and w.condition == "next-exit" and w.pid is None:
            if c.status == RUNNING:
                w.pid = c.pid          # started since: this run is the one waited for
                return None
            if c.finished == w.finished:
                return None            # not started yet
            w.pid = -1                 # ran and ended between two looks: its code, once recorded
        if c is None:
            code = self._die_code(w)
            if code is None:
                raise NotFound(f"container {w.name!r} was removed before its exit code was recorded")
            return code
        if w.pid is not None and c.status == RUNNING:
            return None if c.pid == w.pid else self._code(self._die_code(w))
        if c.exit_code is None and w.pid is not None and time.time() - (c.finished or w.since) < EXIT_CODE_WAIT:
            return None         # the reaper records the code a moment after the status
        return self._code(c.exit_code)

    @staticmethod
    def _code(code: int | None) -> int:
        return code if code is not None else UNKNOWN_CODE

    def _die_code(self, w: WaitPoint) -> int | None:
        for e in self.h.events.read(since=w.since - 1):
            if e.id == w.cid and e.action == "die" and e.attrs.get("exit_code") is not None:
                return int(e.attrs["exit_code"])
        return None

    # top ----------------------------------------------------------------------------------
    def top(self, ref: str, ps_args: str = proc_table.DEFAULT_ARGS) -> dict:
        """Docker's top: the host's `ps` (with the caller's options), only the rows of
        processes in the container's cgroup."""
        args = proc_table.check_ps_args(ps_args or proc_table.DEFAULT_ARGS)
        c = self._running(ref, "top")
        pids = self.pids(c)
        try:
            p = subprocess.run(["ps", *args], capture_output=True, text=True, timeout=PS_TIMEOUT)
        except FileNotFoundError:
            raise RuntimeFailure("ps is not installed: install the apt package procps (./scripts/setup does)") from None
        if p.returncode != 0:
            raise RuntimeFailure(f"ps {' '.join(args)} failed: {p.stderr.strip() or f'exit status {p.returncode}'}")
        return proc_table.parse_ps(p.stdout, pids)

    def pids(self, c: Container) -> set[int]:
        """The processes in the container's cgroup (its init's pids or memory cgroup)."""
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
        got = cgroups.read_cgroup_files(c.pid, mountinfo) if c.pid else None
        if got is None or got[2] is None:
            raise Conflict(f"container {c.name!r} is not running")
        try:
            with open(f"{got[2]}/cgroup.procs") as f:
                return {int(x) for x in f.read().split()}
        except FileNotFoundError:
            raise Conflict(f"container {c.name!r} is not running") from None

    # port ---------------------------------------------------------------------------------
    def ports(self, ref: str) -> dict[str, list[dict]]:
        """Docker's NetworkSettings.Ports of a running container: {"80/tcp": [{"HostIp",
        "HostPort"}]}; a stopped one publishes nothing."""
        c = self.records.find(ref)
        if c.status != RUNNING:
            return {}
        out: dict[str, list[dict]] = {}
        for r in self.records.ports(c.id):
            out.setdefault(f"{r['container_port']}/{r['proto']}", []).append(
                {"HostIp": r["host_ip"] or "0.0.0.0", "HostPort": str(r["host_port"])})
        return out

    # cp (runtime.container_copy; a stopped container's root by runtime.copy_offline) ----------
    def copy_stat(self, ref: str, p: CopyPath) -> dict:
        return self._copy(ref, "stat", p, lambda root: container_copy.stat_json(root, p))

    def copy_archive(self, ref: str, p: CopyPath, out: Path) -> None:
        def direct(root):
            with open(out, "wb") as f:
                container_copy.archive(root, p, f)
        self._copy(ref, "archive", p, direct, tar=str(out))

    def copy_extract(self, ref: str, p: CopyPath, tar: Path) -> int:
        cdir = self.cdir(ref)
        got = self._copy(ref, "extract", p, lambda root: {"placed": container_copy.extract(root, p, tar, cdir)},
                         tar=str(tar), staging=str(cdir))
        return got["placed"]

    def cdir(self, ref: str) -> Path:
        return self.h.layout.cdir(self.records.find(ref).id)

    def _copy(self, ref: str, op: str, p: CopyPath, direct, **extra):
        """`direct(root)` on a running container's root; a stopped one's is put
        together by the helper, under the container's lock (no start meanwhile)."""
        c = self.records.find(ref)
        if c.status == RUNNING and c.pid:
            with ContainerRoot(c.name, c.pid, c.pid_start) as root:
                return direct(root)
        life = self.h.containers.life
        with life.lock(c.id):
            c = self.records.current(c.id)
            if c.status == RUNNING:
                return self._copy(ref, op, p, direct, **extra)     # started meanwhile: its live root
            if c.status == REMOVING:
                raise Conflict(f"container {ref!r} is being removed")
            image = self.h.images.get(c.spec.image)
            cdir = self.h.layout.cdir(c.id)
            work = Path(tempfile.mkdtemp(prefix=".cp-", dir=cdir))
            try:
                req = {"op": op, "path": p.text, "name": c.name, "lower": str(image.rootfs),
                       "upper": str(cdir / "upper"), "work": str(cdir / "work"), "target": str(work / "root"),
                       "mounts": [[m.to_json(), mount_source(m, self.h.layout)] for m in c.mounts], **extra}
                got = copy_offline.run(req, work)
            finally:
                _remove_work(work)
            return None if op == "archive" else got

    def _running(self, ref: str, what: str) -> Container:
        c = self.records.find(ref)
        if c.status != RUNNING:
            raise Conflict(f"cannot {what} container {ref!r}: it is not running")
        return c


def _remove_work(work: Path) -> None:
    """The helper's directory: its files and the empty mount point. Never rmtree:
    should a mount have reached this namespace, that would delete the container's files."""
    for f in (work / "request.json",):
        f.unlink(missing_ok=True)
    for d in (work / "root", work):
        try:
            d.rmdir()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.error("cannot remove the copy helper's directory %s: %s", d, e)
