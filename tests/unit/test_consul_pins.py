"""The Consul build's pins (scripts/build-consul, scripts/consul-pins/): the
version the script builds is the one the lab runs, and its pins cover Consul
and the submodules the checksum database does not know."""

from __future__ import annotations

import re
from pathlib import Path

from portlink.lab import consul_agent

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def test_the_script_builds_the_version_the_lab_runs():
    text = (SCRIPTS / "build-consul").read_text()
    assert re.search(r"^VERSION=\$\{PORTLINK_CONSUL_VERSION:-(v[0-9.]+)\}", text, re.M).group(1) == \
        consul_agent.VERSION == "v1.16.3"          # the last MPL-2.0 release the module proxy serves
    assert "GOFLAGS=-mod=readonly" in text


def test_the_pins_require_that_version_and_hash_its_submodules():
    pins = SCRIPTS / "consul-pins" / consul_agent.VERSION
    gomod = (pins / "go.mod").read_text()
    assert f"require github.com/hashicorp/consul {consul_agent.VERSION}\n" in gomod
    assert re.search(r"^go 1\.\d+$", gomod, re.M)
    sums = {tuple(line.split()[:2]) for line in (pins / "go.sum").read_text().splitlines()}
    assert ("github.com/hashicorp/consul", consul_agent.VERSION) in sums
    for sub in ("api", "sdk", "envoyextensions", "proto-public", "troubleshoot"):
        versions = {v for m, v in sums if m == f"github.com/hashicorp/consul/{sub}"}
        assert versions and any(not v.endswith("/go.mod") for v in versions), sub   # the content, not just go.mod
