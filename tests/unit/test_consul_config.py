"""Consul address and settings: parse_address and from_sources with an injected
environment (flags over CONSUL_HTTP_*), all pure: no Consul, no network."""

import pytest

from portlink.catalog.config import DEFAULT_PORT, ConsulConfig, from_sources, parse_address
from portlink.errors import InvalidArgument


# -- parse_address -----------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("consul", ("http", "consul", DEFAULT_PORT)),
    ("consul:8501", ("http", "consul", 8501)),
    ("10.0.0.5:1", ("http", "10.0.0.5", 1)),
    ("10.0.0.5:65535", ("http", "10.0.0.5", 65535)),
    ("http://consul", ("http", "consul", DEFAULT_PORT)),
    ("http://consul:8502", ("http", "consul", 8502)),
    ("https://consul", ("https", "consul", DEFAULT_PORT)),
    ("https://consul:8501/", ("https", "consul", 8501)),
    ("HTTPS://Consul.Example:8501", ("https", "consul.example", 8501)),
    ("  consul:8500  ", ("http", "consul", 8500)),
    ("[::1]:8500", ("http", "::1", 8500)),
    ("https://[fd00::1]", ("https", "fd00::1", DEFAULT_PORT)),
])
def test_parse_address_accepts(text, want):
    assert parse_address(text) == want


@pytest.mark.parametrize("text", [
    "",
    "   ",
    "ftp://consul",                 # bad scheme
    "unix:///var/run/consul.sock",  # bad scheme
    "consul:99999",                 # port out of range
    "consul:65536",
    "consul:-1",
    "consul:abc",                   # not a number
    "http://",                      # no host
    ":8500",                        # no host
    "http://consul/v1",             # a path
    "consul:8500/v1/agent",
    "http://consul?dc=dc1",         # a query
    "http://user@consul",           # userinfo
    "http://user:pw@consul:8500",
])
def test_parse_address_rejects(text):
    with pytest.raises(InvalidArgument, match="invalid Consul address"):
        parse_address(text)


def test_parse_address_error_names_the_input():
    with pytest.raises(InvalidArgument) as e:
        parse_address("ftp://consul")
    assert "'ftp://consul'" in str(e.value)
    assert "host[:port]" in str(e.value)


def test_parse_address_rejects_port_zero():
    # BUG: `url.port or DEFAULT_PORT` turns an explicit (invalid) port 0 into 8500.
    with pytest.raises(InvalidArgument):
        parse_address("consul:0")


def test_parse_address_rejects_userinfo_with_empty_user():
    # BUG: only url.username is checked; ':secret@' (empty user, a password) passes
    # and the credential is silently dropped.
    with pytest.raises(InvalidArgument):
        parse_address("http://:secret@consul:8500")


# -- url -----------------------------------------------------------------------

@pytest.mark.parametrize("cfg, url", [
    (ConsulConfig("consul"), "http://consul:8500"),
    (ConsulConfig("10.0.0.1", 8501, "https"), "https://10.0.0.1:8501"),
    (ConsulConfig("::1", 8500), "http://[::1]:8500"),
    (ConsulConfig("fd00::5", 443, "https"), "https://[fd00::5]:443"),
])
def test_url(cfg, url):
    assert cfg.url == url


# -- from_sources ------------------------------------------------------------

def test_no_address_anywhere_is_none():
    assert from_sources(env={}) is None
    assert from_sources(address="", env={"CONSUL_HTTP_ADDR": ""}) is None
    # other settings without an address do not enable Consul
    assert from_sources(token="t", datacenter="dc1", env={"CONSUL_HTTP_TOKEN": "x", "CONSUL_HTTP_SSL": "1"}) is None


def test_address_from_env():
    cfg = from_sources(env={"CONSUL_HTTP_ADDR": "10.1.2.3:8501"})
    assert cfg == ConsulConfig(host="10.1.2.3", port=8501, scheme="http", token=None, datacenter=None,
                               ca_file=None, cert_file=None, key_file=None, verify=True)
    assert cfg.url == "http://10.1.2.3:8501"


def test_address_flag_beats_env():
    cfg = from_sources(address="https://flag:9000", env={"CONSUL_HTTP_ADDR": "env:8500"})
    assert (cfg.scheme, cfg.host, cfg.port) == ("https", "flag", 9000)


def test_bad_address_from_env_is_rejected():
    with pytest.raises(InvalidArgument, match="invalid Consul address 'ftp://x'"):
        from_sources(env={"CONSUL_HTTP_ADDR": "ftp://x"})


