"""Container lifecycle, bad input, daemon crash and prune on a simulated host."""

from __future__ import annotations

import json
import os
import signal
import stat

import pytest

from conftest import snapshot
from portlink.netns import kernel_ns
from helpers import wait_for

pytestmark = pytest.mark.root


def test_lifecycle_ps_logs_exec_stop_start_restart_rm(nft_host):
    h = nft_host
    cid = h.cli("run", "-d", "--name", "svc", "-e", "GREETING=hi", "--hostname", "svc-host", "busybox",
                "sh", "-c", "echo started $GREETING; echo oops >&2; exec sleep 600", check=True).stdout.strip()
    assert len(cid) == 64
    ps = json.loads(h.cli("ps", "--format", "json", check=True).stdout)
    assert [c["name"] for c in ps] == ["svc"] and ps[0]["status"] == "running"
    assert wait_for(lambda: "started hi" in h.cli("logs", "svc").stdout)
    assert "oops" in h.cli("logs", "svc").stderr          # stderr is captured too, and comes back on stderr
    last = h.cli("logs", "--tail", "1", "svc")
    assert (last.stdout + last.stderr).strip() in ("started hi", "oops")
    r = h.cli("exec", "svc", "sh", "-c", "hostname; echo $GREETING; cat /etc/hosts")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "svc-host" and lines[1] == "hi"
    ip = h.client.get("/containers/svc")["network"]["ip"]
    assert any(l.startswith(ip) and "svc-host" in l and "svc" in l.split() for l in lines[2:])
    assert h.cli("exec", "svc", "sh", "-c", "exit 7").returncode == 7

    info = h.client.get("/containers/svc")
    assert info["config"]["env"] == ["GREETING=hi"] and info["pid"] > 0
    assert h.cli("stop", "-t", "1", "svc").returncode == 0
    info = h.client.get("/containers/svc")
    assert info["status"] == "exited" and info["network"]["ip"] is None   # lease released
    assert "svc" not in h.cli("ps").stdout and "svc" in h.cli("ps", "-a").stdout
    assert h.cli("exec", "svc", "true").returncode != 0

    assert h.cli("start", "svc").returncode == 0
    assert h.client.get("/containers/svc")["status"] == "running"
    assert h.cli("restart", "-t", "1", "svc").returncode == 0
    info = h.client.get("/containers/svc")
    assert info["status"] == "running" and info["network"]["ip"] is not None
    r = h.cli("rm", "svc")
    assert r.returncode != 0 and "running" in r.stderr
    assert h.cli("rm", "-f", "svc").returncode == 0
    assert h.cli("ps", "-a", "-q").stdout.strip() == ""


def test_foreground_run_exit_code_rm_env_file_workdir_user(nft_host, tmp_path):
    h = nft_host
    envf = tmp_path / "env"
    envf.write_text("# comment\nFROM_FILE=yes\n\nOTHER=a=b\n")
    r = h.cli("run", "--rm", "--env-file", str(envf), "-w", "/tmp", "--user", "nobody", "busybox",
              "sh", "-c", "echo $FROM_FILE $OTHER; pwd; id -u; exit 3")
    assert r.returncode == 3, r.stderr
    assert r.stdout.splitlines() == ["yes a=b", "/tmp", "65534"]
    assert h.cli("ps", "-a", "-q").stdout.strip() == ""     # --rm removed it


def test_container_that_exits_releases_its_network(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "brief", "-p", "9090:80", "busybox", "sh", "-c", "exit 4", check=True)
    info = wait_for(lambda: (lambda i: i if i["status"] == "exited" else None)(h.client.get("/containers/brief")))
    assert info["exit_code"] == 4
    assert info["network"]["ip"] is None
    assert "9090" not in h.client.get("/system/firewall")["rules"]
    # the kernel removes the veth pair with the namespace, asynchronously
    assert wait_for(lambda: not any(l.startswith("plv-") for l in snapshot(h)["links"]), timeout=5)


BAD_RUNS = [
    (["--name", "bad/name", "busybox", "true"], "invalid container name"),
    (["--name", "x;rm -rf", "busybox", "true"], "invalid container name"),
    (["nosuchimage", "true"], "image 'nosuchimage' not found"),
    (["-p", "80:99999", "busybox", "true"], "invalid port"),
    (["-p", "8080-8082:80-81", "busybox", "true"], "differ in length"),
    (["-p", "80/sctp", "busybox", "true"], "invalid protocol"),
    (["-p", "8080:80", "-p", "8080:81", "busybox", "true"], "published twice"),
    (["--net", "nosuchnet", "busybox", "true"], "network 'nosuchnet' not found"),
    (["-e", "BAD KEY=1", "busybox", "true"], "invalid environment entry"),
    (["--user", "ghost", "busybox", "true"], "unknown user 'ghost'"),
    (["--dns", "not-an-ip", "busybox", "true"], "invalid --dns"),
    (["--hostname", "under_score", "busybox", "true"], "invalid hostname"),
    (["busybox", "/no/such/command"], "could not start"),
]


