"""Restart policies against a real daemon, runc and busybox: a killed `always`
container comes back (its link answering), on-failure:N gives up after N, a
user's stop wins, and the policy holds across a daemon restart and a
simulated reboot (daemon and containers killed)."""

from __future__ import annotations

import json
import os
import signal

import pytest

from helpers import wait_for
from portlink.lab.sandbox import SimHost

pytestmark = pytest.mark.root

HTTPD = "mkdir -p /srv && echo up > /srv/index.html && exec httpd -f -p 80 -h /srv"


@pytest.fixture(scope="module")
def rhost():
    h = SimHost.start("restarts")
    yield h
    h.env.clear()
    if h.daemon is None:
        h.start_daemon()
    errors = h.destroy()
    assert not errors, f"teardown of the simulated host reported: {errors}"


def info(h, name: str) -> dict:
    return h.client.get(f"/containers/{name}")


def events(h, name: str, action: str) -> list[dict]:
    r = h.cli("events", "--until", "0s", "--format", "json", "--filter", f"name={name}",
              "--filter", f"event={action}")
    assert r.returncode == 0, r.stderr
    return [json.loads(l) for l in r.stdout.splitlines()]


def back_with_new_pid(h, name: str, old_pid: int) -> dict | None:
    """The container running again under another process (None after the wait)."""
    return wait_for(lambda: (lambda i: i if i["status"] == "running" and i["pid"] != old_pid else None)(
        info(h, name)), timeout=15)


def kill_and_await_return(h, name: str) -> dict:
    """SIGKILL the container's process (started by portlink for this test) and wait for
    its policy to bring it back: a barrier after which a pending restart elsewhere
    would have fired too (every first delay is the same 100 ms)."""
    pid = info(h, name)["pid"]
    os.kill(pid, signal.SIGKILL)
    back = back_with_new_pid(h, name, pid)
    assert back, f"{name} did not come back after SIGKILL: {info(h, name)}"
    return back


def test_always_killed_comes_back_and_its_link_still_answers(rhost):
    h = rhost
    h.cli("run", "-d", "--name", "web", "--restart", "always", "busybox", "sh", "-c", HTTPD, check=True)
    h.cli("run", "-d", "--name", "client", "--link", "web:web", "busybox", "sleep", "600", check=True)
    before = info(h, "web")
    assert before["RestartPolicy"] == {"Name": "always", "MaximumRetryCount": 0}
    assert before["RestartCount"] == 0
    assert wait_for(lambda: h.cli("exec", "client", "wget", "-q", "-O-", "http://web/").stdout.strip() == "up")
    after = kill_and_await_return(h, "web")
    assert after["pid"] != before["pid"] and after["RestartCount"] == 1
    restarts = events(h, "web", "restart")
    assert len(restarts) == 1 and restarts[0]["attrs"]["restart_count"] == 1
    assert len(events(h, "web", "die")) == 1 and len(events(h, "web", "start")) == 2
    assert wait_for(lambda: h.cli("exec", "client", "wget", "-q", "-O-", "http://web/").stdout.strip() == "up"), \
        "the link does not answer after the restart"
    assert "Up " in h.cli("ps").stdout
    h.cli("rm", "-f", "client", "web", check=True)


def test_on_failure_2_restarts_exactly_twice_then_stays_exited(rhost):
    h = rhost
    h.cli("run", "-d", "--name", "flaky", "--restart", "on-failure:2", "busybox", "sh", "-c", "exit 3", check=True)
    # Final once the policy counted two restarts and the third run's exit is recorded.
    done = wait_for(lambda: (lambda i: i if i["status"] == "exited" and i["RestartCount"] == 2
                             and len(events(h, "flaky", "die")) == 3 else None)(info(h, "flaky")), timeout=15)
    assert done, info(h, "flaky")
    assert done["exit_code"] == 3
    h.cli("run", "-d", "--name", "canary", "--restart", "always", "busybox", "sleep", "600", check=True)
    kill_and_await_return(h, "canary")   # a third restart would have been due by now
    final = info(h, "flaky")
    assert final["status"] == "exited" and final["RestartCount"] == 2 and final["exit_code"] == 3
    assert not final["restarting"]
    assert len(events(h, "flaky", "restart")) == 2 and len(events(h, "flaky", "start")) == 3
    assert "Exited (3)" in h.cli("ps", "-a").stdout
    h.cli("rm", "-f", "flaky", "canary", check=True)


