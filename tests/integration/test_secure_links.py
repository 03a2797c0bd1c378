"""Secure links in a 3-host lab (every daemon runs --secure-links, Consul with
ACLs, Connect's CA): frontdb with only `--expose` on host1 is reached from
host2 through `--link` over mutual TLS between a client-side and a server-side
ambassador; a marker crossing the link never shows in a capture on the lab
switch while a plaintext control's marker does; plain TCP and TLS with a
self-made certificate from host3 get nothing; the link's intention is made and
deleted with the ambassador, and a person's deny is obeyed and left alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import test_crosshost
from helpers import wait_for
from portlink.lab import lab as labmod
from portlink.lab.consul_agent import http_get

pytestmark = pytest.mark.root

SECRET = "marker-secure-7f3a9c"      # served by frontdb: must never cross the switch in clear
PLAIN = "marker-plain-51d2e8"        # served by a -p control fetched directly: must show in the capture
SERVE = "echo $0 > /tmp/index.html; exec httpd -f -p 80 -h /tmp"
FETCH = "timeout 5 wget -qO- http://sql/; exit $?"


class Lab(test_crosshost.Lab):
    """test_crosshost's lab wrapper (cli, client, fetch) with what these tests add."""

    def run_linked(self, host: str, *args: str) -> str:
        """`portlink run ARGS` with a cross-host --link: the host's catalog hears of a
        service a moment after Consul has it, and a refused run leaves nothing, so a
        refusal for that reason is tried again (20 s). The last output."""
        out = ""

        def attempt() -> bool:
            nonlocal out
            out = self.cli(host, "run", *args, check=False)
            return "no healthy service of that name" not in out
        assert wait_for(attempt, 20), out
        return out

    def get(self, host: str, path: str, **params):
        from portlink.runtime.client import Client
        return Client(self.made.host(host).socket).get(path, **params)

    def consul(self, method: str, path: str, body: object = None):
        """As the lab's operator (management token), on host1's agent."""
        h = self.made.host("host1")
        code, _, out = http_get(f"http://{h.ip}:8500{path}", 5, h.netns_path, method=method, body=body)
        return code, out

    def connect_instances(self, service: str) -> list[dict]:
        code, out = self.consul("GET", f"/v1/health/connect/{service}?passing=1")
        return out if code == 200 else []

    def python_on(self, host: str, code: str) -> str:
        """A Python process in `host`'s namespace (not a container): its stdout."""
        cmd, env = labmod.exec_argv(self.made.name, host, [sys.executable, "-P", "-c", code])
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stderr
        return p.stdout.strip()


def frontdb_lab(tmp_path_factory, tag: str):
    """A 3-host secure lab with frontdb (only --expose 80) on host1, registered as
    a Connect instance; torn down whole (a fixture's body: `yield from`)."""
    root, labmod.LAB_ROOT = labmod.LAB_ROOT, tmp_path_factory.mktemp("labs")
    try:
        made = labmod.up(3, f"{tag}{os.getpid() % 10000}", progress=lambda *_: None)
        try:
            L = Lab(made)
            L.cli("host1", "run", "-d", "--name", "frontdb", "--expose", "80", "busybox", "sh", "-c", SERVE, SECRET)
            assert wait_for(lambda: len(L.connect_instances("frontdb")) == 1, 20)
            yield L
        finally:
            errors = labmod.down(made.name, progress=lambda *_: None)
            assert not errors, errors
    finally:
        labmod.LAB_ROOT = root


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    yield from frontdb_lab(tmp_path_factory, "s")


def server_port(L: Lab) -> int:
    [inst] = L.connect_instances("frontdb")
    svc = inst["Service"]
    assert svc["Connect"] == {"Native": True} and svc["Address"] == "10.99.0.1", svc
    assert svc["Meta"]["portlink-port"] == "80/tcp"
    return svc["Port"]


class Capture:
    """tcpdump on every port of the lab switch (inside its namespace)."""

    def __init__(self, L: Lab, path: Path):
        self.path = path
        # -Z root: the file is written as root (tcpdump would drop to its own user).
        self.proc = subprocess.Popen(["ip", "netns", "exec", L.made.switch_ns, "tcpdump", "-Z", "root", "-i", "any",
                                      "-U", "-s", "0", "-w", str(path), "tcp"],
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        lines = []
        for _ in range(5):      # "listening on any ...": capturing from now on
            lines.append(self.proc.stderr.readline().decode())
            if "listening" in lines[-1] or not lines[-1]:
                break
        if "listening" not in lines[-1]:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"tcpdump did not start: {lines}")

    def stop(self, until: bytes = b"", wait: float = 15) -> bytes:
        """Stop once the file holds `until` (or after `wait` s): -U writes each
        packet as it is read, but a loaded machine may read the last ones late,
        and what is still in the kernel's buffer at SIGTERM is lost."""
        wait_for(lambda: self.path.exists() and until in self.path.read_bytes(), wait, interval=0.1)
        time.sleep(0.5)
        self.proc.terminate()
        self.proc.wait(10)
        return self.path.read_bytes()

    def text(self) -> str:
        return subprocess.run(["tcpdump", "-nn", "-r", str(self.path)], capture_output=True, text=True,
                              timeout=30).stdout


