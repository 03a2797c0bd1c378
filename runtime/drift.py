"""Drift: compare what the kernel holds with what the state says it should,
and put it back (touches the kernel through portlink.netns.kernel_*).

Someone deletes a veth, flushes the firewall, takes a bridge down, or a
container's process dies without the reaper seeing it: `check(host)` finds
each case, repairs it, and returns one Finding per problem. The daemon runs it
every `--check-interval` seconds and on demand (`portlink system check`);
Consul entries removed behind our back are the registrar's resync (the daemon
adds those findings). Repairs reuse the paths that made the objects, so a
repaired host is indistinguishable from one that never drifted."""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass
from ipaddress import ip_address

from portlink.netns import kernel_link
from portlink.runtime.plan import endpoint
from portlink.runtime.procstart import is_same

log = logging.getLogger("portlink.drift")


@dataclass(frozen=True)
class Finding:
    subject: str          # "veth plv-…", "bridge plb-…", "firewall", "container web", "consul …"
    problem: str
    repaired: bool
    error: str | None = None

    def to_json(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        outcome = "repaired" if self.repaired else f"NOT repaired: {self.error}"
        return f"{self.subject}: {self.problem} ({outcome})"


def _attempt(subject: str, problem: str, fix) -> Finding:
    try:
        fix()
        return Finding(subject, problem, True)
    except Exception as e:   # one failed repair must not stop the others
        log.debug("repair of %s failed", subject, exc_info=True)
        return Finding(subject, problem, False, str(e))


def check(host) -> list[Finding]:
    """Find and repair drift on this host: processes, bridges, veths, firewall."""
    found = _processes(host)
    # One dump of the host's links for both (a netlink dump decoded in Python: ~2,000
    # veths at 1,000 links); again only after a bridge was repaired.
    states = kernel_link.link_states()
    bridges = _bridges(host, states)
    found += bridges
    found += _endpoints(host, kernel_link.link_states() if bridges else states)
    found += _firewall(host)
    for f in found:
        (log.warning if f.repaired else log.error)("drift %s", f)
    return found


def _processes(host) -> list[Finding]:
    """RUNNING rows whose process is gone (an exit the reaper never reported)."""
    out = []
    for c in host.records.running():
        if not c.pid or is_same(c.pid, c.pid_start):
            continue
        # A stop in progress finishes first and is not drift.
        host.lifecycle.while_running(c.id, lambda c=c: out.append(_attempt(
            f"container {c.name}", f"process {c.pid} is gone but the container is recorded as running",
            lambda: host.containers.on_exit(c.id, c.pid, None))), pid=c.pid)
    return out


def _bridges(host, states: dict) -> list[Finding]:
    out = []
    for net in host.networks.list():
        state = states.get(net.bridge)
        problem = ("is missing" if state is None else "is down" if not state[1] else
                   None if kernel_link.has_address(net.bridge, net.gateway) else
                   f"has lost the gateway address {net.gateway}")
        if problem:
            out.append(_attempt(f"bridge {net.bridge}", f"of network {net.name!r} {problem}",
                                lambda n=net: kernel_link.ensure_bridge(n)))
    return out


def _endpoints(host, states: dict) -> list[Finding]:
    """Each running container's veth: present, on its bridge, up, addressed inside."""
    nets = {n.name: n for n in host.networks.list()}
    out = []
    for c in host.records.running_with_ip():
        net = nets.get(c.spec.network)
        if net is None:
            continue
        ep = endpoint(host.layout, c.id, net, ip_address(c.ip))
        # Stopped or removed since the query: not drift.
        host.lifecycle.while_running(c.id, lambda c=c, ep=ep, net=net: out.extend(
            _endpoint(f"veth {ep.host_ifname} of container {c.name}", ep, net, states.get(ep.host_ifname))))
    return out


def _endpoint(subject: str, ep, net, state) -> list[Finding]:
    if state is None:
        return [_attempt(subject, "is missing", lambda: kernel_link.attach(ep, fresh=False))]
    if state[0] != net.bridge or not state[1]:
        where = f"on {state[0]}" if state[0] else "on no bridge"
        return [_attempt(subject, f"is {where}{'' if state[1] else ', down'} (expected on {net.bridge}, up)",
                         lambda: kernel_link.set_master(ep.host_ifname, ep.network.bridge))]
    if kernel_link.address_of(ep.netns_path, ep.ifname) != ep.address:
        def rewire():
            kernel_link.delete_link(ep.host_ifname)
            kernel_link.attach(ep, fresh=False)
        return [_attempt(subject, f"{ep.ifname} inside has lost the address {ep.address}", rewire)]
    return []


_COUNTERS = re.compile(r"\[\d+:\d+\]|counter packets \d+ bytes \d+")


def _normal(listing: str) -> Counter:
    """A rule listing as a multiset of lines, without counters or order."""
    return Counter(l.strip() for l in _COUNTERS.sub("", listing).splitlines() if l.strip())


def _firewall(host) -> list[Finding]:
    """Re-render the whole firewall from the state (one atomic batch) and compare:
    any difference was drift, and the re-render has already repaired it."""
    with host.fw.lock:
        before = _normal(host.fw.dump())
        try:
            host.fw.apply_all()
        except Exception as e:
            return [Finding("firewall", "could not be re-rendered", False, str(e))]
        after = _normal(host.fw.dump())
    if before == after:
        return []
    missing = sum((after - before).values())
    extra = sum((before - after).values())
    what = "table or chains missing" if not before else \
        f"{missing} rule line(s) missing, {extra} unexpected"
    return [Finding(f"firewall ({host.fw.name})", what, True)]
