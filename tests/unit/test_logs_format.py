"""The container log format (CRI records), joining fragments, --tail / --since,
log options, and reading the rotated files (runtime/logfmt.py)."""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone

import pytest

from portlink.errors import InvalidArgument, RuntimeFailure
from portlink.runtime import logfmt, runc
from portlink.runtime.logfmt import LogLimits, Reader, Record

T0 = 1_714_564_800_000_000_000   # 2024-05-01T12:00:00Z in ns


def rec(t: int, stream: str, tag: str, text: str) -> bytes:
    return f"{logfmt.format_time(T0 + t)} {stream} {tag} {text}\n".encode()


# -- records ---------------------------------------------------------------------------
def test_time_round_trip_keeps_nanoseconds():
    assert logfmt.format_time(T0 + 123456789) == "2024-05-01T12:00:00.123456789Z"
    assert logfmt.parse_time(b"2024-05-01T12:00:00.123456789Z") == T0 + 123456789
    assert logfmt.parse_time(b"2024-05-01T12:00:00Z") == T0
    assert logfmt.parse_time(b"2024-05-01T12:00:00.5Z") == T0 + 500_000_000   # RFC3339Nano trims zeros
    for bad in (b"2024-05-01 12:00:00Z", b"2024-05-01T12:00:00.12x4Z", b"2024-05-01T12:00:00+02:00"):
        with pytest.raises(ValueError):
            logfmt.parse_time(bad)


def test_parse_record_fields_and_text_kept_byte_exact():
    r = logfmt.parse_record(b"2024-05-01T12:00:00.000000001Z stderr F  two  spaces \xff\r")
    assert r == Record(T0 + 1, "stderr", False, b" two  spaces \xff\r")
    p = logfmt.parse_record(b"2024-05-01T12:00:00Z stdout P ")
    assert p == Record(T0, "stdout", True, b"")
    assert logfmt.parse_record(b"2024-05-01T12:00:00Z stdout F") == Record(T0, "stdout", False, b"")
    assert logfmt.format_record(r) == b"2024-05-01T12:00:00.000000001Z stderr F  two  spaces \xff\r\n"


@pytest.mark.parametrize("line", [
    b"", b"garbage", b"2024-05-01T12:00:00Z stdin F x", b"2024-05-01T12:00:00Z stdout X x",
    b"yesterday stdout F x", b"2024-05-01T12:0",   # a record cut short
])
def test_lines_that_are_not_records_are_skipped(line):
    assert logfmt.parse_record(line) is None


def test_parse_records_ignores_an_unfinished_last_line():
    data = rec(0, "stdout", "F", "a") + rec(1, "stdout", "F", "b")[:20]
    assert [r.text for r in logfmt.parse_records(data)] == [b"a"]


def test_join_glues_each_streams_fragments_in_order():
    data = (rec(1, "stdout", "P", "hel") + rec(2, "stderr", "F", "oops") + rec(3, "stdout", "P", "lo ")
            + rec(4, "stdout", "F", "world") + rec(5, "stderr", "P", "no newline"))
    lines = logfmt.join(logfmt.parse_records(data))
    assert lines == [Record(T0 + 2, "stderr", False, b"oops"),
                     Record(T0 + 1, "stdout", False, b"hello world"),   # the time of its first fragment
                     Record(T0 + 5, "stderr", True, b"no newline")]


def test_joiner_continues_across_feeds():
    j = logfmt.Joiner()
    assert j.feed(logfmt.parse_records(rec(1, "stdout", "P", "a"))) == []
    assert j.feed(logfmt.parse_records(rec(2, "stdout", "F", "b"))) == [Record(T0 + 1, "stdout", False, b"ab")]
    assert j.rest() == []


def test_select_since_then_tail():
    lines = [Record(T0 + i, "stdout", False, str(i).encode()) for i in range(10)]
    assert [l.text for l in logfmt.select(lines, tail=3)] == [b"7", b"8", b"9"]
    assert logfmt.select(lines, tail=0) == []
    assert logfmt.select(lines, tail=50) == lines
    assert [l.text for l in logfmt.select(lines, since_ns=T0 + 6)] == [b"6", b"7", b"8", b"9"]
    assert [l.text for l in logfmt.select(lines, tail=2, since_ns=T0 + 1)] == [b"8", b"9"]
    assert logfmt.select(lines, since_ns=T0 + 100) == []


def test_render_text_puts_the_time_only_at_a_line_start():
    r = Record(T0, "stdout", True, b"abc")
    assert logfmt.render_text(r) == b"abc"
    assert logfmt.render_text(r, timestamps=True) == b"2024-05-01T12:00:00.000000000Z abc"
    assert logfmt.render_text(Record(T0, "stdout", False, b"def"), True, at_line_start=False) == b"def\n"


