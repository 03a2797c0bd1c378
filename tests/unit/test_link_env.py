"""--link rendering: parsing, Docker's link env variables (order included), hosts lines, env merge."""

import pytest

from portlink.errors import InvalidArgument
from portlink.runtime.links import (LinkedContainer, LinkRequest, check_links, hosts_line, link_env,
                                    merge_env, parse_link)

IP = "172.17.0.5"


def child(*exposed, env=(), name="db", hostname="6e5cdeb2d300"):
    return LinkedContainer(name=name, hostname=hostname, ip=IP, exposed=tuple(exposed), env=tuple(env))


def port_vars(a, num, proto):
    p = f"{a}_PORT_{num}_{proto.upper()}"
    return [f"{p}={proto}://{IP}:{num}", f"{p}_ADDR={IP}", f"{p}_PORT={num}", f"{p}_PROTO={proto}"]


def range_vars(a, lo, hi, proto):
    p = f"{a}_PORT_{lo}_{proto.upper()}"
    return [f"{p}_START={proto}://{IP}:{lo}", f"{p}_PORT_START={lo}",
            f"{p}_END={proto}://{IP}:{hi}", f"{p}_PORT_END={hi}"]


def test_link_env_matches_docker_exactly():
    c = child("80/tcp", "8080/tcp", "8081/tcp", "8082/tcp", "53/udp", "5000/udp", "22/tcp",
              env=["PATH=/bin", "HOME=/root", "PASSWORD=x=y", "EMPTY="])
    got = link_env("web", "db-main.x", c)
    # Sorted: 22 80 8080 8081 8082 /tcp, then 53 5000 /udp. The 8080-8082 run is only
    # closed by 53/udp, so 53/udp's variables come before the run's START/END (Docker's order).
    expected = [
        "DB_MAIN.X_PORT=tcp://172.17.0.5:22",
        "DB_MAIN.X_PORT_22_TCP=tcp://172.17.0.5:22",
        "DB_MAIN.X_PORT_22_TCP_ADDR=172.17.0.5",
        "DB_MAIN.X_PORT_22_TCP_PORT=22",
        "DB_MAIN.X_PORT_22_TCP_PROTO=tcp",
        "DB_MAIN.X_PORT_80_TCP=tcp://172.17.0.5:80",
        "DB_MAIN.X_PORT_80_TCP_ADDR=172.17.0.5",
        "DB_MAIN.X_PORT_80_TCP_PORT=80",
        "DB_MAIN.X_PORT_80_TCP_PROTO=tcp",
        "DB_MAIN.X_PORT_8080_TCP=tcp://172.17.0.5:8080",
        "DB_MAIN.X_PORT_8080_TCP_ADDR=172.17.0.5",
        "DB_MAIN.X_PORT_8080_TCP_PORT=8080",
        "DB_MAIN.X_PORT_8080_TCP_PROTO=tcp",
        "DB_MAIN.X_PORT_8081_TCP=tcp://172.17.0.5:8081",
        "DB_MAIN.X_PORT_8081_TCP_ADDR=172.17.0.5",
        "DB_MAIN.X_PORT_8081_TCP_PORT=8081",
        "DB_MAIN.X_PORT_8081_TCP_PROTO=tcp",
        "DB_MAIN.X_PORT_8082_TCP=tcp://172.17.0.5:8082",
        "DB_MAIN.X_PORT_8082_TCP_ADDR=172.17.0.5",
        "DB_MAIN.X_PORT_8082_TCP_PORT=8082",
        "DB_MAIN.X_PORT_8082_TCP_PROTO=tcp",
        "DB_MAIN.X_PORT_53_UDP=udp://172.17.0.5:53",
        "DB_MAIN.X_PORT_53_UDP_ADDR=172.17.0.5",
        "DB_MAIN.X_PORT_53_UDP_PORT=53",
        "DB_MAIN.X_PORT_53_UDP_PROTO=udp",
        "DB_MAIN.X_PORT_8080_TCP_START=tcp://172.17.0.5:8080",
        "DB_MAIN.X_PORT_8080_TCP_PORT_START=8080",
        "DB_MAIN.X_PORT_8080_TCP_END=tcp://172.17.0.5:8082",
        "DB_MAIN.X_PORT_8080_TCP_PORT_END=8082",
        "DB_MAIN.X_PORT_5000_UDP=udp://172.17.0.5:5000",
        "DB_MAIN.X_PORT_5000_UDP_ADDR=172.17.0.5",
        "DB_MAIN.X_PORT_5000_UDP_PORT=5000",
        "DB_MAIN.X_PORT_5000_UDP_PROTO=udp",
        "DB_MAIN.X_NAME=/web/db-main.x",
        "DB_MAIN.X_ENV_PASSWORD=x=y",
        "DB_MAIN.X_ENV_EMPTY=",
    ]
    assert got == expected
    assert set(got) == set(expected) and len(got) == len(set(got))
    at = got.index
    assert at("DB_MAIN.X_PORT_53_UDP_PROTO=udp") < at("DB_MAIN.X_PORT_8080_TCP_START=tcp://172.17.0.5:8080")
    assert at("DB_MAIN.X_PORT_8082_TCP_PROTO=tcp") < at("DB_MAIN.X_PORT_53_UDP=udp://172.17.0.5:53")
    assert got[0].startswith("DB_MAIN.X_PORT=") and got[-3] == "DB_MAIN.X_NAME=/web/db-main.x"
    # Exposed order does not matter (Docker holds them in a map).
    assert link_env("web", "db-main.x", child(*reversed(c.exposed), env=c.env)) == expected


