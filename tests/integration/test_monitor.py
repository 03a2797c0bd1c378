"""The per-container monitor (shim/logshim.c) with real runc and busybox: exit
codes known across a daemon restart (and the restart policy reading them),
`run -it` and `attach` through a real pty, `exec -it`, a killed monitor, and
nothing left behind by rm."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from helpers import wait_for
from portlink.lab.sandbox import VENV_BIN, SimHost
from portlink.runtime.runc import logshim_binary
from test_container_logs import shim_pids

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def mhost():
    h = SimHost.start("monitor")
    yield h
    if h.daemon is None:
        h.start_daemon()
    errors = h.destroy()
    assert not errors, f"teardown of the simulated host reported: {errors}"


def info(h, name: str) -> dict:
    return h.client.get(f"/containers/{name}")


def exited(h, name: str, timeout: float = 20) -> dict:
    i = wait_for(lambda: (lambda i: i if i["status"] == "exited" else None)(info(h, name)), timeout=timeout)
    assert i, f"{name} did not exit: {info(h, name)}"
    return i


def events(h, name: str, action: str) -> list[dict]:
    r = h.cli("events", "--until", "0s", "--format", "json", "--filter", f"name={name}",
              "--filter", f"event={action}")
    assert r.returncode == 0, r.stderr
    return [json.loads(l) for l in r.stdout.splitlines()]


class PtyRun:
    """The portlink CLI on a real pty (its stdin is a terminal), driven by what it prints."""

    def __init__(self, h: SimHost, *args: str) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:   # the child: the CLI
            os.environ["PORTLINK_HOST"] = h.socket
            os.execv(str(VENV_BIN / "portlink"), [str(VENV_BIN / "portlink"), *args])
        self.out = b""
        self.code: int | None = None

    def _read(self, wait: float) -> bool:
        r, _, _ = select.select([self.fd], [], [], wait)
        if not r:
            return True
        try:
            data = os.read(self.fd, 4096)
        except OSError:   # EIO: the CLI has ended
            return False
        self.out += data
        return bool(data)

    def expect(self, text: bytes, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.out and time.monotonic() < deadline:
            if not self._read(0.2):
                break
        assert text in self.out, f"{text!r} not seen; the terminal showed {self.out!r}"

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                while self._read(0):
                    pass
                os.close(self.fd)
                self.code = os.waitstatus_to_exitcode(status)
                return self.code
            self._read(0.1)
        os.kill(self.pid, signal.SIGKILL)   # our own child
        os.waitpid(self.pid, 0)
        os.close(self.fd)
        raise AssertionError(f"the CLI did not end; the terminal showed {self.out!r}")


def runc_exec(h, cid: str, *argv: str) -> None:
    """Into a container while its daemon is down (runc's own state dir)."""
    subprocess.run(["runc", "--root", str(h.state_dir / "runc"), "exec", cid, *argv], check=True, timeout=30)


def test_exit_code_of_a_container_that_ended_while_the_daemon_was_down(mhost):
    h = mhost
    h.cli("run", "-d", "--name", "late", "busybox", "sh", "-c", "while [ ! -e /tmp/go ]; do sleep 0.05; done; exit 7",
          check=True)
    h.cli("run", "-d", "--name", "killed", "busybox", "sleep", "600", check=True)
    late, killed = info(h, "late"), info(h, "killed")
    h.stop_daemon(signal.SIGKILL)
    # While it is down: one exits with 7, one is killed by a signal (processes this test started).
    runc_exec(h, late["id"], "touch", "/tmp/go")
    os.kill(killed["pid"], signal.SIGKILL)
    for i in (late, killed):
        assert wait_for(lambda: (Path(i["paths"]["dir"]) / "exit").exists(), timeout=20), "no exit file"
    h.start_daemon()
    assert exited(h, "late")["exit_code"] == 7
    assert exited(h, "killed")["exit_code"] == 128 + signal.SIGKILL
    assert events(h, "late", "die")[-1]["attrs"]["exit_code"] == 7
    assert "Exited (7)" in h.cli("ps", "-a").stdout
    h.cli("rm", "late", "killed", check=True)


def test_on_failure_counts_real_codes_across_a_daemon_restart(mhost):
    h = mhost
    # Exits 0 while the daemon is down: on-failure must not restart it (an unknown
    # code used to count as a failure).
    wait = "while [ ! -e /tmp/go ]; do sleep 0.05; done"
    h.cli("run", "-d", "--name", "fine", "--restart", "on-failure:3", "busybox", "sh", "-c", f"{wait}; exit 0",
          check=True)
    # Fails with 4 while the daemon is down, then (each restart) at once: restarted twice, then left.
    h.cli("run", "-d", "--name", "bad", "--restart", "on-failure:2", "busybox", "sh", "-c", "[ -e /tmp/gone ] || "
          f"{{ {wait}; }}; touch /tmp/gone; exit 4", check=True)
    before = {n: info(h, n) for n in ("fine", "bad")}
    h.stop_daemon(signal.SIGKILL)
    for i in before.values():
        runc_exec(h, i["id"], "touch", "/tmp/go")
    for n, i in before.items():
        assert wait_for(lambda: (Path(i["paths"]["dir"]) / "exit").exists(), timeout=20), f"{n}: no exit file"
    h.start_daemon()
    i = exited(h, "fine")
    assert i["exit_code"] == 0 and i["RestartCount"] == 0 and not i["restarting"]
    done = wait_for(lambda: (lambda i: i if i["status"] == "exited" and i["RestartCount"] == 2
                             and not i["restarting"] else None)(info(h, "bad")), timeout=20)
    assert done, info(h, "bad")
    assert done["exit_code"] == 4
    assert [e["attrs"]["exit_code"] for e in events(h, "bad", "die")] == [4, 4, 4]
    assert info(h, "fine")["RestartCount"] == 0 and events(h, "fine", "restart") == []
    h.cli("rm", "fine", "bad", check=True)


def test_run_it_gets_a_terminal_and_its_exit_code(mhost):
    h = mhost
    t = PtyRun(h, "run", "-it", "--name", "shell", "busybox", "sh")
    t.expect(b"# ")          # the shell's prompt: it runs on a terminal
    # Our terminal resized: the CLI (SIGWINCH) passes the size on to the container's.
    fcntl.ioctl(t.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    t.send(b"stty size\r")
    t.expect(b"33 101")
    t.send(b"tty; echo hi-$((40+2)); exit 3\r")
    assert t.wait() == 3
    assert b"/dev/pts/0" in t.out and b"hi-42" in t.out
    i = info(h, "shell")
    assert i["status"] == "exited" and i["exit_code"] == 3 and i["config"]["tty"]
    # The terminal's output is the container's log (as stdout).
    logs = h.cli("logs", "shell")
    assert "hi-42" in logs.stdout and logs.stderr == ""
    h.cli("rm", "shell", check=True)


def test_run_it_with_rm_removes_it(mhost):
    h = mhost
    t = PtyRun(h, "run", "-it", "--rm", "--name", "gone", "busybox", "sh")
    t.expect(b"# ")
    t.send(b"exit 0\r")
    assert t.wait() == 0
    assert "gone" not in h.cli("ps", "-a").stdout


def test_run_i_without_a_terminal_keeps_stdout_and_stderr_apart(mhost):
    h = mhost
    p = subprocess.run([str(VENV_BIN / "portlink"), "run", "-i", "--rm", "busybox", "sh", "-c",
                        "cat; echo err >&2; exit 5"], input=b"piped\nlines\n", capture_output=True,
                       env={**os.environ, "PORTLINK_HOST": h.socket}, timeout=60)
    assert (p.returncode, p.stdout, p.stderr) == (5, b"piped\nlines\n", b"err\n")


def test_run_t_without_input_prints_its_terminal(mhost):
    h = mhost
    r = h.cli("run", "-t", "--rm", "busybox", "sh", "-c", "tty; exit 2")
    assert r.returncode == 2 and r.stdout.replace("\r\n", "\n") == "/dev/pts/0\n"


def test_detached_it_then_attach_sends_input_sees_output_and_detaches(mhost):
    h = mhost
    h.cli("run", "-dit", "--name", "bg", "busybox", "sh", check=True)
    t = PtyRun(h, "attach", "bg")
    t.expect(b"# ")   # the first client gets what was printed before it came: the prompt
    t.send(b"echo attached-$((6*7))\r")
    t.expect(b"attached-42")
    t.send(b"\x10\x11")   # ctrl-p ctrl-q
    assert t.wait() == 0
    assert info(h, "bg")["status"] == "running"
    # Again, and this time the shell ends: attach returns its code.
    t = PtyRun(h, "attach", "bg")
    t.send(b"echo again; exit 6\r")
    t.expect(b"again")
    assert t.wait() == 6
    assert exited(h, "bg")["exit_code"] == 6
    assert "attached-42" in h.cli("logs", "bg").stdout
    r = h.cli("attach", "bg")
    assert r.returncode != 0 and "not running" in r.stderr
    h.cli("rm", "bg", check=True)


def test_exec_it_gets_a_terminal(mhost):
    h = mhost
    h.cli("run", "-d", "--name", "host4exec", "busybox", "sleep", "600", check=True)
    t = PtyRun(h, "exec", "-it", "host4exec", "sh")
    t.expect(b"# ")
    t.send(b"tty; exit 4\r")
    assert t.wait() == 4
    assert b"/dev/pts/" in t.out
    h.cli("rm", "-f", "host4exec", check=True)


def test_rm_leaves_no_monitor_socket_or_file(mhost):
    h = mhost
    h.cli("run", "-dit", "--name", "tidy", "busybox", "sh", check=True)
    i = info(h, "tidy")
    d = Path(i["paths"]["dir"])
    sock = Path(i["paths"]["attach"])
    assert sock.is_socket() and sock.stat().st_uid == 0 and sock.stat().st_mode & 0o077 == 0   # root only
    assert len(shim_pids(d)) == 1
    h.cli("rm", "-f", "tidy", check=True)
    assert not d.exists() and shim_pids(d) == []
    assert i["id"] not in subprocess.run(["runc", "--root", str(h.state_dir / "runc"), "list", "-q"],
                                         capture_output=True, text=True, check=True).stdout
    # A stopped container: its monitor is gone, its socket too (the dir stays until rm).
    h.cli("run", "-dit", "--name", "tidy2", "busybox", "sh", check=True)
    i = info(h, "tidy2")
    d = Path(i["paths"]["dir"])
    h.cli("stop", "-t", "1", "tidy2", check=True)
    assert shim_pids(d) == [] and not Path(i["paths"]["attach"]).exists()
    assert info(h, "tidy2")["exit_code"] == 128 + signal.SIGKILL   # sh as pid 1 ignores TERM: stop's KILL
    h.cli("rm", "tidy2", check=True)
    assert not d.exists()


def test_a_killed_monitor_stops_its_container_with_a_clear_state(mhost):
    h = mhost
    h.cli("run", "-d", "--name", "orphan", "busybox", "sleep", "600", check=True)
    i = info(h, "orphan")
    d = Path(i["paths"]["dir"])
    (monitor,) = shim_pids(d)
    os.kill(monitor, signal.SIGKILL)   # the monitor portlink started for this test
    e = exited(h, "orphan")
    assert e["exit_code"] is None
    die = events(h, "orphan", "die")[-1]["attrs"]
    assert die["error"] == "monitor died"
    assert not os.path.exists(f"/proc/{i['pid']}") or \
        Path(f"/proc/{i['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    assert "monitor of container orphan ended before the container" in h.daemon_log()
    # It starts again under a new monitor.
    h.cli("start", "orphan", check=True)
    assert info(h, "orphan")["status"] == "running" and len(shim_pids(d)) == 1
    h.cli("rm", "-f", "orphan", check=True)
    assert shim_pids(d) == [] and not d.exists()


def test_a_monitor_killed_while_the_daemon_is_down(mhost):
    h = mhost
    h.cli("run", "-d", "--name", "orphan2", "busybox", "sleep", "600", check=True)
    i = info(h, "orphan2")
    d = Path(i["paths"]["dir"])
    (monitor,) = shim_pids(d)
    h.stop_daemon(signal.SIGKILL)
    os.kill(monitor, signal.SIGKILL)
    h.start_daemon()
    e = exited(h, "orphan2")
    assert e["exit_code"] is None and events(h, "orphan2", "die")[-1]["attrs"]["error"] == "monitor died"
    assert wait_for(lambda: not os.path.exists(f"/proc/{i['pid']}"), timeout=10), "the container still runs"
    h.cli("rm", "orphan2", check=True)
    assert not d.exists()


def test_the_exit_code_survives_a_full_disk(tmp_path):
    """The monitor alone with real runc, the container's dir on a 256 KiB tmpfs (a
    private mount namespace) that the container's output fills: its log is dropped,
    its exit code is not (the exit file's blocks were taken at start)."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    for tool in ("sh", "yes", "head"):
        (rootfs / "bin" / tool).symlink_to("busybox")
    cid = f"plt-monitor-full-{os.getpid()}"
    script = f"""
import json, os, subprocess, sys
d = {str(tmp_path / "small")!r}
os.makedirs(d)
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", d], check=True)
os.makedirs(d + "/bundle")
subprocess.run(["runc", "spec", "--bundle", d + "/bundle"], check=True)
cfg = json.load(open(d + "/bundle/config.json"))
cfg["root"] = {{"path": {str(rootfs)!r}, "readonly": True}}
cfg["process"]["terminal"] = False
cfg["process"]["args"] = ["/bin/sh", "-c", "yes 0123456789 | head -c 4194304; exit 7"]
json.dump(cfg, open(d + "/bundle/config.json", "w"))
r, w = os.pipe()
p = subprocess.Popen([{logshim_binary()!r}, "--file", d + "/container.log", "--dir", d, "--sync-fd", str(w), "--",
                      {shutil.which("runc")!r}, "--root", {str(tmp_path / "runc")!r}, "run", "--detach", "--pid-file",
                      d + "/bundle/pid", "--bundle", d + "/bundle", {cid!r}],
                     pass_fds=(w,), stderr=open({str(tmp_path / "monitor.err")!r}, "wb"))
os.close(w)
said = os.read(r, 16)
rc = p.wait(120)
subprocess.run(["runc", "--root", {str(tmp_path / "runc")!r}, "delete", "--force", {cid!r}])
print(said.decode().strip(), rc, open(d + "/exit").read().strip(), os.path.exists(d + "/exit.tmp"),
      os.path.exists(d + "/attach.sock"))
"""
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", str(VENV_BIN / "python"), "-c", script],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["ok", "0", "7", "False", "False"]
    assert "dropping output" in (tmp_path / "monitor.err").read_text()
