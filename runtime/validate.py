"""Validation of user input (pure): names, env entries, users, hostnames, labels, paths, argv."""

from __future__ import annotations

import re
from portlink import parse
from portlink.errors import InvalidArgument, InvalidValue

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
HOSTNAME_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")
NETWORK_ID_RE = re.compile(r"^[0-9a-f]{64}$")
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:-]{0,254}$")
MAX_LABEL_VALUE = 4096
MAX_PATH = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise InvalidArgument(
            f"invalid {kind} name {value!r}: use 1 to 63 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit")
    return value


def network_ref(value: str) -> str:
    """A network named by its name or its full id (64 hex digits)."""
    if isinstance(value, str) and NETWORK_ID_RE.fullmatch(value):
        return value
    return name("network", value)


def env_entry(entry: str) -> str:
    if not isinstance(entry, str):
        raise InvalidArgument(f"invalid environment entry {entry!r}: expected KEY=value")
    key, sep, val = entry.partition("=")
    if not sep or not ENV_KEY_RE.fullmatch(key):
        raise InvalidArgument(f"invalid environment entry {entry!r}: expected KEY=value with KEY "
                              "made of letters, digits and '_'")
    if "\n" in val or "\0" in val or "\r" in val:
        raise InvalidArgument(f"invalid environment value for {key}: newlines and NUL are not allowed")
    return entry


def hostname(value: str) -> str:
    if not isinstance(value, str) or not HOSTNAME_RE.fullmatch(value):
        raise InvalidArgument(f"invalid hostname {value!r}: use a DNS label (letters, digits, '-', at most 63)")
    return value


def label(key: str, value: str) -> None:
    if not isinstance(key, str) or not LABEL_KEY_RE.fullmatch(key):
        raise InvalidArgument(f"invalid label key {key!r}: use 1 to 255 letters, digits, '.', '_', '-', '/' "
                              "or ':', starting with a letter or digit")
    if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE or _CONTROL.search(value):
        raise InvalidArgument(f"invalid value of label {key}: at most {MAX_LABEL_VALUE} characters, "
                              "no control characters (newline, tab, NUL)")


def ip(what: str, value: str) -> str:
    """An IPv4 or IPv6 address, written the usual way (no zone, no surrounding space)."""
    try:
        parse.ip(what, value)
    except InvalidValue:
        raise InvalidArgument(f"invalid {what} {value!r}: not an IP address") from None
    return value


def abs_path(what: str, value: str) -> str:
    """An absolute path inside the container (workdir): no NUL, not absurdly long."""
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value or len(value) > MAX_PATH:
        raise InvalidArgument(f"invalid {what} {value!r}: expected an absolute path (starting with '/') "
                              "without NUL bytes")
    return value


def argv(what: str, values: list[str]) -> list[str]:
    """A command line: execve takes C strings, so no NUL; the program name is not empty.
    Nothing is ever passed through a shell, so other characters are literal."""
    for i, v in enumerate(values):
        if "\0" in v:
            raise InvalidArgument(f"invalid {what}: argument {i} {v!r} contains a NUL byte")
    if values and not values[0]:
        raise InvalidArgument(f"invalid {what}: the program name (argument 0) is empty")
    return values


def str_list(field: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise InvalidArgument(f"field {field!r} must be a list of strings")
    return value


def exec_body(body: dict) -> tuple[list[str], list[str], bool, str | None]:
    """The fields of POST /containers/{ref}/exec, checked: (cmd, env, tty, workdir)."""
    unknown = sorted(set(body) - {"cmd", "env", "tty", "workdir"})
    if unknown:
        raise InvalidArgument(f"unknown field(s) in the exec request: {', '.join(unknown)}")
    cmd = argv("cmd", str_list("cmd", body.get("cmd") or []))
    env = [env_entry(e) for e in str_list("env", body.get("env") or [])]
    tty = body.get("tty", False)
    if not isinstance(tty, bool):
        raise InvalidArgument("field 'tty' must be true or false")
    workdir = body.get("workdir")
    if workdir is not None and workdir != "":
        abs_path("workdir", workdir)
    return cmd, env, tty, workdir or None


def parse_user(value: str, passwd: str, group: str) -> tuple[int, int]:
    """uid[:gid] or name[:group], names looked up in the image's /etc/passwd and /etc/group."""
    if not isinstance(value, str) or _CONTROL.search(value) or len(value) > 256:
        raise InvalidArgument(f"invalid --user {value!r}: expected user[:group] or uid[:gid]")
    user, _, grp = value.partition(":")

    def lookup(text: str, table: str, what: str) -> tuple[int, int]:
        if text.isascii() and text.isdigit():
            return int(text), -1
        for line in table.splitlines():
            f = line.split(":")
            if len(f) >= 4 and f[0] == text:
                return int(f[2]), int(f[3]) if what == "user" else -1
        raise InvalidArgument(f"unknown {what} {text!r} in --user {value!r}: not in the image's /etc/{'passwd' if what == 'user' else 'group'}")

    uid, gid = lookup(user, passwd, "user")
    if grp:
        gid = lookup(grp, group, "group")[0]
    return uid, gid if gid >= 0 else 0  # Docker: a bare uid runs with gid 0
