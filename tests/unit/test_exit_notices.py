"""ExitNotices (runtime/exit_notices.py): a followed log's wake-up when its
container's process ends."""

from portlink.runtime.exit_notices import ExitNotices


def test_listeners_of_the_container_are_told_the_pid_and_others_are_not():
    n = ExitNotices()
    got: list[tuple[str, int]] = []
    n.listen("a", lambda pid: got.append(("a1", pid)))
    n.listen("a", lambda pid: got.append(("a2", pid)))
    n.listen("b", lambda pid: got.append(("b", pid)))
    n.ended("a", 42)
    assert got == [("a1", 42), ("a2", 42)]


def test_a_listener_that_stopped_is_not_called_and_the_last_one_leaves_no_entry():
    n = ExitNotices()
    got: list[int] = []
    stop = n.listen("a", got.append)
    stop()
    stop()          # twice is harmless (a stream's finally after an error)
    n.ended("a", 7)
    assert got == []
    assert n._listeners == {}


def test_a_listener_may_stop_listening_while_being_told():
    n = ExitNotices()
    got: list[int] = []
    stops = []
    stops.append(n.listen("a", lambda pid: (got.append(pid), stops[0]())))
    n.ended("a", 1)
    n.ended("a", 2)
    assert got == [1]
