"""IptablesDriver against a real kernel, inside a throwaway network namespace
(never the machine's own): apply twice, publish, unpublish, tear down."""

import json
import re
import secrets
import subprocess
import sys

import pytest

pytestmark = pytest.mark.root   # root and the apt packages come from `make test`

# Runs inside the namespace; prints iptables-save after each step as JSON.
SNIPPET = r"""
import json, subprocess
from ipaddress import IPv4Address as A, IPv4Network as N
from portlink.netns import rules_iptables
from portlink.netns.fw_iptables import IptablesDriver
from portlink.netns.model import NetworkSpec, PortMapping

save = lambda: subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
nets = [NetworkSpec("n1", "front", N("10.77.0.0/24"), A("10.77.0.1"), "plb-front"),
        NetworkSpec("n2", "back", N("10.78.0.0/24"), A("10.78.0.1"), "plb-back", internal=True, icc=False)]
base = [PortMapping("tcp", 8080, A("10.77.0.2"), 80)]
new = [PortMapping("udp", 5353, A("10.77.0.3"), 53, host_ip=A("127.0.0.1")),
       PortMapping("tcp", 9090, A("10.77.0.4"), 90)]
d = IptablesDriver()
out = {"before": save()}
d.apply_all(nets, base)
d.apply_all(nets, base)
out["applied"] = save()
out["dump"] = d.dump()
out["rendered"] = rules_iptables.render_ruleset(nets, base)
d.add_ports(new)
out["added"] = save()
out["remove_errors"] = d.remove_ports([new[0]])
# one already gone: the batch fails, the other must still go, and the one gone is no error
out["remove_again_errors"] = d.remove_ports(new)
out["removed"] = save()
out["teardown_errors"] = d.teardown()
out["torn"] = save()
out["teardown_again_errors"] = d.teardown()
print(json.dumps(out))
"""


def _normalized_save(argv_prefix=()) -> str:
    # Counters and timestamps change on their own; rules must not.
    text = subprocess.run([*argv_prefix, "iptables-save"], capture_output=True, text=True, check=True).stdout
    return "\n".join(re.sub(r"\[\d+:\d+\]", "[0:0]", l) for l in text.splitlines() if not l.startswith("#"))


@pytest.fixture
def netns():
    name = f"plt-ipt-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _rules(save: str) -> list[str]:
    return [l for l in save.splitlines() if l.startswith("-A ")]


def test_apply_publish_unpublish_teardown(netns):
    root_before = _normalized_save()
    r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", SNIPPET],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)

    assert "PORTLINK" not in out["before"]
    applied = out["applied"]
    for chain in ("PORTLINK-PREROUTING", "PORTLINK-OUTPUT", "PORTLINK-POSTROUTING", "PORTLINK-DNAT", "PORTLINK-FORWARD"):
        assert f":{chain} - [0:0]" in applied
    rules = _rules(applied)
    for builtin in ("PREROUTING", "OUTPUT", "POSTROUTING", "FORWARD"):
        assert rules.count(f"-A {builtin} -j PORTLINK-{builtin}") == 1, builtin   # applied twice, present once
    # What the kernel holds is what was rendered, line for line (drift checks rely on it).
    rendered = [l for l in out["rendered"].splitlines() if l.startswith("-A PORTLINK")]
    assert sorted(l for l in rules if l.startswith("-A PORTLINK")) == sorted(rendered)
    assert out["dump"] and all("PORTLINK" in l for l in out["dump"].splitlines())

    udp = "-A PORTLINK-DNAT -d 127.0.0.1/32 -p udp -m udp --dport 5353 -j DNAT --to-destination 10.77.0.3:53"
    tcp = "-A PORTLINK-DNAT -p tcp -m tcp --dport 9090 -j DNAT --to-destination 10.77.0.4:90"
    old = "-A PORTLINK-DNAT -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.77.0.2:80"
    added = _rules(out["added"])
    assert udp in added and tcp in added and old in added

    assert out["remove_errors"] == []
    assert out["remove_again_errors"] == []   # 5353/udp was already gone: not an error; 9090 went
    removed = _rules(out["removed"])
    assert udp not in removed and tcp not in removed and old in removed

    assert out["teardown_errors"] == [] and out["teardown_again_errors"] == []
    assert "PORTLINK" not in out["torn"]

    assert _normalized_save() == root_before
