"""Validation of user input: names, env entries, hostnames, --user."""

import pytest

from portlink.errors import InvalidArgument
from portlink.runtime import validate as V



@pytest.mark.parametrize("value", ["web", "w", "db-1", "a.b_c-d", "9lives", "A" * 63, "x.."])
def test_name_ok(value):
    assert V.name("container", value) == value


@pytest.mark.parametrize("value", [
    "", "-web", "_web", ".web", "..", "../etc", "a/b", "a;b", "a b", "a\tb", "web!", "é", "A" * 64, None, 5,
    pytest.param("web\n"),
])
def test_name_rejected(value):
    with pytest.raises(InvalidArgument) as e:
        V.name("network", value)
    assert str(e.value).startswith(f"invalid network name {value!r}")


@pytest.mark.parametrize("entry", ["KEY=value", "A=", "_x.y=1", "URL=a=b=c", "K=with space", "path=/bin:/usr/bin"])
def test_env_entry_ok(entry):
    assert V.env_entry(entry) == entry


@pytest.mark.parametrize("entry, msg", [
    ("KEY", "expected KEY=value"),
    ("=value", "expected KEY=value"),
    ("1KEY=v", "expected KEY=value"),
    ("MY-KEY=v", "expected KEY=value"),
    ("A B=v", "expected KEY=value"),
    (None, "expected KEY=value"),
    ("K=a\nb", "invalid environment value for K"),
    ("K=a\rb", "invalid environment value for K"),
    ("K=a\0b", "invalid environment value for K"),
    ("K=trailing\n", "invalid environment value for K"),
    pytest.param("K\n=v", "expected KEY=value"),
])
def test_env_entry_rejected(entry, msg):
    with pytest.raises(InvalidArgument, match=msg):
        V.env_entry(entry)


@pytest.mark.parametrize("value", ["web", "a", "web-1", "9", "a" * 63, "Host0"])
def test_hostname_ok(value):
    assert V.hostname(value) == value


@pytest.mark.parametrize("value", [
    "", "-web", "web-", "a" * 64, "web.example", "web_1", "a b",
    pytest.param("host\n"),
])
def test_hostname_rejected(value):
    with pytest.raises(InvalidArgument, match="invalid hostname"):
        V.hostname(value)


PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1001:App:/home/app:/bin/sh
broken:x
"""
GROUP = """\
root:x:0:
staff:x:50:app
app:x:1001:
"""


@pytest.mark.parametrize("value, want", [
    ("0", (0, 0)),
    ("1000", (1000, 0)),              # a bare uid runs with gid 0
    ("1000:1000", (1000, 1000)),
    ("1000:", (1000, 0)),
    ("app", (1000, 1001)),            # primary group from passwd
    ("app:staff", (1000, 50)),
    ("app:0", (1000, 0)),
    ("daemon", (1, 1)),
    ("1234:staff", (1234, 50)),
])
def test_parse_user(value, want):
    assert V.parse_user(value, PASSWD, GROUP) == want


@pytest.mark.parametrize("value, msg", [
    ("nobody", "unknown user 'nobody' in --user 'nobody': not in the image's /etc/passwd"),
    ("app:wheel", "unknown group 'wheel' in --user 'app:wheel': not in the image's /etc/group"),
    ("broken", "/etc/passwd"),                     # a short line is not a match
    ("root:x", "/etc/group"),                      # 'x' must not match a field other than the name
    ("", "/etc/passwd"),
])
def test_parse_user_unknown(value, msg):
    with pytest.raises(InvalidArgument) as e:
        V.parse_user(value, PASSWD, GROUP)
    assert msg in str(e.value)


def test_parse_user_empty_files():
    assert V.parse_user("5:6", "", "") == (5, 6)
    with pytest.raises(InvalidArgument, match="/etc/passwd"):
        V.parse_user("root", "", "")


def test_parse_user_non_ascii_digit():
    with pytest.raises(InvalidArgument):
        V.parse_user("\u00b2", PASSWD, GROUP)


# -- hostile input (issue 6) ---------------------------------------------------------


@pytest.mark.parametrize("value", ["web\n", "web\0", "a" * 64, "a/b", "..", "$(id)", "a;b", "`x`", "é"])
def test_name_rejects_hostile_text(value):
    with pytest.raises(InvalidArgument, match="invalid container name"):
        V.name("container", value)


@pytest.mark.parametrize("key, value", [
    ("tier", "front"), ("com.example.team", "a b, c"), ("app.kubernetes.io/name", "web"),
    ("portlink.service.53/udp", "dns"), ("k", ""), ("k", "x" * 4096), ("K:v", "ünïcode ok"),
])
def test_label_ok(key, value):
    V.label(key, value)


@pytest.mark.parametrize("key, value, msg", [
    ("", "v", "invalid label key ''"),
    ("a b", "v", "invalid label key 'a b'"),
    ("a\nb", "v", "invalid label key"),
    ("-a", "v", "invalid label key"),
    ("a" * 256, "v", "invalid label key"),
    ("a=b", "v", "invalid label key"),
    ("$(x)", "v", "invalid label key"),
    ("k", "a\nb", "invalid value of label k"),
    ("k", "a\0b", "invalid value of label k"),
    ("k", "tab\there", "invalid value of label k"),
    ("k", "x" * 4097, "invalid value of label k"),
    ("k", 5, "invalid value of label k"),
    (5, "v", "invalid label key 5"),
])
def test_label_rejected(key, value, msg):
    with pytest.raises(InvalidArgument, match=msg):
        V.label(key, value)


@pytest.mark.parametrize("value", ["192.0.2.1", "2001:db8::1"])
def test_ip_ok(value):
    assert V.ip("--dns", value) == value


@pytest.mark.parametrize("value", ["", "1.2.3.4\n", " 1.2.3.4", "1.2.3.256", "dns.example", "1.2.3.4:53", "\0"])
def test_ip_rejected(value):
    with pytest.raises(InvalidArgument, match=r"invalid --dns .*not an IP address"):
        V.ip("--dns", value)


@pytest.mark.parametrize("value", ["/", "/srv/app", "/with space/$(x)"])
def test_abs_path_ok(value):
    assert V.abs_path("workdir", value) == value


@pytest.mark.parametrize("value", ["", "relative", "./x", "/a\0b", "/" + "x" * 5000, 5])
def test_abs_path_rejected(value):
    with pytest.raises(InvalidArgument, match="invalid workdir"):
        V.abs_path("workdir", value)


def test_argv_is_literal_but_nul_free():
    literal = ["sh", "-c", "echo $(touch /tmp/pwned); `id`; a && b | c > d", "line\nbreak", ""]
    assert V.argv("cmd", literal) == literal     # a shell is never involved: all of this is data
    with pytest.raises(InvalidArgument, match="argument 1 'a\\\\x00b' contains a NUL byte"):
        V.argv("cmd", ["echo", "a\0b"])
    with pytest.raises(InvalidArgument, match="program name"):
        V.argv("cmd", ["", "x"])


@pytest.mark.parametrize("value", ["0" * 64, "ab" * 32, "net1", "bridge"])
def test_network_ref_ok(value):
    assert V.network_ref(value) == value


@pytest.mark.parametrize("value", ["A" * 64 + "\n", "0" * 65, "../net", "net\n", "x" * 64])
def test_network_ref_rejected(value):
    with pytest.raises(InvalidArgument, match="invalid network name"):
        V.network_ref(value)


@pytest.mark.parametrize("value", ["root\n", "\0", "a" * 300, "1000:\t"])
def test_parse_user_rejects_hostile_text(value):
    with pytest.raises(InvalidArgument, match="invalid --user"):
        V.parse_user(value, PASSWD, GROUP)


@pytest.mark.parametrize("value", [5, None, ["web"]])
def test_hostname_wrong_type(value):
    with pytest.raises(InvalidArgument, match="invalid hostname"):
        V.hostname(value)


# -- ContainerSpec.from_json: values, not just types -------------------------------------

from portlink.runtime.spec import ContainerSpec  # noqa: E402


@pytest.mark.parametrize("field, value, msg", [
    ("image", "../etc", "invalid image name '../etc'"),
    ("image", "busybox\n", "invalid image name"),
    ("image", "Busybox", "invalid image name"),
    ("name", "a/b", "invalid container name 'a/b'"),
    ("name", "web\n", "invalid container name"),
    ("name", "x\0y", "invalid container name"),
    ("name", "$(touch x)", "invalid container name"),
    ("name", "n" * 64, "invalid container name"),
    ("network", "../x", "invalid network name '../x'"),
    ("network", "net;rm", "invalid network name"),
    ("hostname", "a;b", "invalid hostname 'a;b'"),
    ("hostname", "h\n", "invalid hostname"),
    ("workdir", "relative", "invalid workdir 'relative'"),
    ("workdir", "/a\0", "invalid workdir"),
    ("cmd", ["echo", "a\0b"], "invalid cmd: argument 1"),
    ("cmd", [""], "invalid cmd: the program name"),
    ("env", ["K=a\nb"], "invalid environment value for K"),
    ("env", ["K\n=v"], "invalid environment entry"),
    ("env", ["K=\0"], "invalid environment value for K"),
    ("env", ["NOVALUE"], "expected KEY=value"),
    ("dns", ["8.8.8.8; rm -rf /"], "invalid --dns"),
    ("aliases", ["www/../x"], "invalid network alias name"),
    ("labels", {"bad key": "v"}, "invalid label key 'bad key'"),
    ("labels", {"k": "v\n"}, "invalid value of label k"),
])
def test_spec_values_rejected(field, value, msg):
    with pytest.raises(InvalidArgument) as e:
        ContainerSpec.from_json({"image": "busybox", field: value})
    assert msg in str(e.value)


def test_spec_values_ok():
    spec = ContainerSpec.from_json({
        "image": "busybox", "name": "web-1", "network": "f" * 64, "hostname": "web1", "workdir": "/srv",
        "cmd": ["sh", "-c", "echo $(id) `x` ; a && b", "multi\nline"], "env": ["A=$(touch /x)", "B=`y`; z"],
        "dns": ["192.0.2.53", "2001:db8::53"], "aliases": ["www"], "labels": {"app.example/tier": "front end"}})
    assert spec.cmd[2] == "echo $(id) `x` ; a && b" and spec.env == ["A=$(touch /x)", "B=`y`; z"]


# -- the exec request ------------------------------------------------------------------


def test_exec_body_ok():
    assert V.exec_body({"cmd": ["echo", "$(x)"], "env": ["A=1"], "tty": False, "workdir": None}) == \
        (["echo", "$(x)"], ["A=1"], False, None)
    assert V.exec_body({"cmd": ["id"], "workdir": "/srv", "tty": True}) == (["id"], [], True, "/srv")
    assert V.exec_body({"cmd": ["id"], "workdir": ""})[3] is None


@pytest.mark.parametrize("body, msg", [
    ({"cmd": "id"}, "field 'cmd' must be a list of strings"),
    ({"cmd": [1]}, "field 'cmd' must be a list of strings"),
    ({"cmd": ["echo", "a\0b"]}, "NUL"),
    ({"cmd": ["id"], "env": "A=1"}, "field 'env' must be a list of strings"),
    ({"cmd": ["id"], "env": ["A=1\nB=2"]}, "invalid environment value for A"),
    ({"cmd": ["id"], "tty": "yes"}, "field 'tty' must be true or false"),
    ({"cmd": ["id"], "workdir": "rel"}, "invalid workdir 'rel'"),
    ({"cmd": ["id"], "workdir": 5}, "invalid workdir 5"),
    ({"cmd": ["id"], "user": "root"}, "unknown field(s) in the exec request: user"),
])
def test_exec_body_rejected(body, msg):
    with pytest.raises(InvalidArgument) as e:
        V.exec_body(body)
    assert msg in str(e.value)
