"""The `portlink` command builds only the chosen command's subparser: the result,
the help and the errors must be what the whole parser gives."""

import contextlib
import io

import pytest

from portlink.runtime import cli


def _parse(parser, argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            ns = vars(parser.parse_args(argv))
            code = None
        except SystemExit as e:
            ns, code = None, e.code
    return ns, code, out.getvalue(), err.getvalue()


CASES = [
    ["ps"], ["ps", "-a", "-q"], ["ps", "--format", "json"], ["ps", "--format", "bad"], ["ps", "extra"],
    ["ps", "-h"], ["-H", "/x", "ps"], ["--host", "/x", "ps", "-a"], ["--host=/x", "ps"], ["-H/x", "ps"],
    ["-H", "ps", "ps"], ["ps", "-H", "/x"], ["run", "-d", "--name", "a", "busybox", "sleep", "1"],
    ["run", "--ambassador-policy", "bad", "i"], ["run", "-h"], ["stop", "-t", "3", "a", "b"], ["stop"],
    ["start", "a"], ["restart", "-h"], ["rm", "-f", "a"], ["events", "--since", "1m", "-f", "type=container"],
    ["stats", "--no-stream", "--interval", "x"], ["logs", "-f", "-n", "5", "c"], ["exec", "-it", "c", "sh", "-c", "x"],
    ["inspect", "a", "b"], ["network", "create", "--subnet", "10.9.0.0/24", "n"], ["network", "ls", "-h"],
    ["network"], ["network", "bogus"], ["image", "import", "t.tar", "n"], ["image", "rm", "x"],
    ["system", "check", "--format", "json"], ["system", "prune", "-f"], ["lab", "up", "--hosts", "2"],
    ["lab", "exec", "h1", "--", "portlink", "ps"], ["lab", "consul", "stop", "h1"], ["lab", "down", "-h"],
    ["load", "-i", "a.tar"], ["load", "-q"], ["save", "-o", "x.tar", "redis", "pg:16"], ["save"],
    ["image", "inspect", "redis"], ["image", "tag", "redis", "cache:1"], ["image", "load", "-i", "-"],
    ["run", "--entrypoint", "", "--stop-signal", "QUIT", "redis", "x"],
]


@pytest.mark.parametrize("argv", CASES, ids=" ".join)
def test_one_command_parser_parses_as_the_whole_parser(argv, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    cmd = cli.command_of(argv)
    assert cmd is not None
    assert _parse(cli.build_parser(cmd), argv) == _parse(cli.build_parser(), argv)


@pytest.mark.parametrize("argv", [[], ["-h"], ["--help"], ["bogus"], ["PS"], ["-H"], ["-H", "-x", "ps"],
                                  ["--ho", "/x", "ps"], ["--", "ps"]], ids=repr)
def test_help_no_command_or_unknown_one_take_the_whole_parser(argv):
    assert cli.command_of(argv) is None


def test_the_whole_parser_lists_every_command_in_order():
    assert list(cli.COMMANDS) == ["run", "ps", "start", "stop", "restart", "rm", "events", "stats", "logs", "exec",
                                  "attach", "kill", "wait", "top", "port", "cp", "inspect", "network", "image", "volume", "load", "save",
                                  "system", "lab", "link"]
    listed = [line.split()[0] for line in cli.build_parser().format_help().split("COMMAND\n", 1)[1].splitlines()
              if line.startswith("    ") and not line.startswith("     ")]
    assert listed == list(cli.COMMANDS)


@pytest.mark.parametrize("query", [{"force": "1", "volumes": "1"}, {"follow": "1", "format": "cri"}, {"tail": 5},
                                   {"since": "2024-01-01T00:00:00Z"}, {"filter": ["a=b", "c"]}, {"t": "10.5"},
                                   {"x": "a b"}, {"x": True}, {"ref": "näme"}, {}], ids=repr)
def test_the_clients_query_string_is_urlencodes_own(query):
    import urllib.parse

    from portlink.runtime.client import _query_string
    assert _query_string(query) == urllib.parse.urlencode(query, doseq=True)


def test_run_needs_neither_cp_nor_ops_modules():
    import subprocess
    import sys
    code = ("import sys\nfrom portlink.runtime import cli\ncli.build_parser('run').parse_args(['run', '--rm', 'b'])\n"
            "print(sorted(m for m in ('tarfile', 'tempfile', 'portlink.runtime.cli_cp', 'portlink.runtime.cli_ops')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"
