"""Bridges, veth pairs, addresses and routes through netlink (pyroute2); touches
the kernel. Every call is idempotent in the way of pyroute2's IPRoute.ensure():
creating what exists (EEXIST) or deleting what is gone (ENODEV) is not an error,
so a retry after a crash converges."""

from __future__ import annotations

import errno
import os
import threading
from ipaddress import IPv4Address

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from portlink.netns import kernel_ns, names
from portlink.netns.model import Endpoint, NetworkSpec

_local = threading.local()


def _ipr() -> IPRoute:
    """This thread's netlink socket in the daemon's (host) namespace."""
    ipr = getattr(_local, "ipr", None)
    if ipr is None:
        ipr = _local.ipr = IPRoute()
    return ipr


def _index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def _tolerate(err: NetlinkError, *codes: int) -> None:
    if err.code not in codes:
        raise err


def ensure_bridge(net: NetworkSpec) -> None:
    """Create the network's bridge with the gateway address, up. Idempotent."""
    ipr = _ipr()
    try:
        ipr.link("add", ifname=net.bridge, kind="bridge")
    except NetlinkError as e:
        _tolerate(e, errno.EEXIST)
    idx = _index(ipr, net.bridge)
    try:
        ipr.addr("add", index=idx, address=str(net.gateway), prefixlen=net.subnet.prefixlen)
    except NetlinkError as e:
        _tolerate(e, errno.EEXIST)
    ipr.link("set", index=idx, state="up")
    # Published ports reached from the host's own 127.0.0.1 are DNATed out this
    # bridge; the kernel drops loopback sources on other devices unless allowed.
    kernel_ns.write_sysctl(f"net.ipv4.conf.{net.bridge}.route_localnet", "1")


def delete_link(ifname: str) -> None:
    ipr = _ipr()
    try:
        ipr.link("del", ifname=ifname)
    except NetlinkError as e:
        _tolerate(e, errno.ENODEV, errno.ENOENT, errno.EINVAL)


def list_links() -> list[str]:
    """Names of this namespace's links that portlink owns (bridges and veths)."""
    return sorted(n for n in (l.get_attr("IFLA_IFNAME") for l in _ipr().get_links()) if names.is_ours(n))


def link_exists(ifname: str) -> bool:
    return _index(_ipr(), ifname) is not None


def attach(ep: Endpoint) -> None:
    """Wire a container namespace to its network's bridge.

    The veth peer is created directly inside the container's namespace (never
    renamed or moved through the host), then addressed and routed from a netlink
    socket opened in that namespace."""
    ipr = _ipr()
    br = _index(ipr, ep.network.bridge)
    if br is None:
        raise OSError(errno.ENODEV, f"bridge {ep.network.bridge} of network {ep.network.name!r} is missing")
    fd = os.open(ep.netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        ipr.link("add", ifname=ep.host_ifname, kind="veth", master=br,
                 peer={"ifname": ep.ifname, "net_ns_fd": fd})
    finally:
        os.close(fd)
    idx = _index(ipr, ep.host_ifname)
    # Hairpin: with br_netfilter a published port is DNATed at the bridge, so a
    # container reaching its own published port needs frames sent back out the
    # port they came in on.
    ipr.brport("set", index=idx, mode=1)
    ipr.link("set", index=idx, state="up")
    with kernel_ns.entered(ep.netns_path):
        cipr = IPRoute()
    try:
        _configure_inside(cipr, ep)
    finally:
        cipr.close()


def _configure_inside(ipr: IPRoute, ep: Endpoint) -> None:
    idx = _index(ipr, ep.ifname)
    ipr.addr("add", index=idx, address=str(ep.address), prefixlen=ep.network.subnet.prefixlen)
    ipr.link("set", index=idx, state="up")
    ipr.link("set", index=1, state="up")  # lo is always ifindex 1 in a new namespace
    if ep.default_route and not ep.network.internal:
        ipr.route("add", dst="0.0.0.0/0", gateway=str(ep.network.gateway), oif=idx)


def loopback_up(netns_path: str) -> None:
    """Bring up lo in a namespace that has no other link (network "none")."""
    with kernel_ns.entered(netns_path):
        ipr = IPRoute()
    try:
        ipr.link("set", index=1, state="up")
    finally:
        ipr.close()


def detach(ep: Endpoint) -> None:
    """Remove the host end of the pair (the kernel removes the peer with it)."""
    delete_link(ep.host_ifname)


def address_of(netns_path: str, ifname: str = "eth0") -> IPv4Address | None:
    """The IPv4 address of `ifname` inside a namespace (for drift checks)."""
    with kernel_ns.entered(netns_path):
        ipr = IPRoute()
    try:
        idx = _index(ipr, ifname)
        if idx is None:
            return None
        for a in ipr.get_addr(index=idx, family=2):
            return IPv4Address(a.get_attr("IFA_ADDRESS"))
        return None
    finally:
        ipr.close()
