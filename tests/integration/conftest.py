"""Fixtures: every test gets throwaway simulated hosts (a namespace with its own
portlinkd and state dir) and checks on the way out that nothing leaked."""

from __future__ import annotations

import re

import pytest

from helpers import Outside
from portlink.lab.sandbox import SimHost
from portlink.netns import kernel_ns

DRIVERS = ["nftables", "iptables"]


def snapshot(h: SimHost) -> dict:
    """Everything portlink could leave behind on a host, for before/after checks."""
    links = h.ns.run("ip", "-o", "link", "show").stdout
    rules = h.client.get("/system/firewall")["rules"]
    db = h.client
    mounts = [l.split()[4] for l in open("/proc/self/mountinfo") if str(h.workdir) in l]
    netns = sorted(p.name for p in (h.state_dir / "netns").glob("*")) if (h.state_dir / "netns").exists() else []
    cdirs = sorted(p.name for p in (h.state_dir / "containers").glob("*"))
    return {
        "links": sorted(re.findall(r"^\d+: ([^:@]+)", links, re.M)),
        "fw_elements": sorted(re.findall(r"\d+\.\d+\.\d+\.\d+[ .:]+\d+|--to-destination \S+", rules)),
        "mounts": sorted(m for m in mounts if "/images/" not in m),
        "netns": netns,
        "container_dirs": cdirs,
        "containers": sorted(c["id"] for c in db.get("/containers", all="1")),
        "leases": sorted(filter(None, (c["network"]["ip"] for c in db.get("/containers", all="1")))),
        "runc": sorted(h.ns.run("runc", "--root", str(h.state_dir / "runc"), "list", "-q").stdout.split()),
    }


@pytest.fixture(params=DRIVERS)
def host(request):
    h = SimHost.start("host", firewall=request.param)
    yield h
    errors = h.destroy()
    assert not errors, f"teardown of the simulated host reported: {errors}"


@pytest.fixture
def nft_host():
    """A host on the default (nftables) driver, for tests that are not about the firewall."""
    h = SimHost.start("host")
    yield h
    errors = h.destroy()
    assert not errors, f"teardown of the simulated host reported: {errors}"


@pytest.fixture
def outside(host):
    o = Outside(host)
    yield o
    o.delete()


@pytest.fixture
def ns(tmp_path):
    """A throwaway network namespace of the test's own (a path to its file), for
    tests of netns.* against the real kernel without a host around it."""
    path = str(tmp_path / "plt-scratch-ns")
    kernel_ns.create_netns(path)
    try:
        yield path
    finally:
        kernel_ns.delete_netns(path)
