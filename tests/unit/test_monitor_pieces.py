"""Pure pieces of the container monitor's protocol: its exit file, the attach
frames, the detach keys (runtime/runc.py, runtime/cli_attach.py)."""

from __future__ import annotations

import struct

import pytest

from portlink.runtime import cli_attach
from portlink.runtime.runc import parse_exit_file


@pytest.mark.parametrize("text,code", [
    ("0\n", 0), ("7\n", 7), ("137\n", 137), ("255\n", 255),
    ("", None), ("7", None),            # torn: the monitor writes the newline last (and renames)
    ("256\n", None), ("-1\n", None), ("x\n", None), (" \n", None),
])
def test_exit_file(text, code):
    assert parse_exit_file(text) == code


def test_frames_round_trip_in_pieces_of_any_size():
    data = (cli_attach.frame(cli_attach.STDOUT, b"hello\n") + cli_attach.frame(cli_attach.STDERR, b"")
            + cli_attach.frame(cli_attach.EXIT, b"3"))
    for step in (1, 3, 8, len(data)):
        r, got = cli_attach.FrameReader(), []
        for i in range(0, len(data), step):
            got += r.feed(data[i:i + step])
        assert got == [(1, b"hello\n"), (2, b""), (3, b"3")]


def test_frame_header_is_dockers():
    assert cli_attach.frame(2, b"ab") == b"\x02\x00\x00\x00\x00\x00\x00\x02ab"
    assert cli_attach.resize_frame(24, 80) == b"\x04\x00\x00\x00\x00\x00\x00\x04" + struct.pack(">HH", 24, 80)


def test_stdin_is_split_within_the_monitors_frame_limit():
    data = bytes(range(256)) * 40   # 10240 bytes
    frames = cli_attach.FrameReader().feed(cli_attach.stdin_frames(data))
    assert [len(p) for _, p in frames] == [4096, 4096, 2048]
    assert all(k == cli_attach.STDIN for k, _ in frames) and b"".join(p for _, p in frames) == data
    assert cli_attach.stdin_frames(b"") == b""


def test_detach_keys():
    d = cli_attach.DetachKeys()
    assert d.feed(b"ls\r") == (b"ls\r", False)
    assert d.feed(b"a\x10") == (b"a", False)       # a prefix is held back ...
    assert d.feed(b"x") == (b"\x10x", False)       # ... and sent on when it was not one
    assert d.feed(b"\x10") == (b"", False)
    assert d.feed(b"\x11rest") == (b"", True)
    assert cli_attach.DetachKeys().feed(b"echo\x10\x11") == (b"echo", True)


@pytest.mark.parametrize("payload,code", [(b"0", 0), (b"137", 137), (b"", None), (b"x", None)])
def test_exit_frame(payload, code):
    assert cli_attach.parse_exit(payload) == code
