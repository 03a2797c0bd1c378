"""Per-linker identity in a 3-host lab (every daemon --secure-links, Consul with
ACLs and Connect's CA): on host2, `web` and `api` link frontdb (host1) through
the shared ambassador on the default (icc-on) network. Each is dialled to host1
as its own service: both work on their first connection, the intentions are
web -> frontdb and api -> frontdb (none for the ambassador), a container on the
same network with no link gets nothing from the ambassador and is counted, a
person's deny of web (the consul CLI) refuses web while api still works, and
the server side counts the refusal; api's intention goes with api, web's stays.
Two linkers of one service (a label on host2, a second host) share the
intention, which goes only with its last holder."""

from __future__ import annotations

import json
import subprocess

import pytest

from helpers import wait_for
from portlink.lab import lab as labmod
from portlink.lab.consul_agent import consul_binary
from test_secure_links import FETCH, SECRET, Lab, frontdb_lab

pytestmark = pytest.mark.root

FIRST = f"{FETCH.removesuffix('; exit $?')} > /tmp/first 2>&1; exec sleep 600"   # the very first connection


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    yield from frontdb_lab(tmp_path_factory, "i")


def exact(source: str) -> str:
    return f"/v1/connect/intentions/exact?source={source}&destination=frontdb"


def consul_cli(L: Lab, *args: str) -> str:
    """The consul CLI on host1, as the lab's operator (management token in a file)."""
    cmd, env = labmod.exec_argv(L.made.name, "host1", [consul_binary(), *args])
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    return p.stdout


def counter(L: Lab, host: str, amb: str, name: str) -> int:
    return L.get(host, f"/containers/{amb}")["ambassador"]["metrics"][name]["total"]


def logins(L: Lab, container_id: str) -> list[dict]:
    """Consul tokens made by a login for this container (the login's Meta shows in the description)."""
    code, tokens = L.consul("GET", "/v1/acl/tokens")
    assert code == 200, tokens
    return [t for t in tokens if container_id in (t.get("Description") or "")]


def fetch(L: Lab, ctr: str) -> str:
    return L.cli("host2", "exec", ctr, "sh", "-c", FETCH, check=False)


