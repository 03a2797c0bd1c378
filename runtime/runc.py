"""runc, driven by argument lists (never a shell); touches the kernel.

Each daemon has its own runc --root in its state dir, so several simulated
hosts on one machine never see each other's containers. cgroupfs manager (the
default): crun and systemd cgroups refuse this machine's v1/v2 hybrid.

A container runs under its own monitor, portlink-logshim (shim/logshim.c): it
starts runc, is the parent of the container's init, writes the container's log
(rotated), relays it to attach clients, and records the init's exit code in
the container's dir. It is in a session of its own, so it outlives the
daemon, and ends once the init has ended and its output is drained."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from portlink.errors import RuntimeFailure
from portlink.runtime import logfmt, shim_binaries
from portlink.runtime.launch_ns import LaunchNamespace
from portlink.runtime.mounts import RootMount

log = logging.getLogger("portlink.runc")
LOGSHIM = shim_binaries.LOGSHIM
LOGSHIM_PID = "logshim.pid"     # in the log's directory: crash recovery and rm find the shim by it
LOGSHIM_WAIT = 10.0             # seconds a shim may take to drain the pipes once the container is gone
EXIT_FILE = "exit"              # in the container's dir: the init's exit code, written by its monitor
ATTACH_SOCKET = "attach.sock"   # in the container's dir: the monitor's attach socket (shim/logshim.c)


@dataclass(frozen=True)
class Stdio:
    """How the container's stdio is wired by its monitor."""
    tty: bool = False      # a pty (runc --console-socket): its output is logged as stdout
    stdin: bool = False    # stdin open: attach clients write to it (else /dev/null)


def parse_exit_file(text: str) -> int | None:
    """The code a monitor wrote to EXIT_FILE (0..255; 128+N: killed by signal N);
    None if it is not one (a torn or foreign file)."""
    first = text.split("\n", 1)[0].strip()
    if not first.isdigit() or not text.endswith("\n"):
        return None
    code = int(first)
    return code if 0 <= code <= 255 else None


def read_exit_file(cdir: Path) -> int | None:
    """The exit code the container's monitor recorded; None: none recorded (still
    running, or the monitor died before its container)."""
    try:
        return parse_exit_file((cdir / EXIT_FILE).read_text())
    except (OSError, UnicodeDecodeError):
        return None


def _read_all(fd: int, timeout: float) -> bytes:
    """What is written to pipe `fd` until its writer closes it (at most `timeout` s)."""
    data = b""
    deadline = time.monotonic() + timeout
    # poll, not select: a daemon following ~1,000 Consul services holds fds past
    # FD_SETSIZE (1024), and select() refuses them ("filedescriptor out of range").
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while (left := deadline - time.monotonic()) > 0:
        ready = poller.poll(left * 1000)
        if not ready:
            continue
        chunk = os.read(fd, 256)
        if not chunk:
            break
        data += chunk
    return data


def _runc_bin() -> str:
    path = shutil.which("runc")
    if not path:
        raise RuntimeFailure("runc is not installed; install the apt package runc (make setup does)")
    return path


def logshim_binary() -> str:
    """The log shim (runtime.shim_binaries: $PORTLINK_LOGSHIM, else the venv's bin, else PATH)."""
    return shim_binaries.find(LOGSHIM)


