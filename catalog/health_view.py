"""The health endpoints portlink follows, asked with `?cached` (issue 18).

On a client agent (Consul >= 1.10, `use_streaming_backend`, the default) a
blocking `/v1/health/service/<name>?cached` query is answered from the agent's
materialized view of that service, which the servers keep current over one
event stream, instead of each query being a blocking RPC that a server wakes
on every index bump. Without streaming the agent's cache answers it, refreshed
in the background by one blocking query per service. bench/scale_hosts.py,
five runs each on one day: p99 from a Consul commit to every host's DNS and
ambassador 80-102 ms with it (median 82), 96-105 ms without (median 98).

py-consul's `health.service` has no `cached` argument, so this asks the same
endpoint through the client's own HTTP session (its token, datacenter and
connection pool) and answers the same `(index, entries)`."""

from __future__ import annotations

import urllib.parse

from consul.callback import CB


class CachedHealth:
    """`client.health`, with `service` and `connect` asked `?cached`; the rest is
    py-consul's own (ConsulConfig.client installs it)."""

    def __init__(self, client) -> None:
        self._client, self._plain = client, client.health

    def service(self, service: str, index=None, wait=None, passing=None):
        return self._query("service", service, index, wait, passing)

    def connect(self, service: str, index=None, wait=None, passing=None):
        return self._query("connect", service, index, wait, passing)

    def __getattr__(self, name: str):
        return getattr(self._plain, name)

    def _query(self, kind: str, service: str, index, wait, passing):
        params = [("cached", "")]
        if index:
            params.append(("index", index))
            if wait:
                params.append(("wait", wait))
        if passing:
            params.append(("passing", "1"))
        if self._client.dc:
            params.append(("dc", self._client.dc))
        uri = f"/v1/health/{kind}/{urllib.parse.quote(service, safe='')}"
        return self._client.http.get(CB.json(index=True), uri, params=params,
                                     headers=self._client.prepare_headers(None))
