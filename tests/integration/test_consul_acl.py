"""Consul no container can touch, in a real 2-host lab: ACLs default deny and
gossip encryption on every agent; each portlinkd holds a token of the
portlink-daemon policy (handed over in a file), each ambassador one minted by
its daemon through the host's JWT auth method, read only, logged out when the
ambassador goes; no token shows in a command line or an environment."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from helpers import wait_for
from portlink.lab import consul_acl
from portlink.lab import lab as labmod
from portlink.lab.consul_agent import http_get
from portlink.runtime.client import Client

pytestmark = pytest.mark.root

SERVE = "echo db-on-$0 > /tmp/index.html; exec httpd -f -p 80 -h /tmp"


class Two:
    def __init__(self, made: labmod.Lab):
        self.made = made
        self.management = (Path(made.dir) / consul_acl.MANAGEMENT_FILE).read_text().strip()

    def cli(self, host: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd, env = labmod.exec_argv(self.made.name, host, ["portlink", *args])
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if check:
            assert p.returncode == 0, f"{host}: portlink {' '.join(args)}: {p.stderr}"
        return p

    def client(self, host: str) -> Client:
        return Client(self.made.host(host).socket)

    def consul(self, host: str, method: str, path: str, token: str | None, body: object = None):
        """A call to `host`'s agent from inside its namespace; token None: anonymous."""
        h = self.made.host(host)
        code, _, out = http_get(f"http://{h.ip}:8500{path}", 5, h.netns_path, method=method, body=body,
                                token=token or "")
        return code, out

    def daemon_token(self, host: str) -> str:
        return (Path(self.made.host(host).workdir) / consul_acl.DAEMON_TOKEN_FILE).read_text().strip()


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    root, labmod.LAB_ROOT = labmod.LAB_ROOT, tmp_path_factory.mktemp("labs")
    try:
        made = labmod.up(2, f"a{os.getpid() % 10000}", progress=lambda *_: None)
        try:
            yield Two(made)
        finally:
            errors = labmod.down(made.name, progress=lambda *_: None)
        assert not errors, errors
    finally:
        labmod.LAB_ROOT = root


def secrets_of(proc_pid: int) -> bytes:
    return Path(f"/proc/{proc_pid}/cmdline").read_bytes() + Path(f"/proc/{proc_pid}/environ").read_bytes()


def test_anonymous_writes_refused_gossip_encrypted_daemon_token_least(two):
    for host in ("host1", "host2"):
        code, out = two.consul(host, "PUT", "/v1/agent/service/register", None, {"Name": "intruder", "Port": 1})
        assert code == 403 and "anonymous token lacks permission" in out, (code, out)
        code, out = two.consul(host, "PUT", "/v1/kv/portlink-probe", None, "x")
        assert code == 403, (code, out)
        code, out = two.consul(host, "GET", "/v1/agent/self", two.management)
        assert code == 200 and out["Stats"]["serf_lan"]["encrypted"] == "true", out["Stats"]["serf_lan"]
        # The daemon's token: no ACL writes (acl:write would be management in all but name).
        code, out = two.consul(host, "PUT", "/v1/acl/token", two.daemon_token(host),
                               {"Policies": [{"Name": "portlink-daemon"}]})
        assert code == 403 and "acl:write" in out, (code, out)
        code, out = two.consul(host, "PUT", "/v1/kv/portlink-probe", two.daemon_token(host), "x")
        assert code == 403, (code, out)
        # Every secret file of the lab is private to root.
        wd = Path(two.made.host(host).workdir)
        for f in (consul_acl.DAEMON_TOKEN_FILE, consul_acl.AGENT_TOKEN_FILE, consul_acl.KEY_FILE):
            st = (wd / f).stat()
            assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, 0), f
        # The agents registered their own nodes with their node-identity tokens.
        code, nodes = two.consul(host, "GET", "/v1/catalog/nodes", two.management)
        assert sorted(n["Node"] for n in nodes) == ["host1", "host2"], nodes
    st = (Path(two.made.dir) / consul_acl.MANAGEMENT_FILE).stat()
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_cross_host_link_with_ambassador_token_read_only_and_logged_out(two):
    two.cli("host1", "run", "-d", "--name", "frontdb", "-p", "5432:80", "busybox", "sh", "-c", SERVE, "host1")
    assert wait_for(lambda: two.client("host2").get("/system/consul")["services_seen"] >= 2, 20)
    two.cli("host2", "run", "-d", "--name", "web", "--link", "frontdb:sql", "busybox", "sleep", "600")
    fetch = lambda: two.cli("host2", "exec", "web", "sh", "-c", "timeout 5 wget -qO- http://sql/", check=False)
    assert wait_for(lambda: fetch().stdout.strip() == "db-on-host1", 10), fetch()

    amb = two.client("host2").get("/containers/amb-frontdb-bridge")
    token_file = Path(two.made.host("host2").workdir) / "state" / "containers" / amb["id"] / "consul-token"
    secret = token_file.read_text().strip()
    st = token_file.stat()
    with open(f"/proc/{amb['pid']}/status") as f:
        ids = {l.split(":")[0]: int(l.split()[1]) for l in f if l.startswith(("Uid:", "Gid:"))}
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o400, ids["Uid"], ids["Gid"])

    # Only a path reaches the ambassador; no secret shows in a process's command line or environment.
    env = Path(f"/proc/{amb['pid']}/environ").read_bytes().split(b"\0")
    assert b"CONSUL_HTTP_TOKEN_FILE=/run/secrets/consul-token" in env
    daemon_pid = two.made.host("host2").daemon_pid
    for pid in (amb["pid"], daemon_pid):
        seen = secrets_of(pid)
        assert secret.encode() not in seen and two.daemon_token("host2").encode() not in seen, pid
    assert b"--consul-token-file" in Path(f"/proc/{daemon_pid}/cmdline").read_bytes()

    # The ambassador's token reads the service it follows (the lab runs --secure-links:
    # its Connect instances) and writes nothing but its own identity.
    code, out = two.consul("host2", "GET", "/v1/health/connect/frontdb?passing=1", secret)
    assert code == 200 and [e["Node"]["Node"] for e in out] == ["host1"], (code, out)
    code, out = two.consul("host2", "PUT", "/v1/agent/service/register", secret, {"Name": "frontdb", "Port": 1})
    assert code == 403 and "service:write" in out, (code, out)
    code, out = two.consul("host2", "GET", "/v1/acl/token/self", secret)
    assert code == 200 and [r["Name"] for r in out["Roles"]] == ["portlink-ambassador"], out
    assert out["ServiceIdentities"] == [{"ServiceName": amb["config"]["ambassador"]["identity"]}], out
    assert out["AuthMethod"] == "portlink-host2" and out["Local"] is True

    # Containers reach no Consul agent, neither their own host's nor another's.
    for ip in ("10.99.0.2", "10.99.0.1"):
        r = two.cli("host2", "exec", "web", "sh", "-c", f"timeout 2 wget -qO- http://{ip}:8500/v1/status/leader",
                    check=False)
        assert r.returncode != 0 and not r.stdout.strip(), (ip, r.stdout)

    # rm of the last linker removes its ambassador, and with it the token.
    two.cli("host2", "rm", "-f", "web")
    assert wait_for(lambda: two.cli("host2", "inspect", "amb-frontdb-bridge", check=False).returncode != 0, 10)
    code, out = two.consul("host2", "GET", "/v1/acl/token/self", secret)
    assert code == 403 and "ACL not found" in out, (code, out)
    assert not token_file.exists()
    two.cli("host1", "rm", "-f", "frontdb")