def test_expose_only_is_reached_over_mutual_tls_and_the_marker_never_crosses_in_clear(lab, tmp_path):
    L = lab
    port = server_port(L)
    # The server side: published on host1's advertise address, serving frontdb's port 80.
    srv = L.get("host1", "/containers/srv-frontdb")
    assert srv["status"] == "running" and srv["config"]["ambassador"]["backends"] == \
        {"80": f"{L.get('host1', '/containers/frontdb')['network']['ip']}:80"}
    # The plaintext control: a -p port fetched directly, so the capture can show a marker.
    L.cli("host1", "run", "-d", "--name", "plain", "-p", "5433:80", "busybox", "sh", "-c", SERVE, PLAIN)
    assert wait_for(lambda: PLAIN in L.cli("host2", "run", "--rm", "busybox", "sh", "-c",
                                           "timeout 5 wget -qO- http://10.99.0.1:5433/; exit $?", check=False), 15)
    cap = Capture(L, tmp_path / "switch.pcap")
    try:
        # A new link's very first connection works (run --rm --link, the job pattern).
        got = L.run_linked("host2", "--rm", "--link", "frontdb:sql", "busybox", "sh", "-c", FETCH)
        plain = L.cli("host2", "run", "--rm", "busybox", "sh", "-c",
                      "timeout 5 wget -qO- http://10.99.0.1:5433/; exit $?", check=False)
    finally:
        raw = cap.stop(until=PLAIN.encode())   # the last packets captured: the control's
    assert got == SECRET and plain == PLAIN, (got, plain)
    text = cap.text()
    assert f"10.99.0.1.{port}:" in text, "the secure link's traffic did not cross the switch"
    assert PLAIN.encode() in raw, "the capture does not see payloads: it proves nothing"
    assert SECRET.encode() not in raw
    L.cli("host1", "rm", "-f", "plain")


def test_plain_tcp_and_a_self_made_certificate_get_nothing(lab):
    L = lab
    port = server_port(L)
    probe = f'''
import socket, ssl, datetime, tempfile, os
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
out = []
s = socket.create_connection(("10.99.0.1", {port}), timeout=5)
s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
try:
    out.append(s.recv(65536).decode("latin1"))
except OSError as e:
    out.append("")
s.close()
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mallory")])
now = datetime.datetime.now(datetime.timezone.utc)
san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://x.consul/ns/default/dc/dc1/svc/web")])
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(7).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1)).add_extension(san, False).sign(key, hashes.SHA256()))
d = tempfile.mkdtemp()
open(os.path.join(d, "c.pem"), "wb").write(cert.public_bytes(serialization.Encoding.PEM))
open(os.path.join(d, "k.pem"), "wb").write(key.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
ctx.load_cert_chain(os.path.join(d, "c.pem"), os.path.join(d, "k.pem"))
try:
    with socket.create_connection(("10.99.0.1", {port}), timeout=5) as raw:
        with ctx.wrap_socket(raw) as t:
            t.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
            out.append(t.recv(65536).decode("latin1"))
except (OSError, ssl.SSLError) as e:
    out.append("refused: " + type(e).__name__)
print(repr(out))
'''
    out = eval(L.python_on("host3", probe))
    assert out[0] == "", out               # plain TCP: closed without a byte
    assert SECRET not in out[1] and (out[1] == "" or out[1].startswith("refused")), out


