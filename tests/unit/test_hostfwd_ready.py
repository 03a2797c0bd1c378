"""HostForwarder.wait_ready: a run that links to a hosted ambassador waits for the
forwarder's word that it forwards (its reply to a feed), not for a poll of the
ambassador's /stats (issue 18). The forwarder's replies are given here; the
forwarder itself is tests/unit/test_hostfwd.py's."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import pytest

from portlink.runtime.host_forwarder import ForwarderConfig, HostForwarder

AMB = SimpleNamespace(id="a" * 64, name="amb-db-bridge", spec=SimpleNamespace(ambassador={"service": "db"}))


def forwarder(tmp_path, replies: list[dict]) -> HostForwarder:
    fw = HostForwarder(ForwarderConfig(tmp_path, "http://10.0.0.1:8500", 1, 1), records=None,
                       netns_path=str, instances=lambda service: [])
    fw._request = lambda data, fds=(): replies.pop(0)   # the forwarder's replies, in order
    return fw


def waiter(fw: HostForwarder, timeout: float) -> tuple[threading.Thread, list]:
    got: list = []
    t = threading.Thread(target=lambda: got.append(fw.wait_ready(AMB.id, timeout)))
    t.start()
    return t, got


def test_a_feed_that_says_ready_ends_the_wait(tmp_path):
    fw = forwarder(tmp_path, [{"ok": True, "ready": False}, {"ok": True, "ready": True}])
    assert fw.wait_ready(AMB.id, 30) is None            # never fed here: the caller asks /stats
    with fw._lock:
        fw._feed(AMB)                                     # served, no backends yet
    assert fw.wait_ready(AMB.id, 0.01) is False
    t, got = waiter(fw, 30)
    with fw._lock:
        fw._feed(AMB)                                     # the catalog brought its instances
    t.join(10)
    assert not t.is_alive() and got == [True]
    assert fw.wait_ready(AMB.id, 30) is True


def test_an_ambassador_no_longer_served_ends_the_wait(tmp_path):
    fw = forwarder(tmp_path, [{"ok": True, "ready": False}])
    with fw._lock:
        fw._feed(AMB)
    t, got = waiter(fw, 30)
    fw.detach(AMB.id)                                     # stopped meanwhile
    t.join(10)
    assert not t.is_alive() and got == [False]
    assert fw.wait_ready(AMB.id, 30) is None


def test_a_forwarder_that_does_not_say_leaves_the_poll(tmp_path):
    # A forwarder started by an older daemon (it outlives the daemon) answers feeds without `ready`.
    fw = forwarder(tmp_path, [{"ok": True}])
    with fw._lock:
        fw._feed(AMB)
    assert fw.wait_ready(AMB.id, 30) is None


def test_a_catalog_change_feeds_the_ambassadors_served_for_the_changed_services(tmp_path):
    """From the forwarder's own list of what it serves: no read of every container
    record (a catalog change cost O(containers), issue 18)."""
    sent: list[dict] = []
    fw = HostForwarder(ForwarderConfig(tmp_path, "http://10.0.0.1:8500", 1, 1), records=None,
                       netns_path=str, instances=lambda service: [])
    fw._request = lambda data, fds=(): sent.append(json.loads(data)) or {"ok": True, "ready": True}
    fw._alive = lambda: True
    other = SimpleNamespace(id="b" * 64, name="amb-Web-bridge", spec=SimpleNamespace(ambassador={"service": "Web"}))
    fw._served = {AMB.id: AMB, other.id: other}
    fw.feed_services({"web"})                              # the catalog's names are lower case
    assert [(m["op"], m["id"]) for m in sent] == [("feed", other.id)]
    fw.feed_services({"cache"})
    assert len(sent) == 1, "nothing served for that service"
    fw._alive = lambda: False
    fw.feed_services({"db", "web"})
    assert len(sent) == 1, "no forwarder: nothing to feed (its restart gives every listener afresh)"


def test_reroutes_feed_the_changed_services_alone_without_reading_every_container():
    from portlink.catalog.services import Instance
    from portlink.runtime.ambassador_policy import AmbassadorPolicy
    fed = []
    records = SimpleNamespace(all=lambda: pytest.fail("every container read"), running_ambassadors=lambda: [])
    policy = AmbassadorPolicy(records, lifecycle=None, catalog=None, consul_url="http://x", events=None,
                              changed=lambda: None)
    policy.forwarder = SimpleNamespace(feed_services=fed.append)
    one = Instance(id="db-1", service="db", address="10.0.0.5", port=5432, node="n1")
    two = Instance(id="db-2", service="db", address="10.0.0.6", port=5432, node="n2")
    policy.reroutes({"db": (one,), "web": (one,)}, {"db": (one, two), "web": (one,), "new": (two,)})
    assert fed == [{"db", "new"}]
    policy.reroutes({"db": (one,)}, {"db": (one,)})
    assert fed == [{"db", "new"}], "nothing changed: nothing fed"
