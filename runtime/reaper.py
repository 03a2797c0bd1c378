"""Watches containers through pidfds and reports their exit.

A container's init is its monitor's child (shim/logshim.c), so the reaper
watches the monitor: it ends once the init has ended and its output is
drained, having written the exit code to the container's dir, where the
daemon reads it (runtime.lifecycle), also for a monitor an earlier daemon
started. Watching the init itself (no monitor) remains for a process that is
the daemon's child: its code comes from waitid, else it is unknown.

The daemon stays a child subreaper: a container whose monitor was killed is
reparented to it, and reaped once it is stopped."""

from __future__ import annotations

import ctypes
import logging
import os
import select
import threading
from typing import Callable

from portlink import threads

log = logging.getLogger("portlink.reaper")
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


class Reaper:
    """Watches containers' init processes (pidfds on one epoll); exits are
    reported to the handler given to start(), each in a thread of its own."""

    def __init__(self) -> None:
        self._on_exit: Callable[[str, int, int | None], None] = lambda cid, pid, code: None
        self._ep = select.epoll()
        self._fds: dict[int, tuple[str, int, bool]] = {}   # pidfd -> (cid, init pid, via its monitor)
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._ep.register(self._wake_r, select.EPOLLIN)
        self._stop = False
        self._thread = threads.Thread(target=self._loop, name="reaper", daemon=True)

    def start(self, on_exit: Callable[[str, int, int | None], None]) -> None:
        """Begin reporting exits (also of processes watched before this call)."""
        self._on_exit = on_exit
        self._thread.start()

    def watch(self, cid: str, pid: int, monitor: int | None = None) -> None:
        """Report when `pid` ends, or with `monitor` when the monitor does (the
        code then unknown here: the monitor's exit file has it)."""
        try:
            fd = os.pidfd_open(monitor or pid)
        except ProcessLookupError:
            threads.Thread(target=self._report, args=(cid, pid, None), daemon=True, name="reaper-report").start()
            return
        with self._lock:
            self._fds[fd] = (cid, pid, monitor is not None)
            self._ep.register(fd, select.EPOLLIN)

    def _loop(self) -> None:
        while not self._stop:
            for fd, _ in self._ep.poll():
                if fd == self._wake_r:
                    continue
                with self._lock:
                    cid, pid, via_monitor = self._fds.pop(fd)
                    self._ep.unregister(fd)
                # A monitor we started is reaped by its Popen (Runc.end_logshim), not here.
                code = None if via_monitor else self._status(fd)
                os.close(fd)
                # Cleanup takes locks and does I/O: never block the watch loop on it.
                threads.Thread(target=self._report, args=(cid, pid, code), daemon=True,
                               name="reaper-report").start()

    @staticmethod
    def _status(fd: int) -> int | None:
        try:
            r = os.waitid(os.P_PIDFD, fd, os.WEXITED)
        except ChildProcessError:
            return None   # not our child (daemon restarted since): code unknown
        if r is None:
            return None
        return r.si_status if r.si_code == os.CLD_EXITED else 128 + r.si_status

    def _report(self, cid: str, pid: int, code: int | None) -> None:
        try:
            self._on_exit(cid, pid, code)
        except Exception:
            log.exception("handling the exit of container %s (pid %d)", cid[:12], pid)

    def close(self) -> None:
        self._stop = True
        os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=2)
