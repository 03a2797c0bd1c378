"""`--link` on a network with icc off (Docker's rule): the link opens exactly the
linked container's exposed ports to the linker, from its first packet; every
other port and container stays dropped. Under both firewall drivers."""

from __future__ import annotations

import pytest

from helpers import wait_for

pytestmark = pytest.mark.root


def run_d(host, *args) -> str:
    return host.cli("run", "-d", *args, check=True).stdout.strip()


def ip_of(host, name: str) -> str:
    return host.client.get(f"/containers/{name}")["network"]["ip"]


def fetch(host, url: str, *run_args: str, timeout: int = 2):
    # under sh so wget is not PID 1 (PID 1 ignores the timeout's SIGTERM)
    return host.cli("run", "--rm", "--net", "quiet", *run_args, "busybox", "sh", "-c",
                    f"timeout {timeout} wget -q -O- {url}; exit $?")


def link_rules(host) -> str:
    rules = host.client.get("/system/firewall")["rules"]
    return "\n".join(l for l in rules.splitlines() if "LINKS -s" in l or " . tcp . " in l or " . udp . " in l)


def test_a_link_opens_exactly_the_exposed_ports_of_the_linked_container(host):
    host.cli("network", "create", "--icc", "off", "--subnet", "10.97.0.0/24", "quiet", check=True)
    # db serves 80 (exposed) and 81 (not exposed); other serves 80 (exposed, not linked)
    run_d(host, "--name", "db", "--net", "quiet", "--expose", "80", "busybox", "sh", "-c",
          "echo db > /tmp/index.html; httpd -p 81 -h /tmp; exec httpd -f -p 80 -h /tmp")
    run_d(host, "--name", "other", "--net", "quiet", "--expose", "80", "busybox", "sh", "-c",
          "echo other > /tmp/index.html; exec httpd -f -p 80 -h /tmp")
    db, other = ip_of(host, "db"), ip_of(host, "other")

    # the first connection of a new linker works: its flows are in before its process
    r = fetch(host, "http://sql/index.html", "--link", "db:sql")
    assert (r.returncode, r.stdout.strip()) == (0, "db"), r.stderr
    # the same container reaches nothing its link does not name
    assert fetch(host, f"http://{db}:81/index.html", "--link", "db:sql").returncode != 0
    assert fetch(host, f"http://{other}/index.html", "--link", "db:sql").returncode != 0
    # and a container without the link does not reach db at all
    assert fetch(host, f"http://{db}/index.html").returncode != 0

    # a long-lived linker: its flow is in the firewall while it runs, gone when it stops
    run_d(host, "--name", "web", "--net", "quiet", "--link", "db:sql", "busybox", "sleep", "600")
    web = ip_of(host, "web")
    assert web in link_rules(host) and db in link_rules(host)
    host.cli("stop", "-t", "1", "web", check=True)
    assert wait_for(lambda: web not in link_rules(host), timeout=5), link_rules(host)
    # the --rm linkers above left nothing behind
    assert link_rules(host) == ""


def test_a_link_follows_the_linked_container_to_its_new_address(host):
    host.cli("network", "create", "--icc", "off", "--subnet", "10.97.1.0/24", "quiet", check=True)
    serve_db = lambda text: run_d(host, "--name", "db", "--net", "quiet", "--expose", "80", "busybox", "sh", "-c",
                                  f"echo {text} > /tmp/index.html; exec httpd -f -p 80 -h /tmp")
    serve_db("v1")
    first = ip_of(host, "db")
    run_d(host, "--name", "web", "--net", "quiet", "--link", "db:sql", "busybox", "sleep", "600")
    get = lambda: host.cli("exec", "web", "sh", "-c", "timeout 2 wget -q -O- http://sql/index.html; exit $?")
    assert get().stdout.strip() == "v1"
    # db recreated at a new address (another container takes its old one): the link follows
    host.cli("rm", "-f", "db", check=True)
    run_d(host, "--name", "squatter", "--net", "quiet", "busybox", "sleep", "600")
    serve_db("v2")
    second = ip_of(host, "db")
    assert second != first
    assert wait_for(lambda: get().stdout.strip() == "v2", timeout=5), link_rules(host)
    rules = link_rules(host)
    assert second in rules and first not in rules   # the old address opens nothing to the squatter
