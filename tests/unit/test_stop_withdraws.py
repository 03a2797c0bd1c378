"""A graceful stop on a Consul host leaves Consul before its signal (a move
drains): the withdraw hook runs first, with the container marked withdrawn
(so the registrar's pass drops it and its server side), and the mark goes
once the stop is over, whatever happened. Fakes only: the order is the point."""

from __future__ import annotations

import pytest

from portlink.errors import RuntimeFailure
from portlink.runtime.containers import Containers
from portlink.runtime.records import RUNNING, Container
from portlink.runtime.spec import ContainerSpec


def ctr(name: str, ambassador=None, status=RUNNING) -> Container:
    spec = ContainerSpec(image="busybox", name=name, hostname=name, network="bridge", ambassador=ambassador)
    return Container(id=name.ljust(64, "0"), name=name, spec=spec, exposed=("80/tcp",), status=status)


class Fake:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def setup(c: Container, fail: bool = False):
    calls = []
    records = Fake(find=lambda ref: c)

    def stop(cid, timeout):
        calls.append(("signal", cid in containers.withdrawn))
        if fail:
            raise RuntimeFailure("runc kill failed")
        return []
    life = Fake(stop=stop)
    amb = Fake(hold=lambda cid: None)
    refresher = Fake(changed=lambda: calls.append(("changed",)))
    views = Fake(inspect=lambda cid: {"id": cid})
    containers = Containers(records, life, amb, refresher, views)
    containers.restarts = Fake(stopped_by_user=lambda cid: None)
    containers.withdraw = lambda x: calls.append(("withdraw", x.name, x.id in containers.withdrawn))
    return containers, calls


def test_the_container_leaves_consul_before_its_signal_and_the_mark_goes_after():
    c = ctr("frontdb")
    containers, calls = setup(c)
    containers.stop("frontdb", 5)
    assert calls == [("withdraw", "frontdb", True), ("signal", True), ("changed",)]
    assert containers.withdrawn == set()


def test_the_mark_goes_also_when_the_stop_fails():
    containers, calls = setup(ctr("frontdb"), fail=True)
    with pytest.raises(RuntimeFailure):
        containers.stop("frontdb", 5)
    assert calls[0] == ("withdraw", "frontdb", True) and containers.withdrawn == set()


@pytest.mark.parametrize("c", [ctr("amb-x-bridge", ambassador={"service": "x"}), ctr("done", status="exited")])
def test_ambassadors_and_stopped_containers_are_not_withdrawn(c):
    containers, calls = setup(c)
    containers.stop(c.name, 5)
    assert [x[0] for x in calls][:1] == ["signal"]


def test_without_consul_nothing_is_withdrawn():
    containers, calls = setup(ctr("frontdb"))
    containers.withdraw = None
    containers.stop("frontdb", 5)
    assert calls[0] == ("signal", False)