# -- options ---------------------------------------------------------------------------
@pytest.mark.parametrize("text,size", [("1m", 1 << 20), ("512k", 512 << 10), ("1.5m", 3 << 19), ("65536", 65536),
                                       ("10MB", 10 << 20), ("2g", 2 << 30), ("32KiB", 32 << 10)])
def test_sizes_are_dockers(text, size):
    assert logfmt.parse_size("--log-opt max-size", text) == size


@pytest.mark.parametrize("text", ["", "ten", "-1m", "1x", "1k", "1023"])
def test_bad_sizes_are_refused_by_name(text):
    with pytest.raises(InvalidArgument, match="max-size"):
        logfmt.parse_size("--log-opt max-size", text)


def test_log_opts_override_the_daemons_defaults():
    d = LogLimits(5 << 20, 4)
    assert logfmt.parse_log_opts({}, d) == d
    assert logfmt.parse_log_opts({"max-size": "1m"}, d) == LogLimits(1 << 20, 4)
    assert logfmt.parse_log_opts({"max-size": "1m", "max-file": "2"}, d) == LogLimits(1 << 20, 2)
    assert logfmt.parse_log_opts({}) == LogLimits(10 << 20, 3)   # Docker's usual 10m x 3


@pytest.mark.parametrize("opts,match", [
    ({"max-files": "2"}, "unknown --log-opt max-files"), ({"max-file": "0"}, "max-file"),
    ({"max-file": "1000"}, "1 to 100"), ({"max-file": "two"}, "max-file"), ({"max-size": 5}, "strings"),
    (["max-size=1m"], "strings"),
])
def test_bad_log_opts_are_refused_with_a_message(opts, match):
    with pytest.raises(InvalidArgument, match=match):
        logfmt.parse_log_opts(opts)


def test_cli_log_opt_args():
    assert logfmt.parse_log_opt_args(["max-size=1m", "max-file=2"]) == {"max-size": "1m", "max-file": "2"}
    for bad in ("max-size", "=1m"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            logfmt.parse_log_opt_args([bad])


def test_tail_values():
    assert logfmt.parse_tail(None) is None and logfmt.parse_tail("all") is None
    assert logfmt.parse_tail("0") == 0 and logfmt.parse_tail("25") == 25
    for bad in ("-1", "ten", "1.5", "٣"):
        with pytest.raises(InvalidArgument, match="--tail"):
            logfmt.parse_tail(bad)


def test_since_values():
    now = 1_714_564_800.0
    assert logfmt.parse_since(None) is None
    assert logfmt.parse_since("1714564000", now) == 1_714_564_000 * 10**9
    assert logfmt.parse_since("1714564000.25", now) == 1_714_564_000_250_000_000
    assert logfmt.parse_since("10m", now) == int((now - 600) * 1e9)
    assert logfmt.parse_since("1h30m", now) == int((now - 5400) * 1e9)
    assert logfmt.parse_since("500ms", now) == int((now - 0.5) * 1e9)
    assert logfmt.parse_since("2d", now) == int((now - 172800) * 1e9)
    assert logfmt.parse_since("2024-05-01T12:00:00Z", now) == T0
    assert logfmt.parse_since("2024-05-01T14:00:00.5+02:00", now) == T0 + 500_000_000
    for bad in ("yesterday", "10 minutes", "-10m", "1h30", "m"):
        with pytest.raises(InvalidArgument, match="--since"):
            logfmt.parse_since(bad, now)


# -- files -----------------------------------------------------------------------------
def write(path, *records: bytes) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(records))


def test_rotated_files_in_age_order(tmp_path):
    log = tmp_path / "container.log"
    for name in ("container.log", "container.log.1", "container.log.2", "container.log.10", "container.log.x",
                 "container.logger"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in logfmt.all_files(log)] == ["container.log.10", "container.log.2", "container.log.1",
                                                        "container.log"]


def test_tail_and_since_across_rotated_files(tmp_path):
    log = tmp_path / "container.log"
    write(f"{log}.2", *(rec(i, "stdout", "F", f"l{i}") for i in range(0, 3)))
    write(f"{log}.1", *(rec(i, "stdout", "F", f"l{i}") for i in range(3, 5)), rec(5, "stderr", "P", "long "))
    write(log, rec(6, "stderr", "F", "line"), *(rec(i, "stdout", "F", f"l{i}") for i in range(7, 9)))
    texts = lambda recs: [r.text.decode() for r in recs]
    assert texts(Reader(log).read_existing()) == ["l0", "l1", "l2", "l3", "l4", "long line", "l7", "l8"]
    assert texts(Reader(log).read_existing(tail=4)) == ["l4", "long line", "l7", "l8"]
    assert texts(Reader(log).read_existing(tail=1)) == ["l8"]
    assert texts(Reader(log).read_existing(since_ns=T0 + 4)) == ["l4", "long line", "l7", "l8"]
    assert texts(Reader(log).read_existing(since_ns=T0 + 6)) == ["l7", "l8"]   # the long line began before
    assert Reader(tmp_path / "none.log").read_existing() == []