def test_each_linker_is_its_own_identity_and_only_linkers_get_through(lab, tmp_path):
    L = lab
    host2 = L.get("host2", "/system/consul")["host_id"]
    host3 = L.get("host3", "/system/consul")["host_id"]
    run = lambda name: L.cli("host2", "run", "-d", "--name", name, "--link", "frontdb:sql", "busybox", "sh", "-c",
                             FIRST, check=False)
    # host2's catalog hears of frontdb a moment after host1's agent has it; a refused run leaves nothing.
    assert wait_for(lambda: "no healthy service" not in run("web"), 20)
    run("api")
    # Both worked on their very first connection (made as their process started).
    for name in ("web", "api"):
        assert wait_for(lambda: L.cli("host2", "exec", name, "cat", "/tmp/first", check=False).strip(), 10)
        assert L.cli("host2", "exec", name, "cat", "/tmp/first").strip() == SECRET
    amb = L.get("host2", "/containers/amb-frontdb-bridge")
    sources = amb["ambassador"]["tls"]["linkers"]["sources"]
    assert sorted(v["identity"] for v in sources.values()) == ["api", "web"], sources
    assert sources[L.get("host2", "/containers/web")["network"]["ip"]] == {"identity": "web", "ready": True}
    assert amb["ambassador"]["tls"]["unlinked"] == "refuse"
    # One intention per linker's service, held by host2; none for the ambassador's own identity.
    for name in ("web", "api"):
        code, it = L.consul("GET", exact(name))
        assert code == 200 and it["Action"] == "allow" and f"[portlink-host {host2}]" in it["Description"], it
    assert L.consul("GET", exact(amb["config"]["ambassador"]["identity"]))[0] == 404
    rows = {r["container"]: r["intention"] for r in L.get("host2", "/links")}
    assert {k: rows["web"][k] for k in ("source", "destination", "action", "by")} == \
        {"source": "web", "destination": "frontdb", "action": "allow", "by": "this host"}
    assert rows["api"]["source"] == "api"
    table = L.cli("host2", "link", "ls")
    assert "web -> frontdb" in table and "api -> frontdb" in table, table

    # A container on the same network with no link, straight at the ambassador's address.
    before = counter(L, "host2", "amb-frontdb-bridge", "unlinked_source_total")
    got = L.cli("host2", "run", "--rm", "busybox", "sh", "-c",
                f"timeout 5 wget -qO- http://{amb['network']['ip']}/; exit $?", check=False)
    assert SECRET not in got
    assert counter(L, "host2", "amb-frontdb-bridge", "unlinked_source_total") == before + 1
    logs = L.cli("host2", "logs", "amb-frontdb-bridge", check=False)
    assert "is not a linker of this ambassador" in logs

    # Two linkers of one service on host2 (a label), and one on host3: one intention, three holds.
    L.cli("host2", "run", "-d", "--name", "web2", "-l", "portlink.service=web", "--link", "frontdb:sql",
          "busybox", "sleep", "600")
    L.cli("host3", "run", "-d", "--name", "web", "--link", "frontdb:sql", "busybox", "sleep", "600")
    assert fetch(L, "web2") == SECRET
    assert L.cli("host3", "exec", "web", "sh", "-c", FETCH, check=False) == SECRET
    it = L.consul("GET", exact("web"))[1]
    assert f"[portlink-host {host2}]" in it["Description"] and f"[portlink-host {host3}]" in it["Description"], it
    L.cli("host2", "rm", "-f", "web2")            # web still holds it on host2
    L.cli("host3", "rm", "-f", "web")             # host3's hold goes, host2's stays
    code, it = L.consul("GET", exact("web"))
    assert code == 200 and it["Action"] == "allow", it
    assert f"[portlink-host {host2}]" in it["Description"] and f"[portlink-host {host3}]" not in it["Description"]
    assert fetch(L, "web") == SECRET

    # A person denies web with Consul's own tool: web is refused, api is not.
    denied = counter(L, "host1", "srv-frontdb", "tls_denied_total")
    # Consul 1.16's `intention create [-replace]` is the legacy API, refused for a destination
    # kept in a service-intentions config entry; its CLI edits that entry with config read/write.
    entry = json.loads(consul_cli(L, "config", "read", "-kind", "service-intentions", "-name", "frontdb"))
    [web] = [x for x in entry["Sources"] if x["Name"] == "web"]
    web.update(Action="deny", Description="by hand")
    path = tmp_path / "frontdb-intentions.json"
    path.write_text(json.dumps({k: v for k, v in entry.items() if not k.endswith("Index")}))
    consul_cli(L, "config", "write", str(path))
    assert wait_for(lambda: SECRET not in fetch(L, "web"), 15)
    assert fetch(L, "api") == SECRET
    assert counter(L, "host1", "srv-frontdb", "tls_denied_total") > denied
    assert {r["container"]: r["intention"]["by"] for r in L.get("host2", "/links")}["web"] == "person"

    # api goes: its intention and its token with it; web's (now a person's deny) is left alone.
    api_id = L.get("host2", "/containers/api")["id"]
    assert len(logins(L, api_id)) == 1, logins(L, api_id)     # api's own token, in the ambassador's dir
    L.cli("host2", "rm", "-f", "api")
    assert L.consul("GET", exact("api"))[0] == 404
    assert logins(L, api_id) == []                            # logged out
    code, it = L.consul("GET", exact("web"))
    assert code == 200 and it["Action"] == "deny", it
    sources = L.get("host2", "/containers/amb-frontdb-bridge")["ambassador"]["tls"]["linkers"]["sources"]
    assert [v["identity"] for v in sources.values()] == ["web"], sources
    L.cli("host2", "rm", "-f", "web")
    assert "amb-frontdb-bridge" not in [c["name"] for c in L.get("host2", "/containers", all="1")]
    code, it = L.consul("GET", exact("web"))
    assert code == 200 and it["Action"] == "deny", it
    consul_cli(L, "intention", "delete", "web", "frontdb")
