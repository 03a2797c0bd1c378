"""The linkers of a client-side ambassador (secure links): which source address
on the bridge is which linking container, as which Connect identity, with
which Consul token file. The daemon writes it (runtime.linker_identity), the
ambassador reads it (ambassador.secure); the format is this module's alone.

One JSON file, `linkers.json`, in a per-ambassador directory bound read-only
into the ambassador (a directory bind, so a rename in it is seen). Writes are
a temporary file and a rename: a reader sees the old map or the new one,
never half of one.

    {"version": 1, "linkers": {"10.88.0.7": {"identity": "web",
                                             "container": "<64 hex>",
                                             "token": "<12 hex>.token"}}}

Layer-2 pinning makes the source address trustworthy: a container cannot send
from another's address, so the address names the container."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

FILE = "linkers.json"
VERSION = 1
_IDENTITY = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")   # a service identity (DNS label)
_TOKEN = re.compile(r"^([0-9a-f]{12}\.token)?$")   # "": no token (Consul without ACLs)
_CONTAINER = re.compile(r"^[0-9a-f]{12,64}$")


class MapError(ValueError):
    """A map file that is not what the daemon writes."""


@dataclass(frozen=True)
class Linker:
    identity: str       # the linker's service name: the leaf it is presented with
    container: str      # the linking container's id
    token: str          # the token file's name in the map's directory; "": none (no ACLs)

    def to_json(self) -> dict:
        return {"identity": self.identity, "container": self.container, "token": self.token}


def token_name(container_id: str) -> str:
    return f"{container_id[:12]}.token"


def check(ip: str, linker: Linker) -> None:
    try:
        ipaddress.IPv4Address(ip)
    except ValueError:
        raise MapError(f"linker address {ip!r} is not an IPv4 address") from None
    if not _IDENTITY.match(linker.identity):
        raise MapError(f"linker identity {linker.identity!r} is not a service identity name "
                       "(lower-case letters, digits and '-', at most 63)")
    if not _CONTAINER.match(linker.container):
        raise MapError(f"linker container {linker.container!r} is not a container id")
    if not _TOKEN.match(linker.token):
        raise MapError(f"linker token file {linker.token!r} is not <12 hex>.token (or empty: none)")


def dumps(linkers: dict[str, Linker]) -> str:
    for ip, x in linkers.items():
        check(ip, x)
    return json.dumps({"version": VERSION, "linkers": {ip: x.to_json() for ip, x in sorted(linkers.items())}},
                      indent=1) + "\n"


def loads(text: str) -> dict[str, Linker]:
    """The map; MapError names what is wrong (the reader keeps its last good map then)."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise MapError(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("linkers"), dict):
        raise MapError(f"expected {{\"version\": {VERSION}, \"linkers\": {{...}}}}")
    out: dict[str, Linker] = {}
    for ip, x in doc["linkers"].items():
        if not isinstance(x, dict) or not all(isinstance(x.get(k), str) for k in ("identity", "container", "token")):
            raise MapError(f"linker {ip!r}: expected {{identity, container, token}} strings")
        linker = Linker(x["identity"], x["container"], x["token"])
        check(ip, linker)
        out[ip] = linker
    return out


def tokens(linkers: dict[str, Linker]) -> dict[str, str]:
    """identity -> the token file its leaf is fetched with: several linkers of one
    identity share a leaf; the token of the oldest-sorting container is used, so
    the choice changes only when that linker goes."""
    out: dict[str, str] = {}
    for x in sorted(linkers.values(), key=lambda x: x.container):
        out.setdefault(x.identity, x.token)
    return out


def read(directory: Path) -> dict[str, Linker]:
    """The map in `directory`; none written yet: empty."""
    try:
        text = (directory / FILE).read_text()
    except FileNotFoundError:
        return {}
    return loads(text)


def write(directory: Path, linkers: dict[str, Linker]) -> None:
    """Replace the map atomically (temporary file, fsync, rename), readable by the
    ambassador's user: it holds addresses and names, no secret."""
    text = dumps(linkers)
    tmp = directory / f".{FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, directory / FILE)
