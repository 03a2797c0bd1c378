"""The kernel data path of plaintext client-side ambassadors (portlinkd
--link-datapath kernel): each such ambassador keeps its container, address, DNS
name and forwarder process, but the daemon writes nftables rules inside the
ambassador's own namespace (netns.rules_dnat, applied by netns.fw_dnat) that
DNAT each new connection to one of the service's healthy instances, so no byte
passes through Python. The forwarder still listens behind the rules: a
connection made before the rules land, or to a port with no backend, is its.

What maps from the forwarder, and what does not:
  backend choice   round-robin per new connection (`numgen inc`); the
                   forwarder's least-connections order and its cooldown of a
                   backend that refused are not mapped
  failover         none inside a connection attempt: a connection DNATed to a
                   backend that refuses or is gone fails (the client sees the
                   refusal or a timeout) and the next one rotates on; Consul's
                   health check takes the backend out of the set
  reroute          the backend set is replaced atomically on each change of the
                   service in the daemon's catalog; open flows follow the
                   ambassador's policy through conntrack (`flow_actions`):
                   keep leaves them, close deletes the removed backends'
                   entries at once (their next segment is reset), drain
                   deletes them after the drain deadline
  metrics          connections and bytes per listener from nft counters (IP
                   bytes, headers included); no per-backend series, no open
                   connections gauge, no connect failures

With --link-datapath proxy (the default) any table an earlier kernel run left
in a running ambassador's namespace is removed. Everything lives in the
ambassador's namespace, which goes with the container."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from portlink.ambassador.sources import split_instances
from portlink.errors import InvalidArgument, PortlinkError
from portlink.netns import rules_dnat
from portlink.netns.fw_dnat import NetnsDnat
from portlink.netns.rules_dnat import LinkRules, Target
from portlink.prom import escape
from portlink.reroute import AMBASSADOR_POLICY, DRAIN_DEADLINE
from portlink.runtime import ambassadors
from portlink.runtime.records import Container

log = logging.getLogger("portlink.kernel_link")

DATAPATHS = ("proxy", "kernel")
DEFAULT_DATAPATH = "proxy"


def eligible(c: Container) -> bool:
    """A plaintext client side: not a server side (backends), not a mutual-TLS
    client side (identity)."""
    amb = c.spec.ambassador
    return bool(amb) and not amb.get("backends") and not amb.get("identity")


def listeners(spec) -> tuple[int, ...]:
    """The ambassador's listening ports: a hosted one's are in its ambassador spec
    (the host forwarder listens for it); one with a forwarder process of its own
    has them as --listen on its command line."""
    if ambassadors.is_hosted(spec):
        return tuple(sorted(set(spec.ambassador.get("ports") or ())))
    cmd = spec.cmd
    return tuple(sorted({int(cmd[i + 1]) for i, a in enumerate(cmd[:-1]) if a == "--listen"}))


def split(instances, ports) -> dict[int, list[tuple[str, int]]]:
    """Backends per listener exactly as the forwarder splits them
    (ambassador.sources.split_instances); Connect-native instances speak only TLS."""
    plain = [i for i in instances if not i.native]
    return {p: [(b.address, b.port) for b in bs] for p, bs in split_instances(plain, ports).items()}


@dataclass(frozen=True)
class FlowAction:
    """Delete the conntrack entries of `listener`'s flows to `target`, `delay` seconds from now."""
    delay: float
    listener: int
    target: Target


def flow_actions(policy: str, deadline: float, before: LinkRules, after: LinkRules) -> list[FlowAction]:
    """What a reroute does to open flows whose backend left the set (portlink.reroute's
    policies): keep -> nothing (conntrack keeps them on their backend); close ->
    their entries deleted now; drain -> deleted once the drain deadline passed."""
    if policy == "keep":
        return []
    if policy not in ("close", "drain"):
        raise InvalidArgument(f"unknown reroute policy {policy!r}")
    delay = 0.0 if policy == "close" else float(deadline)
    return [FlowAction(delay, p, t) for p in before.ports
            for t in before.of(p) if t not in after.of(p)]


@dataclass(frozen=True)
class Applied:
    pid: int
    rules: LinkRules
    error: str = ""          # the last change refused (rules left as they were)


