"""AmbassadorSpec: what `run --ambassador` and the API accept (pure)."""

from __future__ import annotations

import pytest

from portlink.errors import InvalidArgument
from portlink.runtime import ambassadors
from portlink.runtime.ambassadors import AmbassadorSpec


def test_round_trip_and_defaults():
    s = AmbassadorSpec.from_json({"service": "db", "ports": [5432, 80, 80]})
    assert s == AmbassadorSpec("db", (80, 5432), "drain", 10.0)
    assert AmbassadorSpec.from_json(s.to_json()) == s


@pytest.mark.parametrize("data,needle", [
    ({"service": "ser\u00b2"}, "invalid ambassador service"),        # Unicode digit: not a Consul name
    ({"service": "d\u00e9j\u00e0"}, "invalid ambassador service"),
    ({"service": ""}, "invalid ambassador service"),
    ({"service": "a" * 64}, "invalid ambassador service"),
    ({"service": "db", "ports": [True]}, "invalid ambassador ports"),  # a bool is not a port
    ({"service": "db", "ports": [0]}, "invalid ambassador ports"),
    ({"service": "db", "ports": "80"}, "invalid ambassador ports"),
    ({"service": "db", "policy": "maybe"}, "invalid ambassador policy"),
    ({"service": "db", "drain_deadline": True}, "drain deadline"),
    ({"service": "db", "drain_deadline": 0}, "drain deadline"),
    ({"service": "db", "colour": 1}, "unknown field(s) in 'ambassador': colour"),
    ("db", "must be an object"),
])
def test_bad_specs_are_refused_by_field(data, needle):
    with pytest.raises(InvalidArgument, match=None) as e:
        AmbassadorSpec.from_json(data)
    assert needle in str(e.value)


def test_container_name_is_a_valid_name():
    assert ambassadors.container_name("db", "bridge") == "amb-db-bridge"
    assert len(ambassadors.container_name("x" * 63, "y" * 63)) == 63
