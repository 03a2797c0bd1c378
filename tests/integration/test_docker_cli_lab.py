"""Docker's own words across hosts: in the 3-host lab, `docker run --link
frontdb:sql` on host2 (through `portlink lab exec`, whose DOCKER_HOST names
host2's Docker socket) reaches frontdb on host1 through the same cross-host
link path as `portlink run --link` (an ambassador on host2)."""

from __future__ import annotations

import json
import subprocess

import pytest

from helpers import wait_for
from portlink.lab import lab as labmod
from test_crosshost import three  # noqa: F401  (the 3-host lab fixture)

pytestmark = pytest.mark.root

DOCKER = "/usr/bin/docker"


def docker(L, host: str, *args: str, tmp) -> subprocess.CompletedProcess:
    cmd, env = labmod.exec_argv(L.made.name, host, [DOCKER, *args])
    return subprocess.run(cmd, env={**env, "DOCKER_CONFIG": str(tmp)}, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def test_docker_link_across_hosts(three, tmp_path):  # noqa: F811
    L = three
    h2 = L.made.host("host2")
    assert labmod.exec_argv(L.made.name, "host2", ["true"])[1]["DOCKER_HOST"] == f"unix://{h2.docker_socket}"
    L.frontdb("host1")
    assert wait_for(lambda: L.client("host2").get("/system/consul")["services_seen"] >= 2, 10)
    run = docker(L, "host2", "run", "-d", "--name", "web", "--link", "frontdb:sql", "busybox", "sleep", "600",
                 tmp=tmp_path)
    assert run.returncode == 0, run.stderr
    names = docker(L, "host2", "ps", "--format", "{{.Names}}", tmp=tmp_path).stdout.split()
    assert sorted(names) == ["amb-frontdb-bridge", "web"]
    web = json.loads(docker(L, "host2", "inspect", "web", tmp=tmp_path).stdout)[0]
    assert web["State"]["Running"] and web["HostConfig"]["Links"] == ["/frontdb:/web/sql"]   # the link's target
    # the alias answers from host2 with host1's frontdb behind it
    assert wait_for(lambda: L.fetch("host2", "web", "http://sql/") == "db-on-host1", 10)
    # host1's Docker socket shows host1's containers only (frontdb, and its server side with secure links)
    on1 = docker(L, "host1", "ps", "--format", "{{.Names}}", tmp=tmp_path).stdout.split()
    assert "frontdb" in on1 and "web" not in on1 and "amb-frontdb-bridge" not in on1
    rm = docker(L, "host2", "rm", "-f", "web", tmp=tmp_path)
    assert rm.returncode == 0, rm.stderr
    # the ambassador made for the link goes with its last linker, as with portlink rm
    assert wait_for(lambda: docker(L, "host2", "ps", "-aq", tmp=tmp_path).stdout.strip() == "", 10)


COMPOSE = "/usr/bin/docker-compose"    # Debian's docker-compose 1.29
# host2's half of an app whose db runs on host1: external_links names it
COMPOSE_FRONT = """\
version: "2.4"
services:
  web:
    image: busybox
    command: ["sleep", "600"]
    external_links: ["frontdb:sql"]
"""


def compose(L, host: str, project_dir, *args: str, tmp) -> subprocess.CompletedProcess:
    cmd, env = labmod.exec_argv(L.made.name, host, [COMPOSE, "--no-ansi", "-p", "front", *args])
    return subprocess.run(cmd, env={**env, "DOCKER_CONFIG": str(tmp)}, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, cwd=str(project_dir))


def test_compose_external_links_across_hosts(three, tmp_path):  # noqa: F811
    L = three
    L.frontdb("host1")
    assert wait_for(lambda: L.client("host2").get("/system/consul")["services_seen"] >= 2, 10)
    (tmp_path / "docker-compose.yml").write_text(COMPOSE_FRONT)
    up = compose(L, "host2", tmp_path, "up", "-d", tmp=tmp_path)
    assert up.returncode == 0, up.stderr
    web = json.loads(docker(L, "host2", "inspect", "front_web_1", tmp=tmp_path).stdout)[0]
    assert web["HostConfig"]["Links"] == ["/frontdb:/front_web_1/sql"]     # the target, not its ambassador
    # the same cross-host path as portlink run --link: an ambassador on host2's network
    names = docker(L, "host2", "ps", "--format", "{{.Names}}", tmp=tmp_path).stdout.split()
    assert sorted(names) == ["amb-frontdb-front_default", "front_web_1"], names
    assert wait_for(lambda: L.fetch("host2", "front_web_1", "http://sql/") == "db-on-host1", 10)
    down = compose(L, "host2", tmp_path, "down", "-v", tmp=tmp_path)
    assert down.returncode == 0, down.stderr
    assert wait_for(lambda: docker(L, "host2", "ps", "-aq", tmp=tmp_path).stdout.strip() == "", 10)
    nets = docker(L, "host2", "network", "ls", "--format", "{{.Name}}", tmp=tmp_path).stdout.split()
    assert "front_default" not in nets
