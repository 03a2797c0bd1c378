"""One read of a service's passing instances, straight from the agent.

The daemon's catalog cache (catalog.watch.CatalogCache) hears of a service
that was just registered a moment after Consul has it: its service-list
watch must return and the new service's own watch be answered. A `run
--link` in that moment would be refused although Consul can serve it, so a
name the cache does not know is asked for once, here (blocking: the API's
handler thread)."""

from __future__ import annotations

import urllib.parse

from portlink.catalog.ambassador_tokens import request
from portlink.catalog.config import ConsulConfig
from portlink.catalog.services import Instance, parse_health
from portlink.errors import RuntimeFailure

LOOKUP_TIMEOUT = 2.0   # seconds: a run waits at most this for an agent that does not answer


def passing_instances(cfg: ConsulConfig, name: str, call=request) -> tuple[Instance, ...]:
    """The instances of `name` whose checks all pass, as the cache would hold
    them; () for a service Consul does not have. `call`: catalog.ambassador_tokens.request."""
    query = {"passing": "1", **({"dc": cfg.datacenter} if cfg.datacenter else {})}
    path = f"/v1/health/service/{urllib.parse.quote(name, safe='')}?{urllib.parse.urlencode(query)}"
    try:
        status, body = call(cfg, "GET", path, token=cfg.token, timeout=LOOKUP_TIMEOUT)
    except OSError as e:
        raise RuntimeFailure(f"cannot ask Consul at {cfg.url} for service {name!r}: {e}") from e
    if status != 200 or not isinstance(body, list):
        raise RuntimeFailure(f"Consul at {cfg.url} answered HTTP {status} for service {name!r}: {body!s:.200}")
    return parse_health(body)
