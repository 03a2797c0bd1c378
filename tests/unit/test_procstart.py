"""A pid with its start time: a reused pid (after a reboot) is another process."""

from __future__ import annotations

import os

import pytest

from portlink.runtime.procstart import is_same, parse_start, process_start, same_process

STAT = "1234 (sleep) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 2000000 100"


def test_parse_start_field_22():
    assert parse_start(STAT) == 987654


def test_parse_start_with_a_hostile_command_name():
    assert parse_start(STAT.replace("(sleep)", "(a) b) 1 2 3 (c)")) == 987654


@pytest.mark.parametrize("text", ["", "garbage", "1 (x) S 1 2", "1 (x)"])
def test_parse_start_unreadable_is_none(text):
    assert parse_start(text) is None


@pytest.mark.parametrize("recorded,now,expected", [
    (987654, 987654, True),
    (987654, 987655, False),   # same pid, another process: the container is dead
    (987654, None, False),     # no such process
    (None, 5, True),           # a row from before start times: the pid alone
    (None, None, False),
])
def test_same_process(recorded, now, expected):
    assert same_process(recorded, now) is expected


def test_this_process():
    me = process_start(os.getpid())
    assert isinstance(me, int) and me > 0
    assert is_same(os.getpid(), me) and not is_same(os.getpid(), me + 1)
    assert process_start(2**22 + 7) is None   # above pid_max's ceiling: never a process
