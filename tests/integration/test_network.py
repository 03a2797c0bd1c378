"""Container networking on a simulated host, under both firewall drivers."""

from __future__ import annotations

import subprocess

import pytest

from helpers import wait_for

pytestmark = pytest.mark.root


def run_d(host, *args):
    return host.cli("run", "-d", *args, check=True).stdout.strip()


def ip_of(host, name):
    return host.client.get(f"/containers/{name}")["network"]["ip"]


def wget(host, url, *run_args, timeout=3):
    # busybox timeout, not wget -T (Debian's static busybox wget segfaults with -T),
    # under sh so wget is not PID 1, which ignores the timeout's SIGTERM.
    return host.cli("run", "--rm", *run_args, "busybox", "sh", "-c",
                    f"timeout {timeout} wget -q -O- {url}; exit $?")


def serve(host, name, *args, text=None, net="bridge"):
    """busybox httpd answering /hostname with the container's hostname (or `text`)."""
    script = f"echo {text} > /tmp/index.html; " if text else "hostname > /tmp/index.html; "
    run_d(host, "--name", name, "--net", net, *args, "busybox", "sh", "-c",
          script + "exec httpd -f -p 80 -h /tmp")


def test_two_containers_on_one_bridge_reach_each_other(host):
    serve(host, "web", text="hello-from-web")
    r = wget(host, f"http://{ip_of(host, 'web')}/index.html")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "hello-from-web"
    # and with nc: a raw TCP stream both ways
    run_d(host, "--name", "ncsrv", "busybox", "sh", "-c", "echo pong | nc -l -p 7000")
    ip = ip_of(host, "ncsrv")
    r = wait_for(lambda: (lambda p: p if p.stdout.strip() == "pong" else None)(
        host.cli("run", "--rm", "busybox", "sh", "-c", f"echo ping | nc -w 2 {ip} 7000")), timeout=5)
    assert r is not None and r.stdout.strip() == "pong"


def test_published_port_from_host_and_from_outside(host, outside):
    serve(host, "web", "-p", "8080:80", text="published")
    # from the host namespace itself: its own address, and its loopback
    for addr in (outside.HOST_IP, "127.0.0.1"):
        r = host.ns.run("timeout", "3", "busybox", "wget", "-q", "-O-", f"http://{addr}:8080/index.html", check=False)
        assert r.stdout.strip() == "published", (addr, r.stderr)
    # from a second namespace routed to the host: only the published port is reachable
    r = outside.ns.run("timeout", "3", "busybox", "wget", "-q", "-O-", f"http://{outside.HOST_IP}:8080/index.html", check=False)
    assert r.stdout.strip() == "published", r.stderr
    r = outside.ns.run("timeout", "2", "busybox", "wget", "-q", "-O-", f"http://{outside.HOST_IP}:8081/", check=False)
    assert r.returncode != 0


def test_port_bound_to_one_host_address_and_udp_rules(host, outside):
    serve(host, "web", "-p", f"{outside.HOST_IP}:8443:80", "-p", "5353:53/udp", text="bound")
    ports = host.client.get("/containers/web")["network"]["ports"]
    assert {"proto": "tcp", "host_ip": outside.HOST_IP, "host_port": 8443, "container_port": 80} in ports
    assert {"proto": "udp", "host_ip": "0.0.0.0", "host_port": 5353, "container_port": 53} in ports
    r = outside.ns.run("timeout", "3", "busybox", "wget", "-q", "-O-", f"http://{outside.HOST_IP}:8443/index.html", check=False)
    assert r.stdout.strip() == "bound", r.stderr
    # bound to the underlay address only: the host's loopback does not forward it
    r = host.ns.run("timeout", "2", "busybox", "wget", "-q", "-O-", "http://127.0.0.1:8443/index.html", check=False)
    assert r.returncode != 0
    # busybox has no UDP server to test with end to end; the kernel holds the mapping
    ip = host.client.get("/containers/web")["network"]["ip"]
    rules = host.client.get("/system/firewall")["rules"]
    assert f"5353 : {ip} . 53" in rules or f"--dport 5353 -j DNAT --to-destination {ip}:53" in rules, rules


def test_hairpin_container_reaches_its_own_published_port(host):
    serve(host, "web", "-p", "8080:80", text="hairpin")
    gw = host.client.get("/containers/web")["network"]["gateway"]
    r = host.cli("exec", "web", "timeout", "3", "wget", "-q", "-O-", f"http://{gw}:8080/index.html")
    assert r.stdout.strip() == "hairpin", r.stderr


def test_outbound_is_masqueraded_to_the_host_address(host, outside):
    srv = outside.serve_peer_address(9000)
    try:
        r = wget(host, f"http://{outside.IP}:9000/")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == outside.HOST_IP   # not the container's 10.77.x address
    finally:
        srv.kill()
        srv.wait()


