"""Runs the containers' health checks: one scheduler thread that follows what the
store says runs, and a small pool that runs each due check with `runc exec`
(a stuck check costs a pool slot until its timeout, never the API).

A check past its timeout is killed with everything it started in the container
(its process tree, found from the pid runc reports). State is per run of a
container: a restarted container starts over at `starting`, as Docker's does.
Each status change is also kept in the container's record, so a restarted
daemon resumes a running container at its last status: a healthy service stays
passing in Consul (served by DNS and the ambassadors) instead of going back to
`starting` (warning, unserved) until its next check."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from portlink import threads
from portlink.runtime import health
from portlink.runtime.events import EventLog
from portlink.runtime.images import ImageStore
from portlink.runtime.records import Container, Records
from portlink.runtime.runc import Runc

log = logging.getLogger("portlink.health")

WORKERS = 4      # checks running at once on this host
TICK = 0.2       # how often the scheduler looks for due checks
# How often it reads the running containers (a new run is tracked within this): at
# every tick, with the store written several times a second while links are made,
# the read of every running row cost more than the links' own changes (issue 18).
# A check started on a container that stopped meanwhile is no verdict (_check).
READ_EVERY = 1.0


class HealthMonitor:
    def __init__(self, records: Records, images: ImageStore, runc: Runc, events: EventLog,
                 workers: int = WORKERS) -> None:
        self.records, self.images, self.runc, self.events = records, images, runc, events
        self._lock = threading.Lock()
        self._states: dict[str, tuple[int, health.HealthState]] = {}   # cid -> (pid of the run, state)
        self._due: dict[str, float] = {}                                # cid -> monotonic time of the next check
        self._busy: set[str] = set()
        self._unchecked: dict[str, int] = {}                            # cid -> pid of a run with no check
        self._subs: list[Callable[[], None]] = []
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="health-check",
                                        initializer=threads.name_os_thread)
        self._stop = threading.Event()
        self._running: dict[str, Container] = {}   # the scheduler's last read (its thread only)
        self._read_at: float | None = None
        self._thread: threading.Thread | None = None

    def subscribe(self, fn: Callable[[], None]) -> None:
        """`fn` is called (from a pool thread) after each status change: Consul's check follows."""
        self._subs.append(fn)

    def start(self) -> None:
        self._thread = threads.Thread(target=self._loop, name="health", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # read side (inspect, ps, Consul) ----------------------------------------------------
    def view(self, c: Container) -> dict | None:
        st = self._state(c)
        with self._lock:
            return st.view() if st else None

    def status(self, c: Container) -> str | None:
        st = self._state(c)
        return st.status if st else None

    def _state(self, c: Container) -> health.HealthState | None:
        """Its state, tracked from now if the scheduler has not seen it yet: inspect
        right after `run` or `start` says `starting`, not nothing."""
        with self._lock:
            return self._track(c, time.monotonic())

    def _track(self, c: Container, now: float) -> health.HealthState | None:
        """(Lock held.) The state of this run of `c`, made on first sight; None: no check."""
        got = self._states.get(c.id)
        if got and got[0] == c.pid:
            return got[1]
        if self._unchecked.get(c.id) == c.pid or not c.pid or c.is_ambassador:
            return None
        cfg = self._config(c)
        if cfg is None:
            self._unchecked[c.id] = c.pid
            return None
        self._states[c.id] = (c.pid, health.HealthState.resumed(cfg, c.started or time.time(), c.health, c.pid))
        self._due[c.id] = now + cfg.interval   # Docker: the first check after one interval
        return self._states[c.id][1]

    # scheduling ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(TICK):
            try:
                self.tick(time.monotonic())
            except Exception:   # the store busy, an image gone: next tick
                log.exception("health: scheduling pass failed")

    def tick(self, now: float) -> None:
        if self._read_at is None or not 0 <= now - self._read_at < READ_EVERY:
            self._running = {c.id: c for c in self.records.running() if not c.is_ambassador and c.pid}
            self._read_at = now
        running = self._running
        with self._lock:
            for cid in [k for k, (pid, _) in self._states.items() if k not in running or running[k].pid != pid]:
                del self._states[cid]
                self._due.pop(cid, None)
            for cid in [k for k, pid in self._unchecked.items() if k not in running or running[k].pid != pid]:
                del self._unchecked[cid]
            for cid, c in running.items():
                st = self._track(c, now)
                if st is not None and self._due[cid] <= now and cid not in self._busy:
                    self._busy.add(cid)
                    self._pool.submit(self._check, c, st.config)

    def _config(self, c: Container) -> health.HealthConfig | None:
        try:
            image_check = self.images.get(c.spec.image).config.healthcheck
        except Exception:   # the image removed under a running container: its flags only
            image_check = None
        return health.resolve(c.spec, image_check)

    # one check ----------------------------------------------------------------------------
    def _check(self, c: Container, cfg: health.HealthConfig) -> None:
        try:
            r = run_check(self.runc, c.id, cfg)
            # A check that failed because the container was stopping is no verdict.
            alive = r.exit_code == 0 or self.records.is_running(c.id, c.pid)
            changed, saved = None, None
            with self._lock:
                got = self._states.get(c.id)
                if alive and got and got[0] == c.pid:
                    changed = got[1].record(r)
                    self._due[c.id] = time.monotonic() + cfg.interval
                    if changed:
                        saved = got[1].saved(c.pid)
            if saved is not None:
                # Before Consul hears of it: a daemon restart from here on resumes this status.
                try:
                    self.records.set_health(c.id, c.pid, saved)
                except Exception:   # the store busy: Consul and events still follow
                    log.exception("health: cannot keep the status of %s in its record", c.name)
            if changed in (health.HEALTHY, health.UNHEALTHY):
                self.events.emit("container", f"health_status: {changed}", c.name, c.id,
                                 exit_code=r.exit_code)
                for fn in self._subs:
                    fn()
        except Exception:
            log.exception("health: check of %s failed to run", c.name)
            with self._lock:
                self._due[c.id] = time.monotonic() + cfg.interval
        finally:
            with self._lock:
                self._busy.discard(c.id)


def run_check(runc: Runc, cid: str, cfg: health.HealthConfig) -> health.Result:
    """One check: its exit code and the first 4 KiB of its output; one that outlives
    its timeout is killed (exit code -1, as Docker reports it)."""
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="portlink-health-") as tmp, \
            tempfile.TemporaryFile(dir=tmp) as out:
        pid_file = os.path.join(tmp, "pid")
        argv = runc.exec_argv(cid, list(cfg.test), [], False, None, pid_file=pid_file)
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
        try:
            code = p.wait(timeout=cfg.timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            # The check's processes, not `runc exec`: it reaps its child and exits. Killed
            # first, its child would be orphaned to the daemon (a subreaper) and never
            # reaped, and a zombie in the container's pid namespace blocks its removal.
            kill_tree(_read_pid(pid_file))
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
            code = -1
        out.seek(0)
        text = health.truncate(out.read(health.OUTPUT_MAX))
    if timed_out:
        text = f"Health check exceeded timeout ({cfg.timeout:g}s)"
    return health.Result(start, time.time(), code, text)


def _read_pid(path: str) -> int | None:
    try:
        return int(open(path).read().strip())
    except (OSError, ValueError):
        return None


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def kill_tree(pid: int | None) -> None:
    """SIGKILL `pid` and its descendants (stopped first so none forks meanwhile)."""
    if pid is None:
        return
    tree, todo = [], [pid]
    while todo and len(tree) < 4096:
        p = todo.pop()
        try:
            os.kill(p, signal.SIGSTOP)
        except OSError:
            continue
        tree.append(p)
        todo += _children(p)
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