def test_no_policy_stays_down_and_a_user_stop_is_never_restarted(rhost):
    h = rhost
    h.cli("run", "-d", "--name", "plain", "busybox", "sleep", "600", check=True)
    h.cli("run", "-d", "--name", "nope", "--restart", "no", "busybox", "sleep", "600", check=True)
    h.cli("run", "-d", "--name", "stopped", "--restart", "always", "busybox", "sleep", "600", check=True)
    h.cli("run", "-d", "--name", "looping", "--restart", "always", "busybox", "sh", "-c", "exit 1", check=True)
    h.cli("run", "-d", "--name", "canary", "--restart", "always", "busybox", "sleep", "600", check=True)
    for name in ("plain", "nope"):
        os.kill(info(h, name)["pid"], signal.SIGKILL)
    h.cli("stop", "-t", "1", "stopped", check=True)
    # A crash loop stopped by the user, between two runs or during one: its pending timer is cancelled.
    assert wait_for(lambda: info(h, "looping")["RestartCount"] >= 2, timeout=15)
    h.cli("stop", "-t", "1", "looping", check=True)
    count = info(h, "looping")["RestartCount"]
    kill_and_await_return(h, "canary")
    kill_and_await_return(h, "canary")   # 100 ms, then 200 ms: past a pending restart of `looping` too
    for name in ("plain", "nope", "stopped"):
        i = info(h, name)
        assert i["status"] == "exited" and i["RestartCount"] == 0 and not i["restarting"], (name, i)
        assert events(h, name, "restart") == []
    i = info(h, "looping")
    assert i["status"] == "exited" and i["RestartCount"] == count and not i["restarting"]
    # A start by the user: the policy counts afresh, and restarts again after a kill.
    h.cli("start", "stopped", check=True)
    assert info(h, "stopped")["RestartCount"] == 0
    assert kill_and_await_return(h, "stopped")["RestartCount"] == 1
    h.cli("rm", "-f", "plain", "nope", "stopped", "looping", "canary", check=True)


def test_policies_across_a_daemon_restart_and_a_reboot(rhost):
    h = rhost
    h.cli("run", "-d", "--name", "keep", "--restart", "always", "busybox", "sleep", "600", check=True)
    h.cli("run", "-d", "--name", "unless", "--restart", "unless-stopped", "busybox", "sleep", "600", check=True)
    h.cli("run", "-d", "--name", "always-stopped", "--restart", "always", "busybox", "sleep", "600", check=True)
    h.cli("run", "-d", "--name", "onfail", "--restart", "on-failure:1", "busybox", "sleep", "600", check=True)
    h.cli("run", "-d", "--name", "plain", "busybox", "sleep", "600", check=True)
    h.cli("stop", "-t", "1", "unless", check=True)
    h.cli("stop", "-t", "1", "always-stopped", check=True)
    # A daemon restart: the stopped containers keep their state.
    h.stop_daemon()
    h.start_daemon()
    assert info(h, "unless")["status"] == "exited"
    # ... while `always` comes back even after a user's stop (Docker's rule).
    assert back_with_new_pid(h, "always-stopped", 0), info(h, "always-stopped")
    # A reboot: the daemon and every container's process killed.
    pids = {n: info(h, n)["pid"] for n in ("keep", "onfail", "plain", "always-stopped")}
    h.stop_daemon(signal.SIGKILL)
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)   # processes this test started through portlink
    h.start_daemon()
    for name in ("keep", "onfail", "always-stopped"):
        back = back_with_new_pid(h, name, pids[name])
        assert back, (name, info(h, name))
    assert events(h, "keep", "restart")[-1]["attrs"]["restart_count"] == 1
    assert info(h, "onfail")["RestartCount"] == 1
    for name in ("plain", "unless"):
        i = info(h, name)
        assert i["status"] == "exited" and i["RestartCount"] == 0 and not i["restarting"], (name, i)
    h.cli("rm", "-f", "keep", "unless", "always-stopped", "onfail", "plain", check=True)


def test_restart_with_rm_is_refused_and_leaves_nothing(rhost):
    h = rhost
    for args in (["--rm"], ["-d", "--rm"]):
        r = h.cli("run", *args, "--restart", "always", "busybox", "true")
        assert r.returncode != 0 and "--restart and --rm conflict" in r.stderr, r.stderr
    r = h.cli("run", "-d", "--restart", "sometimes", "busybox", "true")
    assert r.returncode != 0 and "on-failure[:N]" in r.stderr
    assert h.cli("ps", "-a", "-q").stdout.strip() == ""