def test_bad_input_is_rejected_and_leaves_nothing_behind(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "taken", "-p", "8080:80", "busybox", "sleep", "600", check=True)
    before = snapshot(h)
    assert before["links"] and before["fw_elements"]   # the snapshot sees real objects
    cases = BAD_RUNS + [
        (["--name", "taken", "busybox", "true"], "already in use"),
        (["-p", "8080:80", "busybox", "true"], "already published by container 'taken'"),
        (["-p", "127.0.0.1:8080:80", "busybox", "true"], "already published"),
    ]
    for args, message in cases:
        r = h.cli("run", "-d", *args)
        assert r.returncode != 0, args
        assert message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
        # (the kernel removes a rolled-back veth with its namespace, asynchronously)
        after = wait_for(lambda: (lambda s: s if s == before else None)(snapshot(h)), timeout=5) or snapshot(h)
        assert after == before, f"`run {' '.join(args)}` left something behind"


def test_bad_network_input(nft_host):
    h = nft_host
    for args, message in [
        (["--subnet", "10.77.5.0/24", "clash"], "overlaps"),     # inside the default 10.77.0.0/16
        (["--subnet", "10.0.0.1/24", "hostbits"], "invalid subnet"),
        (["--subnet", "banana", "fruit"], "invalid subnet"),
        (["--subnet", "10.98.0.0/24", "--gateway", "10.99.0.1", "gw"], "invalid gateway"),
        (["bridge"], "already exists"),
        (["--icc", "maybe", "x"], "invalid --icc"),
        (["bad name"], "invalid network name"),
    ]:
        # names and MACs, not states: a fresh bridge turns from UNKNOWN to DOWN on its own
        links = lambda: sorted(l.split()[0] + " " + l.split()[2] for l in h.ns.run("ip", "-br", "link").stdout.splitlines())
        before = links()
        r = h.cli("network", "create", *args)
        assert r.returncode != 0 and message in r.stderr, (args, r.stderr)
        assert links() == before
    assert [n["name"] for n in h.client.get("/networks")] == ["bridge"]


def test_api_rejects_malformed_requests(nft_host):
    c = nft_host.client
    for body, message in [({"image": "busybox", "cmd": ["true"], "bogus": 1}, "unknown field(s) in the container spec: bogus"),
                          ({"cmd": ["true"]}, "no image given"),
                          ({"image": "busybox", "cmd": "true"}, "must be a list of strings"),
                          ({"image": "busybox", "env": ["A=1\nB=2"], "cmd": ["true"]}, "newlines")]:
        with pytest.raises(Exception) as e:
            c.post("/containers", body)
        assert message in str(e.value)
    import http.client
    import socket
    s = socket.socket(socket.AF_UNIX)
    s.connect(nft_host.socket)
    s.sendall(b"POST /containers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{not json")
    resp = http.client.HTTPResponse(s)
    resp.begin()
    assert resp.status == 400 and b"malformed JSON" in resp.read()
    s.close()


def test_socket_is_root_only(nft_host):
    mode = os.stat(nft_host.socket).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_daemon_kill9_and_restart_loses_nothing(nft_host, tmp_path):
    h = nft_host
    h.cli("run", "-d", "--name", "keeper", "-p", "8088:80", "busybox", "sh", "-c",
          "echo kept > /tmp/index.html; exec httpd -f -p 80 -h /tmp", check=True)
    h.cli("network", "create", "--subnet", "10.97.0.0/24", "extra", check=True)
    h.cli("run", "-d", "--name", "other", "--net", "extra", "busybox", "sleep", "600", check=True)
    before = h.client.get("/containers/keeper")
    h.stop_daemon(signal.SIGKILL)
    # containers keep running without the daemon
    r = h.ns.run("timeout", "3", "busybox", "wget", "-q", "-O-", "http://127.0.0.1:8088/index.html", check=False)
    assert r.stdout.strip() == "kept"
    h.start_daemon()
    after = h.client.get("/containers/keeper")
    assert after["status"] == "running" and after["pid"] == before["pid"]
    assert after["network"]["ip"] == before["network"]["ip"]
    assert {n["name"] for n in h.client.get("/networks")} == {"bridge", "extra"}
    r = h.ns.run("timeout", "3", "busybox", "wget", "-q", "-O-", "http://127.0.0.1:8088/index.html", check=False)
    assert r.stdout.strip() == "kept"
    # leases persist: a new container never gets a leased address
    new = h.cli("run", "-d", "busybox", "sleep", "600", check=True).stdout.strip()
    assert h.client.get(f"/containers/{new}")["network"]["ip"] != before["network"]["ip"]
    # still manageable: stop reaches the old process, its exit is seen
    assert h.cli("stop", "-t", "1", "keeper").returncode == 0
    assert h.client.get("/containers/keeper")["status"] == "exited"
    assert h.cli("rm", "-f", "other").returncode == 0