@dataclass
class Runc:
    root: Path
    log_defaults: logfmt.LogLimits = field(default_factory=logfmt.LogLimits)   # portlinkd --log-max-*
    launch: LaunchNamespace | None = None   # where containers start from (runtime.launch_ns)
    _shims: dict = field(default_factory=dict, repr=False)    # cid -> Popen of the shim we started
    _shims_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _cmd(self, *args: str) -> list[str]:
        return [_runc_bin(), "--root", str(self.root), *args]

    def _run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout)

    def run_detached(self, cid: str, bundle: Path, log: Path, log_opts: dict | None = None,
                     stdio: Stdio | None = None, root: RootMount | None = None, binds: Sequence[str] = ()) -> int:
        """Start the container under its monitor (shim/logshim.c), which runs
        `runc run --detach`, becomes the init's parent, writes `log` (rotated per
        `log_opts` over the daemon's defaults) and, when the init ends, its status
        to EXIT_FILE beside the log. Returns the init's pid once runc is done.

        `root`: the container's detached root; the monitor attaches it in its own copy
        of the launch namespace and starts runc there; `binds`: the host paths the
        config binds in, which must be what we see there. None: the bundle's root
        is a plain directory and runc starts beside us.

        runc's own errors go to --log (its stderr is the container's)."""
        stdio = stdio or Stdio()
        limits = logfmt.parse_log_opts(log_opts or {}, self.log_defaults)
        shim_bin = logshim_binary()
        cdir = log.parent
        pidfile, runc_log = bundle / "pid", bundle / "runc.log"
        runc_log.unlink(missing_ok=True)
        pidfile.unlink(missing_ok=True)
        self.end_logshim(cid, cdir)   # a previous run's monitor: gone already, unless something held its pipes
        (cdir / EXIT_FILE).unlink(missing_ok=True)
        sync_r, sync_w = os.pipe()    # the monitor says "ok" or "fail" on it once runc is done
        try:
            with open(cdir / "logshim.log", "ab") as shim_log, open(os.devnull, "r+b") as devnull:
                argv = [shim_bin, "--file", str(log), "--max-size", str(limits.max_size),
                        "--max-files", str(limits.max_files), "--dir", str(cdir), "--sync-fd", str(sync_w)]
                argv += ["--tty"] * stdio.tty + ["--stdin"] * stdio.stdin
                if root is not None and (self.launch is None or root.fd is None):
                    raise RuntimeFailure("no launch mount namespace or container root to start from")
                with self.launch.held(binds) if root is not None else contextlib.nullcontext() as ns:
                    fds = (sync_w,)
                    if root is not None:
                        argv += ["--mntns-fd", str(ns), "--root-fd", str(root.fd), "--root", root.target]
                        fds += (ns, root.fd)
                    argv += ["--", _runc_bin(), "--root", str(self.root), "--log", str(runc_log),
                             "--log-format", "json", "run", "--detach", "--pid-file", str(pidfile),
                             "--bundle", str(bundle), cid]
                    shim = subprocess.Popen(argv, pass_fds=fds, stdin=devnull, stdout=devnull,
                                            stderr=shim_log, cwd="/", start_new_session=True)
            os.close(sync_w)
            sync_w = -1
            with self._shims_lock:
                self._shims[cid] = shim
            (cdir / LOGSHIM_PID).write_text(f"{shim.pid}\n")
            said = _read_all(sync_r, timeout=60)
        finally:
            os.close(sync_r)
            if sync_w >= 0:
                os.close(sync_w)
        if said != b"ok\n":
            if not said:
                self.end_logshim(cid, cdir, timeout=1)
                said = _last_line(cdir / "logshim.log")
                raise RuntimeFailure(f"the container's monitor ended before runc did{': ' + said if said else ''} "
                                     f"(see {cdir / 'logshim.log'})")
            raise RuntimeFailure(f"the container's command could not start: {_last_log_error(runc_log)}")
        return int(pidfile.read_text())

    def monitor_pid(self, cid: str, cdir: Path) -> int | None:
        """The pid of the container's monitor if it is still alive (ours or one an
        earlier daemon started)."""
        with self._shims_lock:
            proc = self._shims.get(cid)
        if proc is not None:
            return proc.pid if proc.poll() is None else None
        pid = _read_pid(cdir / LOGSHIM_PID)
        return pid if pid is not None and pid_alive(pid) and _is_logshim(pid, cdir) else None

    def end_logshim(self, cid: str, log_dir: Path | None, timeout: float = LOGSHIM_WAIT) -> str | None:
        """Wait for the container's log shim to drain and exit (its pipes reach EOF
        once the container is gone); one still alive after `timeout` is killed, by
        the recorded pid and only if that pid is still the shim. Returns an error text."""
        with self._shims_lock:
            proc = self._shims.pop(cid, None)
        pidfile = log_dir / LOGSHIM_PID if log_dir else None
        pid = proc.pid if proc else _read_pid(pidfile)
        if pid is None:
            return None
        alive = (lambda: proc.poll() is None) if proc else (lambda: pid_alive(pid) and _is_logshim(pid, log_dir))
        deadline = time.monotonic() + timeout
        while alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if alive() and _is_logshim(pid, log_dir):
            # Something outside the container still holds its stdout (or the disk hangs): the
            # container is gone, so its shim goes too.
            os.kill(pid, signal.SIGKILL)
            log.warning("log shim %d of %s did not exit within %gs of the container: killed", pid, cid[:12], timeout)
            end = time.monotonic() + 5
            while alive() and time.monotonic() < end:
                time.sleep(0.01)
        if proc:
            try:
                proc.wait(0.1)   # ours: reaped here, no zombie
            except subprocess.TimeoutExpired:
                return f"log shim {pid} of {cid[:12]} does not exit"
        if pidfile:
            pidfile.unlink(missing_ok=True)
        return None

    def check_mount_options(self, wanted: set[str]) -> None:
        """Refuse a config asking for mount options this runc does not know: an
        older runc would pass an unknown "rro" on as mount data, which a bind
        mount ignores, leaving everything below it writable."""
        missing = sorted(wanted - _mount_options(_runc_bin()))
        if missing:
            raise RuntimeFailure(f"runc ({_runc_bin()}) does not support the mount option(s) {', '.join(missing)} "
                                 "(rro, recursively read-only: runc >= 1.1 on Linux >= 5.12): "
                                 "refusing to start a container whose read-only mounts would not be")

    def state(self, cid: str) -> dict | None:
        p = self._run("state", cid)
        if p.returncode != 0:
            return None
        return json.loads(p.stdout)

    def kill(self, cid: str, sig: int) -> None:
        self._run("kill", cid, str(sig))

    def delete(self, cid: str, log_dir: Path | None = None) -> str | None:
        """Force-delete, then see the log shim out (it has written everything the
        container printed once this returns); returns an error text or None. A
        missing container is fine. `log_dir`: where its logshim.pid is (a shim
        another daemon started)."""
        p = self._run("delete", "--force", cid)
        if p.returncode != 0 and "does not exist" not in p.stderr and "not exist" not in p.stderr:
            return f"runc delete {cid}: {_runc_error(p.stderr)}"
        return self.end_logshim(cid, log_dir)

    def list_ids(self) -> list[str]:
        p = self._run("list", "--format", "json")
        if p.returncode != 0 or not p.stdout.strip() or p.stdout.strip() == "null":
            return []
        return [c["id"] for c in json.loads(p.stdout)]

    def exec_argv(self, cid: str, args: list[str], env: list[str], tty: bool, workdir: str | None,
                  pid_file: str | None = None) -> list[str]:
        argv = self._cmd("exec")
        if pid_file:   # the exec'd process's pid: a health check past its timeout is killed by it
            argv += ["--pid-file", pid_file]
        if tty:
            argv.append("--tty")
        for e in env:
            argv += ["--env", e]
        if workdir:
            argv += ["--cwd", workdir]
        return argv + [cid, *args]


