"""A test run killed before its teardown (pytest itself SIGKILLed, a CI timeout)
leaves sandbox hosts whose containers keep running, as containers do when their
daemon dies. The sweep (`python -m portlink.lab.sandbox --clean`) removes each
one's daemon, containers, log shims, mounts and work dir."""

from __future__ import annotations

import os

import pytest

from portlink.lab.sandbox import DAEMON_PID, SimHost, clean_workdir

pytestmark = pytest.mark.root


def _processes_naming(path: str) -> list[str]:
    """Command lines naming `path`, read from /proc (ps would cut long ones to its width)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue   # ended meanwhile
            if path in cmd:
                out.append(cmd)
    return out


def test_a_killed_runs_host_is_swept():
    h = SimHost.start("host")
    try:
        h.cli("run", "-d", "--name", "left", "busybox", "sleep", "600", check=True)
        wd = str(h.workdir)
        assert (h.workdir / DAEMON_PID).read_text().split()[0] == str(h.proc.pid)
        assert any("logshim" in l for l in _processes_naming(wd))      # the container's shim
        done = clean_workdir(h.workdir)      # as after a killed run: nothing was torn down
        assert f"portlinkd {h.proc.pid}" in done and any(d.startswith("container ") for d in done), done
        assert h.proc.poll() is not None                                 # the daemon is gone
        assert _processes_naming(wd) == []                               # containers and shims too
        assert not any(wd in l for l in open("/proc/self/mountinfo"))    # overlay and netns files
        assert not h.workdir.exists()
    finally:
        h.ns.delete()
        if h.workdir.exists():
            h.destroy()
