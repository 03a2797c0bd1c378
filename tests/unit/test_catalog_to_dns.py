"""How a Consul change reaches the resolver: only the services that changed are
converted, the containers' views are kept, and the daemon's event loop swaps the
snapshot in without a thread hop, unless a full refresh is running."""

import threading
from ipaddress import IPv4Address, IPv4Network

from portlink.catalog.services import Instance
from portlink.dns.server import DnsServer
from portlink.dns.zone import ServiceInstance, Snapshot
from portlink.netns.model import NetworkSpec
from portlink.runtime.discovery import ConsulAnswers, Seen, build_snapshot, consul_services, with_services
from portlink.runtime.name_patch import Names
from portlink.runtime.refresh import Catalog, Refresher

A1 = Instance("a-1", "a", "10.0.0.1", 80, "n1")
A2 = Instance("a-2", "a", "10.0.0.2", 80, "n2")
B1 = Instance("b-1", "b", "10.0.0.3", 81, "n1", native=True)
V6 = Instance("c-1", "c", "2001:db8::1", 80, "n1")


def test_consul_answers_match_consul_services():
    services = {"a": (A1, A2), "b": (B1,), "c": (V6,)}
    assert ConsulAnswers()(services) == consul_services(services)
    assert consul_services(services)["c"] == ()       # no A record for an IPv6 instance
    assert ConsulAnswers()(None) is None


def test_consul_answers_convert_only_what_changed():
    convert = ConsulAnswers()
    first = convert({"a": (A1,), "b": (B1,)})
    second = convert({"a": (A1, A2), "b": (B1,)})
    assert second["b"] is first["b"]                  # unchanged: the very same answers
    assert second["a"] is not first["a"]
    assert second["a"] == (ServiceInstance("10.0.0.1", 80, "n1"), ServiceInstance("10.0.0.2", 80, "n2"))
    third = convert({"b": (B1,)})                      # a gone: dropped, not kept
    assert third == {"b": (ServiceInstance("10.0.0.3", 81, "n1", (), True),)}
    assert convert({"a": (A1,), "b": (B1,)})["a"] == first["a"]   # back: converted anew, equal
    assert convert(None) is None and convert({"b": (B1,)})["b"] is not first["b"]   # None forgets


def test_with_services_keeps_views_and_replaces_services():
    nets = [NetworkSpec("f" * 12, "front", IPv4Network("10.1.0.0/24"), IPv4Address("10.1.0.1"), "plb-front")]
    running = [Seen(id="w" * 64, name="web", hostname="web", network="front", ip="10.1.0.2")]
    snap = build_snapshot(nets, running, [], services={"a": (A1,)})
    moved = with_services(snap, {"a": (A2,)})
    assert moved is not snap and moved.views is snap.views and moved.subnets == snap.subnets
    assert moved.services == {"a": (ServiceInstance("10.0.0.2", 80, "n2"),)}
    assert snap.services == {"a": (ServiceInstance("10.0.0.1", 80, "n1"),)}   # the old one untouched


class FakeDns:
    def __init__(self) -> None:
        self.got: list[tuple[str, Snapshot]] = []

    def offer(self, snap: Snapshot) -> None:
        self.got.append(("offer", snap))

    def update(self, snap: Snapshot) -> None:
        self.got.append(("update", snap))


def refresher(services: dict | None, last: Snapshot | None) -> Refresher:
    """A Refresher holding only what a Consul change uses (no store, firewall or files)."""
    r = Refresher.__new__(Refresher)
    r.dns, r.catalog = FakeDns(), Catalog(True)
    r.catalog.services = services
    r._lock = threading.Lock()
    r._names = Names()
    if last is not None:
        r._names.use(last)
    r._answers = ConsulAnswers()
    return r


def test_apply_services_offers_the_last_snapshot_with_new_services():
    base = Snapshot(networks=frozenset({"front"}), services={})
    r = refresher({"a": (A1,)}, base)
    assert r.apply_services() is True
    (how, snap), = r.dns.got
    assert how == "offer" and snap.networks == base.networks
    assert snap.services == {"a": (ServiceInstance("10.0.0.1", 80, "n1"),)}
    r.catalog.services = {"a": (A2,)}
    r.refresh_services()                                # the thread's path: waited for
    assert [h for h, _ in r.dns.got] == ["offer", "update"]
    assert r.dns.got[1][1].services == {"a": (ServiceInstance("10.0.0.2", 80, "n2"),)}


def test_apply_services_gives_way_to_a_running_refresh():
    r = refresher({"a": (A1,)}, Snapshot(services={}))
    with r._lock:                                      # refresh_names is reading the store
        assert r.apply_services() is False
    assert r.dns.got == []
    assert r.apply_services() is True and len(r.dns.got) == 1


def test_apply_services_before_the_first_refresh_does_nothing():
    r = refresher({"a": (A1,)}, None)
    assert r.apply_services() is True and r.dns.got == []


def test_dns_server_offer_and_update_apply_in_order():
    dns = DnsServer()
    dns.start()
    try:
        one, two, three = (Snapshot(ttl=n) for n in (1, 2, 3))
        dns.offer(one)
        dns.offer(two)
        dns.update(three)            # waited for: every earlier offer has been swapped in before it
        assert dns.snapshot is three
        dns.offer(one)
        assert dns.listen([]) == []  # any waited-for call: the resolver's loop has run the offer
        assert dns.snapshot is one
    finally:
        dns.stop()
