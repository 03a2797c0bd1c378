"""Metrics: exact Prometheus text for a small known state, and the snapshot shape."""

import json

from portlink.ambassador.metrics import Metrics

EXPECTED = """\
# HELP portlink_ambassador_connections_open Forwarded connections open now.
# TYPE portlink_ambassador_connections_open gauge
portlink_ambassador_connections_open 1
# HELP portlink_ambassador_backend_connections_open Forwarded connections open now. By backend.
# TYPE portlink_ambassador_backend_connections_open gauge
portlink_ambassador_backend_connections_open{backend="10.0.0.1:80"} 0
portlink_ambassador_backend_connections_open{backend="10.0.0.2:80"} 1
# HELP portlink_ambassador_listener_connections_open Forwarded connections open now. By listener port.
# TYPE portlink_ambassador_listener_connections_open gauge
portlink_ambassador_listener_connections_open{listener="80"} 1
# HELP portlink_ambassador_connections_total Forwarded connections established (client paired with a backend).
# TYPE portlink_ambassador_connections_total counter
portlink_ambassador_connections_total 2
# HELP portlink_ambassador_backend_connections_total Forwarded connections established (client paired with a backend). By backend.
# TYPE portlink_ambassador_backend_connections_total counter
portlink_ambassador_backend_connections_total{backend="10.0.0.1:80"} 1
portlink_ambassador_backend_connections_total{backend="10.0.0.2:80"} 1
# HELP portlink_ambassador_listener_connections_total Forwarded connections established (client paired with a backend). By listener port.
# TYPE portlink_ambassador_listener_connections_total counter
portlink_ambassador_listener_connections_total{listener="80"} 2
# HELP portlink_ambassador_bytes_to_backend_total Bytes forwarded from clients to backends.
# TYPE portlink_ambassador_bytes_to_backend_total counter
portlink_ambassador_bytes_to_backend_total 15
# HELP portlink_ambassador_backend_bytes_to_backend_total Bytes forwarded from clients to backends. By backend.
# TYPE portlink_ambassador_backend_bytes_to_backend_total counter
portlink_ambassador_backend_bytes_to_backend_total{backend="10.0.0.1:80"} 10
portlink_ambassador_backend_bytes_to_backend_total{backend="10.0.0.2:80"} 5
# HELP portlink_ambassador_listener_bytes_to_backend_total Bytes forwarded from clients to backends. By listener port.
# TYPE portlink_ambassador_listener_bytes_to_backend_total counter
portlink_ambassador_listener_bytes_to_backend_total{listener="80"} 15
# HELP portlink_ambassador_bytes_to_client_total Bytes forwarded from backends to clients.
# TYPE portlink_ambassador_bytes_to_client_total counter
portlink_ambassador_bytes_to_client_total 7
# HELP portlink_ambassador_backend_bytes_to_client_total Bytes forwarded from backends to clients. By backend.
# TYPE portlink_ambassador_backend_bytes_to_client_total counter
portlink_ambassador_backend_bytes_to_client_total{backend="10.0.0.1:80"} 7
# HELP portlink_ambassador_listener_bytes_to_client_total Bytes forwarded from backends to clients. By listener port.
# TYPE portlink_ambassador_listener_bytes_to_client_total counter
portlink_ambassador_listener_bytes_to_client_total{listener="80"} 7
# HELP portlink_ambassador_connect_failures_total Failed connection attempts to backends.
# TYPE portlink_ambassador_connect_failures_total counter
portlink_ambassador_connect_failures_total 1
# HELP portlink_ambassador_backend_connect_failures_total Failed connection attempts to backends. By backend.
# TYPE portlink_ambassador_backend_connect_failures_total counter
portlink_ambassador_backend_connect_failures_total{backend="10.0.0.3:80"} 1
# HELP portlink_ambassador_listener_connect_failures_total Failed connection attempts to backends. By listener port.
# TYPE portlink_ambassador_listener_connect_failures_total counter
portlink_ambassador_listener_connect_failures_total{listener="5432"} 1
# HELP portlink_ambassador_rejected_total Client connections closed because no backend answered.
# TYPE portlink_ambassador_rejected_total counter
portlink_ambassador_rejected_total 1
# HELP portlink_ambassador_listener_rejected_total Client connections closed because no backend answered. By listener port.
# TYPE portlink_ambassador_listener_rejected_total counter
portlink_ambassador_listener_rejected_total{listener="5432"} 1
# HELP portlink_ambassador_reroutes_total Changes of a listener's backend set.
# TYPE portlink_ambassador_reroutes_total counter
portlink_ambassador_reroutes_total 1
# HELP portlink_ambassador_backend_reroutes_total Changes of a listener's backend set that removed this backend.
# TYPE portlink_ambassador_backend_reroutes_total counter
portlink_ambassador_backend_reroutes_total{backend="10.0.0.1:80"} 1
# HELP portlink_ambassador_listener_reroutes_total Changes of a listener's backend set. By listener port.
# TYPE portlink_ambassador_listener_reroutes_total counter
portlink_ambassador_listener_reroutes_total{listener="80"} 1
# HELP portlink_ambassador_tls_handshake_failures_total Client connections closed because their TLS handshake failed (plain TCP, no or an untrusted certificate).
# TYPE portlink_ambassador_tls_handshake_failures_total counter
portlink_ambassador_tls_handshake_failures_total 2
# HELP portlink_ambassador_listener_tls_handshake_failures_total Client connections closed because their TLS handshake failed (plain TCP, no or an untrusted certificate). By listener port.
# TYPE portlink_ambassador_listener_tls_handshake_failures_total counter
portlink_ambassador_listener_tls_handshake_failures_total{listener="5432"} 2
# HELP portlink_ambassador_tls_denied_total Client connections closed after the TLS handshake: not a service identity of this CA, or not authorized.
# TYPE portlink_ambassador_tls_denied_total counter
portlink_ambassador_tls_denied_total 1
# HELP portlink_ambassador_listener_tls_denied_total Client connections closed after the TLS handshake: not a service identity of this CA, or not authorized. By listener port.
# TYPE portlink_ambassador_listener_tls_denied_total counter
portlink_ambassador_listener_tls_denied_total{listener="5432"} 1
# HELP portlink_ambassador_unlinked_source_total Client connections refused before any dial: their source address is no linker of this ambassador.
# TYPE portlink_ambassador_unlinked_source_total counter
portlink_ambassador_unlinked_source_total 1
# HELP portlink_ambassador_listener_unlinked_source_total Client connections refused before any dial: their source address is no linker of this ambassador. By listener port.
# TYPE portlink_ambassador_listener_unlinked_source_total counter
portlink_ambassador_listener_unlinked_source_total{listener="5432"} 1
"""


