"""portlinkd processes for the lab and the test sandboxes: the one way to start
one (inside a network namespace, its output appended to a log file), to wait
until its socket answers /_ping, and to stop it by its pid.

    d = start(socket, state_dir, ["--firewall", "nftables"], netns="/run/netns/plt-x",
              log_path=workdir / "portlinkd.log")
    d.wait_ready(timeout=30)     # DaemonFailed, with the log's tail, if it exits or stays silent
    ...
    d.stop()                     # SIGTERM, then SIGKILL: our own child, by its pid

A process that outlives its starter (the lab's daemons, ended by `portlink lab
down` from another process) is stopped with `stop_pid`, given a test that the
pid is still the process that was started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from portlink.errors import RuntimeFailure
from portlink.runtime.client import Client, CliError

VENV_BIN = Path(sys.executable).parent
LOG_TAIL = 2000          # characters of the daemon's log quoted in an error


class DaemonFailed(RuntimeFailure, RuntimeError):
    """portlinkd exited, or did not answer in time; the message ends with its log's tail."""


def log_tail(path: Path, chars: int | None = LOG_TAIL) -> str:
    """The last `chars` characters of a log (all of it for None; "" if unreadable)."""
    try:
        text = path.read_text(errors="replace")
        return text if chars is None else text[-chars:]
    except OSError:
        return ""


@dataclass
class Daemon:
    """A portlinkd this process started (`start`)."""

    proc: subprocess.Popen
    socket: str
    log_path: Path
    name: str = "portlinkd"           # for messages: "portlinkd on host2"

    @property
    def pid(self) -> int:
        return self.proc.pid          # nsenter exec()s portlinkd: this is the daemon

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = LOG_TAIL) -> str:
        return log_tail(self.log_path, chars)

    def wait_ready(self, timeout: float = 30) -> None:
        """Until its socket answers GET /_ping; DaemonFailed if it exits first or
        stays silent for `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            if self.proc.poll() is not None:
                raise DaemonFailed(f"{self.name} (pid {self.pid}) exited ({self.proc.returncode}) before it "
                                   f"answered on {self.socket}; its log ends:\n{self.log_tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise DaemonFailed(f"{self.name} (pid {self.pid}) did not answer /_ping on {self.socket} "
                                   f"within {timeout}s ({last}); its log ends:\n{self.log_tail()}")
            try:
                Client(self.socket, timeout=max(0.5, min(left, 5.0))).get("/_ping")
                return
            except (CliError, OSError) as e:
                last = str(e) or type(e).__name__
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        """`sig`, then SIGKILL after `timeout` seconds; reaped."""
        stop_pid(self.proc.pid, lambda: self.proc.poll() is None, sig, timeout)


def start(socket: str | Path, state_dir: str | Path, args: Sequence[str] = (), *, log_path: Path,
          netns: str | None = None, env: dict[str, str] | None = None, new_session: bool = False,
          name: str = "portlinkd") -> Daemon:
    """Start portlinkd on `socket` with its state in `state_dir` and `args` after
    those, inside the network namespace at `netns` (a /run/netns path) if given,
    with `env` added to this process's environment, stdout and stderr appended
    to `log_path`. `new_session`: it outlives a ^C to its starter (the lab).
    It is not waited for: call wait_ready()."""
    argv = [str(VENV_BIN / "portlinkd"), "--socket", str(socket), "--state-dir", str(state_dir), *args]
    if netns:
        # nsenter, not `ip netns exec`: the latter remounts /sys and hides the cgroups.
        argv = ["nsenter", f"--net={netns}", *argv]
    log = open(log_path, "ab")
    try:
        proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, start_new_session=new_session)
    finally:
        log.close()
    return Daemon(proc, str(socket), Path(log_path), name)


def stop_pid(pid: int, ours: Callable[[], bool], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """End a process we started, by its pid: `sig`, then SIGKILL if it is still
    there after `timeout` seconds, then up to 5 s more for it to go. `ours()` says
    whether `pid` is still that process (not ended, not a reused pid): a Popen's
    poll() is None, or the lab's pid + start-time record; nothing is sent once it
    says no. OSError other than "no such process" is raised."""
    if not ours():
        return
    try:
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while ours() and time.monotonic() < deadline:
            time.sleep(0.05)
        if ours():
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while ours() and time.monotonic() < deadline:
                time.sleep(0.05)
    except ProcessLookupError:
        pass
