"""Whether a server-side ambassador (secure links) belongs in Consul
(runtime.server_sides.advertised): only while the container it serves runs
and neither is being stopped. Pure: Containers built here, no store."""

from __future__ import annotations

from portlink.runtime.records import EXITED, RUNNING, Container
from portlink.runtime.server_sides import advertised, served_container
from portlink.runtime.spec import ContainerSpec

DB, SIDE = "d" * 64, "e" * 64


def db(status: str = RUNNING) -> Container:
    return Container(id=DB, name="frontdb", spec=ContainerSpec(image="busybox"), exposed=("80/tcp",), status=status)


SIDE_C = Container(id=SIDE, name="srv-frontdb", status=RUNNING, exposed=("80/tcp",),
                   spec=ContainerSpec(image="busybox", links=["frontdb:frontdb"],
                                      ambassador={"service": "frontdb", "backends": [[80, "10.0.0.2:80"]]}))


def test_a_server_side_is_advertised_while_its_container_runs():
    assert served_container(SIDE_C) == "frontdb"
    assert advertised(SIDE_C, db(), set())


def test_not_once_its_container_has_exited_though_the_side_still_runs():
    # The moment between the container's exit and the side's removal: re-advertised,
    # it drew new connections to nothing (test_secure_links_moves).
    assert not advertised(SIDE_C, db(EXITED), set())


def test_not_while_either_is_being_stopped_nor_without_its_container():
    assert not advertised(SIDE_C, db(), {DB})
    assert not advertised(SIDE_C, db(), {SIDE})
    assert not advertised(SIDE_C, None, set())


def test_not_before_it_listens():
    # Registered passing, a TCP check before its listener was up failed it for a
    # whole check interval: ServerSides.sync names it starting until it answers.
    assert not advertised(SIDE_C, db(), set(), frozenset({"srv-frontdb"}))
    assert advertised(SIDE_C, db(), set(), frozenset({"srv-other"}))
