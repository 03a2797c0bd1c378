"""`portlink kill`, `wait`, `top` and `port`, with Docker's output; the pure
formatting (port lines, top's table) is here too, tested without a daemon."""

from __future__ import annotations

import json
import re
import sys

from portlink.errors import InvalidArgument
from portlink.runtime.cli_commands import EXIT_ERROR, _each, _q
from portlink.runtime.client import CliError, Client
from portlink.runtime.signals import parse_signal


# -- pure ------------------------------------------------------------------------------

def _natural(text: str) -> list:
    """Docker's sortorder.NaturalLess as a key: runs of digits compare as numbers."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|\D+", text)]


def _join(ip: str, port: str) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"     # Go's net.JoinHostPort


def private_port(text: str) -> str:
    """`port`'s PRIVATE_PORT[/PROTO] -> '80/tcp'."""
    port, _, proto = text.partition("/")
    proto = proto or "tcp"
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535) or proto not in ("tcp", "udp", "sctp"):
        raise CliError(f"invalid port {text!r}: expected PORT or PORT/PROTO (tcp or udp), like 80/tcp")
    return f"{int(port)}/{proto}"


def port_lines(ports: dict[str, list[dict]], name: str, private: str | None = None) -> list[str]:
    """Docker's `port`: every mapping as '80/tcp -> 0.0.0.0:8080', in natural order;
    with PRIVATE_PORT only the host addresses of that port."""
    if private is not None:
        key = private_port(private)
        found = ports.get(key)
        if not found:
            raise CliError(f"No public port '{key}' published for {name}")
        return [_join(f["HostIp"], f["HostPort"]) for f in found]
    out = [f"{key} -> {_join(f['HostIp'], f['HostPort'])}" for key, fs in ports.items() for f in fs]
    return sorted(out, key=_natural)


def tab_table(rows: list[list[str]], minwidth: int = 20, padding: int = 3) -> str:
    """Go's tabwriter as Docker's `top` sets it up (minwidth 20, padding 3, spaces):
    every column but the last as wide as its widest cell plus 3, at least 20."""
    if not rows:
        return ""
    cols = max(len(r) for r in rows) - 1
    widths = [max([minwidth, *(len(r[i]) + padding for r in rows if i < len(r) - 1)]) for i in range(cols)]
    lines = []
    for r in rows:
        cells = [c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r)]
        lines.append("".join(cells))
    return "\n".join(lines)


# -- commands ----------------------------------------------------------------------------

def cmd_kill(cl: Client, a) -> int:
    try:
        parse_signal(a.signal)          # before anything is sent: one message, not one per container
    except InvalidArgument as e:
        raise CliError(str(e)) from None
    return _each(a.containers, lambda r: cl.post(f"/containers/{_q(r)}/kill", signal=a.signal))


def cmd_wait(cl: Client, a) -> int:
    """Docker's wait: blocks until each container stops, prints its exit code."""
    rc = 0
    for ref in a.containers:
        try:
            # streamed: no client timeout, the answer comes when the container exits
            resp = cl.request("POST", f"/containers/{_q(ref)}/wait", stream=True)
            print(json.loads(resp.read())["StatusCode"], flush=True)
        except CliError as e:
            print(f"portlink: {e}", file=sys.stderr)
            rc = EXIT_ERROR
        except KeyboardInterrupt:
            return 130
    return rc


def cmd_top(cl: Client, a) -> int:
    args = " ".join(a.ps_args)
    got = cl.get(f"/containers/{_q(a.container)}/top", ps_args=args or None)
    print(tab_table([got["Titles"], *got["Processes"]]))
    return 0


def cmd_port(cl: Client, a) -> int:
    if a.private is not None:
        private_port(a.private)
    lines = port_lines(cl.get(f"/containers/{_q(a.container)}/port"), a.container, a.private)
    if lines:
        print("\n".join(lines))
    return 0