def test_env_none_reads_os_environ(monkeypatch):
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "from-os-environ:8555")
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "os-token")
    cfg = from_sources()
    assert (cfg.host, cfg.port, cfg.token) == ("from-os-environ", 8555, "os-token")
    monkeypatch.delenv("CONSUL_HTTP_ADDR")
    assert from_sources() is None


def test_token_from_env():
    assert from_sources("c", env={"CONSUL_HTTP_TOKEN": "env-token"}).token == "env-token"


def test_token_flag_beats_env_token_and_file(tmp_path):
    f = tmp_path / "token"
    f.write_text("file-token\n")
    env = {"CONSUL_HTTP_TOKEN": "env-token", "CONSUL_HTTP_TOKEN_FILE": str(f)}
    assert from_sources("c", token="flag-token", env=env).token == "flag-token"


def test_empty_token_flag_means_no_token():
    # An explicit empty flag is still the flag: the environment is not consulted.
    assert from_sources("c", token="", env={"CONSUL_HTTP_TOKEN": "env-token"}).token is None


def test_token_file_is_read_and_stripped(tmp_path):
    f = tmp_path / "token"
    f.write_text("  3f1c-secret  \n")
    assert from_sources("c", env={"CONSUL_HTTP_TOKEN_FILE": str(f)}).token == "3f1c-secret"


def test_empty_token_file_means_no_token(tmp_path):
    f = tmp_path / "token"
    f.write_text("\n")
    assert from_sources("c", env={"CONSUL_HTTP_TOKEN_FILE": str(f)}).token is None


