"""Drift: objects changed behind portlink's back (a veth deleted or moved off its
bridge, the firewall flushed, a bridge's address removed) are found and put
back, on demand (`portlink system check`) and by the periodic check."""

from __future__ import annotations

import json

import pytest

from helpers import refused_start, wait_for
from portlink.lab.sandbox import SimHost

pytestmark = pytest.mark.root

HTTPD = "mkdir -p /srv && echo up-$0 > /srv/index.html && exec httpd -f -p 80 -h /srv"


def serve(h: SimHost, name: str, *extra: str) -> dict:
    h.cli("run", "-d", "--name", name, *extra, "busybox", "sh", "-c", HTTPD, name, check=True)
    return h.client.get(f"/containers/{name}")


def fetch(h: SimHost, ctr: str, url: str) -> str:
    r = h.cli("exec", ctr, "sh", "-c", f"timeout 3 wget -q -O- {url}; exit $?")
    return r.stdout.strip()


def published(h: SimHost, port: int) -> str:
    return h.ns.run("busybox", "sh", "-c", f"timeout 3 wget -q -O- http://127.0.0.1:{port}/",
                    check=False).stdout.strip()


def check(h: SimHost) -> tuple[int, list[dict]]:
    r = h.cli("system", "check", "--format", "json")
    return r.returncode, json.loads(r.stdout)["findings"] if r.stdout else r.stderr


def test_deleted_and_unplugged_veths_are_rewired(nft_host):
    h = nft_host
    a = serve(h, "a", "-p", "8080:80")
    serve(h, "b")
    assert fetch(h, "b", "http://a/") == "up-a"
    assert check(h) == (0, [])

    veth = a["network"]["veth"]
    h.ns.run("ip", "link", "del", veth)
    assert fetch(h, "b", "http://a/") == "", "the deleted veth should have cut a off"
    code, found = check(h)
    assert code == 0
    assert [(f["subject"], f["problem"], f["repaired"]) for f in found] == \
        [(f"veth {veth} of container a", "is missing", True)]
    assert fetch(h, "b", "http://a/") == "up-a"
    assert published(h, 8080) == "up-a"
    assert h.client.get("/containers/a")["network"]["ip"] == a["network"]["ip"]

    h.ns.run("ip", "link", "set", veth, "nomaster")
    code, found = check(h)
    assert code == 0 and len(found) == 1 and "on no bridge" in found[0]["problem"] and found[0]["repaired"]
    assert fetch(h, "b", "http://a/") == "up-a"
    assert check(h) == (0, []), "a repaired host must check clean"


def flush(h: SimHost) -> None:
    """Remove portlink's rules as an admin's `flush` would, in the host's namespace."""
    if h.firewall == "nftables":
        h.ns.run("nft", "delete", "table", "ip", "portlink")
    else:
        for table in ("nat", "filter"):
            h.ns.run("iptables", "-t", table, "-F")


def test_flushed_firewall_is_restored(host):
    h = host
    serve(h, "web", "-p", "8080:80")
    before = h.client.get("/system/firewall")["rules"]
    assert published(h, 8080) == "up-web"
    flush(h)
    assert published(h, 8080) == "", "the flush should have removed the published port"
    code, found = check(h)
    assert code == 0
    assert len(found) == 1 and found[0]["subject"] == f"firewall ({h.firewall})" and found[0]["repaired"]
    assert published(h, 8080) == "up-web"
    assert h.client.get("/system/firewall")["rules"] == before
    assert check(h) == (0, [])


def test_bridge_address_removed_is_restored(nft_host):
    h = nft_host
    serve(h, "a")
    serve(h, "b")
    net = h.client.get("/networks/bridge")
    h.ns.run("ip", "addr", "flush", "dev", net["bridge"])
    assert h.cli("exec", "b", "nslookup", "a").returncode != 0, "DNS at the gateway should be gone"
    code, found = check(h)
    assert code == 0 and [f["subject"] for f in found] == [f"bridge {net['bridge']}"]
    assert "lost the gateway address" in found[0]["problem"]
    assert wait_for(lambda: fetch(h, "b", "http://a/") == "up-a", timeout=10)


@pytest.fixture
def checking_host():
    h = SimHost.start("drift", extra_args=["--check-interval", "1"])
    yield h
    errors = h.destroy()
    assert not errors, f"teardown of the simulated host reported: {errors}"


def test_periodic_check_repairs_without_being_asked(checking_host):
    h = checking_host
    a = serve(h, "a", "-p", "8080:80")
    serve(h, "b")
    h.ns.run("ip", "link", "del", a["network"]["veth"])
    h.ns.run("nft", "delete", "table", "ip", "portlink")
    assert wait_for(lambda: fetch(h, "b", "http://a/") == "up-a" and published(h, 8080) == "up-a", timeout=20)
    log = h.daemon_log()
    assert f"drift veth {a['network']['veth']} of container a: is missing (repaired)" in log
    assert "drift firewall (nftables)" in log


def test_bad_check_interval_is_refused(tmp_path):
    assert "--check-interval 0.1" in refused_start(tmp_path, "--check-interval", "0.1").stderr
