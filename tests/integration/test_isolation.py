"""Isolation of the host from its containers (both firewall drivers): a
container reaches the host only through published ports and the resolver at
its gateway; the resolver answers no one else; the API socket is root-only and
not in any container; and, in a 3-host lab, no container reaches Consul on another
host, an ambassador reaches Consul on its own host, and its metrics port stays
unreachable from the other hosts."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from helpers import dig, in_container_ns, wait_for
from portlink.lab import lab as labmod

pytestmark = pytest.mark.root

# A TCP server for the host's namespace: greets each connection, bounded in
# connections and time so it always ends by itself.
TCP_SERVER = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16); s.settimeout(1)
end = time.monotonic() + 120
for _ in range(200):
    if time.monotonic() > end:
        break
    try:
        c, _ = s.accept()
    except socket.timeout:
        continue
    c.sendall(b"host-service\n"); c.close()
"""
# Prints what one TCP connect got: the greeting ("host-service"), "connected"
# (no greeting), "closed", or the failure: "timeout", "refused", ...
CONNECT = r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
except socket.timeout:
    sys.exit(print("timeout"))
except ConnectionRefusedError:
    sys.exit(print("refused"))
except OSError as e:
    sys.exit(print(type(e).__name__))
s.settimeout(2)
try:
    print(s.recv(100).decode().strip() or "closed")
except OSError:
    print("connected")
"""
# A UDP receiver bound to 127.0.0.1 only: prints what reaches it within 6 s.
UDP_LOCAL = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 7071)); s.settimeout(6)
print("listening", flush=True)
try:
    while True:
        print(s.recv(100).decode(), flush=True)
except socket.timeout:
    pass
"""


def tcp_server(ns, bind: str, port: int) -> subprocess.Popen:
    p = ns.popen(sys.executable, "-c", TCP_SERVER, bind, str(port))
    if not wait_for(lambda: f":{port} " in ns.run("ss", "-ltnH").stdout, 10):
        p.kill()
        raise RuntimeError(f"test server on {bind}:{port} did not start")
    return p


def stop(p: subprocess.Popen) -> None:
    p.kill()   # our own child, by its pid
    p.wait(10)


def from_host(host, ip: str, port: int, timeout: float = 3) -> str:
    return host.ns.run(sys.executable, "-c", CONNECT, ip, str(port), str(timeout)).stdout.strip()


def from_container(host, name: str, ip: str, port: int, timeout: float = 3) -> str:
    """A TCP connect leaving from the container's own address (its namespace)."""
    return in_container_ns(host, name, sys.executable, "-c", CONNECT, ip, str(port), str(timeout)).stdout.strip()


def net_of(host, name: str) -> dict:
    return host.client.get(f"/containers/{name}")["network"]


def run_d(host, *args) -> None:
    host.cli("run", "-d", *args, check=True)


def httpd(host, name: str, text: str, *args) -> None:
    run_d(host, "--name", name, *args, "busybox", "sh", "-c",
          f"echo {text} > /tmp/index.html; exec httpd -f -p 80 -h /tmp")


def fetch(host, name: str, url: str) -> str:
    r = host.cli("exec", name, "sh", "-c", f"timeout 5 wget -qO- {url}; exit $?")
    return r.stdout.strip() if r.returncode == 0 else f"failed ({r.returncode}): {r.stderr.strip()}"


def test_host_services_are_not_reachable_from_containers(host, outside):
    # NET_RAW: busybox's ping needs a raw socket (dropped by default)
    run_d(host, "--name", "c", "--cap-add", "NET_RAW", "busybox", "sleep", "600")
    gw = net_of(host, "c")["gateway"]
    srv = tcp_server(host.ns, "0.0.0.0", 7070)
    try:
        for addr in (gw, outside.HOST_IP):   # the gateway and another address of the host
            assert from_host(host, addr, 7070) == "host-service", addr
            assert from_container(host, "c", addr, 7070, timeout=2) == "timeout", addr
        # The same service from the outside world is the host's business, not ours.
        assert outside.ns.run(sys.executable, "-c", CONNECT, outside.HOST_IP, "7070", "3").stdout.strip() \
            == "host-service"
        # Nothing the container sends comes back as a refusal either: dropped, as Docker's.
        assert from_container(host, "c", gw, 7999, timeout=2) == "timeout"
    finally:
        stop(srv)
    # Ping: of its own gateway yes (documented), of the host's other addresses no.
    assert host.cli("exec", "c", "ping", "-c", "1", "-W", "3", gw).returncode == 0
    assert host.cli("exec", "c", "ping", "-c", "1", "-W", "2", outside.HOST_IP).returncode != 0