def test_icc_off_blocks_container_to_container(host):
    host.cli("network", "create", "--icc", "off", "--subnet", "10.91.0.0/24", "quiet", check=True)
    serve(host, "a", net="quiet", text="a")
    r = wget(host, f"http://{ip_of(host, 'a')}/index.html", "--net", "quiet", timeout=2)
    assert r.returncode != 0 and "hello" not in r.stdout
    # the same pair on an icc=on network talks
    host.cli("network", "create", "--subnet", "10.92.0.0/24", "chatty", check=True)
    serve(host, "b", net="chatty", text="b")
    assert wget(host, f"http://{ip_of(host, 'b')}/index.html", "--net", "chatty").stdout.strip() == "b"


def test_internal_network_has_no_way_out(host, outside):
    srv = outside.serve_peer_address(9000)
    try:
        host.cli("network", "create", "--internal", "--subnet", "10.93.0.0/24", "sealed", check=True)
        r = wget(host, f"http://{outside.IP}:9000/", "--net", "sealed", timeout=2)
        assert r.returncode != 0
        assert wget(host, f"http://{outside.IP}:9000/").stdout.strip() == outside.HOST_IP
        # containers on the internal network still reach each other
        serve(host, "in1", net="sealed", text="inside")
        assert wget(host, f"http://{ip_of(host, 'in1')}/index.html", "--net", "sealed").stdout.strip() == "inside"
    finally:
        srv.kill()
        srv.wait()


def test_networks_are_isolated_from_each_other(host):
    host.cli("network", "create", "--subnet", "10.94.0.0/24", "red", check=True)
    host.cli("network", "create", "--subnet", "10.95.0.0/24", "blue", check=True)
    serve(host, "r", net="red", text="red")
    assert wget(host, f"http://{ip_of(host, 'r')}/index.html", "--net", "red").stdout.strip() == "red"
    r = wget(host, f"http://{ip_of(host, 'r')}/index.html", "--net", "blue", timeout=2)
    assert r.returncode != 0
    r = wget(host, f"http://{ip_of(host, 'r')}/index.html", timeout=2)   # default network
    assert r.returncode != 0


def test_network_create_ls_inspect_rm(host):
    r = host.cli("network", "create", "--subnet", "10.96.0.0/24", "--gateway", "10.96.0.254", "n1")
    assert r.returncode == 0, r.stderr
    ls = host.cli("network", "ls").stdout
    assert "n1" in ls and "10.96.0.0/24" in ls and "bridge" in ls
    n = host.client.get("/networks/n1")
    assert n["gateway"] == "10.96.0.254" and n["containers"] == []
    assert n["bridge"] in host.ns.run("ip", "-br", "link").stdout
    host.cli("run", "-d", "--name", "user", "--net", "n1", "busybox", "sleep", "60", check=True)
    assert host.client.get("/containers/user")["network"]["ip"].startswith("10.96.0.")
    r = host.cli("network", "rm", "n1")
    assert r.returncode != 0 and "in use" in r.stderr and "user" in r.stderr
    host.cli("rm", "-f", "user", check=True)
    assert host.cli("network", "rm", "n1").returncode == 0
    assert n["bridge"] not in host.ns.run("ip", "-br", "link").stdout
    r = host.cli("network", "rm", "bridge")
    assert r.returncode != 0 and "default" in r.stderr


def test_no_ipv6_address_on_either_end_of_a_containers_veth(host):
    # No link-local address: no DAD, router solicitation or MLD report that the
    # bridge would flood to every port; the bridge itself takes no IPv6.
    run_d(host, "--name", "v6", "busybox", "sleep", "600")
    netns = host.client.get("/containers/v6")["network"]["netns"]
    inside = subprocess.run(["nsenter", f"--net={netns}", "ip", "-d", "-6", "-o", "addr", "show", "dev", "eth0"],
                            capture_output=True, text=True, check=True)
    assert inside.stdout == ""
    mode = subprocess.run(["nsenter", f"--net={netns}", "ip", "-d", "link", "show", "eth0"],
                          capture_output=True, text=True, check=True).stdout
    assert "addrgenmode none" in mode, mode
    host_end = [l for l in host.ns.run("ip", "-d", "-o", "link", "show").stdout.splitlines() if ": plv" in l]
    assert host_end and all("addrgenmode none" in l for l in host_end), host_end
    assert "inet6" not in host.ns.run("ip", "-6", "-o", "addr", "show").stdout.replace("inet6 ::1", "")
    bridge = [l for l in host.ns.run("ip", "-o", "link", "show", "type", "bridge").stdout.splitlines() if ": plb" in l]
    assert bridge
    name = bridge[0].split(": ")[1].split("@")[0]
    assert host.ns.run("cat", f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6").stdout.strip() == "1"