def test_restart_reconciles_a_container_that_died_while_the_daemon_was_down(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "doomed", "-p", "8089:80", "busybox", "sleep", "600", check=True)
    pid = h.client.get("/containers/doomed")["pid"]
    h.stop_daemon(signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)   # the container's own process, which this test started via portlink
    h.start_daemon()
    info = wait_for(lambda: (lambda i: i if i["status"] == "exited" else None)(h.client.get("/containers/doomed")))
    assert info["status"] == "exited" and info["network"]["ip"] is None
    assert "8089" not in h.client.get("/system/firewall")["rules"]
    assert wait_for(lambda: not any(l.startswith("plv-") for l in snapshot(h)["links"]), timeout=5)


def test_sweep_removes_unrecorded_leftovers(nft_host):
    h = nft_host
    # a veth with portlink's prefix that no journal row accounts for (a crash
    # between creating and recording would leave one)
    h.ns.run("ip", "link", "add", "plv-orphan0", "type", "veth", "peer", "name", "plv-orphan1")
    h.stop_daemon(signal.SIGKILL)
    h.start_daemon()
    links = h.ns.run("ip", "-br", "link").stdout
    assert "plv-orphan" not in links
    assert "swept leaked veth plv-orphan" in h.daemon_log()


def test_namespace_files_are_children_of_a_mount_of_their_own(nft_host, tmp_path):
    """Not of the filesystem holding the state dir, whose every child each overlay
    mount walks (issue 18); the mount comes with the first file and goes with the
    last; a dir already holding mounts is not covered over."""
    h = nft_host
    nsdir = str(h.workdir / "state" / "netns")

    def table() -> dict[str, tuple[str, str]]:    # mount point -> (id, parent id)
        rows = [l.split() for l in open(f"/proc/{h.proc.pid}/mountinfo")]
        return {r[4]: (r[0], r[1]) for r in rows}
    h.cli("run", "-d", "--name", "a", "busybox", "sleep", "600", check=True)
    h.cli("run", "-d", "--name", "b", "busybox", "sleep", "600", check=True)
    t = table()
    files = [p for p in t if p.startswith(nsdir + "/")]
    assert len(files) == 2 and nsdir in t, t
    assert {t[f][1] for f in files} == {t[nsdir][0]}
    assert list(t).count(nsdir) == 1
    h.cli("rm", "-f", "a", check=True)
    assert nsdir in table()                   # b's file is still there
    h.cli("rm", "-f", "b", check=True)        # the last file: the mount goes with it
    assert not [p for p in table() if p == nsdir or p.startswith(nsdir + "/")]
    h.cli("run", "-d", "--name", "c", "busybox", "sleep", "600", check=True)
    assert list(table()).count(nsdir) == 1
    assert h.cli("system", "prune", "-f").returncode == 0
    assert not [p for p in table() if p == nsdir or p.startswith(nsdir + "/")]

    # a dir whose files an older portlink mounted: left as it is
    old = tmp_path / "oldns"
    old.mkdir()
    kernel_ns.create_netns(str(old / "plc-old"))
    try:
        assert kernel_ns.own_mount(str(old)) is False
        assert str(old) not in kernel_ns.mount_points()
        assert kernel_ns.drop_own_mount(str(old)) is False
    finally:
        kernel_ns.delete_netns(str(old / "plc-old"))
    assert kernel_ns.own_mount(str(old)) is True and kernel_ns.own_mount(str(old)) is False
    assert kernel_ns.mount_points().count(str(old)) == 1
    assert kernel_ns.drop_own_mount(str(old)) is True and str(old) not in kernel_ns.mount_points()


def test_system_prune_removes_everything(nft_host):
    h = nft_host
    h.cli("network", "create", "--subnet", "10.97.0.0/24", "extra", check=True)
    h.cli("run", "-d", "-p", "8080:80", "busybox", "sleep", "600", check=True)
    h.cli("run", "-d", "--net", "extra", "busybox", "sleep", "600", check=True)
    r = h.cli("system", "prune", "-f")
    assert r.returncode == 0, r.stderr
    s = snapshot(h)
    assert s["containers"] == [] and s["netns"] == [] and s["container_dirs"] == [] and s["runc"] == []
    assert [l for l in s["links"] if l.startswith("pl")] == []
    assert s["mounts"] == []
    assert h.ns.run("nft", "list", "tables").stdout.strip() == ""
    # the default network comes back on first use
    assert h.cli("run", "--rm", "busybox", "true").returncode == 0