def test_host_loopback_is_not_reachable_through_route_localnet(host):
    # The bridge has route_localnet (so 127.0.0.1 reaches published ports); a
    # container that routes 127.0.0.1 to its gateway must still not reach a
    # service bound to the host's loopback (the kube-proxy CVE-2020-8558 hole).
    run_d(host, "--name", "c", "busybox", "sleep", "600")
    n = net_of(host, "c")
    for argv in (["sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1"],
                 ["ip", "route", "del", "table", "local", "local", "127.0.0.0/8", "dev", "lo"],
                 ["ip", "route", "del", "table", "local", "local", "127.0.0.1", "dev", "lo"],
                 ["ip", "route", "add", "127.0.0.1/32", "via", n["gateway"], "dev", "eth0"]):
        r = subprocess.run(["nsenter", f"--net={n['netns']}", *argv], capture_output=True, text=True)
        assert r.returncode == 0, (argv, r.stderr)
    rcv = host.ns.popen(sys.executable, "-u", "-c", UDP_LOCAL, stdout=subprocess.PIPE, text=True)
    try:
        assert rcv.stdout.readline().strip() == "listening"
        send = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                "for _ in range(3): s.sendto(b'from-container', ('127.0.0.1', 7071))")
        r = in_container_ns(host, "c", sys.executable, "-c", send)
        assert r.returncode == 0, r.stderr
        # the host's own loopback still works, and nothing else arrived
        host.ns.run(sys.executable, "-c", send.replace("from-container", "from-host"))
        got = rcv.communicate(timeout=20)[0].split()
    finally:
        if rcv.poll() is None:
            stop(rcv)
    assert got == ["from-host"] * 3, got


def test_dns_and_published_ports_still_work(host, outside):
    httpd(host, "web", "web-page", "-p", "8080:80")
    httpd(host, "c", "own-page", "-p", "8081:80")
    n = net_of(host, "c")
    web_ip = net_of(host, "web")["ip"]
    assert dig(host, "c", "web") == [web_ip]                      # UDP at the gateway
    assert dig(host, "c", "web", "A", "+tcp") == [web_ip]         # TCP at the gateway
    assert host.cli("exec", "c", "nslookup", "web").returncode == 0   # the container's own resolver
    for addr in (outside.HOST_IP, n["gateway"]):
        assert fetch(host, "c", f"http://{addr}:8080/") == "web-page", addr    # another container's port
        assert fetch(host, "c", f"http://{addr}:8081/") == "own-page", addr    # its own, hairpin
    # and the outside still reaches both
    r = outside.ns.run("timeout", "5", "busybox", "wget", "-qO-", f"http://{outside.HOST_IP}:8081/", check=False)
    assert r.stdout.strip() == "own-page", r.stderr


def test_resolver_answers_only_its_containers(host, outside):
    run_d(host, "--name", "c", "busybox", "sleep", "600")
    n = host.client.get("/networks/bridge")
    gw = n["gateway"]

    def query(ns_argv: list[str]) -> str:
        r = subprocess.run([*ns_argv, "dig", f"@{gw}", "c", "A", "+time=3", "+tries=1"],
                           capture_output=True, text=True, timeout=30)
        return r.stdout

    assert "status: NOERROR" in in_container_ns(host, "c", "dig", f"@{gw}", "c", "+time=3", "+tries=1").stdout
    # The host itself (source: the gateway address) is not a container: REFUSED.
    assert "status: REFUSED" in query(host.ns.argv())
    # Another machine that routes to the gateway address through the host: REFUSED.
    outside.ns.run("ip", "route", "add", n["subnet"], "via", outside.HOST_IP)
    assert "status: REFUSED" in query(outside.ns.argv())
    # A container of another network gets nothing at all from this network's gateway
    # (dropped on input) and its answers at its own.
    host.cli("network", "create", "--subnet", "10.97.0.0/24", "red", check=True)
    run_d(host, "--name", "r", "--net", "red", "busybox", "sleep", "600")
    out = in_container_ns(host, "r", "dig", f"@{gw}", "c", "+time=2", "+tries=1").stdout
    assert "status:" not in out and "timed out" in out, out
    assert dig(host, "r", "r") == [net_of(host, "r")["ip"]]


