"""HostForwarder.wait_ready: a run that links to a hosted ambassador waits for the
forwarder's word that it forwards (its reply to a feed), not for a poll of the
ambassador's /stats (issue 18). The forwarder's replies are given here; the
forwarder itself is tests/unit/test_hostfwd.py's."""

from __future__ import annotations

import threading
from types import SimpleNamespace

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
