"""The daemon's catalog: a name its cache does not hold yet is asked of Consul
once (runtime.refresh.Catalog.instances_now; catalog.lookup's request shape)."""

from __future__ import annotations

import pytest

from portlink.catalog.config import ConsulConfig
from portlink.catalog.lookup import passing_instances
from portlink.catalog.services import Instance
from portlink.errors import RuntimeFailure
from portlink.runtime.refresh import Catalog

WEB = Instance(id="web-1", service="web", address="10.0.0.5", port=8080, node="n1")


def test_cached_instances_are_not_asked_for():
    asked = []
    cat = Catalog(True, ask=lambda name: asked.append(name) or ())
    cat.services = {"web": (WEB,)}
    assert cat.instances_now("WEB") == (WEB,)
    assert asked == []


def test_a_name_the_cache_lacks_is_asked_for():
    cat = Catalog(True, ask=lambda name: (WEB,) if name == "web" else ())
    assert cat.instances("web") == ()
    assert cat.instances_now("web") == (WEB,)
    assert cat.instances_now("db") == ()


def test_a_consul_that_cannot_answer_counts_as_no_instance(caplog):
    def ask(name):
        raise RuntimeFailure(f"cannot ask Consul for service {name!r}: refused")
    assert Catalog(True, ask=ask).instances_now("web") == ()
    assert "cannot ask Consul for service 'web'" in caplog.text


def test_without_consul_nothing_is_asked():
    assert Catalog(False, ask=lambda name: pytest.fail("asked")).instances_now("web") == ()


def test_lookup_asks_for_passing_instances_with_the_token_in_a_header():
    calls = []

    def call(cfg, method, path, body=None, token=None, timeout=0):
        calls.append((method, path, token))
        return 200, [{"Node": {"Node": "n1", "Address": "10.0.0.5"},
                      "Service": {"ID": "web-1", "Service": "web", "Port": 8080}}]
    cfg = ConsulConfig(host="127.0.0.1", token="s3cret", datacenter="dc2")
    assert passing_instances(cfg, "we b/x", call) == (WEB,)
    assert calls == [("GET", "/v1/health/service/we%20b%2Fx?passing=1&dc=dc2", "s3cret")]


@pytest.mark.parametrize("answer, where", [((403, "ACL not found"), "HTTP 403"), ((200, {"x": 1}), "HTTP 200")])
def test_lookup_refusals_name_the_service_and_the_status(answer, where):
    with pytest.raises(RuntimeFailure, match=f"{where} for service 'web'"):
        passing_instances(ConsulConfig(host="127.0.0.1"), "web", lambda *a, **k: answer)


def test_lookup_of_an_unreachable_agent_names_it():
    def call(*a, **k):
        raise ConnectionRefusedError(111, "Connection refused")
    with pytest.raises(RuntimeFailure, match=r"cannot ask Consul at http://127.0.0.1:8500 for service 'web'"):
        passing_instances(ConsulConfig(host="127.0.0.1"), "web", call)