def test_resolver_on_another_dns_port_is_the_one_let_in():
    from portlink.lab.sandbox import SimHost
    h = SimHost.start("host", extra_args=["--dns-port", "5354"])
    try:
        run_d(h, "--name", "c", "busybox", "sleep", "600")
        n = net_of(h, "c")
        r = in_container_ns(h, "c", "dig", "-p", "5354", f"@{n['gateway']}", "c", "+short", "+time=3", "+tries=1")
        assert r.stdout.split() == [n["ip"]], r.stdout
        rules = h.client.get("/system/firewall")["rules"]
        assert f"ip daddr {n['gateway']} udp dport 5354 accept" in rules, rules
        assert "dport 53 " not in rules
    finally:
        errors = h.destroy()
    assert not errors, errors


def connect_unix_as(uid: int, path: str) -> str:
    """Connect to a UNIX socket as `uid` in a forked child (this Python may not
    be readable by that uid, so no exec)."""
    errors = {0: "connected", 1: "PermissionError", 2: "other error"}
    pid = os.fork()
    if pid == 0:   # the child: only system calls, then _exit
        code = 2
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            import socket
            socket.socket(socket.AF_UNIX).connect(path)
            code = 0
        except PermissionError:
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return errors.get(os.waitstatus_to_exitcode(status), f"status {status}")


