"""Log lines: text by default, one JSON object per line with --log-format json."""

from __future__ import annotations

import io
import json
import logging

import pytest

from portlink import logsetup


@pytest.fixture
def restore_root():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_extra_fields_and_keep_tracebacks_on_one_line(restore_root):
    out = io.StringIO()
    logsetup.configure("info", "json", stream=out)
    log = logging.getLogger("portlink.test")
    log.info("container %s started", "web", extra={"event": "start", "id": "abc"})
    log.debug("not shown at info")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("internal error")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, "one line per record, the traceback inside it"
    first, second = map(json.loads, lines)
    assert {k: first[k] for k in ("level", "logger", "msg", "event", "id")} == \
        {"level": "info", "logger": "portlink.test", "msg": "container web started", "event": "start", "id": "abc"}
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert second["level"] == "error" and "ValueError: boom" in second["exc"]


def test_text_is_the_default(restore_root):
    out = io.StringIO()
    logsetup.configure(stream=out)
    logging.getLogger("portlink.test").warning("hello %d", 3)
    assert out.getvalue().rstrip().endswith("WARNING portlink.test: hello 3")


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="invalid log format 'xml'"):
        logsetup.configure("info", "xml")
