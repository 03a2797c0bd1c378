"""Where and how to reach Consul: the daemon's flags over the usual CONSUL_HTTP_*
variables (the same ones the consul CLI reads), validated up front.

Consul is optional: with no address from either source portlink runs on its
own state alone, as a single host."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from portlink import parse
from portlink.errors import InvalidArgument, InvalidValue

DEFAULT_PORT = 8500
WATCH_WAIT = 30.0          # seconds a blocking query may hang; short enough to notice a silent agent
REQUEST_TIMEOUT = 5.0      # registrations and other plain calls
# HTTP connections to the agent one client may hold: a blocking query per followed service plus a
# few calls. Consul's own cap per client address is http_max_conns_per_client (200 by default;
# README: Consul in production), so past ~190 services on one host that cap must be raised too.
CONNECTIONS = 2048


@dataclass(frozen=True)
class ConsulConfig:
    host: str
    port: int = DEFAULT_PORT
    scheme: str = "http"
    token: str | None = None
    datacenter: str | None = None
    ca_file: str | None = None        # verify the agent's certificate against this CA
    cert_file: str | None = None      # client certificate (mutual TLS)
    key_file: str | None = None
    verify: bool = True

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def client(self, timeout: float = REQUEST_TIMEOUT):
        """A py-consul asyncio client (call from inside a running event loop)."""
        import consul.aio   # imported here: a host without Consul never loads it

        from portlink.catalog.health_view import CachedHealth

        verify: bool | str = self.ca_file or self.verify
        cert = (self.cert_file, self.key_file) if self.cert_file else None
        # Each followed service holds one connection in a blocking query: aiohttp's default pool of
        # 100 left the 100th service and on never followed (bench/scale_hosts.py found it).
        c = consul.aio.Consul(host=self.host, port=self.port, scheme=self.scheme, dc=self.datacenter,
                              verify=verify, cert=cert, connections_timeout=timeout,
                              connections_limit=CONNECTIONS)
        c.token = self.token   # py-consul lets CONSUL_HTTP_TOKEN override an explicit token; ours won
        # aiohttp asks for gzip by default and Consul then compresses every answer above
        # ~1 KB: on the link to this host's own agent that is CPU on both ends for no gain,
        # several times per catalog change (bench/scale_hosts.py). Uncompressed, please.
        c.http._session.headers["Accept-Encoding"] = "identity"
        c.health = CachedHealth(c)   # followed services from the agent's streamed view
        return c


def parse_address(text: str) -> tuple[str, str, int]:
    """'host[:port]' or 'http[s]://host[:port]' -> (scheme, host, port)."""
    raw = text.strip()
    bad = InvalidArgument(f"invalid Consul address {text!r}: expected host[:port] or http(s)://host[:port]")
    try:
        url = urlsplit(raw if "://" in raw else f"http://{raw}")
    except ValueError:
        raise bad from None
    if url.scheme not in ("http", "https") or url.path not in ("", "/") or url.query or url.fragment:
        raise bad
    try:
        host, port = parse.hostport("Consul address", url.netloc, default_port=DEFAULT_PORT, names=True)
    except InvalidValue:
        raise bad from None
    return url.scheme, host.lower(), port


def _truthy(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise InvalidArgument(f"invalid {name}={value!r}: expected true or false")


def _readable(path: str | None, what: str) -> str | None:
    if path and not Path(path).is_file():
        raise InvalidArgument(f"{what} {path!r} does not exist or is not a file")
    return path or None


def read_token_file(path: str, what: str) -> str:
    """A token handed over in a file (so it shows in no command line or environment)."""
    try:
        return Path(path).read_text().strip()
    except OSError as e:
        raise InvalidArgument(f"cannot read {what} {path!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidArgument(f"{what} {path!r} is not text") from None


def from_sources(address: str | None = None, token: str | None = None, datacenter: str | None = None,
                 ca_file: str | None = None, env: Mapping[str, str] | None = None,
                 token_file: str | None = None) -> ConsulConfig | None:
    """The daemon's Consul settings: explicit flags first (a token or a token
    file, not both), then CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN(_FILE),
    CONSUL_HTTP_SSL(_VERIFY), CONSUL_CACERT, CONSUL_CLIENT_CERT/KEY. None when
    no address is given anywhere."""
    env = os.environ if env is None else env
    if token is not None and token_file is not None:
        raise InvalidArgument("give --consul-token or --consul-token-file, not both")
    address = address or env.get("CONSUL_HTTP_ADDR")
    if not address:
        if token_file is not None:
            raise InvalidArgument("--consul-token-file needs a Consul address: --consul ADDR or CONSUL_HTTP_ADDR")
        return None
    if token_file is not None:
        token = read_token_file(token_file, "--consul-token-file")
        if not token:
            raise InvalidArgument(f"--consul-token-file {token_file!r} is empty")
    scheme, host, port = parse_address(address)
    if "CONSUL_HTTP_SSL" in env and "://" not in address:
        scheme = "https" if _truthy(env["CONSUL_HTTP_SSL"], "CONSUL_HTTP_SSL") else "http"
    verify = _truthy(env.get("CONSUL_HTTP_SSL_VERIFY", "true"), "CONSUL_HTTP_SSL_VERIFY")
    if token is None:
        token = env.get("CONSUL_HTTP_TOKEN") or None   # empty: unset, as the consul CLI reads it
        token_file = env.get("CONSUL_HTTP_TOKEN_FILE")
        if token is None and token_file:
            token = read_token_file(token_file, "CONSUL_HTTP_TOKEN_FILE")
    if token is not None and (not token.isprintable() or len(token) > 512):
        raise InvalidArgument("invalid Consul token: it must be printable text of at most 512 characters")
    cert, key = env.get("CONSUL_CLIENT_CERT"), env.get("CONSUL_CLIENT_KEY")
    if bool(cert) != bool(key):
        raise InvalidArgument("CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY must be given together")
    dc = datacenter or None
    if dc is not None and not (dc.replace("-", "").replace("_", "").isalnum() and len(dc) <= 64):
        raise InvalidArgument(f"invalid Consul datacenter {dc!r}: use letters, digits, '-' and '_'")
    return ConsulConfig(host=host, port=port, scheme=scheme, token=token or None, datacenter=dc,
                        ca_file=_readable(ca_file or env.get("CONSUL_CACERT"), "Consul CA file"),
                        cert_file=_readable(cert, "CONSUL_CLIENT_CERT"),
                        key_file=_readable(key, "CONSUL_CLIENT_KEY"), verify=verify)
