"""Layer-2 pinning (both firewall drivers; the pins are nftables' bridge family
under either): a container given NET_RAW or NET_ADMIN cannot claim a
neighbour's address with forged ARP or IP, while the same container speaking
for itself gets through. Each attack is also shown to work with the bridge
table deleted, so these tests fail if the pinning does not hold. Attach,
detach, daemon restart, drift repair and prune keep the pins exactly those of
the running containers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from ipaddress import IPv4Address

import pytest

from conftest import DRIVERS
from helpers import in_container_ns, wait_for
from portlink.lab.sandbox import SimHost
from portlink.netns.model import container_mac

pytestmark = pytest.mark.root

# Received UDP datagrams, one "payload source" line each, until "stop" (at most 60 s).
UDP_LOG = r"""
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 9999)); s.settimeout(1)
print("listening", flush=True)
end = time.monotonic() + 60
while time.monotonic() < end:
    try:
        data, (src, _) = s.recvfrom(100)
    except socket.timeout:
        continue
    if data == b"stop":
        break
    print(data.decode(), src, flush=True)
"""
# Three datagrams from a given source address (one the sender's interface holds).
UDP_SEND = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 0))
for _ in range(3):
    s.sendto(sys.argv[4].encode(), (sys.argv[2], int(sys.argv[3])))
"""


@pytest.fixture(params=DRIVERS)
def pinned_host(request):
    # No periodic drift check: the tests delete the bridge table on purpose and
    # must see the attack work before they repair it themselves.
    h = SimHost.start("l2", firewall=request.param, extra_args=["--check-interval", "0"])
    yield h
    errors = h.destroy()
    assert not errors, f"teardown of the simulated host reported: {errors}"


def net(h: SimHost, name: str) -> dict:
    return h.client.get(f"/containers/{name}")["network"]


def pins(h: SimHost) -> set[tuple[str, str, str]]:
    """(host veth, MAC, address) of every element of the bridge table's set."""
    out = h.ns.run("nft", "list", "set", "bridge", "portlink", "pins", check=False).stdout
    return set(re.findall(r'"(plv-[^"]+)" \. ([0-9a-f:]{17}) \. ([\d.]+)', out))


def pin_of(h: SimHost, name: str) -> tuple[str, str, str]:
    n = net(h, name)
    return n["veth"], container_mac_of(n["ip"]), n["ip"]


def container_mac_of(ip: str) -> str:
    return container_mac(IPv4Address(ip))


def neigh(run, ip: str) -> str | None:
    """The MAC a neighbour table maps `ip` to (None: no entry with an address)."""
    m = re.search(r"lladdr ([0-9a-f:]{17})", run("ip", "neigh", "show", ip).stdout)
    return m.group(1) if m else None


def in_ns(h: SimHost, name: str):
    return lambda *argv: in_container_ns(h, name, *argv)


def delete_bridge_table(h: SimHost) -> None:
    h.ns.run("nft", "delete", "table", "bridge", "portlink")
    assert pins(h) == set()


def repair(h: SimHost) -> None:
    """`system check` puts the table back with every running container's pin."""
    r = h.cli("system", "check", "--format", "json")
    found = json.loads(r.stdout)["findings"]
    assert r.returncode == 0 and [(f["subject"], f["repaired"]) for f in found] == \
        [(f"firewall ({h.firewall})", True)], found


