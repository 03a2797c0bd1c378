"""The kernel data path's pure parts: the nftables text (exact), the checks of
Consul's backends before anything is written, the reroute policies' mapping to
conntrack actions, and the daemon-side bookkeeping with a fake namespace.

The kernel path has no failover inside one connection attempt (the forwarder
tries the next backend; a DNATed SYN goes to one backend and a refusal is the
client's): that is documented, and the lab test exercises the real rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from portlink.catalog.services import Instance
from portlink.errors import InvalidArgument
from portlink.netns import rules_dnat
from portlink.netns.rules_dnat import LinkRules, Target
from portlink.runtime import link_datapath as ld
from portlink.runtime.ambassadors import HOSTED_CMD
from portlink.runtime.host import HostConfig
from portlink.runtime.records import RunningDelta

A, B = Target("10.99.0.1", 5432), Target("10.99.0.3", 5432)


def test_table_text_is_exact():
    r = rules_dnat.make([6379], {6379: [("10.99.0.1", 6379), ("10.99.0.3", 6380)]})
    assert rules_dnat.render_table(r) == (
        "add table ip portlink_link\ndelete table ip portlink_link\n"
        "table ip portlink_link {\n"
        "\tcounter conn_6379 {\n\t}\n\tcounter tx_6379 {\n\t}\n\tcounter rx_6379 {\n\t}\n"
        "\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        '\t\tfib daddr type local tcp dport 6379 counter name "conn_6379" ct mark set 6379 '
        "dnat ip to numgen inc mod 2 map { 0 : 10.99.0.1 . 6379, 1 : 10.99.0.3 . 6380 }\n\t}\n"
        "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        "\t\tct status dnat masquerade\n\t}\n"
        "\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n"
        '\t\tct mark 6379 ct direction original counter name "tx_6379"\n'
        '\t\tct mark 6379 ct direction reply counter name "rx_6379"\n\t}\n'
        "\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n"
        "\t\tct state invalid meta l4proto tcp reject with tcp reset\n\t}\n"
        "}\n")


def test_backend_update_is_one_flush_and_refill():
    r = rules_dnat.make([80, 81], {80: [("10.99.0.3", 5432)], 81: []})
    assert rules_dnat.render_backends(r) == (
        "flush chain ip portlink_link prerouting\n"
        'add rule ip portlink_link prerouting fib daddr type local tcp dport 80 counter name "conn_80" '
        "ct mark set 80 dnat ip to numgen inc mod 1 map { 0 : 10.99.0.3 . 5432 }\n")
    # A port with no backend has no rule: its connections reach the forwarder.
    assert rules_dnat.render_backends(rules_dnat.make([80], {80: []})) == "flush chain ip portlink_link prerouting\n"
    assert rules_dnat.render_teardown() == "add table ip portlink_link\ndelete table ip portlink_link\n"


@pytest.mark.parametrize("address, port, why", [
    ("not-an-ip", 5432, "not an IPv4 unicast address"), ("fe80::1", 5432, "not an IPv4 unicast address"),
    ("0.0.0.0", 5432, "not an IPv4"), ("127.0.0.1", 80, "not an IPv4"), ("224.0.0.1", 80, "not an IPv4"),
    ("10.0.0.1; flush ruleset", 80, "not an IPv4"), ("10.0.0.1", 0, "not a TCP port"),
    ("10.0.0.1", 70000, "not a TCP port"), ("10.0.0.1", "80", "not a TCP port")])
def test_a_bad_backend_is_refused_naming_it(address, port, why):
    with pytest.raises(InvalidArgument, match=why) as e:
        rules_dnat.make([80], {80: [("10.99.0.1", 5432), (address, port)]})
    assert "listener 80" in str(e.value)


def test_backends_are_deduplicated_and_must_belong_to_a_listener():
    r = rules_dnat.make([80], {80: [("10.99.0.1", 5432), ("10.99.0.1", 5432)]})
    assert r.of(80) == (A,)
    with pytest.raises(InvalidArgument, match="does not listen on"):
        rules_dnat.make([80], {81: [("10.99.0.1", 5432)]})


def test_counters_are_read_from_nft_text():
    text = ("table ip portlink_link {\n\tcounter conn_80 {\n\t\tpackets 3 bytes 180\n\t}\n"
            "\tcounter tx_80 {\n\t\tpackets 12 bytes 900\n\t}\n\tcounter rx_80 {\n\t\tpackets 9 bytes 1500\n\t}\n}\n")
    assert rules_dnat.parse_counters(text) == {"conn": {80: 3}, "tx": {80: 900}, "rx": {80: 1500}}


# reroute policies -> conntrack ---------------------------------------------------------------

BEFORE = LinkRules((80,), ((80, (A, B)),))
AFTER = LinkRules((80,), ((80, (B,)),))


def test_keep_leaves_open_flows():
    assert ld.flow_actions("keep", 10, BEFORE, AFTER) == []


def test_close_deletes_the_removed_backends_flows_now():
    assert ld.flow_actions("close", 10, BEFORE, AFTER) == [ld.FlowAction(0.0, 80, A)]


def test_drain_deletes_them_at_the_deadline():
    assert ld.flow_actions("drain", 7.5, BEFORE, AFTER) == [ld.FlowAction(7.5, 80, A)]


def test_an_added_backend_needs_no_action_and_a_bad_policy_is_refused():
    assert ld.flow_actions("close", 10, AFTER, BEFORE) == []
    with pytest.raises(InvalidArgument):
        ld.flow_actions("sometimes", 10, BEFORE, AFTER)


def test_consul_instances_split_by_listener_as_the_forwarder_does():
    inst = [Instance("a", "db", "10.99.0.1", 5432, meta=(("portlink-port", "80/tcp"),)),
            Instance("b", "db", "10.99.0.3", 5433, meta=(("portlink-port", "81/tcp"),)),
            Instance("c", "db", "10.99.0.4", 9000),                               # someone else's: every port
            Instance("d", "db", "10.99.0.5", 9001, native=True),                  # mutual TLS only
            Instance("e", "db", "10.99.0.6", 9002, meta=(("portlink-port", "53/udp"),))]
    assert ld.split(inst, (80, 81)) == {80: [("10.99.0.1", 5432), ("10.99.0.4", 9000)],
                                        81: [("10.99.0.3", 5433), ("10.99.0.4", 9000)]}
    own = SimpleNamespace(ambassador={"service": "db", "ports": []},
                          cmd=["python", "-m", "portlink.ambassador", "--listen", "81", "--listen", "80",
                               "--service", "db"])
    assert ld.listeners(own) == (80, 81)
    # Served by the host forwarder: its process is a sleep, the ports are in its spec.
    hosted = SimpleNamespace(ambassador={"service": "db", "ports": [81, 80]}, cmd=list(HOSTED_CMD))
    assert ld.listeners(hosted) == (80, 81)


def test_the_option_is_checked():
    with pytest.raises(InvalidArgument, match="proxy or kernel"):
        HostConfig(state_dir="/nonexistent", link_datapath="ebpf")
    with pytest.raises(InvalidArgument, match="for plaintext links"):
        HostConfig(state_dir="/nonexistent", link_datapath="kernel", secure_links=True, consul=object())


# the daemon's bookkeeping, with a fake namespace -------------------------------------------------

@dataclass
class FakeNs:
    calls: list = field(default_factory=list)
    table: bool = False

    def has_table(self):
        return self.table

    def setup(self, r):
        self.table = True
        self.calls.append(("setup", r))

    def set_backends(self, r):
        self.calls.append(("backends", r))

    def teardown(self):
        self.calls.append(("teardown",))
        return []

    def forget_flows(self, listener, target):
        self.calls.append(("forget", listener, target.label))
        return 1

    def counters(self):
        return {"conn": {80: 2}, "tx": {80: 100}, "rx": {80: 300}}


@dataclass
class Spec:
    ambassador: dict
    cmd: list


@dataclass
class Ctr:
    id: str
    name: str
    pid: int
    spec: Spec
    pid_start: int | None = None


class Records:
    def __init__(self, cs):
        self.cs = cs

    def running_ambassadors(self):
        return list(self.cs)

    def running_ambassadors_since(self, mark):
        return RunningDelta(0, list(self.cs), None, list(self.cs))   # every pass sees every row as changed

    def get(self, cid):
        return next((c for c in self.cs if c.id == cid), None)


class Catalog:
    def __init__(self):
        self.by = {}

    def instances(self, service):
        return self.by.get(service, ())


class Events:
    def __init__(self):
        self.got = []

    def emit(self, type, action, name, id="", **attrs):
        self.got.append((action, name, attrs))


class Timers:
    def __init__(self):
        self.pending = []

    def __call__(self, delay, fn, args):
        me = self

        class T:
            daemon = False

            def start(self):
                me.pending.append((delay, fn, args))
        return T()

    def fire(self):
        for _, fn, args in self.pending:
            fn(*args)
        self.pending.clear()


def _world(policy="drain", enabled=True):
    ns = FakeNs()
    amb = Ctr("c1", "amb-db-bridge", 100, Spec({"service": "db", "policy": policy, "drain_deadline": 10.0},
                                               ["py", "--listen", "80", "--service", "db"]))
    secure = Ctr("c2", "srv-x", 101, Spec({"service": "x", "backends": {"80": "10.0.0.2:80"}}, ["py"]))
    cat, events, timers = Catalog(), Events(), Timers()
    kl = ld.KernelLinks(enabled, Records([amb, secure]), lambda cid: f"/run/ns/{cid}", cat, events,
                        dnat=lambda path: ns, timer=timers)
    return kl, ns, amb, cat, events, timers


def inst(ip, port=5432):
    return Instance(ip, "db", ip, port, meta=(("portlink-port", "80/tcp"),))


def test_first_sync_sets_up_the_table_and_a_change_replaces_the_backends():
    kl, ns, amb, cat, _, _ = _world()
    cat.by["db"] = (inst("10.99.0.1"),)
    kl.catalog_changed()
    assert ns.calls == [("setup", LinkRules((80,), ((80, (A,)),)))]   # the server side is never touched
    kl.catalog_changed()
    assert len(ns.calls) == 1                                          # nothing changed: nothing written
    cat.by["db"] = (inst("10.99.0.3"),)
    kl.catalog_changed()
    assert ns.calls[1] == ("backends", LinkRules((80,), ((80, (B,)),)))


def test_after_a_daemon_restart_an_existing_table_keeps_its_counters():
    kl, ns, amb, cat, _, _ = _world()
    ns.table = True
    cat.by["db"] = (inst("10.99.0.1"),)
    kl.catalog_changed()
    assert [c[0] for c in ns.calls] == ["backends"]


def test_close_forgets_flows_at_once_and_drain_at_the_deadline_unless_the_backend_came_back():
    kl, ns, amb, cat, events, timers = _world(policy="close")
    cat.by["db"] = (inst("10.99.0.1"), inst("10.99.0.3"))
    kl.catalog_changed()
    cat.by["db"] = (inst("10.99.0.3"),)
    kl.catalog_changed()
    assert ns.calls[-1] == ("forget", 80, "10.99.0.1:5432")
    assert events.got[-1] == ("flows-closed", "amb-db-bridge", {"listener": 80, "backend": "10.99.0.1:5432",
                                                                 "flows": 1})

    kl, ns, amb, cat, events, timers = _world(policy="drain")
    cat.by["db"] = (inst("10.99.0.1"), inst("10.99.0.3"))
    kl.catalog_changed()
    cat.by["db"] = (inst("10.99.0.3"),)
    kl.catalog_changed()
    assert [p[0] for p in timers.pending] == [10.0] and ns.calls[-1][0] == "backends"
    timers.fire()
    assert ns.calls[-1] == ("forget", 80, "10.99.0.1:5432")
    # A backend back before the deadline keeps its flows.
    cat.by["db"] = (inst("10.99.0.1"), inst("10.99.0.3"))
    kl.catalog_changed()
    cat.by["db"] = (inst("10.99.0.3"),)
    kl.catalog_changed()
    cat.by["db"] = (inst("10.99.0.1"), inst("10.99.0.3"))
    kl.catalog_changed()
    n = len(ns.calls)
    timers.fire()
    assert len(ns.calls) == n


def test_a_bad_backend_leaves_the_rules_and_is_reported_once():
    kl, ns, amb, cat, events, _ = _world()
    cat.by["db"] = (inst("10.99.0.1"),)
    kl.catalog_changed()
    cat.by["db"] = (inst("10.99.0.1"), Instance("x", "db", "db.example", 5432))
    kl.catalog_changed()
    kl.catalog_changed()
    assert len(ns.calls) == 1
    assert [e[0] for e in events.got] == ["datapath-refused"]
    snap = kl.snapshot(amb)
    assert "not an IPv4 unicast address" in snap["refused"] and snap["backends"] == {"80": ["10.99.0.1:5432"]}
    assert snap["connections_total"] == {80: 2}


def test_nothing_is_written_before_the_catalog_was_heard_from():
    # A restarted daemon's catalog is empty until Consul answers: the namespace
    # keeps the backends it has meanwhile.
    kl, ns, amb, cat, _, _ = _world()
    kl.sync()
    assert ns.calls == []
    kl.catalog_changed()
    assert ns.calls == [("setup", LinkRules((80,), ()))]


def test_proxy_mode_removes_a_leftover_table_once_per_run():
    kl, ns, amb, cat, _, _ = _world(enabled=False)
    kl.sync()
    kl.catalog_changed()
    assert ns.calls == [("teardown",)]


def test_proxy_mode_looks_for_no_table_in_an_ambassador_started_since_the_daemon():
    kl, ns, amb, cat, _, _ = _world(enabled=False)
    kl.since = 1000
    amb.pid_start = 1001          # started under this daemon, which wrote it no rules
    kl.sync()
    assert ns.calls == []
    amb.pid, amb.pid_start = 200, 999   # one from before it (a restart of the daemon)
    kl.sync()
    assert ns.calls == [("teardown",)]


def test_metrics_use_the_forwarders_family_names_under_kernel():
    text = ld.render_metrics({"connections_total": {80: 2, 81: 1}, "bytes_to_backend_total": {80: 10},
                              "bytes_to_client_total": {80: 20}})
    assert "portlink_ambassador_kernel_connections_total 3\n" in text
    assert 'portlink_ambassador_kernel_listener_connections_total{listener="81"} 1\n' in text
    assert "# TYPE portlink_ambassador_kernel_bytes_to_client_total counter\n" in text


def test_the_exporter_adds_each_kernel_path_ambassadors_counters():
    from portlink.runtime.exporter import Exporter
    kl, ns, amb, cat, _, _ = _world()
    cat.by["db"] = (inst("10.99.0.1"),)
    kl.catalog_changed()

    class Host:
        link_datapath = kl
        records = kl.records
    texts = Exporter(Host())._kernel_texts()
    assert [labels for _, labels in texts] == [{"ambassador": "amb-db-bridge"}]   # not the server side
    assert "portlink_ambassador_kernel_bytes_to_client_total 300\n" in texts[0][0]


class DeltaRecords(Records):
    """Records that say what changed: `changed` is handed out once per pass."""

    def __init__(self, cs):
        super().__init__(cs)
        self.changed = None

    def running_ambassadors_since(self, mark):
        out, self.changed = self.changed, frozenset()
        fresh = list(self.cs) if out is None else [c for c in self.cs if c.id in out]
        return RunningDelta(mark + 1, list(self.cs), out, fresh)


def test_a_container_change_looks_at_the_ambassadors_that_changed_and_those_that_failed():
    spec = Spec({"service": "db"}, ["py", "--listen", "80", "--service", "db"])
    ambs = [Ctr(f"c{i}", f"amb{i}", 100 + i, spec) for i in range(3)]
    records, seen, broken = DeltaRecords(ambs), [], {"c2"}

    def dnat(path):
        cid = path.rsplit("/", 1)[1]
        if cid in broken:
            raise OSError(f"{cid}: no such namespace")
        ns = FakeNs()
        seen.append(cid)
        return ns
    kl = ld.KernelLinks(False, records, lambda cid: f"/run/ns/{cid}", Catalog(), Events(), dnat=dnat, timer=Timers())
    kl.sync()                          # a first pass: every one
    assert seen == ["c0", "c1"]
    kl.sync()                          # nothing changed; c2 failed last time: tried again
    assert seen == ["c0", "c1"]
    broken.clear()
    kl.sync()
    assert seen == ["c0", "c1", "c2"]
    kl.sync()
    assert seen == ["c0", "c1", "c2"]  # nothing changed, nothing failed: no namespace looked into
    ambs[1].pid = 200                  # restarted: its row changed
    records.changed = frozenset({"c1"})
    kl.sync()
    assert seen == ["c0", "c1", "c2", "c1"]
    records.cs = [ambs[0], ambs[1]]    # c2 gone
    records.changed = frozenset({"c2"})
    kl.sync()
    assert "c2" not in kl._cleared and seen == ["c0", "c1", "c2", "c1"]