def test_api_socket_is_root_only_and_not_in_containers(host):
    sock = host.socket
    st = os.stat(sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    # Let anyone traverse the test's own directory so that only the socket's mode is in the way.
    os.chmod(host.workdir, 0o711)
    assert connect_unix_as(65534, sock) == "PermissionError"    # nobody
    assert connect_unix_as(0, sock) == "connected"

    run_d(host, "--name", "c", "busybox", "sleep", "600")
    for path in (sock, str(host.workdir), "/run/portlink"):
        r = host.cli("exec", "c", "ls", "-d", path)
        assert r.returncode != 0 and path not in r.stdout, (path, r.stdout)
    assert "portlink.sock" not in host.cli("exec", "c", "cat", "/proc/self/mountinfo", check=True).stdout
    r = host.cli("exec", "c", "find", "/", "-path", "/proc", "-prune", "-o", "-path", "/sys", "-prune",
                 "-o", "-type", "s", "-print")
    assert r.stdout.split() == [], r.stdout
    # From the host, the container's root does not hold it either.
    pid = host.client.get("/containers/c")["pid"]
    assert not os.path.exists(f"/proc/{pid}/root{sock}")


def test_icc_off_still_isolates(host):
    host.cli("network", "create", "--icc", "off", "--subnet", "10.98.0.0/24", "quiet", check=True)
    httpd(host, "alpha", "alpha-page", "--net", "quiet", "-p", "8090:80")
    run_d(host, "--name", "beta", "--net", "quiet", "busybox", "sleep", "600")
    a = net_of(host, "alpha")
    assert from_container(host, "beta", a["ip"], 80, timeout=2) == "timeout"        # container to container: no
    assert dig(host, "beta", "alpha") == [a["ip"]]                                  # names still resolve
    assert fetch(host, "beta", f"http://{a['gateway']}:8090/") == "alpha-page"      # a published port: yes


# --- the lab: an ambassador, Consul on the host's underlay address, another host --------

@pytest.fixture
def lab(tmp_path, monkeypatch):
    monkeypatch.setattr(labmod, "LAB_ROOT", tmp_path / "labs")
    made = labmod.up(3, f"i{os.getpid() % 10000}", progress=lambda *_: None)
    try:
        yield made
    finally:
        errors = labmod.down(made.name, progress=lambda *_: None)
    assert not errors, errors


def _lab_cli(made, host: str, *args: str) -> subprocess.CompletedProcess:
    cmd, env = labmod.exec_argv(made.name, host, ["portlink", *args])
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def _ns_run(h, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net={h.netns_path}", *argv], capture_output=True, text=True,
                          timeout=timeout)


def test_ambassador_reaches_consul_and_its_metrics_stay_on_its_host(lab):
    from portlink.runtime.client import Client
    _, h2, h3 = lab.hosts
    c2 = Client(h2.socket)
    r = _lab_cli(lab, "host1", "run", "-d", "--name", "frontdb", "-p", "5432:80", "busybox", "sh", "-c",
                 "echo db-on-host1 > /tmp/index.html; exec httpd -f -p 80 -h /tmp")
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: c2.get("/system/consul")["services_seen"] >= 2, 20)
    r = _lab_cli(lab, "host2", "run", "-d", "--name", "web", "--link", "frontdb:sql", "busybox", "sleep", "600")
    assert r.returncode == 0, r.stderr
    amb = c2.get("/containers/amb-frontdb-bridge")
    amb_ip = amb["network"]["ip"]

    # The ambassador is trusted to reach the agent at host2's own address, and it does:
    # the cross-host link works, which needs the instances it read from Consul.
    rules = c2.get("/system/firewall")["rules"]
    assert f"{amb_ip} . {h2.ip} . 8500" in rules, rules
    fetch = lambda: _lab_cli(lab, "host2", "exec", "web", "sh", "-c", "timeout 5 wget -qO- http://sql/").stdout.strip()
    assert wait_for(lambda: fetch() == "db-on-host1", 20)
    # No container reaches Consul on another host (HTTP, server RPC, Serf), while
    # other ports of those hosts stay reachable (host1's published port).
    h1 = lab.hosts[0]
    web_ns = ["nsenter", f"--net={c2.get('/containers/web')['network']['netns']}"]
    reach = lambda ip, port: subprocess.run([*web_ns, sys.executable, "-c", CONNECT, ip, port, "2"],
                                            capture_output=True, text=True, timeout=30).stdout.strip()
    assert reach(h1.ip, "5432") == "connected"
    for ip, port in ((h1.ip, "8500"), (h1.ip, "8300"), (h1.ip, "8301"), (h3.ip, "8500")):
        assert reach(ip, port) == "timeout", (ip, port)
    # The ambassador binds host directories (Python, portlink), never the API socket's.
    for path in (h2.socket, "/run/portlink"):
        r = _lab_cli(lab, "host2", "exec", "amb-frontdb-bridge", "ls", "-d", path)
        assert r.returncode != 0, (path, r.stdout)
    # Only that port of the host: another service on the same address is out of its reach.
    srv = subprocess.Popen(["nsenter", f"--net={h2.netns_path}", sys.executable, "-c", TCP_SERVER, h2.ip, "7070"])
    try:
        assert wait_for(lambda: ":7070 " in _ns_run(h2, "ss", "-ltnH").stdout, 10)
        assert _ns_run(h2, sys.executable, "-c", CONNECT, h2.ip, "7070", "3").stdout.strip() == "host-service"
        amb_ns = ["nsenter", f"--net={amb['network']['netns']}"]
        got = subprocess.run([*amb_ns, sys.executable, "-c", CONNECT, h2.ip, "7070", "2"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        assert got == "timeout", got
        got = subprocess.run([*amb_ns, sys.executable, "-c", CONNECT, h2.ip, "8500", "3"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        assert got == "connected", got    # Consul's HTTP port says nothing until asked
    finally:
        stop(srv)

    # Metrics: on host2's bridge yes; from host3, even with a route to the
    # ambassador through host2's underlay address, no.
    ok = _ns_run(h2, "timeout", "5", "busybox", "wget", "-qO-", f"http://{amb_ip}:9102/metrics")
    assert "portlink_ambassador" in ok.stdout, ok.stderr
    r = _ns_run(h3, "ip", "route", "add", f"{amb_ip}/32", "via", h2.ip)
    assert r.returncode == 0, r.stderr
    assert _ns_run(h3, sys.executable, "-c", CONNECT, amb_ip, "9102", "3").stdout.strip() == "timeout"
    _ns_run(h3, "ip", "route", "del", f"{amb_ip}/32")

    # When the ambassador goes, so does its trust.
    for name in ("web", "amb-frontdb-bridge"):   # the ambassador may already have gone with web
        _lab_cli(lab, "host2", "rm", "-f", name)
    assert c2.get("/containers", all="1") == []
    assert f". {h2.ip} . 8500" not in c2.get("/system/firewall")["rules"]
