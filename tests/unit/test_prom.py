"""The Prometheus text format helpers (pure)."""

from __future__ import annotations

from portlink.prom import Family, Histogram, merge


def test_family_renders_help_type_and_labelled_samples():
    f = Family("portlink_containers", "gauge", "Containers by status.")
    f.add(2, status="running").add(1, status='ex"ited')
    assert f.render() == (
        "# HELP portlink_containers Containers by status.\n"
        "# TYPE portlink_containers gauge\n"
        'portlink_containers{status="running"} 2\n'
        'portlink_containers{status="ex\\"ited"} 1\n')


def test_histogram_is_cumulative_with_inf_sum_and_count():
    h = Histogram((0.001, 0.01))
    for s in (0.0005, 0.001, 0.005, 2.0):
        h.observe(s)
    f = h.into(Family("x_seconds", "histogram", "X."))
    lines = f.render().splitlines()[2:]
    assert lines == ['x_seconds_bucket{le="0.001"} 2', 'x_seconds_bucket{le="0.01"} 3',
                     'x_seconds_bucket{le="+Inf"} 4', "x_seconds_sum 2.0065", "x_seconds_count 4"]
    assert h.count == 4


AMB = """# HELP portlink_ambassador_connections_open Open.
# TYPE portlink_ambassador_connections_open gauge
portlink_ambassador_connections_open 3
# HELP portlink_ambassador_backend_connections_open Open by backend.
# TYPE portlink_ambassador_backend_connections_open gauge
portlink_ambassador_backend_connections_open{backend="10.0.0.1:80"} 3
"""


def test_merge_declares_each_family_once_and_groups_samples():
    text = merge([(AMB, {"ambassador": "amb-a"}), (AMB.replace(" 3", " 5"), {"ambassador": "amb-b"})])
    assert text.splitlines() == [
        "# HELP portlink_ambassador_connections_open Open.",
        "# TYPE portlink_ambassador_connections_open gauge",
        'portlink_ambassador_connections_open{ambassador="amb-a"} 3',
        'portlink_ambassador_connections_open{ambassador="amb-b"} 5',
        "# HELP portlink_ambassador_backend_connections_open Open by backend.",
        "# TYPE portlink_ambassador_backend_connections_open gauge",
        'portlink_ambassador_backend_connections_open{ambassador="amb-a",backend="10.0.0.1:80"} 3',
        'portlink_ambassador_backend_connections_open{ambassador="amb-b",backend="10.0.0.1:80"} 5',
    ]


def test_merge_keeps_histogram_samples_under_their_family():
    h = Histogram((0.1,))
    h.observe(0.05)
    text = merge([(h.into(Family("y_seconds", "histogram", "Y.")).render(), {"src": "a"})])
    assert text.splitlines()[2:] == ['y_seconds_bucket{src="a",le="0.1"} 1', 'y_seconds_bucket{src="a",le="+Inf"} 1',
                                     'y_seconds_sum{src="a"} 0.05', 'y_seconds_count{src="a"} 1']
    assert merge([]) == ""
