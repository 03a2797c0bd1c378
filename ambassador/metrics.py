"""The ambassador's counters, pure: the forwarder bumps them, `render` gives the
Prometheus text format and `snapshot` a JSON-able dict for `portlink inspect`.

Each quantity is kept three ways: in total, per backend and per listener port.
They are rendered as three metric families (`X`, `backend_X{backend=...}`,
`listener_X{listener=...}`) rather than one family with mixed label sets, so
`sum()` over any family is never double counted."""

from __future__ import annotations

from dataclasses import dataclass, field

from portlink.prom import escape

PREFIX = "portlink_ambassador_"


@dataclass
class Series:
    total: int = 0
    backends: dict[str, int] = field(default_factory=dict)    # "ip:port" -> value
    listeners: dict[int, int] = field(default_factory=dict)   # listener port -> value

    def add(self, n: int, listener: int | None = None, backend: str | None = None) -> None:
        self.total += n
        if backend is not None:
            self.backends[backend] = self.backends.get(backend, 0) + n
        if listener is not None:
            self.listeners[listener] = self.listeners.get(listener, 0) + n

    def snapshot(self) -> dict:
        return {"total": self.total, "backends": dict(sorted(self.backends.items())),
                "listeners": {str(p): v for p, v in sorted(self.listeners.items())}}


# name, type, help; the order of `render`
FAMILIES = (
    ("connections_open", "gauge", "Forwarded connections open now."),
    ("connections_total", "counter", "Forwarded connections established (client paired with a backend)."),
    ("bytes_to_backend_total", "counter", "Bytes forwarded from clients to backends."),
    ("bytes_to_client_total", "counter", "Bytes forwarded from backends to clients."),
    ("connect_failures_total", "counter", "Failed connection attempts to backends."),
    ("rejected_total", "counter", "Client connections closed because no backend answered."),
    ("reroutes_total", "counter", "Changes of a listener's backend set."),
    ("tls_handshake_failures_total", "counter",
     "Client connections closed because their TLS handshake failed (plain TCP, no or an untrusted certificate)."),
    ("tls_denied_total", "counter",
     "Client connections closed after the TLS handshake: not a service identity of this CA, or not authorized."),
    ("unlinked_source_total", "counter",
     "Client connections refused before any dial: their source address is no linker of this ambassador."),
)
# Where "by backend" means something else than a share of the total.
BACKEND_HELP = {"reroutes_total": "Changes of a listener's backend set that removed this backend."}
NO_BACKEND = {"rejected_total", "tls_handshake_failures_total", "tls_denied_total", "unlinked_source_total"}   # no backend: nothing to label


class Metrics:
    def __init__(self) -> None:
        self.series: dict[str, Series] = {name: Series() for name, _, _ in FAMILIES}
        self.flushers: list = []      # called before any read: the forwarder's batched byte counts

    def on_read(self, flush) -> None:
        self.flushers.append(flush)

    def _sync(self) -> None:
        for flush in self.flushers:
            flush()

    def __getitem__(self, name: str) -> Series:
        self._sync()
        return self.series[name]

    # -- what the forwarder reports ------------------------------------------

    def opened(self, listener: int, backend: str) -> None:
        self.series["connections_open"].add(1, listener, backend)
        self.series["connections_total"].add(1, listener, backend)

    def closed(self, listener: int, backend: str) -> None:
        self.series["connections_open"].add(-1, listener, backend)

    def to_backend(self, listener: int, backend: str, n: int) -> None:
        self.series["bytes_to_backend_total"].add(n, listener, backend)

    def to_client(self, listener: int, backend: str, n: int) -> None:
        self.series["bytes_to_client_total"].add(n, listener, backend)

    def connect_failed(self, listener: int, backend: str) -> None:
        self.series["connect_failures_total"].add(1, listener, backend)

    def rejected(self, listener: int) -> None:
        self.series["rejected_total"].add(1, listener)

    def unlinked(self, listener: int) -> None:
        self.series["unlinked_source_total"].add(1, listener)

    def handshake_failed(self, listener: int) -> None:
        self.series["tls_handshake_failures_total"].add(1, listener)

    def denied(self, listener: int) -> None:
        self.series["tls_denied_total"].add(1, listener)

    def rerouted(self, listener: int, removed: list[str] | tuple[str, ...] = ()) -> None:
        s = self.series["reroutes_total"]
        s.add(1, listener)
        for b in removed:
            s.backends[b] = s.backends.get(b, 0) + 1

    # -- what others read ------------------------------------------------------

    def render(self) -> str:
        """Prometheus text exposition format (version 0.0.4)."""
        self._sync()
        out: list[str] = []
        for name, kind, text in FAMILIES:
            s = self.series[name]
            for scope, label, values, by in (("", None, None, ""),
                                             ("backend_", "backend", s.backends, " By backend."),
                                             ("listener_", "listener", s.listeners, " By listener port.")):
                if label == "backend" and name in NO_BACKEND:
                    continue
                full = PREFIX + scope + name
                help_ = BACKEND_HELP[name] if label == "backend" and name in BACKEND_HELP else text + by
                out.append(f"# HELP {full} {help_}")
                out.append(f"# TYPE {full} {kind}")
                if values is None:
                    out.append(f"{full} {s.total}")
                    continue
                for key, v in sorted(values.items()):
                    out.append(f'{full}{{{label}="{escape(key)}"}} {v}')
        return "\n".join(out) + "\n"

    def snapshot(self) -> dict:
        self._sync()
        out = {name: self.series[name].snapshot() for name, _, _ in FAMILIES}
        for name in NO_BACKEND:
            del out[name]["backends"]
        return out