def test_an_open_line_is_shown_and_then_continued_when_following(tmp_path):
    log = tmp_path / "container.log"
    write(log, rec(0, "stdout", "F", "a"), rec(1, "stdout", "P", "prompt> "))
    r = Reader(log)
    assert r.read_existing() == [Record(T0, "stdout", False, b"a"), Record(T0 + 1, "stdout", True, b"prompt> ")]
    write(log, rec(2, "stdout", "F", "yes"))
    assert r.read_new() == [Record(T0 + 2, "stdout", False, b"yes")]


def test_follow_reads_the_old_file_to_its_end_then_the_new_one(tmp_path):
    log = tmp_path / "container.log"
    write(log, rec(0, "stdout", "F", "before"))
    r = Reader(log)
    assert [x.text for x in r.read_existing()] == [b"before"]
    write(log, rec(1, "stdout", "F", "in the old file"))
    os.rename(log, f"{log}.1")               # what the shim does on rotation
    assert [x.text for x in r.read_new()] == [b"in the old file"]   # the new PATH is not there yet
    write(log, rec(2, "stderr", "F", "in the new file"))
    assert [x.text for x in r.read_new()] == [b"in the new file"]
    write(log, rec(3, "stdout", "F", "half")[:10])   # a record still being written waits for its newline
    assert r.read_new() == []
    write(log, rec(3, "stdout", "F", "half")[10:])
    assert [x.text for x in r.read_new()] == [b"half"]
    r.close()


def test_follow_after_the_file_was_truncated(tmp_path):
    log = tmp_path / "container.log"
    write(log, rec(0, "stdout", "F", "x" * 100))
    r = Reader(log)
    r.read_existing()
    os.truncate(log, 0)                      # the shim undoing a failed write
    write(log, rec(1, "stdout", "F", "after"))
    assert [x.text for x in r.read_new()] == []      # the new record is below the old position...
    write(log, rec(2, "stdout", "F", "later"))
    assert [x.text for x in r.read_new()] == [b"later"]   # ...but what follows is read


# -- the shim binary's lookup ----------------------------------------------------------
def test_a_missing_shim_names_the_setup_command(tmp_path, monkeypatch):
    monkeypatch.delenv("PORTLINK_LOGSHIM", raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeFailure, match=r"portlink-logshim is not built: run \./scripts/setup"):
        runc.logshim_binary()
    shim = tmp_path / "bin" / "portlink-logshim"
    shim.parent.mkdir()
    shim.write_text("#!/bin/sh\n")
    shim.chmod(0o755)
    assert runc.logshim_binary() == str(shim)


def test_a_missing_pause_names_the_setup_command_and_its_variable(tmp_path, monkeypatch):
    from portlink.runtime import shim_binaries
    monkeypatch.delenv("PORTLINK_PAUSE", raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeFailure, match=r"portlink-pause is not built: run \./scripts/setup "
                                             r"\(it compiles shim/pause\.c with musl-gcc.*PORTLINK_PAUSE"):
        shim_binaries.find(shim_binaries.PAUSE)
    other = tmp_path / "pause"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    monkeypatch.setenv("PORTLINK_PAUSE", str(other))
    assert shim_binaries.find(shim_binaries.PAUSE) == str(other)


def test_rfc3339_of_the_shim_is_what_datetime_reads():
    ns = logfmt.parse_time(b"2024-05-01T12:00:00.123456789Z")
    assert datetime.fromtimestamp(ns // 10**9, timezone.utc) == datetime(2024, 5, 1, 12, tzinfo=timezone.utc)


def test_the_container_spec_checks_its_log_opts():
    from portlink.runtime.spec import ContainerSpec
    assert ContainerSpec.from_json({"image": "busybox", "log_opts": {"max-file": "2"}}).log_opts == {"max-file": "2"}
    with pytest.raises(InvalidArgument, match="invalid --log-opt max-size 'x'"):
        ContainerSpec.from_json({"image": "busybox", "log_opts": {"max-size": "x"}})
    with pytest.raises(InvalidArgument, match="log_opts"):
        ContainerSpec.from_json({"image": "busybox", "log_opts": "max-size=1m"})
