"""The host forwarder in a real 2-host lab (plaintext links): three cross-host
links on host2 served by one forwarder process, each ambassador with its own
address and /metrics; a move of one service reroutes that ambassador alone;
removing one link leaves the others working; the forwarder SIGKILLed is
restarted with every listener; a daemon restart finds it; and no Consul
connection is held for the ambassadors (ss in the host's namespace)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from helpers import is_static, parent_pid, wait_for
from portlink.lab import lab as labmod
from portlink.netns import kernel_ns
from portlink.runtime import shim_binaries
from portlink.runtime.ambassadors import PAUSE_PATH
from portlink.runtime.client import Client
from portlink.runtime.procstart import process_start

pytestmark = pytest.mark.root

SERVICES = ("alpha", "beta", "gamma")
SERVE = "echo $0-on-$1 > /tmp/index.html; exec httpd -f -p 80 -h /tmp"


class Two:
    def __init__(self, made: labmod.Lab):
        self.made = made

    def cli(self, host: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd, env = labmod.exec_argv(self.made.name, host, ["portlink", *args])
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise AssertionError(f"{host}: portlink {' '.join(args)}: {p.stderr}")
        return p

    def client(self, host: str) -> Client:
        return Client(self.made.host(host).socket)

    def state(self, host: str) -> Path:
        return Path(self.made.host(host).workdir) / "state"

    def forwarder(self) -> dict | None:
        """host2's recorded forwarder, if that process is alive."""
        try:
            rec = json.loads((self.state("host2") / "hostfwd.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return rec if process_start(rec["pid"]) == rec["start"] else None

    def fetch(self, web: str) -> str:
        return self.cli("host2", "exec", web, "sh", "-c", "timeout 5 wget -qO- http://db/; exit $?",
                        check=False).stdout.strip()

    def stats(self, amb: str) -> dict:
        ip = self.client("host2").get(f"/containers/{amb}")["network"]["ip"]
        with kernel_ns.entered(self.made.host("host2").netns_path):
            with urllib.request.urlopen(f"http://{ip}:9102/stats", timeout=5) as r:
                return json.loads(r.read())

    def metrics(self, amb: str) -> str:
        ip = self.client("host2").get(f"/containers/{amb}")["network"]["ip"]
        with kernel_ns.entered(self.made.host("host2").netns_path):
            with urllib.request.urlopen(f"http://{ip}:9102/metrics", timeout=5) as r:
                return r.read().decode()


@pytest.fixture
def two(tmp_path, monkeypatch):
    monkeypatch.setattr(labmod, "LAB_ROOT", tmp_path / "labs")
    made = labmod.up(2, f"f{os.getpid() % 10000}", progress=lambda *_: None, secure_links=False)
    try:
        yield Two(made)
    finally:
        errors = labmod.down(made.name, progress=lambda *_: None)
    assert not errors, errors


def amb(svc: str) -> str:
    return f"amb-{svc}-bridge"


def all_answer(L: Two, webs: dict[str, str], host_of: dict[str, str]) -> bool:
    return all(L.fetch(w) == f"{svc}-on-{host_of[svc]}" for svc, w in webs.items())


def test_three_links_one_forwarder(two):
    L = two
    for i, svc in enumerate(SERVICES):
        L.cli("host1", "run", "-d", "--name", svc, "-p", f"{8001 + i}:80", "busybox", "sh", "-c", SERVE, svc, "host1")
    assert wait_for(lambda: L.client("host2").get("/system/consul")["services_seen"] >= 3, 30)
    webs = {svc: f"web-{svc}" for svc in SERVICES}
    for svc, web in webs.items():
        # host2's catalog may hear of the service a moment after Consul has it.
        r = wait_for(lambda: (lambda p: p if p.returncode == 0 else None)(
            L.cli("host2", "run", "-d", "--name", web, "--link", f"{svc}:db", "busybox", "sleep", "3600",
                  check=False)), 20)
        assert r is not None, f"link to {svc} failed"
    host_of = dict.fromkeys(SERVICES, "host1")
    assert wait_for(lambda: all_answer(L, webs, host_of), 15), {w: L.fetch(w) for w in webs.values()}

    # One forwarder process for the three; each ambassador's own process is portlink-pause
    # (static, bound read-only from the host), under its monitor, the static log shim.
    fwd = L.forwarder()
    assert fwd is not None, "no host forwarder recorded on host2"
    status = Path(f"/proc/{fwd['pid']}/status").read_text()
    assert "Uid:\t65536\t65536\t65536\t65536" in status and "CapEff:\t0000000000000000" in status, status
    ambs = {svc: L.client("host2").get(f"/containers/{amb(svc)}") for svc in SERVICES}
    assert len({a["network"]["ip"] for a in ambs.values()}) == 3
    starts = {svc: process_start(a["pid"]) for svc, a in ambs.items()}
    pause = os.stat(shim_binaries.find(shim_binaries.PAUSE))
    for a in ambs.values():
        cmdline = Path(f"/proc/{a['pid']}/cmdline").read_bytes().split(b"\0")
        assert cmdline[:1] == [PAUSE_PATH.encode()], cmdline
        exe = os.stat(f"/proc/{a['pid']}/exe")
        assert (exe.st_dev, exe.st_ino) == (pause.st_dev, pause.st_ino)
        assert is_static(f"/proc/{a['pid']}/exe")
        monitor = parent_pid(a["pid"])
        assert Path(f"/proc/{monitor}/comm").read_text().strip() == "portlink-logshi"   # comm: 15 bytes
        assert is_static(f"/proc/{monitor}/exe")
        # Its pause reads neither: no /sys or /dev/mqueue mounted in its mount namespace.
        kinds = {l.split(" - ")[1].split()[0] for l in Path(f"/proc/{a['pid']}/mountinfo").read_text().splitlines()}
        assert "proc" in kinds and not kinds & {"sysfs", "mqueue"}, kinds
    web_kinds = Path(f"/proc/{L.client('host2').get('/containers/web-alpha')['pid']}/mountinfo").read_text()
    assert " - sysfs " in web_kinds and " - mqueue " in web_kinds
    fds = os.listdir(f"/proc/{fwd['pid']}/fd")
    # Each ambassador's listener and metrics socket live in its own namespace, held by the forwarder.
    for svc in SERVICES:
        snap = L.stats(amb(svc))
        assert snap["listeners"]["80"]["backends"] and snap["consul"]["instances"] == "host forwarder", snap
        assert snap["metrics"]["connections_total"]["total"] >= 1, snap
        assert "portlink_ambassador_connections_total" in L.metrics(amb(svc))
    assert len(fds) >= 3 * 2

    # A move of beta reroutes beta's ambassador alone.
    before = {svc: L.stats(amb(svc))["listeners"]["80"]["backends"] for svc in SERVICES}
    L.cli("host1", "rm", "-f", "beta")
    L.cli("host2", "run", "-d", "--name", "beta", "-p", "8002:80", "busybox", "sh", "-c", SERVE, "beta", "host2")
    host_of["beta"] = "host2"
    assert wait_for(lambda: L.fetch(webs["beta"]) == "beta-on-host2", 20), L.fetch(webs["beta"])
    after = {svc: L.stats(amb(svc))["listeners"]["80"]["backends"] for svc in SERVICES}
    assert after["beta"] != before["beta"]
    assert after["alpha"] == before["alpha"] and after["gamma"] == before["gamma"]
    reroutes = {svc: L.stats(amb(svc))["metrics"]["reroutes_total"]["total"] for svc in SERVICES}
    assert reroutes["beta"] >= 1 and reroutes["alpha"] == reroutes["gamma"] == 0, reroutes
    assert all_answer(L, webs, host_of)

    # No Consul connection for the ambassadors: none from the forwarder in the host's
    # namespace, none in any ambassador's namespace.
    def consul_conns(netns: str) -> list[str]:
        out = subprocess.run(["nsenter", f"--net={netns}", "ss", "-tnpH", "state", "established"],
                             capture_output=True, text=True, check=True).stdout
        return [line for line in out.splitlines() if ":8500" in line]
    host_ss = consul_conns(L.made.host("host2").netns_path)
    assert not [x for x in host_ss if f"pid={fwd['pid']}," in x], host_ss
    for svc in SERVICES:
        netns = f"/proc/{ambs[svc]['pid']}/ns/net"
        assert consul_conns(netns) == [], svc

    # Removing one link (its only linker) removes that ambassador; the others go on.
    L.cli("host2", "rm", "-f", webs["gamma"])
    assert wait_for(lambda: L.cli("host2", "inspect", amb("gamma"), check=False).returncode != 0, 15)
    assert process_start(ambs["gamma"]["pid"]) != starts["gamma"]     # its pause ended with it
    del webs["gamma"]
    assert all_answer(L, webs, host_of)
    assert L.forwarder()["pid"] == fwd["pid"]

    # The forwarder SIGKILLed: portlinkd restarts it and re-gives every listener.
    os.kill(fwd["pid"], signal.SIGKILL)
    assert wait_for(lambda: (lambda f: f and f["pid"] != fwd["pid"])(L.forwarder()), 15), "not restarted"
    assert wait_for(lambda: all_answer(L, webs, host_of), 15), {w: L.fetch(w) for w in webs.values()}
    fwd2 = L.forwarder()

    # A daemon restart finds the running forwarder: same process, same listeners.
    labmod.daemon_restart(L.made.name, "host2")
    assert L.forwarder()["pid"] == fwd2["pid"]
    assert wait_for(lambda: all_answer(L, webs, host_of), 15), {w: L.fetch(w) for w in webs.values()}
    assert L.stats(amb("alpha"))["listeners"]["80"]["backends"] == after["alpha"]

    # The last link gone: the forwarder goes too, its record with it.
    for web in webs.values():
        L.cli("host2", "rm", "-f", web)
    assert wait_for(lambda: L.forwarder() is None and not (L.state("host2") / "hostfwd.json").exists(), 15)