def test_no_ports_only_name_and_env():
    got = link_env("web", "db", child(env=["PATH=/bin", "USER=pg", "NOEQUALS", "HOME=/x"]))
    assert got == ["DB_NAME=/web/db", "DB_ENV_USER=pg"]


def test_single_port():
    assert link_env("web", "db", child("5432/tcp")) == [
        "DB_PORT=tcp://172.17.0.5:5432", *port_vars("DB", 5432, "tcp"), "DB_NAME=/web/db"]


def test_two_runs_in_one_proto():
    got = link_env("p", "db", child("1/tcp", "2/tcp", "10/tcp", "11/tcp", "20/tcp"))
    assert got == ["DB_PORT=tcp://172.17.0.5:1",
                   *port_vars("DB", 1, "tcp"), *port_vars("DB", 2, "tcp"), *port_vars("DB", 10, "tcp"),
                   *range_vars("DB", 1, 2, "tcp"),
                   *port_vars("DB", 11, "tcp"), *port_vars("DB", 20, "tcp"),
                   *range_vars("DB", 10, 11, "tcp"),
                   "DB_NAME=/p/db"]


def test_run_at_end_of_list_is_closed():
    got = link_env("p", "db", child("80/tcp", "81/tcp", "80/udp", "81/udp"))
    assert got == ["DB_PORT=tcp://172.17.0.5:80",
                   *port_vars("DB", 80, "tcp"), *port_vars("DB", 81, "tcp"), *port_vars("DB", 80, "udp"),
                   *range_vars("DB", 80, 81, "tcp"),
                   *port_vars("DB", 81, "udp"), *range_vars("DB", 80, 81, "udp"),
                   "DB_NAME=/p/db"]


def test_no_run_across_protocols():
    got = link_env("p", "db", child("81/udp", "80/tcp"))
    assert got == ["DB_PORT=tcp://172.17.0.5:80", *port_vars("DB", 80, "tcp"), *port_vars("DB", 81, "udp"),
                   "DB_NAME=/p/db"]
    assert not any("START" in e or "END" in e for e in got)


def test_alias_normalisation_keeps_dots():
    got = link_env("web", "my-db.v2", child("80/tcp", env=["A=1"]))
    assert got[0] == "MY_DB.V2_PORT=tcp://172.17.0.5:80"
    assert got[-2:] == ["MY_DB.V2_NAME=/web/my-db.v2", "MY_DB.V2_ENV_A=1"]
    assert all(e.startswith("MY_DB.V2_") for e in got)


@pytest.mark.parametrize("text, name, alias", [
    ("db", "db", "db"), ("db:sql", "db", "sql"), ("/db:sql", "db", "sql"), ("/db", "db", "db"),
    ("my-db.1:x_y", "my-db.1", "x_y"),
])
def test_parse_link_ok(text, name, alias):
    assert parse_link(text) == LinkRequest(name, alias)


@pytest.mark.parametrize("text", ["", ":x", "db:", ":", "/", "/:x", "a:b:c", "bad name:x", "db:al ias",
                                  "-db:x", "db:-x", "//db:x", "db:/x"])
def test_parse_link_rejected(text):
    with pytest.raises(InvalidArgument) as e:
        parse_link(text)
    assert f"--link {text!r}" in str(e.value)


def test_parse_link_says_which_part_is_bad():
    with pytest.raises(InvalidArgument, match="container name 'bad name'"):
        parse_link("bad name:x")
    with pytest.raises(InvalidArgument, match="link alias name 'al ias'"):
        parse_link("db:al ias")


def test_check_links():
    check_links([LinkRequest("a", "x"), LinkRequest("a", "y"), LinkRequest("b", "b")])
    check_links([])
    with pytest.raises(InvalidArgument, match="'sql'"):
        check_links([LinkRequest("a", "sql"), LinkRequest("b", "sql")])
    with pytest.raises(InvalidArgument, match="'db' and 'DB'"):
        check_links([LinkRequest("db", "db"), LinkRequest("c", "DB")])


def test_hosts_line():
    assert hosts_line("db", child()) == "172.17.0.5\tdb 6e5cdeb2d300"
    assert hosts_line("webdb", child()) == "172.17.0.5\twebdb 6e5cdeb2d300 db"


def test_merge_env_replaces_in_place_and_appends():
    base = ["PATH=/usr/bin", "HOSTNAME=abc"]
    links = ["DB_PORT=tcp://1.2.3.4:5", "DB_NAME=/web/db"]
    user = ["DB_NAME=mine", "PATH=/opt/bin", "NEW=1", "X=a=b"]
    assert merge_env(base, links, user) == [
        "PATH=/opt/bin", "HOSTNAME=abc", "DB_PORT=tcp://1.2.3.4:5", "DB_NAME=mine", "NEW=1", "X=a=b"]


def test_merge_env_docker_edge_cases():
    # Keys compare exactly; a bare KEY unsets; an appended key is not looked up again.
    assert merge_env(["PATH=/bin", "HOSTNAME=h"], ["DB_NAME=/w/db"], ["path=/x", "HOSTNAME", "Y=1", "Y=2"]) == [
        "PATH=/bin", "DB_NAME=/w/db", "path=/x", "Y=1", "Y=2"]
    assert merge_env(["A=1"], [], []) == ["A=1"]