class KernelLinks:
    def __init__(self, enabled: bool, records, netns_path: Callable[[str], str], catalog, events,
                 dnat: Callable[[str], NetnsDnat] = NetnsDnat, timer=threading.Timer,
                 since: int | None = None) -> None:
        self.enabled, self.records, self.netns_path = enabled, records, netns_path
        # This daemon's own start (procstart ticks): an ambassador whose process started
        # after it never had rules written while the kernel path is off.
        self.since = since
        self.catalog, self.events, self.dnat, self.timer = catalog, events, dnat, timer
        self._applied: dict[str, Applied] = {}     # ambassador id -> what its namespace has
        self._cleared: dict[str, int] = {}   # proxy mode: id -> the pid whose namespace was checked for a leftover table
        self._failed: set[str] = set()       # ids whose last pass failed: tried again at the next
        self._mark = -1                      # the records' mark of the last pass
        self._lock = threading.Lock()
        # Until the daemon has heard from Consul its catalog is empty: a namespace keeps
        # the backends it has (a restarted daemon must not wipe them), as the forwarder
        # keeps its last set while Consul is away.
        self._heard = False

    def catalog_changed(self) -> None:
        """The daemon's catalog watch delivered (the first time, or a change)."""
        self._heard = True
        self.sync(everyone=True)

    def desired(self, c: Container) -> LinkRules:
        ports = listeners(c.spec)
        return rules_dnat.make(ports, split(self.catalog.instances(c.spec.ambassador["service"]), ports))

    def sync(self, everyone: bool = False) -> None:
        """Bring running plaintext client sides' namespaces to the catalog's backends:
        every one with `everyone` (the daemon's catalog watch); else (a container
        change, the refresher's listener) those whose rows changed since the last
        pass (Records.running_ambassadors_since) and those that failed then."""
        with self._lock:
            delta = self.records.running_ambassadors_since(self._mark)
            self._mark = delta.mark
            if everyone or delta.changed is None:
                todo = {c.id: c for c in delta.rows if eligible(c) and c.pid}
                gone = (self._applied.keys() | self._cleared.keys()) - todo.keys()
            else:
                look = delta.changed | self._failed
                # A failed one's row is looked for among every row (rare); the changed are `fresh`.
                rows = delta.fresh + [c for c in delta.rows if c.id in self._failed] if self._failed else delta.fresh
                todo = {c.id: c for c in rows if eligible(c) and c.pid}
                gone = look - todo.keys()
            for cid in gone:
                self._applied.pop(cid, None)     # its namespace went with it
                self._cleared.pop(cid, None)
            self._failed = set()
            for c in todo.values():
                try:
                    if self.enabled:
                        if self._heard:
                            self._sync_one(c)
                    elif self._cleared.get(c.id) != c.pid:
                        self._cleared[c.id] = c.pid
                        if self._started_since(c):
                            continue     # no `nft` run per new ambassador (~10 ms each)
                        for e in self.dnat(self.netns_path(c.id)).teardown():
                            log.error("ambassador %s: removing the kernel path: %s", c.name, e)
                except (PortlinkError, OSError) as e:
                    log.error("ambassador %s: kernel data path: %s", c.name, e)
                    self._failed.add(c.id)
                    self._cleared.pop(c.id, None)   # its leftover table is looked for again

    def _started_since(self, c: Container) -> bool:
        return c.pid_start is not None and self.since is not None and c.pid_start > self.since

    def _sync_one(self, c: Container) -> None:
        prev = self._applied.get(c.id)
        try:
            rules = self.desired(c)
        except InvalidArgument as e:
            # Validated before anything is written: the namespace keeps what it had.
            if prev is None or prev.error != str(e):
                log.error("ambassador %s: Consul's backends refused, rules unchanged: %s", c.name, e)
                self.events.emit("ambassador", "datapath-refused", c.name, c.id, error=str(e))
            if prev is not None:
                self._applied[c.id] = Applied(prev.pid, prev.rules, str(e))
            return
        d = self.dnat(self.netns_path(c.id))
        if prev is None or prev.pid != c.pid:
            # A new namespace (start, restart) gets the whole table; after a daemon
            # restart the table is there with its counters: only the backends change.
            if prev is None and d.has_table():
                d.set_backends(rules)
            else:
                d.setup(rules)
            self._applied[c.id] = Applied(c.pid, rules)
            return
        if prev.rules == rules:
            if prev.error:
                self._applied[c.id] = Applied(prev.pid, rules)
            return
        d.set_backends(rules)
        self._applied[c.id] = Applied(c.pid, rules)
        amb = c.spec.ambassador
        for a in flow_actions(amb.get("policy", AMBASSADOR_POLICY), amb.get("drain_deadline", DRAIN_DEADLINE),
                              prev.rules, rules):
            if a.delay <= 0:
                self._forget(c.id, c.pid, a)
            else:
                t = self.timer(a.delay, self._drained, (c.id, c.pid, a))
                t.daemon = True
                t.start()

    def _drained(self, cid: str, pid: int, a: FlowAction) -> None:
        with self._lock:
            now = self._applied.get(cid)
            # The same run of the ambassador, and the backend did not come back meanwhile.
            if now is None or now.pid != pid or a.target in now.rules.of(a.listener):
                return
            try:
                self._forget(cid, pid, a)
            except (PortlinkError, OSError) as e:
                log.error("ambassador %s: closing drained flows to %s: %s", cid[:12], a.target.label, e)

    def _forget(self, cid: str, pid: int, a: FlowAction) -> None:
        n = self.dnat(self.netns_path(cid)).forget_flows(a.listener, a.target)
        c = self.records.get(cid)
        if c is not None:
            self.events.emit("ambassador", "flows-closed", c.name, cid, listener=a.listener,
                             backend=a.target.label, flows=n)

    # what others read ----------------------------------------------------------------------
    def applies_to(self, c: Container) -> bool:
        return self.enabled and eligible(c)

    def snapshot(self, c: Container) -> dict:
        """For `portlink inspect`: the data path, its backends and its counters."""
        with self._lock:
            applied = self._applied.get(c.id)
        out: dict = {"datapath": "kernel", "table": f"{rules_dnat.FAMILY} {rules_dnat.TABLE}"}
        if applied is None:
            return {**out, "applied": False}
        out.update(applied=True, backends={str(p): [t.label for t in ts] for p, ts in applied.rules.backends})
        if applied.error:
            out["refused"] = applied.error
        try:
            n = self.dnat(self.netns_path(c.id)).counters()
        except (PortlinkError, OSError) as e:
            return {**out, "error": str(e)}
        out.update(connections_total=n["conn"], bytes_to_backend_total=n["tx"], bytes_to_client_total=n["rx"])
        return out

    def metrics_text(self, c: Container) -> str:
        """Prometheus text for the daemon's exporter: the forwarder's family names
        (ambassador.metrics) under portlink_ambassador_kernel_, beside the forwarder's
        own (which counts only what the rules left to it); IP bytes, headers included."""
        s = self.snapshot(c)
        return render_metrics(s) if "connections_total" in s else ""


FAMILIES = (("connections_total", "Connections DNATed to a backend by the kernel path."),
            ("bytes_to_backend_total", "IP bytes forwarded from clients to backends by the kernel path."),
            ("bytes_to_client_total", "IP bytes forwarded from backends to clients by the kernel path."))


def render_metrics(snapshot: dict) -> str:
    out = ["# HELP portlink_ambassador_kernel_datapath 1: this ambassador's bytes go through nftables DNAT.",
           "# TYPE portlink_ambassador_kernel_datapath gauge", "portlink_ambassador_kernel_datapath 1"]
    for name, text in FAMILIES:
        values = snapshot[name]
        for full, help_ in ((f"portlink_ambassador_kernel_{name}", text),
                            (f"portlink_ambassador_kernel_listener_{name}", text + " By listener port.")):
            out += [f"# HELP {full} {help_}", f"# TYPE {full} counter"]
            if "listener_" not in full:
                out.append(f"{full} {sum(values.values())}")
            else:
                out += [f'{full}{{listener="{escape(str(p))}"}} {v}' for p, v in sorted(values.items())]
    return "\n".join(out) + "\n"
