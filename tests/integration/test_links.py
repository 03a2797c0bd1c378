"""--link on a simulated host: Docker's environment and /etc/hosts line, and
what Docker never did: the hosts line and the DNS name follow the linked
container when it restarts with a new address or is recreated."""

from __future__ import annotations

import json

import pytest

from conftest import snapshot
from helpers import container_env, dig, wait_for

pytestmark = pytest.mark.root


def _ip(h, name: str) -> str:
    return h.client.get(f"/containers/{name}")["network"]["ip"]


def _hosts(h, name: str) -> list[str]:
    return h.cli("exec", name, "cat", "/etc/hosts", check=True).stdout.splitlines()


def test_link_environment_is_dockers(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "db", "--expose", "80", "--expose", "8080-8082", "--expose", "53/udp",
          "--expose", "5000/udp", "-e", "PASSWORD=x=y", "-e", "EMPTY=", "busybox", "sleep", "600", check=True)
    h.cli("run", "-d", "--name", "web", "--link", "db:db-main", "-e", "MINE=1", "busybox", "sleep", "600",
          check=True)
    ip = _ip(h, "db")
    env = container_env(h, "web")
    link_vars = {e for e in env if e.startswith("DB_MAIN_")}

    def port(p: int, proto: str) -> set[str]:
        k = f"DB_MAIN_PORT_{p}_{proto.upper()}"
        return {f"{k}={proto}://{ip}:{p}", f"{k}_ADDR={ip}", f"{k}_PORT={p}", f"{k}_PROTO={proto}"}

    expected = {
        f"DB_MAIN_PORT=tcp://{ip}:80",
        *port(80, "tcp"), *port(8080, "tcp"), *port(8081, "tcp"), *port(8082, "tcp"),
        *port(53, "udp"), *port(5000, "udp"),
        f"DB_MAIN_PORT_8080_TCP_START=tcp://{ip}:8080", "DB_MAIN_PORT_8080_TCP_PORT_START=8080",
        f"DB_MAIN_PORT_8080_TCP_END=tcp://{ip}:8082", "DB_MAIN_PORT_8080_TCP_PORT_END=8082",
        "DB_MAIN_NAME=/web/db-main",
        "DB_MAIN_ENV_PASSWORD=x=y", "DB_MAIN_ENV_EMPTY=",
    }
    assert link_vars == expected
    # Docker's order: the base variables, the link's, then the container's own.
    assert env[0].startswith("PATH=") and env[1].startswith("HOSTNAME=")
    assert env.index(f"DB_MAIN_PORT=tcp://{ip}:80") < env.index("DB_MAIN_NAME=/web/db-main") < env.index("MINE=1")
    assert env.index("DB_MAIN_PORT_53_UDP_PROTO=udp") < env.index("DB_MAIN_PORT_8080_TCP_START=tcp://%s:8080" % ip)
    # PATH and HOME of the linked container are not exported
    assert not any(e.startswith("DB_MAIN_ENV_PATH") or e.startswith("DB_MAIN_ENV_HOME") for e in env)

    hostname = h.client.get("/containers/db")["config"]["hostname"]
    assert f"{ip}\tdb-main {hostname} db" in _hosts(h, "web")
    info = h.client.get("/containers/web")
    assert info["links"][0]["alias"] == "db-main" and info["links"][0]["ip"] == ip
    assert "live" in info["links"][0]["note"]


def test_link_without_alias_and_user_override(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "cache", "--expose", "6379", "busybox", "sleep", "600", check=True)
    h.cli("run", "-d", "--name", "app", "--link", "cache", "-e", "CACHE_PORT=mine", "busybox", "sleep", "600",
          check=True)
    env = container_env(h, "app")
    assert "CACHE_PORT=mine" in env and "CACHE_NAME=/app/cache" in env   # -e overrides a link variable
    hostname = h.client.get("/containers/cache")["config"]["hostname"]
    assert f"{_ip(h, 'cache')}\tcache {hostname}" in _hosts(h, "app")     # name == alias: not repeated


