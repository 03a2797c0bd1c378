"""The daemon's Prometheus endpoint (`portlinkd --metrics-addr IP:PORT`; off
by default): containers by status, the attach time histogram, DNS answers by
path and rcode with latency, the link to Consul, the daemon's own memory and
file descriptors, and every running ambassador's /metrics relabelled with
`ambassador="<name>"`, so one scrape per host covers it all."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable

from aiohttp import ClientSession, ClientTimeout, web
from dnslib import RCODE

from portlink import parse
from portlink.errors import InvalidArgument, InvalidValue
from portlink.prom import Family, merge
from portlink.runtime import ambassadors
from portlink.runtime.ambassador_http import read_capped

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def parse_addr(text: str) -> tuple[str, int]:
    try:
        return parse.hostport("--metrics-addr", text, names=True)
    except InvalidValue:
        raise InvalidArgument(f"invalid --metrics-addr {text!r}: expected IP:PORT (e.g. 127.0.0.1:9101)") from None


def host_families(host, consul_status: dict | None) -> list[Family]:
    """What the daemon knows by itself (blocking: reads the store)."""
    out = []
    counts = host.records.counts()
    fam = Family("portlink_containers", "gauge", "Containers on this host by status.")
    for status, n in counts.items():
        fam.add(n, status=status)
    out.append(fam)
    amb = host.records.running_ambassadors()
    out.append(Family("portlink_ambassadors", "gauge", "Ambassador containers running.").add(len(amb)))
    out.append(Family("portlink_networks", "gauge", "Networks on this host.").add(len(host.networks.list())))
    out.append(host.metrics.attach_time.into(Family(
        "portlink_attach_seconds", "histogram", "Time to wire a container to its network (veth pair, "
        "address, route).")))
    out.append(host.metrics.start_time.into(Family(
        "portlink_start_seconds", "histogram", "Time from the start of a container's start to its process running.")))

    dns = host.dns
    answered = Family("portlink_dns_answers_total", "counter",
                      'DNS answers by path (cache: from the packed table; local: answered here; forward: '
                      'from an upstream) and rcode.')
    for rc, n in enumerate(dns.cached_counts()):
        if n:
            answered.add(n, path="cache", rcode=RCODE.get(rc))
    for (path, rc), n in sorted(dns.answered.items()):
        answered.add(n, path=path, rcode=RCODE.get(rc))
    out.append(answered)
    lat = Family("portlink_dns_latency_seconds", "histogram",
                 "Time to answer a question that missed the packed table (cached answers take microseconds).")
    for path, h in dns.latency.items():
        h.into(lat, path=path)
    out.append(lat)
    out.append(Family("portlink_dns_dropped_total", "counter", "Questions dropped: too many forwards in flight.")
               .add(dns.stats["dropped_forwards"]))

    if consul_status is not None:
        out.append(Family("portlink_consul_reachable", "gauge", "1 if the Consul agent answers.")
                   .add(int(bool(consul_status["reachable"]))))
        out.append(Family("portlink_consul_failures_total", "counter", "Failed requests to the Consul agent.")
                   .add(consul_status["failures"]))
        out.append(Family("portlink_consul_resync_passes_total", "counter", "Registrar passes (full resyncs).")
                   .add(consul_status["resync_passes"]))
        out.append(Family("portlink_consul_services", "gauge", "Services in the catalog the daemon follows.")
                   .add(consul_status["services_seen"]))

    out.append(Family("portlink_daemon_resident_bytes", "gauge", "The daemon's resident memory.").add(_rss()))
    out.append(Family("portlink_daemon_open_fds", "gauge", "The daemon's open file descriptors.")
               .add(len(os.listdir("/proc/self/fd"))))
    return out


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def ambassador_texts(running: Iterable[tuple[str, str]], timeout: float = 1.0) -> list[tuple[str, dict]]:
    """Each running ambassador's /metrics (name, ip), fetched in parallel; one that
    does not answer in time is left out (its `portlink_ambassador_up` is 0)."""
    async def one(s: ClientSession, name: str, ip: str) -> tuple[str, dict]:
        try:
            async with s.get(f"http://{ip}:{ambassadors.METRICS_PORT}/metrics") as r:
                body = (await read_capped(r)).decode("utf-8", "replace") if r.status == 200 else ""
        except Exception:
            body = ""
        up = f"# HELP portlink_ambassador_up 1 if the ambassador's metrics answered.\n" \
             f"# TYPE portlink_ambassador_up gauge\nportlink_ambassador_up {int(bool(body))}\n"
        return up + body, {"ambassador": name}
    running = list(running)
    if not running:
        return []
    async with ClientSession(timeout=ClientTimeout(total=timeout)) as s:
        return list(await asyncio.gather(*(one(s, n, ip) for n, ip in running)))


class Exporter:
    def __init__(self, host, consul=None, call=None) -> None:
        self.host, self.consul = host, consul
        self.call = call   # runs a blocking function in the API's thread pool

    def _running_ambassadors(self) -> list[tuple[str, str]]:
        return [(c.name, c.ip) for c in self.host.records.running_ambassadors()]

    async def render(self) -> str:
        status = self.consul.status() if self.consul else None
        fams = await self.call(host_families, self.host, status)
        ambs = await ambassador_texts(await self.call(self._running_ambassadors))
        ambs += await self.call(self._kernel_texts)   # the kernel data path's nft counters
        return "".join(f.render() for f in fams) + merge(ambs)

    def _kernel_texts(self) -> list[tuple[str, dict]]:
        kl = self.host.link_datapath
        return [(kl.metrics_text(c), {"ambassador": c.name}) for c in self.host.records.running_ambassadors()
                if kl.applies_to(c)]

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(text=await self.render(), headers={"Content-Type": CONTENT_TYPE})

    async def serve(self, addr: str) -> web.AppRunner:
        host, port = parse_addr(addr)
        app = web.Application()
        app.add_routes([web.get("/metrics", self.handle)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as e:
            await runner.cleanup()
            raise InvalidArgument(f"cannot serve metrics on {addr}: {e.strerror or e}") from None
        return runner
