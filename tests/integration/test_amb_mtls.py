"""Both halves of the ambassador pattern over mutual TLS, for real: a Consul dev
agent (Connect on, its built-in CA) on a loopback address of its own, the
server-side ("I actually talk to frontdb") and client-side ("I pretend I'm
frontdb") ambassadors as processes, an echo backend. A marker crosses the
pair; plain TCP, no certificate, a self-made CA and a denied intention get
nothing and are counted; a CA rotation leaves an established stream working
and new connections use the new leaves; a root rotation during a stream of
requests (new and held connections) fails none, and both sides' leaves then
verify against the new root only. No root needed."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from portlink.lab.consul_agent import AgentSpec, start_agent, wait_ready

T = 5.0
_spec = importlib.util.spec_from_file_location("connect_certs", Path(__file__).parents[1] / "unit" / "connect_certs.py")
connect_certs = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("connect_certs", connect_certs)     # dataclasses look their module up
_spec.loader.exec_module(connect_certs)


def wait_for(cond, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


class Echo(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        self.accepted = 0

        class H(socketserver.BaseRequestHandler):
            def handle(h):
                self.accepted += 1
                while data := h.request.recv(65536):
                    h.request.sendall(data)
        super().__init__(("127.0.0.1", 0), H)


class Amb:
    def __init__(self, ip, args, log):
        self.metrics = free_port(ip)
        self.ip = ip
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-P", "-m", "portlink.ambassador", *args,
                                      "--metrics", f"{ip}:{self.metrics}"],
                                     stdout=open(log, "wb"), stderr=subprocess.STDOUT)

    def stats(self):
        try:
            with urllib.request.urlopen(f"http://{self.ip}:{self.metrics}/stats", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            assert self.proc.poll() is None, Path(self.log).read_text()[-2000:]
            return None

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class Lab:
    def __init__(self, tmp: Path):
        self.ip = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
        self.tmp = tmp
        self.agent = start_agent(AgentSpec("mtls", self.ip, tmp / "consul"))
        self.echo = Echo()
        threading.Thread(target=self.echo.serve_forever, daemon=True).start()
        self.sport, self.cport = free_port(self.ip), free_port(self.ip)
        self.ambs: list[Amb] = []

    def start(self):
        wait_ready(self.agent)
        consul = f"{self.ip}:8500"
        self.server = self.amb(["--listen", str(self.sport), "--bind", self.ip, "--tls-serve", "frontdb",
                                "--backend", f"{self.sport}=127.0.0.1:{self.echo.server_address[1]}",
                                "--consul", consul, "--tls-keys", str(self.tmp / "keys")], "server.log")
        self.client = self.amb(["--listen", str(self.cport), "--bind", self.ip, "--tls-dial", "web",
                                "--tls-target", "frontdb", "--backend", f"{self.cport}={self.ip}:{self.sport}",
                                "--consul", consul], "client.log")
        for a in (self.server, self.client):
            wait_for(a.stats, "the ambassador's /stats (it listens once it has certificates)")

    def amb(self, args, log):
        a = Amb(self.ip, args, self.tmp / log)
        self.ambs.append(a)
        return a

    def stop(self):
        for a in self.ambs:
            a.stop()
        self.agent.stop()
        self.echo.shutdown()
        self.echo.server_close()

    # -- consul ---------------------------------------------------------------------

    def leaf(self, service):
        code, _, body = self.agent.get(f"/v1/agent/connect/ca/leaf/{service}")
        assert code == 200, body
        return body

    def roots(self):
        code, _, body = self.agent.get("/v1/agent/connect/ca/roots")
        assert code == 200, body
        return body

    def intention(self, source, action):
        code, _, body = self.agent.put(f"/v1/connect/intentions/exact?source={source}&destination=frontdb",
                                       {"Action": action, "Description": "test"})
        assert code == 200, body

    def delete_intention(self, source):
        from portlink.lab.consul_agent import http_get
        code, _, body = http_get(f"{self.agent.http}/v1/connect/intentions/exact?source={source}"
                                 "&destination=frontdb", method="DELETE")
        assert code == 200, body

    # -- clients --------------------------------------------------------------------

    def tls_context(self, leaf=None, verify=True):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        if verify:
            ctx.load_verify_locations(cadata="".join(r["RootCert"] for r in self.roots()["Roots"]))
        else:
            ctx.verify_mode = ssl.CERT_NONE
        if leaf is not None:
            path = self.tmp / f"leaf-{random.random()}.pem"
            path.write_text(leaf["PrivateKeyPEM"] + leaf["CertPEM"])
            ctx.load_cert_chain(path)
            path.unlink()
        return ctx


def exchange(sock, data: bytes) -> bytes:
    """Send `data`, then read what comes back until `len(data)` bytes, EOF or a reset."""
    got = b""
    try:
        sock.sendall(data)
        while len(got) < len(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    except (ConnectionError, ssl.SSLError, socket.timeout):
        pass
    return got


def via_client_side(lab, data=b"marker-5b1e") -> bytes:
    with socket.create_connection((lab.ip, lab.cport), timeout=T) as s:
        return exchange(s, data)


def tls_to_server_side(lab, ctx) -> tuple[bytes, dict | None]:
    """What a TLS client with `ctx` gets from the server side: (echo, server cert)."""
    raw = socket.create_connection((lab.ip, lab.sport), timeout=T)
    try:
        s = ctx.wrap_socket(raw, server_hostname="frontdb")
    except (ConnectionError, ssl.SSLError, socket.timeout):
        raw.close()
        return b"", None
    with s:
        cert = s.getpeercert()
        return exchange(s, b"marker-5b1e"), cert


def counter(amb, name):
    return amb.stats()["metrics"][name]["total"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("mtls"))
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()


def test_marker_crosses_the_pair_and_each_side_shows_its_identity(lab):
    assert via_client_side(lab) == b"marker-5b1e"
    s, c = lab.server.stats(), lab.client.stats()
    td = lab.roots()["TrustDomain"]
    assert s["tls"]["services"]["frontdb"]["uri"] == f"spiffe://{td}/ns/default/dc/dc1/svc/frontdb"
    assert c["tls"]["services"]["web"]["uri"].endswith("/svc/web")
    assert s["listeners"][str(lab.sport)]["tls_serves"] == "frontdb"
    assert c["listeners"][str(lab.cport)]["tls_dials"] == {"as": "web", "expect": "frontdb"}
    assert s["metrics"]["connections_total"]["total"] >= 1


def test_client_side_resumes_its_tls_session_and_the_server_still_authorizes(lab):
    assert via_client_side(lab, b"first") == b"first"          # a session to resume
    before = dict(lab.client.stats()["tls"]["dial_handshakes"])
    denied = counter(lab.server, "tls_denied_total")
    for i in range(5):
        assert via_client_side(lab, b"resumed-%d" % i) == b"resumed-%d" % i
    after = lab.client.stats()["tls"]["dial_handshakes"]
    assert after["resumed"] == before["resumed"] + 5 and after["full"] == before["full"]
    # a resumed session still carries web's identity to the authorization
    lab.intention("web", "deny")
    try:
        wait_for(lambda: via_client_side(lab) == b"", "web refused on a resumed session")
        assert counter(lab.server, "tls_denied_total") > denied
        assert lab.client.stats()["tls"]["dial_handshakes"]["resumed"] > after["resumed"]
    finally:
        lab.delete_intention("web")
    wait_for(lambda: via_client_side(lab) == b"marker-5b1e", "web allowed again")


def test_plain_tcp_client_gets_nothing(lab):
    before, accepted = counter(lab.server, "tls_handshake_failures_total"), lab.echo.accepted
    with socket.create_connection((lab.ip, lab.sport), timeout=T) as s:
        assert exchange(s, b"GET / HTTP/1.0\r\n\r\n") == b""
    wait_for(lambda: counter(lab.server, "tls_handshake_failures_total") == before + 1, "the count")
    assert lab.echo.accepted == accepted


def test_tls_client_without_certificate_gets_nothing(lab):
    before, accepted = counter(lab.server, "tls_handshake_failures_total"), lab.echo.accepted
    got, _ = tls_to_server_side(lab, lab.tls_context())
    assert got == b""
    wait_for(lambda: counter(lab.server, "tls_handshake_failures_total") == before + 1, "the count")
    assert lab.echo.accepted == accepted


def test_certificate_from_a_self_made_ca_gets_nothing(lab, tmp_path):
    td = lab.roots()["TrustDomain"]
    ca = connect_certs.CA.make(tmp_path, "self-made", trust_domain=td)
    fake = ca.leaf("web")                               # the right name, the wrong CA
    before, accepted = counter(lab.server, "tls_handshake_failures_total"), lab.echo.accepted
    got, _ = tls_to_server_side(lab, lab.tls_context({"PrivateKeyPEM": fake.key_pem, "CertPEM": fake.cert_pem},
                                                     verify=False))
    assert got == b""
    wait_for(lambda: counter(lab.server, "tls_handshake_failures_total") == before + 1, "the count")
    assert lab.echo.accepted == accepted


def test_valid_leaf_with_a_denied_intention_gets_nothing(lab):
    lab.intention("intruder", "deny")                   # the dev agent allows by default
    before, accepted = counter(lab.server, "tls_denied_total"), lab.echo.accepted
    got, cert = tls_to_server_side(lab, lab.tls_context(lab.leaf("intruder")))
    assert got == b""
    wait_for(lambda: counter(lab.server, "tls_denied_total") == before + 1, "the count")
    assert lab.echo.accepted == accepted
    # and a leaf of a service with no deny (default allow) goes through the same port
    got, cert = tls_to_server_side(lab, lab.tls_context(lab.leaf("reporting")))
    assert got == b"marker-5b1e"


def test_a_new_deny_of_web_is_obeyed_and_its_removal_too(lab):
    lab.intention("web", "deny")
    try:
        wait_for(lambda: via_client_side(lab) == b"", "web refused (the authorize cache is 1 s)")
        assert counter(lab.server, "tls_denied_total") >= 1
    finally:
        lab.delete_intention("web")
    wait_for(lambda: via_client_side(lab) == b"marker-5b1e", "web allowed again")


def test_ca_rotation_keeps_an_established_stream_and_new_connections_use_new_leaves(lab):
    old_server = lab.server.stats()["tls"]["services"]["frontdb"]["serial"]
    old_client = lab.client.stats()["tls"]["services"]["web"]["serial"]
    old_root = lab.roots()["ActiveRootID"]
    stream = socket.create_connection((lab.ip, lab.cport), timeout=T)
    try:
        assert exchange(stream, b"before-rotation") == b"before-rotation"
        code, _, cfg = lab.agent.get("/v1/connect/ca/configuration")
        bits = 384 if cfg["Config"].get("PrivateKeyBits", 256) != 384 else 256
        code, _, body = lab.agent.put("/v1/connect/ca/configuration",
                                      {"Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": bits}})
        assert code == 200, body
        wait_for(lambda: lab.roots()["ActiveRootID"] != old_root, "a new active root")
        wait_for(lambda: lab.server.stats()["tls"]["services"]["frontdb"]["serial"] != old_server,
                 "the server side's new leaf")
        wait_for(lambda: lab.client.stats()["tls"]["services"]["web"]["serial"] != old_client,
                 "the client side's new leaf")
        assert exchange(stream, b"after-rotation") == b"after-rotation"          # untouched
    finally:
        stream.close()
    new_leaf = lab.leaf("frontdb")
    assert lab.server.stats()["tls"]["services"]["frontdb"]["serial"] == new_leaf["SerialNumber"].lower()
    assert lab.server.stats()["tls"]["rotations"] >= 1
    # a new connection: the server presents the new leaf; the pair still forwards
    got, cert = tls_to_server_side(lab, lab.tls_context(lab.leaf("web")))
    assert got == b"marker-5b1e"
    assert int(cert["serialNumber"], 16) == int(new_leaf["SerialNumber"].replace(":", ""), 16)
    assert via_client_side(lab, b"new-connection") == b"new-connection"


class Traffic:
    """Requests through the pair while something happens: a new connection per
    request (connect, echo, close) and one held connection echoing in turn, in a
    thread, until stopped or `limit` requests (bounded). Every failure is kept."""

    def __init__(self, lab, limit=20000, seconds=120.0):
        self.lab, self.limit, self.seconds = lab, limit, seconds
        self.ok = {"new": 0, "held": 0}
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        deadline = time.monotonic() + self.seconds
        held = socket.create_connection((self.lab.ip, self.lab.cport), timeout=T)
        try:
            i = 0
            while not self.stop.is_set() and i < self.limit and time.monotonic() < deadline:
                i += 1
                data = f"req-{i}".encode()
                try:
                    got = via_client_side(self.lab, data)
                except OSError as e:
                    got = repr(e).encode()
                if got == data:
                    self.ok["new"] += 1
                else:
                    self.failures.append(f"new connection {i}: {got!r}")
                if exchange(held, data) == data:
                    self.ok["held"] += 1
                else:
                    self.failures.append(f"held connection, request {i}")
                time.sleep(0.005)
        finally:
            held.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(T * 4)


def leaf_verifies(pem: str, root_pem: str, tmp: Path) -> bool:
    """`openssl verify`: is this certificate signed by exactly that root?"""
    (tmp / "root.pem").write_text(root_pem)
    (tmp / "leaf.pem").write_text(pem)
    r = subprocess.run(["openssl", "verify", "-partial_chain", "-CAfile", str(tmp / "root.pem"), str(tmp / "leaf.pem")],
                       capture_output=True, text=True, timeout=30)
    return r.returncode == 0


def test_ca_root_rotation_during_traffic_loses_no_request_and_new_connections_use_the_new_root(lab, tmp_path):
    roots = lab.roots()
    old_root_id = roots["ActiveRootID"]
    old_root = next(r["RootCert"] for r in roots["Roots"] if r["ID"] == old_root_id)
    old_server = lab.server.stats()["tls"]["services"]["frontdb"]["serial"]
    old_client = lab.client.stats()["tls"]["services"]["web"]["serial"]
    with Traffic(lab) as traffic:
        wait_for(lambda: traffic.ok["new"] >= 20 or traffic.failures, "traffic before the rotation")
        code, _, cfg = lab.agent.get("/v1/connect/ca/configuration")
        bits = 384 if cfg["Config"].get("PrivateKeyBits", 256) != 384 else 256    # a new root key
        code, _, body = lab.agent.put("/v1/connect/ca/configuration",
                                      {"Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": bits}})
        assert code == 200, body
        wait_for(lambda: lab.roots()["ActiveRootID"] != old_root_id, "a new active root")
        wait_for(lambda: lab.server.stats()["tls"]["services"]["frontdb"]["serial"] != old_server,
                 "the server side's new leaf")
        wait_for(lambda: lab.client.stats()["tls"]["services"]["web"]["serial"] != old_client,
                 "the client side's new leaf")
        after = dict(traffic.ok)
        wait_for(lambda: traffic.ok["new"] >= after["new"] + 50 or traffic.failures, "traffic after the rotation")
    assert traffic.failures == []
    assert traffic.ok["new"] >= 70 and traffic.ok["held"] == traffic.ok["new"]
    roots = lab.roots()
    new_root = next(r["RootCert"] for r in roots["Roots"] if r["ID"] == roots["ActiveRootID"])
    # both sides now hold the agent's current leaves, signed by the new root and not the old one
    for amb, service in ((lab.server, "frontdb"), (lab.client, "web")):
        leaf = lab.leaf(service)
        assert amb.stats()["tls"]["services"][service]["serial"] == leaf["SerialNumber"].lower()
        assert leaf_verifies(leaf["CertPEM"], new_root, tmp_path)
        assert not leaf_verifies(leaf["CertPEM"], old_root, tmp_path)
    # a new connection: the server side presents a leaf that verifies against the new root alone
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=new_root)
    path = tmp_path / "web.pem"
    web = lab.leaf("web")
    path.write_text(web["PrivateKeyPEM"] + web["CertPEM"])
    ctx.load_cert_chain(path)
    path.unlink()
    got, cert = tls_to_server_side(lab, ctx)
    assert got == b"marker-5b1e" and cert is not None


def test_key_files_never_stay_on_disk(lab):
    keys = lab.tmp / "keys"                # the server side's --tls-keys, after loading and a rotation
    assert keys.is_dir() and os.stat(keys).st_mode & 0o777 == 0o700
    assert os.listdir(keys) == []
