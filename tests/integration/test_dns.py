"""portlink's resolver on a simulated host, asked by real clients: dig and
dnspython from inside a container's namespace, busybox nslookup from inside
the container; upstreams are dnsmasq servers the test starts in its own
'outside' namespace (never a real resolver)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from helpers import Outside, dig, in_container_ns, wait_for
from portlink.lab.sandbox import SimHost

pytestmark = pytest.mark.root

SILENT = "198.51.100.9"    # on the outside's subnet, nobody home: a timeout
UPSTREAM = Outside.IP      # dnsmasq: up.test -> 192.0.2.10
OTHER = "198.51.100.3"     # a second dnsmasq: up.test -> 192.0.2.20


def _dnsmasq(out: Outside, listen: str, answer: str) -> subprocess.Popen:
    return out.ns.popen("dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                        "--no-hosts", "--bind-interfaces", f"--listen-address={listen}", "--port=53",
                        "--local-ttl=60", f"--address=/up.test/{answer}", "--address=/gone.test/",
                        "--pid-file=", "--user=root",
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def world():
    """A host whose daemon forwards to a silent upstream first, then dnsmasq."""
    h = SimHost.start("dns", extra_args=["--dns", SILENT, "--dns", UPSTREAM, "--dns-timeout", "0.5"])
    out = Outside(h)
    procs = []
    try:
        iface = out.ns.run("ip", "-o", "-4", "addr", "show").stdout.split("\n")
        dev = next(l.split()[1] for l in iface if UPSTREAM in l)
        out.ns.run("ip", "addr", "add", f"{OTHER}/24", "dev", dev)
        procs += [_dnsmasq(out, UPSTREAM, "192.0.2.10"), _dnsmasq(out, OTHER, "192.0.2.20")]
        for addr in (UPSTREAM, OTHER):
            assert wait_for(lambda: f"{addr}:53" in out.ns.run("ss", "-lun").stdout), "dnsmasq did not start"
        yield h, out, procs
    finally:
        for p in procs:      # our own children, by pid
            if p.poll() is None:
                p.kill()
                p.wait(5)
        out.delete()
        errors = h.destroy()
        assert not errors, errors


def _ip(h, name: str) -> str:
    return h.client.get(f"/containers/{name}")["network"]["ip"]


def test_each_container_sees_its_networks_names_only(nft_host):
    h = nft_host
    h.cli("network", "create", "--subnet", "10.92.0.0/24", "front", check=True)
    h.cli("network", "create", "--subnet", "10.93.0.0/24", "back", check=True)
    run = lambda *a: h.cli("run", "-d", *a, "busybox", "sleep", "600", check=True).stdout.strip()
    run("--name", "a1", "--net", "front")
    a2 = run("--name", "a2", "--net", "front", "--hostname", "a2-host", "--expose", "80")
    run("--name", "a3", "--net", "front", "--network-alias", "svc")
    run("--name", "a4", "--net", "front", "--network-alias", "svc")
    run("--name", "b1", "--net", "back")
    ip2 = _ip(h, "a2")

    for name in ("a2", "A2", "a2-host", a2[:12], "a2.front", "a2.front."):
        assert dig(h, "a1", name) == [ip2], name
    assert dig(h, "a1", "b1", status=True) == "NXDOMAIN"
    assert dig(h, "a1", "b1.back", status=True) == "NXDOMAIN"      # not even qualified
    assert dig(h, "b1", "a1", status=True) == "NXDOMAIN"
    assert dig(h, "a1", "nothing.front", status=True) == "NXDOMAIN"
    # a name that exists but has no IPv6: NODATA, not NXDOMAIN
    assert dig(h, "a1", "a2", "AAAA", status=True) == "NOERROR" and dig(h, "a1", "a2", "AAAA") == []
    assert dig(h, "a1", ".".join(reversed(ip2.split("."))) + ".in-addr.arpa", "PTR") == ["a2."]
    assert dig(h, "a1", "_80._tcp.a2", "SRV") == ["0 0 80 a2."]
    assert dig(h, "a1", "a2", "A", "+tcp") == [ip2]

    # one alias, two containers: both addresses, in rotating order
    both = {_ip(h, "a3"), _ip(h, "a4")}
    orders = [tuple(dig(h, "a1", "svc")) for _ in range(4)]
    assert all(set(o) == both for o in orders) and len(set(orders)) == 2

    # busybox's own resolver, inside the container
    r = h.cli("exec", "a1", "nslookup", "a2")
    assert ip2 in r.stdout, r.stdout + r.stderr
    # dnspython, from the container's namespace
    code = ("import dns.resolver as r; x = r.Resolver(configure=False); "
            f"x.nameservers = ['{h.client.get('/containers/a1')['dns']['server']}']; "
            "print(sorted(a.address for a in x.resolve('svc', 'A')))")
    p = in_container_ns(h, "a1", sys.executable, "-P", "-c", code)
    assert p.stdout.strip() == str(sorted(both)), p.stderr


def test_forwarding_fallback_per_container_upstreams_and_cache(world):
    h, out, procs = world
    h.cli("run", "-d", "--name", "c1", "busybox", "sleep", "600", check=True)
    h.cli("run", "-d", "--name", "c2", "--dns", OTHER, "busybox", "sleep", "600", check=True)
    # The first upstream never answers: after its timeout the second one does.
    assert dig(h, "c1", "up.test") == ["192.0.2.10"]
    assert dig(h, "c1", "gone.test", status=True) == "NXDOMAIN"
    r = h.cli("exec", "c1", "nslookup", "up.test")
    assert "192.0.2.10" in r.stdout, r.stdout + r.stderr
    # --dns on the container replaces the daemon's upstreams for it
    assert dig(h, "c2", "up.test") == ["192.0.2.20"]
    assert h.client.get("/containers/c2")["dns"]["upstreams"] == [OTHER]
    # resolv.conf points at portlink, not at the upstream
    gw = h.client.get("/containers/c1")["dns"]["server"]
    assert h.cli("exec", "c2", "cat", "/etc/resolv.conf").stdout.splitlines()[0] == f"nameserver {gw}"

    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait(5)
    # Cached for the upstream's TTL; anything else: SERVFAIL once no upstream answers.
    assert dig(h, "c1", "up.test") == ["192.0.2.10"]
    assert dig(h, "c1", "new.test", status=True) == "SERVFAIL"
    # local names never depended on the upstreams
    assert dig(h, "c1", "c2") == [_ip(h, "c2")]


def test_internal_network_resolves_names_but_forwards_nothing(world):
    h, _, _ = world
    h.cli("network", "create", "--internal", "--subnet", "10.94.0.0/24", "sealed", check=True)
    h.cli("run", "-d", "--name", "i1", "--net", "sealed", "busybox", "sleep", "600", check=True)
    h.cli("run", "-d", "--name", "i2", "--net", "sealed", "busybox", "sleep", "600", check=True)
    assert dig(h, "i1", "i2") == [_ip(h, "i2")]
    assert dig(h, "i1", "up.test", status=True) == "SERVFAIL"


def test_not_an_open_resolver(world):
    h, out, _ = world
    h.cli("run", "-d", "--name", "c1", "busybox", "sleep", "600", check=True)
    gw = h.client.get("/containers/c1")["dns"]["server"]
    # The host's outward address has no resolver at all.
    r = out.ns.run("dig", f"@{Outside.HOST_IP}", "c1", "+time=1", "+tries=1", check=False)
    assert "status:" not in r.stdout
    # Even a stranger with a route to the gateway gets REFUSED, for our names and others.
    out.ns.run("ip", "route", "add", "10.77.0.0/16", "via", Outside.HOST_IP)
    for name in ("c1", "up.test"):
        r = out.ns.run("dig", f"@{gw}", name, "+time=2", "+tries=1", check=False)
        assert "status: REFUSED" in r.stdout, r.stdout


def test_resolver_survives_daemon_crash_and_garbage(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "x1", "busybox", "sleep", "600", check=True)
    h.cli("run", "-d", "--name", "x2", "busybox", "sleep", "600", check=True)
    gw = h.client.get("/containers/x1")["dns"]["server"]
    # A bounded flood of junk from a container: the resolver keeps answering.
    junk = ("import os, socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for i in range(3000):\n"
            f"    s.sendto(os.urandom(1 + i % 700), ('{gw}', 53))\n")
    assert in_container_ns(h, "x1", sys.executable, "-c", junk).returncode == 0
    assert dig(h, "x1", "x2") == [_ip(h, "x2")]
    # The daemon is killed and started again (libnetwork #876: resolver lost after restart).
    h.stop_daemon(signal.SIGKILL)
    h.start_daemon()
    assert dig(h, "x1", "x2") == [_ip(h, "x2")]
    r = h.cli("exec", "x2", "nslookup", "x1")
    assert _ip(h, "x1") in r.stdout
    assert json.loads(h.cli("inspect", "x1").stdout)[0]["dns"]["names"][0] == "x1"
