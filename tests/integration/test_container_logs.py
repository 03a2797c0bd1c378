"""Container logs through the log shim (shim/logshim.c) with real runc
containers: streams kept apart with timestamps, --tail, --since, -f, rotation
that bounds the disk use of a chatty container, long lines, a daemon crash
while a container prints, and nothing left after rm."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from helpers import wait_for
from portlink.runtime import logfmt
from portlink.runtime.runc import LOGSHIM, Runc, logshim_binary
from portlink.lab.sandbox import VENV_BIN, SimHost

pytestmark = pytest.mark.root

# Waits for the flag file /tmp/<name> (made by the test through exec): the test
# paces the container, no sleeps decide what a test sees.
WAIT = "while [ ! -e /tmp/{0} ]; do sleep 0.05; done"


def shim_pids(under: Path) -> list[int]:
    """Live log shims writing below `under`."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if Path(argv[0].decode(errors="replace")).name == LOGSHIM and state != "Z" \
                and any(a.startswith(str(under).encode()) for a in argv[1:]):
            found.append(int(d.name))
    return found


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def records(h: SimHost, name: str, **query) -> list[logfmt.Record]:
    """The API's CRI view (format=cri): one record per line, in order."""
    resp = h.client.request("GET", f"/containers/{name}/logs", query={"format": "cri", **query}, stream=True)
    return [logfmt.parse_record(line.rstrip(b"\n")) for line in resp]


def exited(h: SimHost, name: str, timeout: float = 60) -> dict:
    info = wait_for(lambda: (lambda c: c if c["status"] == "exited" else None)(h.client.get(f"/containers/{name}")),
                    timeout)
    assert info, f"{name} did not exit within {timeout}s"
    return info


def touch(h: SimHost, name: str, flag: str) -> None:
    h.cli("exec", name, "touch", f"/tmp/{flag}", check=True)


def log_dir(h: SimHost, name: str) -> Path:
    return Path(h.client.get(f"/containers/{name}")["paths"]["log"]).parent


