"""`portlink lab`: N hosts on a lab switch, each with portlinkd and a Consul
agent; cross-host discovery works in it; `down` removes everything it made."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import wait_for
from portlink.lab.sandbox import VENV_BIN

pytestmark = pytest.mark.root


def lab(tmp_path: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PORTLINK_LAB_DIR": str(tmp_path / "labs")}
    return subprocess.run([str(VENV_BIN / "portlink"), "lab", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_lab_up_exec_and_down_leaves_nothing(tmp_path):
    name = f"t{os.getpid() % 100000}"
    r = lab(tmp_path, "up", "--hosts", "2", "--name", name)
    record = tmp_path / "labs" / name / "lab.json"
    try:
        assert r.returncode == 0, r.stderr
        rows = json.loads(lab(tmp_path, "ls", "--format", "json").stdout)
        assert [(x["host"], x["ip"], x["portlinkd"], x["consul_agent"]) for x in rows] == [
            ("host1", "10.99.0.1", "up", "up"), ("host2", "10.99.0.2", "up", "up")]
        assert lab(tmp_path, "up", "--hosts", "2", "--name", name).returncode != 0   # already up
        data = json.loads(record.read_text())
        pids = [int(p) for p in data["pids"]]
        namespaces = [h["ns"] for h in data["hosts"]] + [data["switch_ns"]]
        assert len(pids) == 4 and all(n.startswith("plt-lab-") for n in namespaces)

        ex = lambda host, *argv: lab(tmp_path, "exec", "--name", name, host, "--", *argv)
        assert ex("host1", "portlink", "run", "-d", "--name", "web", "-p", "8080:80", "busybox", "sh", "-c",
                  "echo on-host1 > /tmp/index.html; exec httpd -f -p 80 -h /tmp").returncode == 0
        assert ex("host2", "portlink", "run", "-d", "--name", "cli", "busybox", "sleep", "600").returncode == 0
        fetch = lambda: ex("host2", "portlink", "exec", "cli", "sh", "-c",
                           "timeout 5 wget -qO- http://web.service.consul:8080/; exit $?").stdout.strip()
        assert wait_for(lambda: fetch() == "on-host1", 15), fetch()
        # exec runs inside the host's namespace: its underlay address is there
        assert "10.99.0.2/24" in ex("host2", "ip", "-o", "addr").stdout
        assert ex("host9", "true").returncode != 0
    finally:
        d = lab(tmp_path, "down", "--name", name)
    assert d.returncode == 0, d.stderr
    assert not record.exists()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in namespaces if n in listed]
    assert not [p for p in pids if alive(p)]
    assert lab(tmp_path, "down", "--name", name).returncode != 0     # nothing left to remove


def test_lab_rejects_bad_input_and_leaves_nothing(tmp_path):
    for args, complaint in ((["up", "--hosts", "0"], "--hosts"), (["up", "--name", "a/b"], "lab name"),
                            (["exec", "--name", "nosuch", "host1", "--", "true"], "no lab")):
        r = lab(tmp_path, *args)
        assert r.returncode != 0 and complaint in r.stderr, r.stderr
    assert not list((tmp_path / "labs").glob("*/lab.json"))
