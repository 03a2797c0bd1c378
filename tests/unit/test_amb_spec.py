"""AmbassadorSpec: what `run --ambassador` and the API accept (pure)."""

from __future__ import annotations

import stat

import pytest

from portlink.errors import InvalidArgument, RuntimeFailure
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


def test_the_token_file_reaches_the_config_read_only_and_the_env_names_its_path():
    from portlink.runtime.images import ImageConfig
    from portlink.runtime.plan import process
    from portlink.runtime.records import CREATING, Container
    from portlink.runtime.spec import ContainerSpec
    spec = ContainerSpec(image="busybox", name="amb", hostname="amb", network="front",
                         ambassador={"service": "db", "ports": [80]})
    c = Container(id="ab" * 32, name="amb", spec=spec, exposed=("80/tcp",), status=CREATING)
    proc = process(c, ImageConfig(cmd=[], env=[]), (0, 0), token_file="/state/containers/c1/consul-token")
    assert (proc.uid, proc.gid) == (65536, 65536)
    assert proc.ro_files == {"/run/secrets/consul-token": "/state/containers/c1/consul-token"}
    assert "CONSUL_HTTP_TOKEN_FILE=/run/secrets/consul-token" in proc.env
    assert process(c, ImageConfig(cmd=[], env=[]), (0, 0)).ro_files == {}
    assert "/usr" in proc.ro_binds


def test_open_ancestors_lets_others_through_without_following_links(tmp_path):
    root = tmp_path / "rootfs"
    (root / "root").mkdir(parents=True, mode=0o700)
    (root / "root").chmod(0o700)
    (root / "etc").mkdir(mode=0o755)
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    outside.chmod(0o700)
    (root / "link").symlink_to(outside)
    ambassadors.open_ancestors(root, ["/root/.pyenv/versions/3.11/x", "/link/lib/x", "/etc/hosts"])
    assert stat.S_IMODE((root / "root").stat().st_mode) == 0o701      # searchable, still not listable
    assert stat.S_IMODE(outside.stat().st_mode) == 0o700             # a symlink on the way: not followed
    assert stat.S_IMODE((root / "etc").stat().st_mode) == 0o755
    assert not (root / "root" / ".pyenv").exists()                   # runc makes the rest, 0755


def test_check_readable_names_what_the_unprivileged_forwarder_cannot_read(tmp_path):
    closed = tmp_path / "py"
    closed.mkdir()
    closed.chmod(0o700)
    with pytest.raises(RuntimeFailure) as e:
        ambassadors.check_readable({"/py": str(closed)})
    assert f"cannot read {closed} (mode 0700)" in str(e.value) and "65536" in str(e.value)
    closed.chmod(0o755)
    ambassadors.check_readable({"/py": str(closed)})


def test_ports_from_catalog_take_every_port_an_instance_lists():
    """A link made when only the first of a service's instances is known gets its
    other ports too (portlink-ports); a foreign instance stands for its own port."""
    from portlink.catalog.services import Instance
    first = Instance("i80", "shop", "10.99.0.1", 32768, meta=(("portlink-port", "80/tcp"),
                                                              ("portlink-ports", "80/tcp,81/tcp,53/udp")))
    assert ambassadors.ports_from_catalog([first]) == [80, 81]
    foreign = Instance("x", "shop", "10.99.0.9", 7000)
    junk = Instance("j", "shop", "10.99.0.8", 7001, meta=(("portlink-port", "90/tcp"), ("portlink-ports", "9x/tcp,,91")))
    assert ambassadors.ports_from_catalog([foreign, junk]) == [90, 91, 7000]
    old = Instance("o", "shop", "10.99.0.7", 32770, meta=(("portlink-port", "5432/tcp"),))   # before portlink-ports
    assert ambassadors.ports_from_catalog([old]) == [5432]