def test_forged_arp_never_reaches_a_neighbour_table(pinned_host):
    h = pinned_host
    for name, extra in (("victim", []), ("observer", []), ("attacker", ["--cap-add", "NET_RAW"])):
        h.cli("run", "-d", "--name", name, *extra, "busybox", "sleep", "600", check=True)
    v, o, a = net(h, "victim"), net(h, "observer"), net(h, "attacker")
    v_mac, a_mac = container_mac_of(v["ip"]), container_mac_of(a["ip"])
    gw = v["gateway"]
    host_neigh, obs_neigh = (lambda ip: neigh(h.ns.run, ip)), (lambda ip: neigh(in_ns(h, "observer"), ip))
    # Interfaces carry the MAC their pin names.
    assert f"link/ether {a_mac} " in h.cli("exec", "attacker", "ip", "link", "show", "eth0").stdout
    assert pins(h) == {pin_of(h, n) for n in ("victim", "observer", "attacker")}

    # Normal traffic: the host and the observer reach the victim; the attacker its gateway.
    assert h.ns.run("busybox", "ping", "-c", "1", "-W", "3", v["ip"], check=False).returncode == 0
    assert in_container_ns(h, "observer", "busybox", "ping", "-c", "1", "-W", "3", v["ip"]).returncode == 0
    assert h.cli("exec", "attacker", "ping", "-c", "1", "-W", "3", gw).returncode == 0
    assert host_neigh(v["ip"]) == v_mac and obs_neigh(v["ip"]) == v_mac

    # Positive control: the attacker's ARP for its own address reaches the observer.
    assert obs_neigh(a["ip"]) is None
    h.cli("exec", "attacker", "arping", "-c", "2", "-w", "3", "-I", "eth0", "-s", a["ip"], o["ip"])
    assert wait_for(lambda: obs_neigh(a["ip"]) == a_mac, timeout=5), "the attacker's own ARP did not arrive"

    # busybox arping checks that -s is an address of its own by binding a socket to
    # it; a raw-socket tool would not care. Let it (set from outside the container:
    # its /proc/sys is read-only), so the frames busybox builds are an attacker's.
    assert in_container_ns(h, "attacker", "sysctl", "-w", "net.ipv4.ip_nonlocal_bind=1").returncode == 0
    spoofs = [
        ["arping", "-c", "3", "-w", "2", "-I", "eth0", "-s", v["ip"], o["ip"]],   # requests to the observer
        ["arping", "-c", "3", "-w", "2", "-I", "eth0", "-s", v["ip"], gw],        # and to the host
        ["arping", "-U", "-c", "2", "-w", "2", "-I", "eth0", v["ip"]],             # gratuitous
        ["arping", "-A", "-c", "2", "-w", "2", "-I", "eth0", v["ip"]],             # unsolicited replies
    ]
    for argv in spoofs:
        r = h.cli("exec", "attacker", *argv)
        assert "Sent" in r.stdout, (argv, r.stdout, r.stderr)
    assert host_neigh(v["ip"]) == v_mac and obs_neigh(v["ip"]) == v_mac

    # Without the pins the same requests poison the observer's cache: the attack is real.
    delete_bridge_table(h)
    h.cli("exec", "attacker", *spoofs[0])
    assert wait_for(lambda: obs_neigh(v["ip"]) == a_mac, timeout=5), "the control attack did not poison"
    repair(h)
    assert pins(h) == {pin_of(h, n) for n in ("victim", "observer", "attacker")}
    in_container_ns(h, "observer", "ip", "neigh", "flush", "dev", "eth0")
    assert in_container_ns(h, "observer", "busybox", "ping", "-c", "1", "-W", "3", v["ip"]).returncode == 0
    h.cli("exec", "attacker", *spoofs[0])
    assert obs_neigh(v["ip"]) == v_mac