def test_the_link_makes_its_intention_and_a_deny_is_obeyed_and_left_alone(lab):
    L = lab
    host2 = L.get("host2", "/system/consul")["host_id"]
    source = "web"          # the linker's own service (per-linker identity), not the ambassador's
    exact = f"/v1/connect/intentions/exact?source={source}&destination=frontdb"
    L.run_linked("host2", "-d", "--name", "web", "--link", "frontdb:sql", "busybox", "sleep", "600")
    amb = L.get("host2", "/containers/amb-frontdb-bridge")
    assert amb["config"]["ambassador"]["identity"] == f"amb-frontdb-bridge-{host2}"
    code, it = L.consul("GET", exact)
    assert code == 200 and it["Action"] == "allow" and f"[portlink-host {host2}]" in it["Description"], it
    fetch = lambda: L.cli("host2", "exec", "web", "sh", "-c", FETCH, check=False)
    assert fetch() == SECRET
    # inspect and link ls show it: the link, where it resolves, the intention and who made it.
    [link] = L.get("host2", "/containers/web")["links"]
    assert link["alias"] == "sql" and link["status"] == "running" and link["note"]    # Docker-side keys kept
    assert (link["target"], link["resolves"], link["via"]) == ("frontdb", "ambassador", "amb-frontdb-bridge")
    assert {k: link["intention"][k] for k in ("source", "destination", "action", "by")} == \
        {"source": source, "destination": "frontdb", "action": "allow", "by": "this host"}
    table = L.cli("host2", "link", "ls").splitlines()
    assert table[1].split() == ["web", "sql", "frontdb", "ambassador", "amb-frontdb-bridge",
                                source, "->", "frontdb", "allow", "by", "this", "host"], table
    # The last linker goes: its ambassador goes, and the intention with the linker.
    L.cli("host2", "rm", "-f", "web")
    assert L.consul("GET", exact)[0] == 404
    # Again, and then a person denies it: new connections fail; removal leaves the deny.
    L.cli("host2", "run", "-d", "--name", "web", "--link", "frontdb:sql", "busybox", "sleep", "600")
    assert fetch() == SECRET
    code, _ = L.consul("PUT", exact, {"Action": "deny", "Description": "by hand"})
    assert code == 200
    assert wait_for(lambda: SECRET not in fetch(), 15)
    [row] = L.get("host2", "/links")
    assert (row["container"], row["intention"]["action"], row["intention"]["by"]) == ("web", "deny", "person")
    L.cli("host2", "rm", "-f", "web")
    code, it = L.consul("GET", exact)
    assert code == 200 and it["Action"] == "deny", it
    L.consul("DELETE", exact)


def test_the_server_side_goes_with_the_served_container(lab):
    L = lab
    L.cli("host1", "run", "-d", "--name", "shortlived", "--expose", "7000", "busybox", "sleep", "600")
    assert wait_for(lambda: len(L.connect_instances("shortlived")) == 1, 20)
    assert L.get("host1", "/containers/srv-shortlived")["status"] == "running"
    L.cli("host1", "stop", "-t", "1", "shortlived")
    names = [c["name"] for c in L.get("host1", "/containers", all="1")]
    assert "srv-shortlived" not in names and "shortlived" in names
    assert wait_for(lambda: L.connect_instances("shortlived") == [], 20)
    L.cli("host1", "start", "shortlived")
    assert L.get("host1", "/containers/srv-shortlived")["status"] == "running"
    L.cli("host1", "rm", "-f", "shortlived")
    assert "srv-shortlived" not in [c["name"] for c in L.get("host1", "/containers", all="1")]


def test_dns_gives_connect_native_instances_only_under_connect(lab):
    """A plain client asking `<svc>.service` never gets a server side's TLS port;
    `<svc>.connect` gives exactly those."""
    from helpers import dig

    class On:   # what helpers.dig needs of a host
        def __init__(self, client):
            self.client = client
    L = lab
    L.cli("host1", "run", "-d", "--name", "mixed", "-p", "5434:80", "busybox", "sh", "-c", SERVE, "mixed")
    try:
        assert wait_for(lambda: len(L.connect_instances("mixed")) == 1, 20)
        [native] = [i["Service"]["Port"] for i in L.connect_instances("mixed")]
        L.cli("host2", "run", "-d", "--name", "asker", "busybox", "sleep", "600")
        h2 = On(L.client("host2"))
        assert wait_for(lambda: dig(h2, "asker", "_mixed._tcp.service.consul", "SRV") ==
                        ["1 1 5434 0a630001.addr.consul."], 15)
        assert dig(h2, "asker", "mixed.service.consul") == ["10.99.0.1"]
        assert dig(h2, "asker", "mixed.connect.consul", "SRV") == [f"1 1 {native} 0a630001.addr.consul."]
        # frontdb has only its server side: no plain answer at all, the TLS one under .connect
        port = server_port(L)
        assert dig(h2, "asker", "frontdb.service.consul", status=True) == "NXDOMAIN"
        assert dig(h2, "asker", "frontdb.connect", "SRV") == [f"1 1 {port} 0a630001.addr.consul."]
        assert dig(h2, "asker", "frontdb.connect.consul") == ["10.99.0.1"]
    finally:
        L.cli("host2", "rm", "-f", "asker", check=False)
        L.cli("host1", "rm", "-f", "mixed", check=False)
