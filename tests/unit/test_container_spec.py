"""ContainerSpec.from_json: the stored/requested container spec is checked strictly."""

import json
from dataclasses import asdict

import pytest

from portlink.errors import InvalidArgument
from portlink.runtime.spec import ContainerSpec

FULL = {
    "image": "alpine",
    "name": "web",
    "cmd": ["/bin/sh", "-c", "sleep 1"],
    "env": ["A=1", "B=x=y"],
    "publish": ["8080:80", "127.0.0.1::53/udp"],
    "expose": ["9000-9001"],
    "network": "front",
    "hostname": "webhost",
    "dns": ["192.0.2.53"],
    "workdir": "/srv",
    "user": "1000:1000",
    "entrypoint": ["/docker-entrypoint.sh"],
    "stop_signal": "SIGQUIT",
    "rm": True,
    "tty": True,
    "interactive": True,
    "pids_limit": 100,
    "memory": "512m",
    "memory_swap": "1g",
    "cpus": 0.5,
    "ulimits": ["nofile=100:200"],
    "labels": {"tier": "front", "owner": "me"},
    "links": ["db:sql", "cache"],
    "aliases": ["www"],
    "ambassador": {"service": "frontdb", "ports": [5432], "policy": "drain", "drain_deadline": 10.0},
    "log_opts": {"max-size": "1m", "max-file": "2"},
    "security_opt": ["seccomp=unconfined", "no-new-privileges"],
    "cap_add": ["NET_RAW"],
    "cap_drop": ["mknod"],
    "volumes": [], "mounts": [], "tmpfs": [], "volumes_from": [],   # an ambassador takes none
    # health checks (runtime/health.py)
    "health_cmd": "test -f /tmp/ok", "health_interval": "1s", "health_timeout": "2s", "health_retries": 2,
    "health_start_period": "5s", "no_healthcheck": False,
    "restart": "",                                                  # nor a restart policy
    # Docker's remaining run flags (runtime/hostopts.py)
    "add_hosts": ["db.local:10.0.0.5", "gw:host-gateway", "v6:::1"],
    "dns_search": ["example.com"], "dns_options": ["ndots:2", "rotate"],
    "init": False,                                                  # nor --init
}


def test_full_spec_round_trips():
    spec = ContainerSpec.from_json(json.loads(json.dumps(FULL)))
    assert asdict(spec) == FULL
    assert ContainerSpec.from_json(asdict(spec)) == spec


def test_minimal_spec_defaults():
    spec = ContainerSpec.from_json({"image": "alpine"})
    assert spec.image == "alpine"
    assert spec.cmd == [] and spec.labels == {} and spec.rm is False and spec.name == ""
    # default lists are not shared between specs
    spec.cmd.append("x")
    assert ContainerSpec.from_json({"image": "alpine"}).cmd == []


def test_unknown_fields_named():
    with pytest.raises(InvalidArgument) as e:
        ContainerSpec.from_json({"image": "alpine", "ports": ["80"], "Cmd": ["x"]})
    assert str(e.value) == "unknown field(s) in the container spec: Cmd, ports"


@pytest.mark.parametrize("data", [{}, {"name": "web", "cmd": ["true"]}])
def test_missing_image(data):
    with pytest.raises(InvalidArgument, match="no image given"):
        ContainerSpec.from_json(data)


@pytest.mark.parametrize("data", [None, [], "alpine", ["image", "alpine"]])
def test_not_an_object(data):
    with pytest.raises(InvalidArgument, match="must be a JSON object"):
        ContainerSpec.from_json(data)


@pytest.mark.parametrize("field, value, msg", [
    ("cmd", "sleep 1", "field 'cmd' must be a list of strings"),
    ("cmd", ["sleep", 1], "field 'cmd' must be a list of strings"),
    ("cmd", None, "field 'cmd' must be a list of strings"),
    ("env", {"A": "1"}, "field 'env' must be a list of strings"),
    ("publish", [8080], "field 'publish' must be a list of strings"),
    ("expose", "80", "field 'expose' must be a list of strings"),
    ("dns", [None], "field 'dns' must be a list of strings"),
    ("labels", ["a=b"], "field 'labels' must map strings to strings"),
    ("labels", {"a": 1}, "field 'labels' must map strings to strings"),
    ("labels", {"a": None}, "field 'labels' must map strings to strings"),
    ("name", 5, "field 'name' must be a string"),
    ("name", None, "field 'name' must be a string"),
    ("image", ["alpine"], "field 'image' must be a string"),
    ("network", 1, "field 'network' must be a string"),
    ("hostname", False, "field 'hostname' must be a string"),
    ("workdir", ["/"], "field 'workdir' must be a string"),
    ("user", 1000, "field 'user' must be a string"),
])
def test_wrong_types(field, value, msg):
    data = dict(FULL, **{field: value})
    with pytest.raises(InvalidArgument) as e:
        ContainerSpec.from_json(data)
    assert str(e.value) == msg


@pytest.mark.parametrize("field", ["rm", "tty", "interactive"])
@pytest.mark.parametrize("value", ["false", "no", 1])
def test_flags_must_be_bool(field, value):
    with pytest.raises(InvalidArgument, match=f"field '{field}' must be true or false"):
        ContainerSpec.from_json({"image": "alpine", field: value})