def test_forged_ip_never_arrives_and_gets_no_answer(pinned_host):
    h = pinned_host
    h.cli("run", "-d", "--name", "observer", "busybox", "sleep", "600", check=True)
    # The victim's DNS view has a name of its own: the link alias `secret`.
    h.cli("run", "-d", "--name", "victim", "--link", "observer:secret", "busybox", "sleep", "600", check=True)
    # NET_RAW too: busybox's `ip link set address` opens a packet socket.
    h.cli("run", "-d", "--name", "attacker", "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW",
          "busybox", "sleep", "600", check=True)
    v, o, a = net(h, "victim"), net(h, "observer"), net(h, "attacker")
    gw = a["gateway"]

    def send(src: str, payload: str) -> None:
        r = in_container_ns(h, "attacker", sys.executable, "-c", UDP_SEND, src, o["ip"], "9999", payload)
        assert r.returncode == 0, r.stderr

    def ask(src: str, name: str, *extra: str) -> str:
        """The resolver's answer to `name` asked from `src`: its status, or 'no answer'."""
        r = in_container_ns(h, "attacker", "dig", "-b", src, f"@{gw}", name, "+time=2", "+tries=1", *extra)
        m = re.search(r"status: (\w+)", r.stdout)
        return m.group(1) if m else "no answer"

    log = subprocess.Popen(["nsenter", f"--net={o['netns']}", sys.executable, "-c", UDP_LOG],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert log.stdout.readline().strip() == "listening"
        # Positive control, from the attacker's own address: it arrives, and the
        # resolver answers (the victim's link alias is not in the attacker's view).
        send(a["ip"], "own")
        assert ask(a["ip"], "observer") == "NOERROR" and ask(a["ip"], "secret") == "NXDOMAIN"
        # Its neighbours stay known whatever it does next (it may, with NET_ADMIN;
        # busybox's ip cannot, so iproute2 does it in its namespace), so the forged
        # frames below really leave its interface without an ARP exchange first.
        macs = {ip: neigh(in_ns(h, "attacker"), ip) for ip in (o["ip"], gw)}
        assert all(macs.values()), f"the attacker lacks a neighbour entry: {macs}"

        def keep_neighbours() -> None:
            for ip, mac in macs.items():
                r = in_container_ns(h, "attacker", "ip", "neigh", "replace", ip, "lladdr", mac, "dev", "eth0",
                                    "nud", "permanent")
                assert r.returncode == 0, r.stderr

        # The victim's address as a second one, then its MAC too.
        h.cli("exec", "attacker", "ip", "addr", "add", f"{v['ip']}/32", "dev", "eth0", check=True)
        keep_neighbours()
        send(v["ip"], "forged-ip")
        assert ask(v["ip"], "secret") == "no answer"
        assert ask(v["ip"], "secret", "+tcp") == "no answer"
        h.cli("exec", "attacker", "ip", "link", "set", "dev", "eth0", "address", container_mac_of(v["ip"]),
              check=True)
        keep_neighbours()   # a new MAC flushes the neighbour table, permanent entries too
        send(v["ip"], "forged-mac")
        assert ask(v["ip"], "secret") == "no answer"
        assert ask(v["ip"], "secret", "+tcp") == "no answer"
        # A changed MAC pins the attacker out entirely, its own address included.
        send(a["ip"], "own-after-mac")
        # Control: without the pins the forged datagram arrives.
        delete_bridge_table(h)
        send(v["ip"], "control")
        assert wait_for(lambda: log.poll() is None, timeout=1)
        h.ns.run(sys.executable, "-c", "import socket,sys; socket.socket(2, 2).sendto(b'stop', (sys.argv[1], 9999))",
                 o["ip"])
        out, _ = log.communicate(timeout=30)
    finally:
        if log.poll() is None:
            log.kill()   # our own child, by its pid
            log.wait(10)
    got = set(out.split("\n")) - {""}
    assert got == {f"own {a['ip']}", f"control {v['ip']}"}, got
    repair(h)
    # The victim's own view is untouched.
    r = in_container_ns(h, "victim", "dig", f"@{gw}", "secret", "+short", "+time=2", "+tries=1")
    assert r.stdout.split() == [o["ip"]]


def test_pins_follow_the_running_containers(pinned_host):
    h = pinned_host
    h.cli("run", "-d", "--name", "a", "busybox", "httpd", "-f", "-p", "80", "-h", "/etc", check=True)
    h.cli("run", "-d", "--name", "b", "busybox", "sleep", "600", check=True)
    h.cli("run", "-d", "--name", "quiet", "--net", "none", "busybox", "sleep", "600", check=True)
    pin_a, pin_b = pin_of(h, "a"), pin_of(h, "b")
    assert pins(h) == {pin_a, pin_b}   # network none: no port, no pin
    # Pinned containers talk as before: ARP, IP, DNS at the gateway.
    hostname = h.client.get("/containers/a")["config"]["hostname"]
    assert wait_for(lambda: h.cli("exec", "b", "timeout", "3", "wget", "-q", "-O-", "http://a/hostname")
                    .stdout.strip() == hostname, timeout=15), "b cannot fetch from a"

    h.cli("stop", "-t", "1", "a", check=True)
    assert pins(h) == {pin_b}
    h.cli("start", "a", check=True)
    pin_a = pin_of(h, "a")
    assert pins(h) == {pin_a, pin_b}
    # b dies and the table is deleted while the daemon is down: the restart
    # releases b and rebuilds the table from the journal, exactly.
    pid = h.client.get("/containers/b")["pid"]
    h.stop_daemon(signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)   # the container's own process, which this test started via portlink
    delete_bridge_table(h)
    h.start_daemon()
    assert wait_for(lambda: h.client.get("/containers/b")["status"] == "exited", timeout=10)
    assert pins(h) == {pin_a}
    h.cli("rm", "-f", "a", check=True)
    assert pins(h) == set()
    r = h.cli("system", "prune", "-f")
    assert r.returncode == 0, r.stderr
    assert "bridge portlink" not in h.ns.run("nft", "list", "tables").stdout
