"""run --add-host, --dns-search and --dns-option (pure): Docker's checks and the
lines they add to the container's /etc/hosts and /etc/resolv.conf.

Docker (moby opts/hosts.go, opts/opts.go, libnetwork resolvconf) is copied
where it says something; where it accepts anything, portlink refuses what would
break or inject into the files (a newline, a space in a host name, an option
glibc does not know)."""

from __future__ import annotations

import re

from portlink import parse
from portlink.errors import InvalidArgument, InvalidValue

HOST_GATEWAY = "host-gateway"    # Docker's special --add-host value: the network's gateway here
_HOST_NAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")
# Docker's domainRegexp (opts.validateDomain), with its (:? typo kept: it matches nothing more.
_DOMAIN = re.compile(r"^(:?(?:[a-zA-Z0-9]|(?:[a-zA-Z0-9][a-zA-Z0-9\-]*[a-zA-Z0-9]))"
                     r"(:?\.(?:[a-zA-Z0-9]|(?:[a-zA-Z0-9][a-zA-Z0-9\-]*[a-zA-Z0-9])))*)\.?\s*$")
# resolv.conf options glibc reads (resolv.conf(5)); those in the dict take a number up to the bound.
_OPT_VALUES = {"ndots": 15, "timeout": 30, "attempts": 5}
_OPT_FLAGS = {"debug", "rotate", "no-check-names", "inet6", "ip6-bytestring", "ip6-dotint", "no-ip6-dotint",
              "edns0", "single-request", "single-request-reopen", "no-tld-query", "use-vc", "no-reload",
              "trust-ad", "no-aaaa"}


def parse_add_host(text: str) -> tuple[str, str]:
    """'NAME:IP' (split at the first ':', so 'h:::1' is IPv6) or 'NAME:host-gateway'
    -> (name, ip or HOST_GATEWAY). Docker's messages, then what to do."""
    if not isinstance(text, str):
        raise InvalidArgument(f"bad format for add-host: {text!r}")
    name, sep, ip = text.partition(":")
    if not sep or not name:
        raise InvalidArgument(f"bad format for add-host: {text!r}: expected NAME:IP (or NAME:{HOST_GATEWAY})")
    if not _HOST_NAME.fullmatch(name):
        raise InvalidArgument(f"invalid host name in add-host: {name!r}: use letters, digits, '.', '-' and '_' "
                              "(at most 253)")
    if ip == HOST_GATEWAY:
        return name, ip
    try:
        return name, str(parse.ip("add-host IP", ip))
    except InvalidValue:
        raise InvalidArgument(f"invalid IP address in add-host: {ip!r}") from None


def check_dns_search(text: str) -> str:
    """A search domain as Docker's opts.ValidateDNSSearch takes it ('.' alone:
    no search list); returns the domain without its trailing dot or space."""
    if not isinstance(text, str):
        raise InvalidArgument(f"{text!r} is not a valid domain")
    val = text.strip(" ")
    if val == ".":
        return val
    m = _DOMAIN.match(val) if re.search(r"[a-zA-Z]", val) and "\n" not in val else None
    if m is None or len(m.group(1)) >= 255:
        raise InvalidArgument(f"invalid --dns-search {text!r}: {text} is not a valid domain "
                              "(letters, digits and '-' in dot-separated labels, at least one letter)")
    return m.group(1)


def check_dns_option(text: str) -> str:
    """A resolv.conf option: NAME or NAME:N, NAME one glibc knows."""
    name, sep, value = text.partition(":") if isinstance(text, str) else ("", "", "")
    if name in _OPT_VALUES:
        if sep and value.isascii() and value.isdigit() and int(value) <= _OPT_VALUES[name]:
            return text
        raise InvalidArgument(f"invalid --dns-option {text!r}: {name} takes a number, "
                              f"{name}:0 to {name}:{_OPT_VALUES[name]}")
    if name in _OPT_FLAGS and not sep:
        return text
    known = ", ".join([*(f"{k}:N" for k in _OPT_VALUES), *sorted(_OPT_FLAGS)])
    raise InvalidArgument(f"invalid --dns-option {text!r}: not a resolv.conf option (known: {known})")


def hosts_lines(extra: tuple[str, ...] | list[str], gateway: str | None) -> list[str]:
    """The --add-host lines of /etc/hosts, in the order given, as Docker writes
    them ('IP\\tNAME'); host-gateway is the container's network gateway."""
    out = []
    for text in extra:
        name, ip = parse_add_host(text)
        if ip == HOST_GATEWAY:
            if gateway is None:
                continue     # refused at run for a container without a network
            ip = gateway
        out.append(f"{ip}\t{name}")
    return out


def resolv_lines(servers: list[str], search: list[str] | tuple[str, ...], options: list[str] | tuple[str, ...],
                 resolver_options: tuple[str, ...] = ()) -> str:
    """resolv.conf as libnetwork's resolvconf.Build writes it: search, nameservers,
    options. `resolver_options`: what the resolver adds (portlink's DNS, like
    Docker's embedded one, 'ndots:0' unless the user set ndots to more than 0)."""
    out = ""
    if search and " ".join(search).strip(" ") != ".":
        out += "search " + " ".join(search) + "\n"
    out += "".join(f"nameserver {s}\n" for s in servers)
    user_ndots = any(o.startswith("ndots:") and o[6:].isdigit() and int(o[6:]) > 0 for o in options)
    opts = [*options, *(o for o in resolver_options if not (o.startswith("ndots:") and user_ndots))]
    if opts:
        out += "options " + " ".join(opts) + "\n"
    return out
