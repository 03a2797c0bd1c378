"""runc, driven by argument lists (never a shell); touches the kernel.

Each daemon has its own runc --root in its state dir, so several simulated
hosts on one machine never see each other's containers. cgroupfs manager (the
default): crun and systemd cgroups refuse this machine's v1/v2 hybrid."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from portlink.errors import RuntimeFailure


def _runc_bin() -> str:
    path = shutil.which("runc")
    if not path:
        raise RuntimeFailure("runc is not installed; install the apt package runc (make setup does)")
    return path


@dataclass
class Runc:
    root: Path

    def _cmd(self, *args: str) -> list[str]:
        return [_runc_bin(), "--root", str(self.root), *args]

    def _run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout)

    def run_detached(self, cid: str, bundle: Path, log: Path) -> int:
        """Start the container; its stdout and stderr append to `log`. Returns the pid.

        The container inherits runc's stdio, so runc's stderr cannot be a pipe
        (it would never reach EOF): runc's own errors go to --log instead."""
        pidfile, runc_log = bundle / "pid", bundle / "runc.log"
        runc_log.unlink(missing_ok=True)
        with open(log, "ab") as out, open(os.devnull, "rb") as devnull:
            p = subprocess.run([_runc_bin(), "--root", str(self.root), "--log", str(runc_log),
                                "--log-format", "json", "run", "--detach", "--pid-file", str(pidfile),
                                "--bundle", str(bundle), cid],
                               stdin=devnull, stdout=out, stderr=out, timeout=60)
        if p.returncode != 0:
            raise RuntimeFailure(f"the container's command could not start: {_last_log_error(runc_log)}")
        return int(pidfile.read_text())

    def state(self, cid: str) -> dict | None:
        p = self._run("state", cid)
        if p.returncode != 0:
            return None
        return json.loads(p.stdout)

    def kill(self, cid: str, sig: int) -> None:
        self._run("kill", cid, str(sig))

    def delete(self, cid: str) -> str | None:
        """Force-delete; returns an error text or None. A missing container is fine."""
        p = self._run("delete", "--force", cid)
        if p.returncode != 0 and "does not exist" not in p.stderr and "not exist" not in p.stderr:
            return f"runc delete {cid}: {_runc_error(p.stderr)}"
        return None

    def list_ids(self) -> list[str]:
        p = self._run("list", "--format", "json")
        if p.returncode != 0 or not p.stdout.strip() or p.stdout.strip() == "null":
            return []
        return [c["id"] for c in json.loads(p.stdout)]

    def exec_argv(self, cid: str, args: list[str], env: list[str], tty: bool, workdir: str | None) -> list[str]:
        argv = self._cmd("exec")
        if tty:
            argv.append("--tty")
        for e in env:
            argv += ["--env", e]
        if workdir:
            argv += ["--cwd", workdir]
        return argv + [cid, *args]


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
