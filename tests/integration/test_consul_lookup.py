"""catalog.lookup against a real Consul agent (a dev agent on a loopback
address of its own): what a `run --link` asks when the daemon's cache does not
hold the name yet."""

from __future__ import annotations

import base64
import os
import random
import uuid

import pytest

from portlink.catalog.config import ConsulConfig
from portlink.catalog.lookup import passing_instances
from portlink.errors import RuntimeFailure
from portlink.lab.consul_agent import AgentSecurity, AgentSpec, start_agent, wait_ready

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    ip = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
    security = AgentSecurity(encrypt=base64.b64encode(os.urandom(32)).decode(), management=str(uuid.uuid4()))
    a = start_agent(AgentSpec("lookup", ip, tmp_path_factory.mktemp("lookup") / "consul", security=security))
    try:
        wait_ready(a)
        yield a
    finally:
        a.stop()


def register(agent, sid: str, port: int, status: str) -> None:
    code, _, out = agent.put("/v1/agent/service/register", {
        "ID": sid, "Name": "shop", "Port": port, "Address": "10.9.0.7", "Meta": {"portlink-port": "80/tcp"},
        "Check": {"CheckID": f"{sid}-ttl", "TTL": "60s", "Status": status}})
    assert code == 200, out


def test_only_passing_instances_come_back_with_their_meta(agent):
    register(agent, "shop-ok", 31001, "passing")
    register(agent, "shop-bad", 31002, "critical")
    cfg = ConsulConfig(host=agent.spec.bind, token=agent.token)
    got = passing_instances(cfg, "shop")
    assert [(i.id, i.address, i.port, i.meta_get("portlink-port")) for i in got] == \
        [("shop-ok", "10.9.0.7", 31001, "80/tcp")]
    assert passing_instances(cfg, "no-such-service") == ()


def test_a_token_consul_does_not_know_is_refused_by_name(agent):
    cfg = ConsulConfig(host=agent.spec.bind, token=str(uuid.uuid4()))
    with pytest.raises(RuntimeFailure, match=r"HTTP 403 for service 'shop'"):
        passing_instances(cfg, "shop")


def test_an_agent_that_is_not_there_is_named(agent):
    cfg = ConsulConfig(host=agent.spec.bind, port=1)
    with pytest.raises(RuntimeFailure, match=rf"cannot ask Consul at http://{agent.spec.bind}:1 for service 'shop'"):
        passing_instances(cfg, "shop")
