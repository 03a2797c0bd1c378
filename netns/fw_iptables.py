"""The iptables firewall driver; touches the kernel through iptables-restore/-save.

Every change is one `iptables-restore --noflush` exec fed text rendered by
rules_iptables (atomic per table); apply_all and teardown read `iptables-save`
first, since a restore script cannot test whether a rule exists."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Sequence

from portlink.errors import RuntimeFailure
from portlink.netns import rules_iptables as R
from portlink.netns.firewall import FirewallDriver, already_gone
from portlink.netns.model import DNS_PORT, NetworkSpec, PortMapping, Flow

TIMEOUT = 30   # seconds; a wedged iptables must not hang the daemon


def _which(binary: str) -> str:
    path = shutil.which(binary)
    if not path:
        raise RuntimeFailure(f"{binary} not found; install the apt package iptables")
    return path


class IptablesDriver(FirewallDriver):
    name = "iptables"

    def __init__(self, dns_port: int = DNS_PORT) -> None:
        self.dns_port = dns_port
        self._restore = _which("iptables-restore")
        self._save = _which("iptables-save")

    def _exec(self, argv: list[str], text: str | None = None) -> str:
        tool = os.path.basename(argv[0])
        try:
            r = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            raise RuntimeFailure(f"{tool} timed out after {TIMEOUT}s") from None
        if r.returncode != 0:
            raise RuntimeFailure(f"{tool} failed: {r.stderr.strip() or 'exit ' + str(r.returncode)}")
        return r.stdout

    def _run(self, script: str) -> None:
        # --wait: the legacy backend takes the xtables lock; nft ignores it.
        self._exec([self._restore, "--wait=10", "--noflush"], script)

    def _saved(self) -> str:
        return self._exec([self._save])

    def apply_all(self, networks: Sequence[NetworkSpec], ports: Sequence[PortMapping],
                  flows: Sequence[Flow] = ()) -> None:
        self._run(R.render_ruleset(networks, ports, self._saved(), flows, self.dns_port))

    def add_flows(self, flows: Sequence[Flow]) -> None:
        if flows:
            self._run(R.render_add_flows(flows))

    def remove_flows(self, flows: Sequence[Flow]) -> list[str]:
        return self._remove_each(flows, R.render_remove_flows, "withdraw")

    def add_ports(self, ports: Sequence[PortMapping]) -> None:
        if ports:
            self._run(R.render_add_ports(ports))

    def remove_ports(self, ports: Sequence[PortMapping]) -> list[str]:
        return self._remove_each(ports, R.render_remove_ports, "unpublish")

    def _remove_each(self, items: Sequence, render, what: str) -> list[str]:
        if not items:
            return []
        try:
            self._run(render(items))
            return []
        except RuntimeFailure:
            pass   # the batch is all or nothing: one item already gone must not keep the rest
        errors = []
        for x in items:
            try:
                self._run(render([x]))
            except RuntimeFailure as e:
                if not already_gone(str(e)):
                    errors.append(f"{what} {x}: {e}")
        return errors

    def teardown(self) -> list[str]:
        try:
            saved = self._saved()
        except RuntimeFailure as e:
            return [str(e)]
        script = R.render_teardown(saved)
        if not script:
            return []
        try:
            self._run(script)
            return []
        except RuntimeFailure:
            pass   # fall back to step by step, collecting every error
        try:
            saved = self._saved()   # tables that committed before the failure are done
        except RuntimeFailure as e:
            return [str(e)]
        errors = []
        for table, line in R.teardown_ops(saved):
            try:
                self._run(f"*{table}\n{line}\nCOMMIT\n")
            except RuntimeFailure as e:
                errors.append(f"{table} {line}: {e}")
        return errors

    def dump(self) -> str:
        try:
            return R.filter_dump(self._saved())
        except RuntimeFailure:
            return ""
