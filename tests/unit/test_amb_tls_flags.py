"""The ambassador's mutual-TLS flags: what each side gets, and every bad
combination named before anything starts."""

import pytest

from portlink.ambassador.main import UsageError, parse_args
from portlink.ambassador.secure import TLSOptions

SERVER = ["--listen", "5432", "--listen", "80", "--backend", "5432=10.0.0.1:5432", "--backend", "80=10.0.0.1:80"]


def test_server_side_one_service_for_every_port():
    o = parse_args([*SERVER, "--tls-serve", "frontdb", "--consul", "127.0.0.1"], env={})
    assert o.tls == TLSOptions(serve={5432: "frontdb", 80: "frontdb"})
    assert o.consul.url == "http://127.0.0.1:8500" and o.service is None


def test_server_side_per_port_services_and_a_default():
    o = parse_args([*SERVER, "--tls-serve", "80=web", "--tls-serve", "frontdb", "--tls-keys", "/run/k",
                    "--authorize-cache", "250ms", "--consul", "127.0.0.1"], env={})
    assert o.tls == TLSOptions(serve={80: "web", 5432: "frontdb"}, key_dir="/run/k", authorize_ttl=0.25)


def test_client_side_static_and_consul():
    o = parse_args(["--listen", "5432", "--backend", "5432=10.0.0.9:21000", "--tls-dial", "web",
                    "--tls-target", "frontdb"], env={"CONSUL_HTTP_ADDR": "127.0.0.1:8500"})
    assert (o.tls.dial_as, o.tls.dial_to, o.tls.serve) == ("web", "frontdb", {})
    o = parse_args(["--listen", "5432", "--service", "frontdb", "--consul", "127.0.0.1", "--tls-dial", "web"],
                   env={})
    assert (o.tls.dial_as, o.tls.dial_to) == ("web", "frontdb")      # the followed service


def test_client_side_warm_connections_are_off_unless_asked():
    base = ["--listen", "5432", "--backend", "5432=10.0.0.9:21000", "--tls-dial", "web", "--tls-target", "db",
            "--consul", "127.0.0.1"]
    assert parse_args(base, env={}).tls.warm == 0
    assert parse_args([*base, "--tls-warm", "4"], env={}).tls.warm == 4


def test_plaintext_options_have_no_tls():
    assert parse_args(SERVER, env={}).tls is None


@pytest.mark.parametrize("extra, names", [
    (["--tls-serve", "frontdb"], "--consul ADDR"),
    (["--tls-serve", "80=web", "--consul", "h"], "--listen 5432 has no --tls-serve"),
    (["--tls-serve", "81=web", "--consul", "h"], "81 is not a --listen port"),
    (["--tls-serve", "80=web", "--tls-serve", "80=db", "--consul", "h"], "port 80 twice"),
    (["--tls-serve", "a", "--tls-serve", "b", "--consul", "h"], "already given"),
    (["--tls-serve", "bad name", "--consul", "h"], "'bad name'"),
    (["--tls-serve", "db", "--tls-dial", "web", "--consul", "h"], "not both"),
    (["--tls-dial", "web", "--consul", "h"], "--tls-target"),
    (["--tls-target", "db"], "only used with"),
    (["--tls-keys", "/x"], "only used with"),
    (["--tls-warm", "2"], "only used with"),
    (["--tls-serve", "db", "--consul", "h", "--tls-warm", "2"], "--tls-warm is only used with --tls-dial"),
    (["--tls-dial", "web", "--tls-target", "db", "--consul", "h", "--tls-warm", "-1"], "invalid --tls-warm"),
    (["--tls-dial", "web", "--tls-target", "db", "--consul", "h", "--tls-warm", "two"], "invalid --tls-warm"),
    (["--tls-serve", "db", "--consul", "h", "--authorize-cache", "-1"], "--authorize-cache"),
])
def test_bad_tls_flags_are_named(extra, names):
    with pytest.raises(UsageError, match=names):
        parse_args([*SERVER, *extra], env={})


def test_consul_alone_is_still_refused_without_service_or_tls():
    with pytest.raises(UsageError, match="--consul h is only used with"):
        parse_args([*SERVER, "--consul", "h"], env={})
