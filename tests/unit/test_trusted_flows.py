"""Firewall.trusted_flows over a real Store: patched from its last answer for the
ambassadors that came, went or moved, it is always the set made from every
running ambassador (issue 18: each change made and hashed a flow per ambassador)."""

from __future__ import annotations

import random
from ipaddress import ip_address

from portlink.netns.model import TrustedFlow
from portlink.runtime.firewall import Firewall
from portlink.runtime.records import Container, Records
from portlink.runtime.spec import ContainerSpec
from portlink.runtime.state import Store

CONSUL = (ip_address("10.99.0.1"), 8500)


class NoDriver:
    name = "none"


def test_trusted_flows_follow_the_running_ambassadors(tmp_path):
    store = Store(tmp_path / "state.db")
    records, rng = Records(store), random.Random(7)
    fw = Firewall(NoDriver(), None, store, CONSUL)   # no rules: only the wanted set is asked for
    ids = []
    for i in range(12):
        cid = f"{i:02d}" * 32
        spec = ContainerSpec(image="busybox", name=f"c{i}", ambassador={"service": "s"} if i % 3 else {})
        records.insert(Container(id=cid, name=f"c{i}", spec=spec, exposed=(), status="creating", created=float(i)), [])
        ids.append(cid)
    running: dict[str, str] = {}   # id -> ip
    free = [f"10.96.0.{n}" for n in range(2, 40)]
    for _ in range(120):
        cid = rng.choice(ids)
        if cid in running:
            if rng.random() < 0.5:        # stopped
                records.set_exited(cid, 0)
                store.execute("DELETE FROM leases WHERE container_id=?", cid)
                free.append(running.pop(cid))
            else:                         # restarted at another address
                ip = free.pop(rng.randrange(len(free)))
                store.execute("UPDATE leases SET ip=? WHERE container_id=?", ip, cid)
                free.append(running[cid])
                running[cid] = ip
        else:
            ip = free.pop(rng.randrange(len(free)))
            store.execute("INSERT INTO leases VALUES ('n', ?, ?)", ip, cid)
            records.set_running(records.get(cid), 100)
            running[cid] = ip
        want = {TrustedFlow(ip_address(ip), *CONSUL) for cid, ip in running.items() if int(cid[:2]) % 3}
        assert fw.trusted_flows() == want
    store.close()


def test_no_consul_no_trusted_flows(tmp_path):
    store = Store(tmp_path / "state.db")
    assert Firewall(NoDriver(), None, store, None).trusted_flows() == frozenset()
    store.close()


def test_a_flow_two_ambassadors_share_stays_while_either_runs(tmp_path):
    # Two networks may lease the same address: one flow, needed until both are gone.
    store = Store(tmp_path / "state.db")
    records = Records(store)
    fw = Firewall(NoDriver(), None, store, CONSUL)
    for i, net in enumerate(("n", "m")):
        cid = f"{i}" * 64
        spec = ContainerSpec(image="busybox", name=f"a{i}", ambassador={"service": "s"})
        records.insert(Container(id=cid, name=f"a{i}", spec=spec, exposed=(), status="creating", created=float(i)), [])
        store.execute("INSERT INTO leases VALUES (?, '10.96.0.2', ?)", net, cid)
        records.set_running(records.get(cid), 100 + i)
    flow = TrustedFlow(ip_address("10.96.0.2"), *CONSUL)
    assert fw.trusted_flows() == {flow}
    records.set_exited("0" * 64, 0)
    assert fw.trusted_flows() == {flow}
    records.set_exited("1" * 64, 0)
    assert fw.trusted_flows() == frozenset()
    store.close()