class Follower:
    """`portlink logs -f` in the background; its stdout lines arrive on a queue."""

    def __init__(self, h: SimHost, *args: str):
        self.p = subprocess.Popen([str(VENV_BIN / "portlink"), "logs", "-f", *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                  env={**os.environ, "PORTLINK_HOST": h.socket})
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.p.stdout:
            self.lines.put(line.decode().rstrip("\n"))
        self.lines.put(None)

    def until(self, pred, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while not pred(self.seen):
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                return False
            if line is None:
                return pred(self.seen)
            self.seen.append(line)
        return True

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()   # our own child, by its pid
        self.p.wait(10)


def test_stdout_and_stderr_apart_with_timestamps_in_order(nft_host):
    h = nft_host
    script = "; ".join(f"echo out{i}; sleep 0.05; echo err{i} >&2; sleep 0.05" for i in range(1, 6))
    h.cli("run", "-d", "--name", "two", "busybox", "sh", "-c", script, check=True)
    exited(h, "two")
    r = h.cli("logs", "two", check=True)
    assert r.stdout.splitlines() == [f"out{i}" for i in range(1, 6)]
    assert r.stderr.splitlines() == [f"err{i}" for i in range(1, 6)]
    recs = records(h, "two")
    assert [(x.stream, x.text) for x in recs if x.stream == "stdout"] == [("stdout", f"out{i}".encode()) for i in range(1, 6)]
    when = {x.text.decode(): x.time_ns for x in recs}
    # Each line's time is when the shim read it: out1 <= err1 <= out2 <= ... (equal when read together).
    order = [f"{s}{i}" for i in range(1, 6) for s in ("out", "err")]
    assert all(when[a] <= when[b] for a, b in zip(order, order[1:])), when
    assert abs(when["out1"] / 1e9 - time.time()) < 600   # wall-clock UTC, not some other clock
    t = h.cli("logs", "-t", "two", check=True)
    stamped = t.stdout.splitlines()
    assert [l.split(" ", 1)[1] for l in stamped] == [f"out{i}" for i in range(1, 6)]
    assert [logfmt.parse_time(l.split(" ", 1)[0].encode()) for l in stamped] == \
        [x.time_ns for x in recs if x.stream == "stdout"]
    assert t.stderr.splitlines()[0].endswith(" err1")


def test_tail_and_since(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "ts", "busybox", "sh", "-c",
          f"for i in 1 2 3 4; do echo early$i; done; {WAIT.format('go')}; echo late1; echo late2 >&2; "
          f"{WAIT.format('end')}", check=True)
    assert wait_for(lambda: "early4" in h.cli("logs", "ts").stdout)
    mark = time.time()
    touch(h, "ts", "go")
    assert wait_for(lambda: "late2" in h.cli("logs", "ts").stderr)
    assert h.cli("logs", "--tail", "2", "ts").stdout == "late1\n"
    assert h.cli("logs", "--tail", "2", "ts").stderr == "late2\n"
    assert h.cli("logs", "-n", "3", "ts").stdout == "early4\nlate1\n"
    assert h.cli("logs", "--tail", "0", "ts").stdout == ""
    assert h.cli("logs", "--tail", "all", "ts").stdout.count("\n") == 5
    r = h.cli("logs", "--since", f"{mark:.6f}", "ts")
    assert (r.stdout, r.stderr) == ("late1\n", "late2\n")
    assert h.cli("logs", "--since", "1h", "ts").stdout.count("\n") == 5
    assert h.cli("logs", "--since", "1h30m", "--tail", "1", "ts").stderr == "late2\n"
    assert h.cli("logs", "--since", str(int(time.time()) + 3600), "ts").stdout == ""
    bad = h.cli("logs", "--since", "yesterday", "ts")
    assert bad.returncode == 125 and "invalid --since 'yesterday'" in bad.stderr
    bad = h.cli("logs", "--tail", "-3", "ts")
    assert bad.returncode == 125 and "invalid --tail '-3'" in bad.stderr
    touch(h, "ts", "end")
    exited(h, "ts")


def test_follow_sees_new_lines_across_rotations_and_ends_with_the_container(nft_host):
    h = nft_host
    # Four bursts of 40 lines of ~1000 bytes with 64 KiB files, 2 of them: each burst
    # crosses a rotation, and by the end the first lines are rotated away.
    burst = "for i in $(seq 1 40); do echo b$b-$i-$pad; done"
    script = (f"pad=$(head -c 990 /dev/zero | tr '\\0' x); echo first; "
              f"for b in 1 2 3 4; do {WAIT.format('go$b')}; {burst}; done; {WAIT.format('end')}; echo bye")
    h.cli("run", "-d", "--name", "chat", "--log-opt", "max-size=64k", "--log-opt", "max-file=2",
          "busybox", "sh", "-c", script, check=True)
    f = Follower(h, "chat")
    try:
        assert f.until(lambda s: "first" in s), f.seen
        for b in range(1, 5):
            touch(h, "chat", f"go{b}")
            assert f.until(lambda s: f"b{b}-40-" in (s[-1][:8] if s else "")), f.seen[-3:]
        touch(h, "chat", "end")
        assert f.until(lambda s: s and s[-1] == "bye")
        assert f.p.wait(30) == 0, f.p.stderr.read()   # the stream ends when the container does
        expected = ["first", *(f"b{b}-{i}-" for b in range(1, 5) for i in range(1, 41)), "bye"]
        assert [l if l in ("first", "bye") else l[:l.index("-", 3) + 1] for l in f.seen] == expected
        assert all(l.endswith("-" + "x" * 990) for l in f.seen[1:-1])
    finally:
        f.close()
    d = log_dir(h, "chat")
    assert sorted(p.name for p in d.glob("container.log*")) == ["container.log", "container.log.1"]
    kept = h.cli("logs", "chat", check=True).stdout.splitlines()
    assert kept[-1] == "bye" and "first" not in kept   # rotated away, as the limits say


def test_a_chatty_container_is_bounded_on_disk_and_never_blocked(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "yes", "--log-opt", "max-size=1m", "--log-opt", "max-file=2",
          "busybox", "sh", "-c", "yes 0123456789abcdef | head -c 50000000", check=True)
    d = log_dir(h, "yes")
    bound = 2 * (1 << 20) + 64 + 17          # max-size x max-file, plus one record
    peak = 0

    def size(p: Path) -> int:
        try:
            return p.stat().st_size
        except FileNotFoundError:   # renamed away since the listing: its bytes are under the next name
            return 0

    def done() -> bool:
        nonlocal peak
        peak = max(peak, sum(size(p) for p in d.glob("container.log*")))
        return h.client.get("/containers/yes")["status"] == "exited"

    assert wait_for(done, 300, interval=0.02), "the container did not finish: blocked on its stdout?"
    info = h.client.get("/containers/yes")
    assert info["exit_code"] == 0
    files = sorted(d.glob("container.log*"))
    assert [p.name for p in files] == ["container.log", "container.log.1"]
    used = sum(p.stat().st_size for p in files)
    assert used <= bound and peak <= bound, (used, peak)
    assert files[1].stat().st_size > (1 << 20) - 100   # rotated when the next record would not fit
    du = subprocess.run(["du", "-sk", *map(str, files)], capture_output=True, text=True, check=True).stdout
    assert sum(int(l.split()[0]) for l in du.splitlines()) * 1024 <= bound + 2 * 4096   # blocks on disk too
    # 50,000,000 = 2,941,176 lines of 17 bytes + "01234567" without a newline
    tail = h.cli("logs", "--tail", "3", "yes", check=True).stdout
    assert tail == "0123456789abcdef\n0123456789abcdef\n01234567"
    lines = records(h, "yes")
    assert all(r.text == b"0123456789abcdef" for r in lines[1:-1]) and lines[-1].partial
    assert len(lines) > (1 << 20) // (31 + 9 + 17)   # at least a full file of 57-byte records


def test_a_long_line_comes_back_whole(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "long", "busybox", "sh", "-c",
          "echo short; head -c 40000 /dev/zero | tr '\\0' a; echo; echo after", check=True)
    exited(h, "long")
    assert h.cli("logs", "long", check=True).stdout == "short\n" + "a" * 40000 + "\nafter\n"
    raw = (log_dir(h, "long") / "container.log").read_bytes().splitlines()
    tags = [l.split(b" ")[2] for l in raw]
    assert tags.count(b"P") >= 2 and tags.count(b"F") == 3   # fragments of at most 16 KiB
    assert max(len(l) for l in raw) <= 16 * 1024 + 64
    stamped = h.cli("logs", "-t", "--tail", "2", "long", check=True).stdout.splitlines()
    assert len(stamped) == 2 and stamped[0].endswith(" " + "a" * 40000) and stamped[0].count(" ") == 1


def test_daemon_killed_while_a_container_prints_loses_nothing(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "ticker", "busybox", "sh", "-c",
          "i=0; while [ ! -e /tmp/stop ]; do echo tick-$i; i=$((i+1)); sleep 0.01; done; echo done", check=True)
    d = log_dir(h, "ticker")
    shims = shim_pids(d)
    assert len(shims) == 1
    assert wait_for(lambda: "tick-5" in h.cli("logs", "ticker").stdout)
    h.stop_daemon(signal.SIGKILL)
    size = (d / "container.log").stat().st_size
    # The daemon is gone; the container keeps printing and its shim keeps writing.
    assert wait_for(lambda: (d / "container.log").stat().st_size > size + 500, 30)
    assert shim_pids(d) == shims
    h.start_daemon()
    assert wait_for(lambda: "tick-" in h.cli("logs", "--tail", "1", "ticker").stdout)
    touch(h, "ticker", "stop")
    exited(h, "ticker")
    out = h.cli("logs", "ticker", check=True).stdout.splitlines()
    assert out[-1] == "done"
    assert out[:-1] == [f"tick-{i}" for i in range(len(out) - 1)]   # every line, none twice
    assert wait_for(lambda: not shim_pids(d), 15), "the shim outlived its container"


def test_rm_leaves_no_shim_and_no_log_files(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "gone", "busybox", "sh", "-c", "echo hi; exec sleep 600", check=True)
    d = log_dir(h, "gone")
    assert wait_for(lambda: h.cli("logs", "gone").stdout == "hi\n")
    pid = int((d / "logshim.pid").read_text())
    assert shim_pids(d) == [pid]
    assert h.cli("rm", "-f", "gone").returncode == 0
    assert shim_pids(d) == [] and not d.exists()
    assert not zombie(pid)   # the daemon reaped its child
    # stop, then start again: one shim per run, appending to the same log
    h.cli("run", "-d", "--name", "again", "busybox", "sh", "-c", "echo run; exec sleep 600", check=True)
    d = log_dir(h, "again")
    h.cli("stop", "-t", "1", "again", check=True)
    assert shim_pids(d) == [] and not (d / "logshim.pid").exists()
    h.cli("start", "again", check=True)
    assert wait_for(lambda: h.cli("logs", "again").stdout == "run\nrun\n")
    assert len(shim_pids(d)) == 1
    h.cli("rm", "-f", "again", check=True)
    assert shim_pids(d) == [] and not d.exists()


def test_daemon_log_limits_and_bad_values():
    h = SimHost.start("logs", extra_args=["--log-max-size", "64k", "--log-max-files", "4"])
    try:
        h.cli("run", "-d", "--name", "d1", "busybox", "sleep", "600", check=True)
        h.cli("run", "-d", "--name", "d2", "--log-opt", "max-file=2", "busybox", "sleep", "600", check=True)
        for name, files in (("d1", "4"), ("d2", "2")):
            (pid,) = shim_pids(log_dir(h, name))
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert argv[argv.index(b"--max-size") + 1] == b"65536"
            assert argv[argv.index(b"--max-files") + 1] == files.encode()
        r = h.cli("run", "-d", "--log-opt", "max-size=big", "busybox", "true")
        assert r.returncode == 125 and "invalid --log-opt max-size 'big'" in r.stderr
        assert [c["name"] for c in h.client.get("/containers", all="1")] == ["d1", "d2"]   # nothing made
    finally:
        errors = h.destroy()
    assert not errors
    p = subprocess.run([str(VENV_BIN / "portlinkd"), "--log-max-files", "0", "--socket", "/nonexistent/s"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "invalid --log-max-files '0'" in p.stderr


def test_a_shim_still_alive_after_its_container_is_killed_by_its_recorded_pid(tmp_path):
    """Something outside the container still holds the pipe (here: this test), so the
    shim never sees EOF: the cleanup kills it, by the pid file, as the shim it is."""
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    shim = subprocess.Popen([logshim_binary(), "--file", str(tmp_path / "container.log"), "--stdout-fd", str(r_out),
                             "--stderr-fd", str(r_err)], pass_fds=(r_out, r_err), start_new_session=True)
    os.close(r_out)
    os.close(r_err)
    try:
        os.write(w_out, b"kept\n")
        (tmp_path / "logshim.pid").write_text(f"{shim.pid}\n")
        decoy = subprocess.Popen(["sleep", "60"])   # a recorded pid that is not a shim is never killed
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "logshim.pid").write_text(f"{decoy.pid}\n")
        rc = Runc(tmp_path / "runc")
        assert rc.end_logshim("c0ffee", tmp_path / "other", timeout=0.2) is None
        assert decoy.poll() is None
        decoy.kill()
        decoy.wait()
        assert wait_for(lambda: (tmp_path / "container.log").exists()
                        and b"stdout F kept" in (tmp_path / "container.log").read_bytes())
        assert rc.end_logshim("c0ffee", tmp_path, timeout=0.5) is None
        assert wait_for(lambda: shim.poll() is not None, 10)
        assert shim.returncode == -signal.SIGKILL and not (tmp_path / "logshim.pid").exists()
    finally:
        os.close(w_out)
        os.close(w_err)
        if shim.poll() is None:
            shim.kill()
        shim.wait(10)


def test_a_full_disk_drops_output_but_never_blocks_the_writer(tmp_path):
    """A real full filesystem: a 256 KiB tmpfs in a private mount namespace. The
    writer gets through 4 MiB; the log stays whole records; the shim says what it dropped."""
    script = f"""
import os, subprocess, sys
d = {str(tmp_path / "small")!r}
os.makedirs(d)
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", d], check=True)
r_out, w_out = os.pipe(); r_err, w_err = os.pipe()
err = open({str(tmp_path / "shim.err")!r}, "wb")
p = subprocess.Popen([{logshim_binary()!r}, "--file", d + "/container.log", "--stdout-fd", str(r_out),
                      "--stderr-fd", str(r_err)], pass_fds=(r_out, r_err), stderr=err)
os.close(r_out); os.close(r_err)
line = b"0123456789" * 10 + b"\\n"
for i in range(4 * 1024 * 1024 // len(line)):
    os.write(w_out, line)
os.write(w_err, b"the end\\n")
os.close(w_out); os.close(w_err)
rc = p.wait(60)
data = open(d + "/container.log", "rb").read()
sys.stdout.write(f"{{rc}} {{len(data)}}\\n")
sys.stdout.flush()
os.write(1, data)
"""
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", str(VENV_BIN / "python"), "-c", script],
                       capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    head, data = p.stdout.split(b"\n", 1)
    rc, size = map(int, head.split())
    assert rc == 0 and size == len(data) and 0 < size <= 256 * 1024
    recs = [logfmt.parse_record(l) for l in data.splitlines()]
    assert recs and all(r is not None for r in recs) and data.endswith(b"\n")   # whole records only
    line = b"0123456789" * 10
    # A read can end mid-line; if the writer is then descheduled past the shim's
    # 200 ms partial timeout, that line is written as a P fragment and the rest as F.
    out = [r for r in recs if r.stream == "stdout"]
    assert out and all(r.text and r.text in line for r in out), [r for r in out if r.text not in line][:3]
    assert sum(r.text == line for r in out) >= len(out) // 2
    assert all(r.text == b"the end" for r in recs if r.stream == "stderr")   # it fits, or it was dropped
    assert "dropping output" in (tmp_path / "shim.err").read_text()


def test_foreground_run_keeps_the_streams_apart(nft_host):
    """As `docker run`: the container's stdout on ours, its stderr on ours."""
    r = nft_host.cli("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; echo out2; exit 4")
    assert r.returncode == 4
    assert r.stdout == "out\nout2\n"
    assert r.stderr == "err\n"
