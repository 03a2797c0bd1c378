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
