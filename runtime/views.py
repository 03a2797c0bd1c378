"""Read models of containers: what `inspect` and `ps` show (reads the store only)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

from portlink.netns import names
from portlink.netns.model import NetworkSpec
from portlink.runtime import links as linkspec
from portlink.runtime import networks, security, volspec
from portlink.runtime.plan import Layout, mount_source
from portlink.runtime.records import RUNNING, Container, Records
from portlink.runtime.runc import ATTACH_SOCKET

LINK_NOTE = ("the DNS name and /etc/hosts follow the linked container live; the "
             "environment variables were set when this container started and cannot change")


class Views:
    def __init__(self, records: Records, layout: Layout, default_dns: list[str],
                 health: Callable[[Container], dict | None] = lambda c: None) -> None:
        self.records, self.layout, self.default_dns = records, layout, default_dns
        self.health = health    # a running container's State.Health (runtime.health_monitor), None: no check

    def inspect(self, ref: str) -> dict:
        c = self.records.find(ref)
        nets = {n.name: n for n in networks.read_all(self.records.store)}
        return self._view(c, nets, self.records.ports(c.id))

    def list(self, all: bool = False) -> list[dict]:
        nets = {n.name: n for n in networks.read_all(self.records.store)}
        ports: dict[str, list] = {}
        for r in self.records.all_ports():
            ports.setdefault(r["container_id"], []).append(r)
        return [self._view(c, nets, ports.get(c.id, [])) for c in self.records.all()
                if all or c.status == RUNNING]

    def last(self, c: Container) -> dict:
        """A container that is gone, as it was last recorded."""
        return self._view(c, {}, [])

    def _view(self, c: Container, nets: dict[str, NetworkSpec], port_rows) -> dict:
        spec, cid, cdir = c.spec, c.id, self.layout.cdir(c.id)
        net = nets.get(spec.network)
        return {
            "id": cid, "name": c.name, "image": spec.image, "status": c.status,
            "pid": c.pid if c.status == RUNNING else None, "exit_code": c.exit_code, "created": c.created,
            "started": c.started, "finished": c.finished, "config": asdict(spec),
            "exposed": list(c.exposed),
            "oom_killed": c.oom_killed,              # its last run ended with an OOM kill
            # restart policy (runtime.restarts), Docker's keys
            "RestartCount": c.restart_count,
            "RestartPolicy": spec.restart_policy.view(),
            "restarting": c.restarting and c.status != RUNNING,
            "limits": spec.parsed_limits().view(),
            "network": {
                "name": spec.network, "ip": c.ip,
                "gateway": str(net.gateway) if net else None,
                "prefixlen": net.subnet.prefixlen if net else None,
                "bridge": net.bridge if net else None,
                "veth": names.veth_name(cid) if c.ip else None,
                "netns": self.layout.netns_path(cid) if c.status == RUNNING else None,
                "ports": [{"proto": r["proto"], "host_ip": r["host_ip"] or "0.0.0.0", "host_port": r["host_port"],
                           "container_port": r["container_port"]} for r in port_rows],
            },
            "paths": {"dir": str(cdir), "log": str(cdir / "container.log"), "hosts": str(cdir / "hosts"),
                      "attach": str(cdir / ATTACH_SOCKET)},   # the monitor's (shim/logshim.c)
            "links": self._links(spec.links),
            "dns": {
                "server": str(net.gateway) if net else None,
                "names": ([spec.name, spec.hostname, cid[:12], f"{spec.name}.{net.name}", *spec.aliases]
                          if net else []),
                "upstreams": spec.dns or self.default_dns,
            },
            "security": security.effective(spec.security_opt, spec.cap_add, spec.cap_drop,
                                           ambassador=bool(spec.ambassador)),
            # Docker's keys: Type, Name, Source (on the host), Destination, RW, ...
            "Mounts": [volspec.docker_view(m, mount_source(m, self.layout) or "") for m in c.mounts],
            # Docker's State.Health (Status, FailingStreak, Log) while a checked container runs
            "State": {"Health": self.health(c) if c.status == RUNNING else None},
        }

    def _links(self, links: list[str]) -> list[dict]:
        out = []
        for text in links:
            link = linkspec.parse_link(text)
            other = self.records.named(link.name)
            out.append({"name": link.name, "alias": link.alias,
                        "status": other.status if other else "missing",
                        "ip": other.ip if other else None, "note": LINK_NOTE})
        return out
