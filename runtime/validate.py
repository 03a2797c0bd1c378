"""Validation of user input (pure): names, env entries, users, hostnames."""

from __future__ import annotations

import re

from portlink.errors import InvalidArgument

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
HOSTNAME_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")


def name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise InvalidArgument(
            f"invalid {kind} name {value!r}: use 1 to 63 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit")
    return value


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
    if not HOSTNAME_RE.fullmatch(value):
        raise InvalidArgument(f"invalid hostname {value!r}: use a DNS label (letters, digits, '-', at most 63)")
    return value


def parse_user(value: str, passwd: str, group: str) -> tuple[int, int]:
    """uid[:gid] or name[:group], names looked up in the image's /etc/passwd and /etc/group."""
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