def test_unreadable_token_file_is_rejected(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(InvalidArgument, match="CONSUL_HTTP_TOKEN_FILE") as e:
        from_sources("c", env={"CONSUL_HTTP_TOKEN_FILE": str(missing)})
    assert str(missing) in str(e.value)


@pytest.mark.parametrize("token", ["a\nb", "tab\there", "x" * 513])
def test_bad_token_rejected(token):
    with pytest.raises(InvalidArgument, match="invalid Consul token"):
        from_sources("c", token=token, env={})


def test_longest_token_accepted():
    assert from_sources("c", token="x" * 512, env={}).token == "x" * 512


@pytest.mark.parametrize("address, ssl, scheme", [
    ("consul:8501", "true", "https"),
    ("consul:8501", "1", "https"),
    ("consul", "YES", "https"),
    ("consul", "false", "http"),
    ("consul", "0", "http"),
    ("http://consul:8501", "true", "http"),     # an explicit scheme wins
    ("https://consul:8501", "false", "https"),
    ("https://consul:8501", "0", "https"),
])
def test_consul_http_ssl_switches_scheme_only_without_one(address, ssl, scheme):
    cfg = from_sources(address, env={"CONSUL_HTTP_SSL": ssl})
    assert cfg.scheme == scheme
    assert cfg.port == (8501 if ":8501" in address else DEFAULT_PORT)   # the port is never touched


def test_consul_http_ssl_applies_to_env_address_too():
    cfg = from_sources(env={"CONSUL_HTTP_ADDR": "consul:8501", "CONSUL_HTTP_SSL": "true"})
    assert cfg.url == "https://consul:8501"


def test_consul_http_ssl_invalid_is_named():
    with pytest.raises(InvalidArgument, match="CONSUL_HTTP_SSL='maybe'"):
        from_sources("c", env={"CONSUL_HTTP_SSL": "maybe"})


@pytest.mark.parametrize("value, verify", [("false", False), ("0", False), ("off", False),
                                           ("true", True), ("on", True), ("1", True)])
def test_ssl_verify(value, verify):
    assert from_sources("https://c", env={"CONSUL_HTTP_SSL_VERIFY": value}).verify is verify


def test_ssl_verify_defaults_true_and_rejects_garbage():
    assert from_sources("https://c", env={}).verify is True
    with pytest.raises(InvalidArgument, match="CONSUL_HTTP_SSL_VERIFY"):
        from_sources("https://c", env={"CONSUL_HTTP_SSL_VERIFY": "perhaps"})


def test_ca_file_from_env_and_flag(tmp_path):
    env_ca, flag_ca = tmp_path / "env-ca.pem", tmp_path / "flag-ca.pem"
    env_ca.write_text("x")
    flag_ca.write_text("y")
    assert from_sources("https://c", env={"CONSUL_CACERT": str(env_ca)}).ca_file == str(env_ca)
    assert from_sources("https://c", ca_file=str(flag_ca),
                        env={"CONSUL_CACERT": str(env_ca)}).ca_file == str(flag_ca)


def test_ca_file_must_exist(tmp_path):
    missing = tmp_path / "missing-ca.pem"
    with pytest.raises(InvalidArgument, match="Consul CA file") as e:
        from_sources("https://c", ca_file=str(missing), env={})
    assert str(missing) in str(e.value)
    with pytest.raises(InvalidArgument, match="Consul CA file"):
        from_sources("https://c", env={"CONSUL_CACERT": str(missing)})
    with pytest.raises(InvalidArgument, match="Consul CA file"):   # a directory is not a file
        from_sources("https://c", ca_file=str(tmp_path), env={})


def test_client_cert_and_key(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("c")
    key.write_text("k")
    cfg = from_sources("https://c", env={"CONSUL_CLIENT_CERT": str(cert), "CONSUL_CLIENT_KEY": str(key)})
    assert (cfg.cert_file, cfg.key_file) == (str(cert), str(key))


@pytest.mark.parametrize("which", ["CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY"])
def test_cert_without_key_rejected(tmp_path, which):
    f = tmp_path / "one.pem"
    f.write_text("x")
    with pytest.raises(InvalidArgument, match="CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY must be given together"):
        from_sources("https://c", env={which: str(f)})


def test_client_cert_must_exist(tmp_path):
    key = tmp_path / "k.pem"
    key.write_text("k")
    with pytest.raises(InvalidArgument, match="CONSUL_CLIENT_CERT"):
        from_sources("https://c", env={"CONSUL_CLIENT_CERT": str(tmp_path / "nope.pem"),
                                       "CONSUL_CLIENT_KEY": str(key)})


@pytest.mark.parametrize("dc", ["dc1", "eu-west_1", "A" * 64])
def test_datacenter_accepted(dc):
    assert from_sources("c", datacenter=dc, env={}).datacenter == dc


def test_empty_datacenter_is_none():
    assert from_sources("c", datacenter="", env={}).datacenter is None


@pytest.mark.parametrize("dc", ["dc 1", "dc.1", "../etc", "dc1?x=y", "-", "A" * 65, "dc/1"])
def test_bad_datacenter_rejected(dc):
    with pytest.raises(InvalidArgument, match="invalid Consul datacenter") as e:
        from_sources("c", datacenter=dc, env={})
    assert repr(dc) in str(e.value)


def test_everything_together(tmp_path):
    ca, cert, key, tok = (tmp_path / n for n in ("ca.pem", "c.pem", "k.pem", "tok"))
    for f in (ca, cert, key):
        f.write_text("x")
    tok.write_text("file-token")
    cfg = from_sources(datacenter="dc2", env={
        "CONSUL_HTTP_ADDR": "consul.internal:8501", "CONSUL_HTTP_SSL": "true", "CONSUL_HTTP_SSL_VERIFY": "false",
        "CONSUL_HTTP_TOKEN_FILE": str(tok), "CONSUL_CACERT": str(ca),
        "CONSUL_CLIENT_CERT": str(cert), "CONSUL_CLIENT_KEY": str(key)})
    assert cfg == ConsulConfig(host="consul.internal", port=8501, scheme="https", token="file-token",
                               datacenter="dc2", ca_file=str(ca), cert_file=str(cert), key_file=str(key),
                               verify=False)
    assert cfg.url == "https://consul.internal:8501"


def test_client_pool_holds_a_blocking_query_per_service_past_aiohttps_default():
    """aiohttp pools 100 connections by default; each followed service holds one in a blocking
    query, so the 100th service was never followed. Made without any I/O."""
    import asyncio

    from portlink.catalog.config import CONNECTIONS

    async def limit():
        c = ConsulConfig(host="127.0.0.1", port=DEFAULT_PORT).client()
        try:
            return c.http._session.connector.limit
        finally:
            await c.http._session.close()

    got = asyncio.run(limit())
    assert got == CONNECTIONS and got >= 1000


def test_client_asks_for_uncompressed_answers():
    """Consul gzips an answer when asked, and aiohttp asks by default: the client says
    identity on every request, without any I/O."""
    import asyncio

    async def sent_encoding():
        c = ConsulConfig(host="127.0.0.1", port=DEFAULT_PORT).client()
        try:
            from aiohttp import ClientRequest
            from yarl import URL
            session = c.http._session
            req = ClientRequest("GET", URL("http://127.0.0.1:8500/v1/catalog/services"),
                                headers=session._prepare_headers(None), loop=asyncio.get_running_loop())
            return req.headers.get("Accept-Encoding")
        finally:
            await c.http._session.close()

    assert asyncio.run(sent_encoding()) == "identity"