def test_hosts_and_dns_follow_restart_and_recreate(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "db", "busybox", "sleep", "600", check=True)
    h.cli("run", "-d", "--name", "web", "--link", "db:sql", "busybox", "sleep", "600", check=True)
    first = _ip(h, "db")
    assert dig(h, "web", "sql") == [first]

    # Restart: the lease is released and the next address is handed out (round robin).
    h.cli("restart", "-t", "0", "db", check=True)
    second = _ip(h, "db")
    assert second != first
    # No waiting: the restart call returns after the names were refreshed.
    assert any(l.startswith(f"{second}\tsql ") for l in _hosts(h, "web"))
    assert not any(l.startswith(f"{first}\t") for l in _hosts(h, "web"))
    assert dig(h, "web", "sql") == [second]
    r = h.cli("exec", "web", "nslookup", "sql")
    assert second in r.stdout, r.stdout + r.stderr

    # Removed: the line goes and the name is NXDOMAIN, not a stale address (moby #24800).
    h.cli("rm", "-f", "db", check=True)
    assert not any("\tsql " in l for l in _hosts(h, "web"))
    assert dig(h, "web", "sql", status=True) == "NXDOMAIN"
    assert h.client.get("/containers/web")["links"][0]["status"] == "missing"

    # Recreated under the same name, with another image command and address.
    h.cli("run", "-d", "--name", "db", "busybox", "sleep", "601", check=True)
    third = _ip(h, "db")
    assert any(l.startswith(f"{third}\tsql ") for l in _hosts(h, "web"))
    assert dig(h, "web", "sql") == [third]


def test_links_work_on_a_user_network_and_reach_the_service(nft_host):
    h = nft_host
    h.cli("network", "create", "--subnet", "10.91.0.0/24", "back", check=True)
    h.cli("run", "-d", "--name", "www", "--net", "back", "--expose", "80", "busybox", "sh", "-c",
          "mkdir -p /srv && echo hello-from-www > /srv/index.html && exec httpd -f -p 80 -h /srv", check=True)
    h.cli("run", "-d", "--name", "client", "--net", "back", "--link", "www:site", "busybox", "sleep", "600",
          check=True)
    assert container_env(h, "client").count(f"SITE_PORT=tcp://{_ip(h, 'www')}:80") == 1
    fetch = lambda: h.cli("exec", "client", "sh", "-c", "timeout 5 wget -q -O- http://site/; exit $?").stdout
    assert "hello-from-www" in wait_for(fetch, timeout=10)
    # the plain container name answers too, by DNS (no hosts line for it)
    r = h.cli("exec", "client", "sh", "-c", "timeout 5 wget -q -O- http://www.back/; exit $?")
    assert "hello-from-www" in r.stdout, r.stderr


BAD_LINKS = [
    (["--link", "nope:x"], "no such container"),
    (["--link", "stopped"], "not running"),
    (["--link", "elsewhere"], "network"),
    (["--link", "db:a:b"], "--link"),
    (["--link", "db:bad alias"], "alias"),
    (["--link", "db:x", "--link", "db:X"], "duplicate"),
    (["--net", "none", "--link", "db"], "none"),
    (["--network-alias", "bad alias"], "network alias"),
]


def test_bad_links_are_refused_and_leave_nothing(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "db", "busybox", "sleep", "600", check=True)
    h.cli("run", "-d", "--name", "stopped", "busybox", "true", check=True)
    wait_for(lambda: h.client.get("/containers/stopped")["status"] == "exited")
    h.cli("network", "create", "other", check=True)
    h.cli("run", "-d", "--name", "elsewhere", "--net", "other", "busybox", "sleep", "600", check=True)
    before = snapshot(h)
    for args, message in BAD_LINKS:
        r = h.cli("run", "-d", "--name", "linker", *args, "busybox", "sleep", "600")
        assert r.returncode == 125 and message in r.stderr, (args, r.stderr)
        assert snapshot(h) == before, args
        assert "linker" not in json.dumps(h.client.get("/containers", all="1"))
