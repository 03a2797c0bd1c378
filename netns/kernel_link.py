"""Bridges, veth pairs, addresses and routes through netlink: a container's
attach by plain rtnetlink requests (netns.rtnl), the rest through pyroute2;
touches the kernel. Every call is idempotent in the way of pyroute2's IPRoute.ensure():
creating what exists (EEXIST) or deleting what is gone (ENODEV) is not an error,
so a retry after a crash converges."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import struct
import subprocess
import threading
from ipaddress import IPv4Address
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from portlink.netns import kernel_ns, names, rtnl
from portlink.netns.model import Endpoint, NetworkSpec

SIOCGIFADDR = 0x8915   # linux/sockios.h

_local = threading.local()


def _ipr() -> IPRoute:
    """This thread's netlink socket in the daemon's (host) namespace."""
    ipr = getattr(_local, "ipr", None)
    if ipr is None:
        ipr = _local.ipr = IPRoute()
    return ipr


def _rtnl() -> rtnl.Rtnl:
    """This thread's plain rtnetlink socket in the daemon's namespace (attach)."""
    sock = getattr(_local, "rtnl", None)
    if sock is None:
        sock = _local.rtnl = rtnl.Rtnl()
    return sock


def _index(ipr: IPRoute, ifname: str) -> int | None:
    """ifindex by name through `ipr`: for a short-lived socket in another
    namespace, or a rare call (see _host_index)."""
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def _host_index(ifname: str) -> int | None:
    """ifindex of a link in this thread's namespace, by ioctl (if_nametoindex).
    Not a netlink get on the long-lived per-thread socket: pyroute2 0.9 keeps
    about 2 KiB of every get's reply on that socket for good, so a lookup per
    container start grew the daemon without end."""
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None


def _tolerate(err: NetlinkError, *codes: int) -> None:
    if err.code not in codes:
        raise err


def ensure_bridge(net: NetworkSpec) -> None:
    """Create the network's bridge with the gateway address, up. Idempotent."""
    ipr = _ipr()
    # A bridge without an address of its own takes its lowest port's, so it would
    # change whenever a container comes or goes, and containers' ARP entries for
    # the gateway would point at a MAC that no longer answers. Fix it, derived
    # from the bridge's name so it is stable across daemon restarts.
    mac = stable_mac(net.bridge)
    try:
        ipr.link("add", ifname=net.bridge, kind="bridge", address=mac)
    except NetlinkError as e:
        _tolerate(e, errno.EEXIST)
    idx = _index(ipr, net.bridge)   # once per network: the per-container paths use _host_index
    ipr.link("set", index=idx, address=mac)
    try:
        ipr.addr("add", index=idx, address=str(net.gateway), prefixlen=net.subnet.prefixlen)
    except NetlinkError as e:
        _tolerate(e, errno.EEXIST)
    _bridges[net.bridge] = idx
    _disable_ipv6(net.bridge)
    ipr.link("set", index=idx, state="up")
    # Published ports reached from the host's own 127.0.0.1 are DNATed out this
    # bridge; the kernel drops loopback sources on other devices unless allowed.
    kernel_ns.write_sysctl(f"net.ipv4.conf.{net.bridge}.route_localnet", "1")


def stable_mac(name: str) -> str:
    """A locally administered unicast MAC (02:...) from a bridge's name; never
    02:42:…, the containers' MACs (model.container_mac)."""
    digest = hashlib.sha256(name.encode()).digest()
    second = digest[0] ^ 0x01 if digest[0] == 0x42 else digest[0]
    return ":".join(f"{b:02x}" for b in (0x02, second, *digest[1:5]))


def delete_link(ifname: str) -> None:
    _bridges.pop(ifname, None)
    ipr = _ipr()
    try:
        ipr.link("del", ifname=ifname)
    except NetlinkError as e:
        _tolerate(e, errno.ENODEV, errno.ENOENT, errno.EINVAL)


def link_states() -> dict[str, tuple[str | None, bool]]:
    """portlink's links in this namespace: name -> (its master's name, up); one dump."""
    return {l["ifname"]: (l.get("master"), "UP" in l.get("flags", ())) for l in _dump() if names.is_ours(l["ifname"])}


def _dump() -> list[dict]:
    """Every link of this namespace, as `ip -j link show` gives it. iproute2 rather
    than pyroute2 here: pyroute2 decodes each message's every attribute in Python,
    0.7-1.4 s for 2,000 veths (drift's periodic check at 1,000 links, issue 18),
    against 50 ms."""
    try:
        done = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise OSError("`ip` not found: install the apt package iproute2") from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise OSError(f"listing links with `ip -j link show`: {e}") from None
    if done.returncode != 0:
        raise OSError(f"listing links with `ip -j link show`: {done.stderr.strip() or f'exit {done.returncode}'}")
    return json.loads(done.stdout)


def has_address(ifname: str, address: IPv4Address) -> bool:
    ipr = _ipr()
    idx = _host_index(ifname)
    return idx is not None and any(a.get_attr("IFA_ADDRESS") == str(address)
                                   for a in ipr.get_addr(index=idx, family=2))


def set_master(ifname: str, bridge: str) -> None:
    """Put a host-side veth back on its bridge, up (drift repair)."""
    ipr = _ipr()
    idx, br = _host_index(ifname), _host_index(bridge)
    if idx is None or br is None:
        raise OSError(errno.ENODEV, f"{ifname if idx is None else bridge} is missing")
    ipr.link("set", index=idx, master=br, state="up")
    ipr.brport("set", index=idx, mode=1)


