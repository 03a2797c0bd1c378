"""The daemon killed (SIGKILL, as a power cut would) at each step of `run` and
`rm`: after a restart the state and the kernel agree, and the interrupted
container is either fully there or fully gone. Fault points are armed through
PORTLINK_FAULT (runtime/faults.py); one case per point."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest

from conftest import snapshot
from helpers import dig, wait_for
from portlink.runtime import faults
from portlink.lab.sandbox import SimHost

pytestmark = pytest.mark.root

HTTPD = "mkdir -p /srv && echo up > /srv/index.html && exec httpd -f -p 80 -h /srv"
VICTIM = ["run", "-d", "--name", "victim", "-p", "8081:80", "--link", "base:b", "busybox", "sh", "-c", HTTPD]

RUN_POINTS = [p for p in faults.POINTS if p.startswith(("run.", "start.")) and p not in ("run.ambassador", "run.volumes")]
RM_POINTS = [p for p in faults.POINTS if p.startswith("rm.")]


@pytest.fixture(scope="module")
def crash_host():
    h = SimHost.start("crash")
    h.cli("run", "-d", "--name", "base", "-p", "8090:80", "busybox", "sh", "-c", HTTPD, check=True)
    yield h
    h.env.clear()
    if h.proc is None or h.proc.poll() is not None:
        h.start_daemon()
    errors = h.destroy()
    assert not errors, f"teardown of the simulated host reported: {errors}"


def kernel_view(h: SimHost) -> dict:
    """The snapshot plus the whole firewall listing (counters aside)."""
    s = snapshot(h)
    rules = h.client.get("/system/firewall")["rules"]
    s["firewall"] = sorted(l.strip() for l in re.sub(r"\[\d+:\d+\]|counter packets \d+ bytes \d+", "", rules)
                           .splitlines() if l.strip())
    return s


def settled_view(h: SimHost) -> dict:
    """The kernel view once there are as many container veths as containers with
    an address (or after 10 s, as it is). A netns is destroyed by the kernel's
    own cleanup work after its last reference goes, so the host end of a removed
    container's veth leaves a moment after `rm` answers."""
    def settled():
        view = kernel_view(h)
        veths = [l for l in view["links"] if l.startswith("plv-")]
        return view if len(veths) == len(view["leases"]) else None
    return wait_for(settled, timeout=10) or kernel_view(h)


def die_at(h: SimHost, point: str, *cli: str) -> None:
    """Restart the daemon with `point` armed, make the call, see it die there, restart clean."""
    h.stop_daemon()
    h.env["PORTLINK_FAULT"] = point
    h.start_daemon()
    r = h.cli(*cli)
    assert r.returncode != 0, f"{point}: the call succeeded, so the fault point was never reached"
    assert h.proc.wait(10) == -signal.SIGKILL, f"{point}: the daemon did not die by the fault point"
    h.proc = None
    h.env.clear()
    h.start_daemon()


def http(h: SimHost, port: int) -> str:
    p = h.ns.run("busybox", "sh", "-c", f"timeout 5 wget -q -O- http://127.0.0.1:{port}/", check=False)
    return p.stdout.strip()


def assert_fully_there(h: SimHost) -> None:
    c = h.client.get("/containers/victim")
    assert c["status"] == "running"
    assert wait_for(lambda: http(h, 8081) == "up"), "the published port does not answer"
    assert dig(h, "base", "victim") == [c["network"]["ip"]]
    assert h.cli("exec", "victim", "cat", "/etc/hosts").stdout.count("\tb ") == 1


@pytest.mark.parametrize("point", RUN_POINTS)
def test_run_killed_at_each_step(crash_host, point):
    h = crash_host
    before = settled_view(h)
    die_at(h, point, *VICTIM)
    names = [c["name"] for c in h.client.get("/containers", all="1")]
    if point == "run.running":
        # The process runs and everything it needs is made: it stays, and works.
        assert names == ["base", "victim"]
        assert_fully_there(h)
        h.cli("rm", "-f", "victim", check=True)
    else:
        assert names == ["base"], f"{point}: the interrupted container is still listed"
    assert settled_view(h) == before, f"{point}: state and kernel differ from before the run"
    # Nothing of it is held: the same name, port and (round robin aside) address are free.
    h.cli(*VICTIM, check=True)
    assert_fully_there(h)
    h.cli("rm", "-f", "victim", check=True)
    assert http(h, 8090) == "up", "the bystander's published port stopped working"


@pytest.mark.parametrize("point", RM_POINTS)
def test_rm_killed_at_each_step(crash_host, point):
    h = crash_host
    before = settled_view(h)
    h.cli(*VICTIM, check=True)
    die_at(h, point, "rm", "-f", "victim")
    assert [c["name"] for c in h.client.get("/containers", all="1")] == ["base"], \
        f"{point}: an interrupted rm must finish, not leave the container half there"
    assert settled_view(h) == before, f"{point}: state and kernel differ from before the container"
    assert dig(h, "base", "victim", status=True) == "NXDOMAIN"
    assert http(h, 8090) == "up"


def test_unknown_fault_point_is_refused(tmp_path):
    """A typo in a test must not silently test nothing."""
    p = subprocess.run([sys.executable, "-P", "-c", "import portlink.runtime.faults"],
                       env={"PORTLINK_FAULT": "start.vethh"}, capture_output=True, text=True)
    assert p.returncode != 0 and "start.vethh" in p.stderr
