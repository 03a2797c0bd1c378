"""Docker-compatible --link rendering (pure): parsing, env variables, /etc/hosts lines.

The output mirrors moby's daemon/links/links.go and ReplaceOrAppendEnvValues byte
for byte, order included, so images written against Docker's link variables work
unchanged."""

from __future__ import annotations

from dataclasses import dataclass

from portlink.errors import InvalidArgument
from portlink.runtime import validate


@dataclass(frozen=True)
class LinkRequest:
    name: str    # the linked (child) container
    alias: str   # what the parent calls it: env prefix and hosts name


def parse_link(text: str) -> LinkRequest:
    """`name` or `name:alias`; a leading '/' on the name is Docker's stored form."""
    parts = text.split(":")
    if len(parts) > 2:
        raise InvalidArgument(f"invalid --link {text!r}: expected NAME or NAME:ALIAS (one ':' at most)")
    name = parts[0].removeprefix("/")
    alias = parts[1] if len(parts) == 2 else name
    if not name or not alias:
        raise InvalidArgument(f"invalid --link {text!r}: expected NAME or NAME:ALIAS, neither part empty")
    try:
        validate.name("container", name)
        validate.name("link alias", alias)
    except InvalidArgument as e:
        raise InvalidArgument(f"invalid --link {text!r}: {e}") from None
    return LinkRequest(name, alias)


def check_links(requests: list[LinkRequest]) -> None:
    """Aliases must be unique ignoring case: env prefixes are upper-cased and
    hostnames match case-insensitively, so 'DB' and 'db' would shadow each other."""
    seen: dict[str, str] = {}
    for r in requests:
        key = r.alias.lower()
        if key in seen:
            same = f"{r.alias!r}" if seen[key] == r.alias else f"{seen[key]!r} and {r.alias!r}"
            raise InvalidArgument(f"duplicate --link alias {same}: give each link its own alias (NAME:ALIAS)")
        seen[key] = r.alias


@dataclass(frozen=True)
class LinkedContainer:
    name: str
    hostname: str
    ip: str
    exposed: tuple[str, ...]   # "80/tcp", "53/udp"
    env: tuple[str, ...]       # KEY=value: image env then user env, as given


@dataclass(frozen=True, order=True)
class _Port:
    num: int
    proto: str


def _ports(exposed: tuple[str, ...]) -> list[_Port]:
    # Docker keeps exposed ports in a map: duplicates collapse, order is lost,
    # and withTCPPriority restores one (tcp first, then by proto, then number).
    ports = set()
    for e in exposed:
        num, _, proto = e.partition("/")
        ports.add(_Port(int(num), (proto or "tcp").lower()))
    return sorted(ports, key=lambda p: (p.proto != "tcp", p.proto, p.num))


def _env_prefix(alias: str) -> str:
    """Docker's variable prefix: upper-cased, '-' to '_' (dots stay, as in Docker)."""
    return alias.upper().replace("-", "_")


def link_env(parent: str, alias: str, child: LinkedContainer) -> list[str]:
    """The variables Docker's Link.ToEnv() gives the parent, in Docker's order."""
    a, ip = _env_prefix(alias), child.ip
    ports = _ports(child.exposed)
    env: list[str] = []

    def url(p: _Port) -> str:
        return f"{p.proto}://{ip}:{p.num}"

    def prefix(p: _Port) -> str:
        return f"{a}_PORT_{p.num}_{p.proto.upper()}"

    start = end = ports[0] if ports else None
    for i, p in enumerate(ports):
        if i == 0:
            env.append(f"{a}_PORT={url(p)}")
        pre = prefix(p)
        env += [f"{pre}={url(p)}", f"{pre}_ADDR={ip}", f"{pre}_PORT={p.num}", f"{pre}_PROTO={p.proto}"]
        # Extend the current run; a run is only closed once a port breaks it, so
        # the breaking port's variables land before the run's START/END (Docker's quirk).
        if p.num == end.num + 1 and p.proto == end.proto:
            end = p
            if i < len(ports) - 1:
                continue
        if end != start:
            pre = prefix(start)
            env += [f"{pre}_START={url(start)}", f"{pre}_PORT_START={start.num}",
                    f"{pre}_END={url(end)}", f"{pre}_PORT_END={end.num}"]
        start = end = p

    env.append(f"{a}_NAME=/{parent}/{alias}")
    for entry in child.env:
        key, sep, val = entry.partition("=")
        # HOME and PATH come from the image build and mean nothing to the parent.
        if sep and key not in ("HOME", "PATH"):
            env.append(f"{a}_ENV_{key}={val}")
    return env


def hosts_line(alias: str, child: LinkedContainer) -> str:
    """Docker's /etc/hosts entry for a link; the name is added only when the alias hides it."""
    names = f"{alias} {child.hostname}"
    if alias != child.name:
        names += f" {child.name}"
    return f"{child.ip}\t{names}"


def merge_env(base: list[str], link_envs: list[str], user: list[str]) -> list[str]:
    """Docker's process env: base (PATH, HOSTNAME) + link env, then ReplaceOrAppendEnvValues
    with the container's env: a known key is replaced in place, an unknown one appended,
    and a bare KEY (no '=') unsets it. Like Docker, appended keys are not looked up again."""
    out: list[str | None] = [*base, *link_envs]
    index = {e.partition("=")[0]: i for i, e in enumerate(out)}  # last duplicate wins, as in Docker
    for entry in user:
        key, sep, _ = entry.partition("=")
        if key in index:
            out[index[key]] = entry if sep else None
        elif sep:
            out.append(entry)
    return [e for e in out if e is not None]