def known() -> Metrics:
    m = Metrics()
    m.opened(80, "10.0.0.1:80")
    m.to_backend(80, "10.0.0.1:80", 10)
    m.to_client(80, "10.0.0.1:80", 7)
    m.closed(80, "10.0.0.1:80")
    m.opened(80, "10.0.0.2:80")
    m.to_backend(80, "10.0.0.2:80", 5)
    m.connect_failed(5432, "10.0.0.3:80")
    m.rejected(5432)
    m.rerouted(80, ["10.0.0.1:80"])
    m.handshake_failed(5432)
    m.handshake_failed(5432)
    m.denied(5432)
    m.unlinked(5432)
    return m


def test_render_exact():
    assert known().render() == EXPECTED


def test_render_empty_has_every_family_at_zero():
    text = Metrics().render()
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert samples == [
        "portlink_ambassador_connections_open 0", "portlink_ambassador_connections_total 0",
        "portlink_ambassador_bytes_to_backend_total 0", "portlink_ambassador_bytes_to_client_total 0",
        "portlink_ambassador_connect_failures_total 0", "portlink_ambassador_rejected_total 0",
        "portlink_ambassador_reroutes_total 0", "portlink_ambassador_tls_handshake_failures_total 0",
        "portlink_ambassador_tls_denied_total 0", "portlink_ambassador_unlinked_source_total 0"]


def test_label_values_escaped():
    m = Metrics()
    m.connect_failed(1, 'a"b\\c\nd')
    assert 'portlink_ambassador_backend_connect_failures_total{backend="a\\"b\\\\c\\nd"} 1' in m.render()


def test_listeners_sorted_numerically():
    m = Metrics()
    for port in (9000, 80, 443):
        m.rejected(port)
    lines = [l for l in m.render().splitlines() if l.startswith("portlink_ambassador_listener_rejected_total{")]
    assert lines == ['portlink_ambassador_listener_rejected_total{listener="80"} 1',
                     'portlink_ambassador_listener_rejected_total{listener="443"} 1',
                     'portlink_ambassador_listener_rejected_total{listener="9000"} 1']


def test_snapshot_shape():
    snap = known().snapshot()
    assert json.loads(json.dumps(snap)) == snap          # JSON-able as is
    assert list(snap) == ["connections_open", "connections_total", "bytes_to_backend_total",
                          "bytes_to_client_total", "connect_failures_total", "rejected_total", "reroutes_total",
                          "tls_handshake_failures_total", "tls_denied_total", "unlinked_source_total"]
    assert snap["tls_denied_total"] == {"total": 1, "listeners": {"5432": 1}}
    assert snap["connections_open"] == {"total": 1, "backends": {"10.0.0.1:80": 0, "10.0.0.2:80": 1},
                                        "listeners": {"80": 1}}
    assert snap["bytes_to_backend_total"] == {"total": 15, "backends": {"10.0.0.1:80": 10, "10.0.0.2:80": 5},
                                              "listeners": {"80": 15}}
    assert snap["rejected_total"] == {"total": 1, "listeners": {"5432": 1}}
    assert snap["reroutes_total"] == {"total": 1, "backends": {"10.0.0.1:80": 1}, "listeners": {"80": 1}}