def list_links() -> list[str]:
    """Names of this namespace's links that portlink owns (bridges and veths)."""
    return sorted(link_states())


_bridges: dict[str, int] = {}   # bridge name -> ifindex; kept current by ensure_bridge/delete_link


def _bridge_index(ep: Endpoint) -> int:
    idx = _bridges.get(ep.network.bridge)
    if idx is None:
        idx = _host_index(ep.network.bridge)
        if idx is None:
            raise OSError(errno.ENODEV, f"bridge {ep.network.bridge} of network {ep.network.name!r} is missing")
        _bridges[ep.network.bridge] = idx
    return idx


def _disable_ipv6(ifname: str) -> None:
    # A bridge: the host takes no IPv6 from its containers' networks at all.
    try:
        kernel_ns.write_sysctl(f"net.ipv6.conf.{ifname}.disable_ipv6", "1")
    except FileNotFoundError:
        pass   # kernel without IPv6


# IPv4-only networks: a veth end gets no IPv6 address, so no DAD, router
# solicitations or MLD reports, whose multicast the bridge would flood to every
# port (attach time would then grow with the containers). By netlink, before
# the link is up: a /proc/sys path costs a walk of every namespace's entries of
# the same name (proc_sys_compare: ~10 ms an attach at 2,000 containers).


def _no_ipv6_addresses(sock: rtnl.Rtnl, idx: int) -> None:
    try:
        sock.request(rtnl.no_ipv6_addresses(idx))
    except NetlinkError as e:
        _tolerate(e, errno.EAFNOSUPPORT)   # kernel without IPv6


def _add_veth(sock: rtnl.Rtnl, ep: Endpoint, br: int) -> None:
    fd = os.open(ep.netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # index 2: the first link made in a new namespace after lo, named up front
        # so no lookup is needed inside.
        # The container's MAC is derived from its address (model.container_mac):
        # its layer-2 pin (rules_l2) was rendered from it before this pair existed,
        # and a pair rebuilt by drift repair keeps it.
        sock.request(rtnl.new_veth(ep.host_ifname, br, ep.ifname, fd, CONTAINER_IFINDEX, ep.mac))
    finally:
        os.close(fd)


CONTAINER_IFINDEX = 2


def attach(ep: Endpoint, fresh: bool = True) -> None:
    """Wire a container namespace to its network's bridge.

    The veth peer is created directly inside the container's namespace (never
    renamed or moved through the host), then addressed and routed from a netlink
    socket opened in that namespace. `fresh`: the namespace is new, so the peer
    is ifindex 2; a repair (drift) looks it up by name instead, as the kernel
    does not hand an ifindex out again at once. Plain rtnetlink requests
    (netns.rtnl): this runs at every container start."""
    host = _rtnl()
    with kernel_ns.entered(ep.netns_path):
        inside = rtnl.Rtnl()
    try:
        try:
            br = _bridge_index(ep)
            try:
                _add_veth(host, ep, br)
            except NetlinkError as e:
                if e.code == errno.EEXIST:
                    # A host end left by a namespace the kernel has not finished
                    # tearing down (same container restarted): replace it.
                    delete_link(ep.host_ifname)
                    _add_veth(host, ep, br)
                else:
                    _bridges.pop(ep.network.bridge, None)
                    raise
            idx = _host_index(ep.host_ifname)
            _no_ipv6_addresses(host, idx)
            # Hairpin: with br_netfilter a published port is DNATed at the bridge, so
            # a container reaching its own published port needs frames sent back out
            # the port they came in on.
            host.request(rtnl.hairpin(idx))
            host.request(rtnl.link_up(idx))
            _configure_inside(inside, ep, CONTAINER_IFINDEX if fresh else _index_inside(ep))
        except BaseException:
            delete_link(ep.host_ifname)   # leave no half-made pair behind
            raise
    finally:
        inside.close()


def _index_inside(ep: Endpoint) -> int:
    with kernel_ns.entered(ep.netns_path):
        idx = _host_index(ep.ifname)   # by ioctl, in the namespace this thread is in now
    if idx is None:
        raise OSError(errno.ENODEV, f"{ep.ifname} is missing in {ep.netns_path}")
    return idx


def _configure_inside(inside: rtnl.Rtnl, ep: Endpoint, idx: int) -> None:
    _no_ipv6_addresses(inside, idx)
    inside.request(rtnl.add_address(idx, ep.address, ep.network.subnet.prefixlen))
    inside.request(rtnl.link_up(idx))
    inside.request(rtnl.link_up(1))  # lo is always ifindex 1 in a new namespace
    if ep.default_route and not ep.network.internal:
        inside.request(rtnl.add_default_route(ep.network.gateway, idx))


def loopback_up(netns_path: str) -> None:
    """Bring up lo in a namespace that has no other link (network "none")."""
    with kernel_ns.entered(netns_path):
        inside = rtnl.Rtnl()
    with inside:
        inside.request(rtnl.link_up(1))


def address_of(netns_path: str, ifname: str = "eth0") -> IPv4Address | None:
    """The (primary) IPv4 address of `ifname` inside a namespace (drift checks every
    container's; checks and benchmarks). One ioctl on a socket made in the
    namespace: a netlink socket and a dump per container cost drift's periodic
    check seconds at 1,000 links (issue 18)."""
    with kernel_ns.entered(netns_path):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        got = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", ifname.encode()))
    except OSError as e:
        if e.errno in (errno.ENODEV, errno.EADDRNOTAVAIL):
            return None    # no such interface, or no IPv4 address on it
        raise
    finally:
        s.close()
    return IPv4Address(got[20:24])   # struct ifreq: name[16], then sockaddr_in (family, port, address)
