"""Interface counters through netlink (pyroute2); touches the kernel (read only).

Containers' traffic is read from the host side of their veth pairs, in the
calling thread's namespace (the daemon's, the host's), not from eth0 inside
each container's namespace: one RTM_GETLINK dump answers for every container
at once, with no setns per container, and /sys/class/net cannot be used
because the daemon shares the machine's /sys (nsenter --net only), which shows
the root namespace's links. A veth pair's two ends see the same packets, so
the host end's tx is the container's rx (runtime/stats.container_net swaps
them); only packets one end dropped differ."""

from __future__ import annotations

from pyroute2 import IPRoute

COUNTERS = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_dropped", "tx_dropped")


def link_counters(prefix: str = "") -> dict[str, dict[str, int]]:
    """{ifname: counters} of the links whose name starts with `prefix`, in this
    thread's network namespace, from one dump (64-bit counters)."""
    out: dict[str, dict[str, int]] = {}
    with IPRoute() as ipr:
        for msg in ipr.get_links():
            name = msg.get("IFLA_IFNAME")
            if not name or not name.startswith(prefix):
                continue
            s = msg.get("IFLA_STATS64") or msg.get("IFLA_STATS")
            if s is not None:
                out[name] = {k: int(s[k]) for k in COUNTERS}
    return out