_features: dict[tuple, frozenset[str]] = {}   # (runc path, mtime, size) -> its mount options


def _mount_options(runc: str) -> frozenset[str]:
    """The mount options `runc features` lists (asked once per binary); none if it
    cannot say (runc < 1.1 has no `features`)."""
    st = os.stat(runc)
    key = (runc, st.st_mtime_ns, st.st_size)
    if key not in _features:
        p = subprocess.run([runc, "features"], capture_output=True, text=True, timeout=30)
        opts = []
        if p.returncode == 0:
            try:
                opts = json.loads(p.stdout).get("mountOptions") or []
            except (ValueError, AttributeError):
                pass
        _features[key] = frozenset(o for o in opts if isinstance(o, str))
    return _features[key]


def _last_line(path: Path) -> str:
    """The last line a monitor wrote to its log (its reason for ending), without its name."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].removeprefix("portlink-logshim: ") if lines else ""


def _read_pid(path: Path | None) -> int | None:
    try:
        return int(path.read_text().strip()) if path else None
    except (OSError, ValueError):
        return None


def _is_logshim(pid: int, log_dir: Path | None) -> bool:
    """Is `pid` a log shim (writing into `log_dir`, when given)? A recorded pid may have been reused."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    prefix = f"{log_dir}/".encode() if log_dir else b""
    return os.path.basename(argv[0]) == LOGSHIM.encode() and any(a.startswith(prefix) for a in argv[1:])


def _last_log_error(path: Path) -> str:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return "runc failed without a message"
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") in ("error", "fatal"):
            return entry.get("msg", line)
    return lines[-1] if lines else "runc failed without a message"


def _runc_error(stderr: bytes | str) -> str:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    # runc logs JSON-ish lines: keep the last message, which names the cause.
    lines = [l for l in text.strip().splitlines() if l.strip()]
    if not lines:
        return "runc failed without a message"
    last = lines[-1]
    if 'msg="' in last:
        last = last.split('msg="', 1)[1].rsplit('"', 1)[0]
    return last.replace('\\"', '"')


def signal_number(name: str | int) -> int:
    if isinstance(name, int) or str(name).isdigit():
        return int(name)
    n = str(name).upper()
    return int(getattr(signal, n if n.startswith("SIG") else "SIG" + n))


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until `pid` is no more (or a zombie of someone else). True if gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.02)
    return not pid_alive(pid)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def reap_orphan(pid: int, timeout: float = 2.0) -> None:
    """Reap `pid` if it became our child (the daemon is a subreaper: a container
    whose monitor died is reparented to it); not ours: nothing to do."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done or time.monotonic() > deadline:
            return
        time.sleep(0.01)
