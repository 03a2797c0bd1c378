"""portlink-pause (shim/pause.c), a hosted ambassador's process, as PID 1 of a pid
namespace of its own (util-linux unshare): the kernel drops a signal there that
has no handler, so SIGTERM and SIGINT end it (exit 0) only through its own
handlers, and any other catchable signal leaves it running. Both shims are
static (scripts/build-logshim): no program interpreter."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from helpers import is_static, wait_for
from portlink.runtime import shim_binaries

pytestmark = pytest.mark.root


def pid1(binary: str) -> tuple[subprocess.Popen, int]:
    """`binary` started as PID 1 of a new pid namespace; its pid here, once its handlers are set."""
    outer = subprocess.Popen(["unshare", "--pid", "--fork", binary])
    children = Path(f"/proc/{outer.pid}/task/{outer.pid}/children")
    kids = wait_for(lambda: children.read_text().split(), 10)
    assert kids, "unshare started no child"
    pid = int(kids[0])

    def caught() -> bool:
        status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        return Path(f"/proc/{pid}/comm").read_text().strip() == "portlink-pause" and \
            int(status["SigCgt"], 16) & (1 << (signal.SIGTERM - 1))
    assert wait_for(caught, 10), "portlink-pause set no SIGTERM handler"
    return outer, pid


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_pause_as_pid1_ends_on_term_or_int_and_on_nothing_else(stop):
    outer, pid = pid1(shim_binaries.find(shim_binaries.PAUSE))
    try:
        for sig in (signal.SIGUSR1, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD):
            os.kill(pid, sig)              # dropped or handled: it goes on
        assert outer.poll() is None
        os.kill(pid, stop)
        # unshare exits as its child did: 0, not killed by any of the signals above.
        assert outer.wait(10) == 0
    finally:
        if outer.poll() is None:           # only what this test started
            outer.kill()
            outer.wait(10)


def test_pause_takes_no_arguments():
    r = subprocess.run([shim_binaries.find(shim_binaries.PAUSE), "600"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "usage: portlink-pause" in r.stderr


@pytest.mark.parametrize("name", [shim_binaries.LOGSHIM, shim_binaries.PAUSE])
def test_the_shims_are_static(name):
    assert is_static(shim_binaries.find(name)), f"{name} has a program interpreter: rebuild with ./scripts/setup"
