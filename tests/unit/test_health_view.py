"""catalog.health_view: the followed health endpoints asked `?cached` (the
agent's streamed view), through the client's own session, token and
datacenter; everything else is py-consul's."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from portlink.catalog.config import ConsulConfig
from portlink.catalog.health_view import CachedHealth


class Client:
    def __init__(self, dc=None):
        self.dc, self.calls = dc, []
        self.health = SimpleNamespace(checks=lambda name: ("plain checks", name))
        self.http = SimpleNamespace(get=lambda callback, uri, params, headers: self.calls.append((uri, params, headers))
                                    or "sent")

    def prepare_headers(self, token):
        return {"X-Consul-Token": "t0k"} if token is None else {"X-Consul-Token": token}


def test_a_blocking_query_is_asked_cached_with_the_clients_token():
    c = Client()
    h = CachedHealth(c)
    assert h.service("we b/x", index=42, wait="30s", passing=True) == "sent"
    assert c.calls == [("/v1/health/service/we%20b%2Fx",
                        [("cached", ""), ("index", 42), ("wait", "30s"), ("passing", "1")], {"X-Consul-Token": "t0k"})]


def test_the_first_query_has_no_index_and_connect_asks_its_own_endpoint_in_the_datacenter():
    c = Client(dc="dc2")
    CachedHealth(c).connect("db", index=None, wait="30s", passing=True)
    assert c.calls == [("/v1/health/connect/db", [("cached", ""), ("passing", "1"), ("dc", "dc2")],
                        {"X-Consul-Token": "t0k"})]


def test_other_health_calls_are_py_consuls_own():
    assert CachedHealth(Client()).checks("db") == ("plain checks", "db")


def test_the_configured_client_follows_services_cached():
    async def made():
        c = ConsulConfig(host="127.0.0.1", token="s3cret", datacenter="dc3").client()
        try:
            return type(c.health).__name__, c.prepare_headers(None), c.dc
        finally:
            await c.http.close()
    assert asyncio.run(made()) == ("CachedHealth", {"X-Consul-Token": "s3cret"}, "dc3")
