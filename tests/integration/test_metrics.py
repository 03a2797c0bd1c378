"""The daemon's Prometheus endpoint (`--metrics-addr`): off by default, and
when on, containers, attach times, DNS answers and latency, Consul and the
ambassadors' own metrics, in valid exposition format."""

from __future__ import annotations

import re

import pytest

from helpers import Outside, dig, refused_start, wait_for
from portlink.lab.consul_agent import AgentSpec, start_agent, wait_ready
from portlink.lab.sandbox import SimHost
from test_consul import consul_args

pytestmark = pytest.mark.root

ADDR = "127.0.0.1:9101"


def scrape(h: SimHost) -> str:
    r = h.ns.run("busybox", "sh", "-c", f"timeout 10 wget -q -O- http://{ADDR}/metrics", check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def value(text: str, sample: str) -> float:
    """The value of one sample line, e.g. 'portlink_containers{status="running"}'."""
    m = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    assert m, f"no sample {sample} in:\n{text[:3000]}"
    return float(m.group(1))


def check_format(text: str) -> None:
    """Every sample belongs to the family declared just before it; each family once."""
    declared, current = set(), None
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            current = line.split()[2]
            assert current not in declared, f"family {current} declared twice"
            declared.add(current)
        elif line and not line.startswith("#"):
            name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
            assert name == current or name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") \
                == current, f"{name} outside its family ({current})"


@pytest.fixture
def mhost():
    h = SimHost.start("metrics", extra_args=["--metrics-addr", ADDR])
    yield h
    errors = h.destroy()
    assert not errors, errors


def test_off_by_default(nft_host):
    assert ":9101" not in nft_host.ns.run("ss", "-ltn").stdout
    assert "metrics" not in nft_host.ns.run("ss", "-ltnp").stdout


def test_containers_attach_and_dns(mhost):
    h = mhost
    h.cli("run", "-d", "--name", "alpha", "busybox", "sleep", "600", check=True)
    h.cli("run", "--name", "beta", "busybox", "true")
    for _ in range(3):
        # no cookie: the same bytes each time, so the second and third come from the packed table
        assert dig(h, "alpha", "alpha", "A", "+nocookie") == [h.client.get("/containers/alpha")["network"]["ip"]]
    assert dig(h, "alpha", "nosuch", status=True) == "NXDOMAIN"
    text = scrape(h)
    check_format(text)
    assert value(text, 'portlink_containers{status="running"}') == 1
    assert value(text, 'portlink_containers{status="exited"}') == 1
    assert value(text, "portlink_attach_seconds_count") == 2
    assert value(text, 'portlink_attach_seconds_bucket{le="+Inf"}') == 2
    assert value(text, "portlink_attach_seconds_sum") > 0
    assert value(text, "portlink_start_seconds_count") == 2
    local = value(text, 'portlink_dns_answers_total{path="local",rcode="NOERROR"}')
    cached = value(text, 'portlink_dns_answers_total{path="cache",rcode="NOERROR"}')
    assert local >= 1 and cached >= 1 and local + cached >= 3, "three identical questions: answered, then from the table"
    assert value(text, 'portlink_dns_answers_total{path="local",rcode="NXDOMAIN"}') >= 1
    assert value(text, 'portlink_dns_latency_seconds_count{path="local"}') >= 2
    assert value(text, "portlink_daemon_resident_bytes") > 10e6
    assert value(text, "portlink_daemon_open_fds") > 3
    assert "portlink_consul_reachable" not in text, "no Consul configured"


def test_ambassador_metrics_and_consul_health(tmp_path):
    """A host with Consul and a cross-host link: the ambassador's counters appear
    relabelled, and the link to Consul is reported."""
    h = SimHost.start("metrics", extra_args=[*consul_args(f"{Outside.IP}:8500", Outside.HOST_IP),
                                              "--metrics-addr", ADDR])
    out = Outside(h)
    agent = start_agent(AgentSpec("out", Outside.IP, tmp_path / "consul"), out.ns.path)
    try:
        wait_ready(agent)
        out.serve_peer_address(9000)
        code, _, text = agent.put("/v1/agent/service/register", {
            "ID": "other-ext", "Name": "ext", "Address": Outside.IP, "Port": 9000,
            "Meta": {"portlink-port": "80/tcp"}})
        assert code == 200, text
        ran = wait_for(lambda: h.cli("run", "-d", "--name", "web", "--link", "ext:sql", "busybox", "sleep",
                                     "600").returncode == 0, timeout=15)
        assert ran
        # At once: the run returns when the link forwards, though this host's watch may
        # still be reconnecting (the agent came after the daemon): a hosted ambassador
        # is ready only with backends, Consul known lost or not (CI: it had none).
        r = h.cli("exec", "web", "sh", "-c", "timeout 5 wget -q -O- http://sql/")
        assert r.stdout.strip() == Outside.HOST_IP, (r.returncode, r.stderr, h.client.get("/system/consul"))
        text = wait_for(lambda: (lambda t: t if 'portlink_ambassador_connections_total{ambassador="amb-ext-bridge"} 1'
                                 in t else None)(scrape(h)), timeout=10) or scrape(h)
        check_format(text)
        assert value(text, 'portlink_ambassador_up{ambassador="amb-ext-bridge"}') == 1
        assert value(text, 'portlink_ambassador_connections_total{ambassador="amb-ext-bridge"}') == 1
        assert value(text, f'portlink_ambassador_backend_connections_total{{ambassador="amb-ext-bridge",'
                           f'backend="{Outside.IP}:9000"}}') == 1
        assert value(text, "portlink_consul_reachable") == 1
        assert value(text, "portlink_consul_services") >= 2    # consul itself and ext
        assert value(text, "portlink_ambassadors") == 1
    finally:
        errors = h.destroy()
        agent.stop()
        out.delete()
    assert not errors, errors


def test_bad_metrics_address_is_refused(tmp_path):
    assert "invalid --metrics-addr 'nowhere'" in refused_start(tmp_path, "--metrics-addr", "nowhere").stderr
