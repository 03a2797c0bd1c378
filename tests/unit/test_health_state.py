"""Health checks, the pure parts: flags, the image's HEALTHCHECK, Docker's state
machine on a fake clock, and the Consul registration that carries the health."""

import pytest

from portlink.catalog.services import CheckPolicy, Published, PublishedPort, registrations
from portlink.errors import InvalidArgument
from portlink.runtime import cli, cli_commands, health
from portlink.runtime.health import HEALTHY, STARTING, UNHEALTHY, HealthConfig, HealthState, Result
from portlink.runtime.spec import ContainerSpec


def spec(**kw):
    return ContainerSpec.from_json({"image": "busybox", "cmd": ["sleep", "9"], **kw})


# flags ----------------------------------------------------------------------------------
def test_cli_flags_become_the_spec_fields():
    a = cli.build_parser().parse_args(["run", "--health-cmd", "test -f /tmp/ok", "--health-interval", "1s",
                                       "--health-timeout", "500ms", "--health-retries", "2",
                                       "--health-start-period", "5s", "busybox"])
    assert cli_commands._health_body(a) == {"health_cmd": "test -f /tmp/ok", "health_interval": "1s",
                                            "health_timeout": "500ms", "health_start_period": "5s",
                                            "health_retries": 2}
    assert cli_commands._health_body(cli.build_parser().parse_args(["run", "busybox"])) == {}
    assert cli_commands._health_body(cli.build_parser().parse_args(
        ["run", "--no-healthcheck", "busybox"])) == {"no_healthcheck": True}


@pytest.mark.parametrize("fields, message", [
    ({"health_interval": "soon"}, "invalid --health-interval 'soon'"),
    ({"health_interval": "10ms"}, "--health-interval '10ms': at least 100ms"),
    ({"health_timeout": "0"}, "--health-timeout '0': at least 100ms"),
    ({"health_start_period": "-1"}, "--health-start-period '-1': must not be negative"),
    ({"health_retries": 0}, "--health-retries 0: a whole number, at least 1"),
    ({"health_retries": "3"}, "--health-retries '3'"),
    ({"no_healthcheck": True, "health_cmd": "true"}, "--no-healthcheck conflicts"),
    ({"no_healthcheck": "yes"}, "'no_healthcheck' must be true or false"),
    ({"health_cmd": ["true"]}, "'health_cmd' must be a string"),
])
def test_bad_flags_are_named(fields, message):
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec(**fields)


# the check a container runs ------------------------------------------------------------------
def test_flags_resolve_with_docker_defaults():
    assert health.resolve(spec(health_cmd="test -f /tmp/ok"), None) == HealthConfig(
        ("/bin/sh", "-c", "test -f /tmp/ok"), 30.0, 30.0, 3, 0.0)
    assert health.resolve(spec(), None) is None


IMAGE = {"Test": ["CMD", "redis-cli", "ping"], "Interval": 5_000_000_000, "Timeout": 2_000_000_000,
         "Retries": 4, "StartPeriod": 0}


def test_image_healthcheck_and_flags_over_it():
    assert health.resolve(spec(), IMAGE) == HealthConfig(("redis-cli", "ping"), 5.0, 2.0, 4, 0.0)
    assert health.resolve(spec(health_interval="1s", health_retries=1), IMAGE) == HealthConfig(
        ("redis-cli", "ping"), 1.0, 2.0, 1, 0.0)
    assert health.resolve(spec(health_cmd="true"), IMAGE).test == ("/bin/sh", "-c", "true")
    assert health.resolve(spec(), {"Test": ["CMD-SHELL", "pg_isready"]}).test == ("/bin/sh", "-c", "pg_isready")
    assert health.resolve(spec(no_healthcheck=True), IMAGE) is None
    assert health.resolve(spec(), {"Test": ["NONE"]}) is None


# the state machine ------------------------------------------------------------------------------
def res(t, code):
    return Result(t, t + 0.01, code, "out")


def test_retries_consecutive_failures_make_it_unhealthy_one_success_healthy():
    st = HealthState(HealthConfig(("true",), retries=2), started=100.0)
    assert (st.status, st.record(res(101, 1)), st.failing_streak) == (STARTING, None, 1)
    assert st.record(res(102, 1)) == UNHEALTHY and st.failing_streak == 2
    assert st.record(res(103, 1)) is None and st.failing_streak == 3
    assert st.record(res(104, 0)) == HEALTHY and st.failing_streak == 0
    assert st.record(res(105, 1)) is None and st.status == HEALTHY     # 1 of 2
    assert st.record(res(106, 0)) is None and st.failing_streak == 0   # the streak starts over
    assert st.record(res(107, 1)) is None
    assert st.record(res(108, 1)) == UNHEALTHY


def test_start_period_failures_do_not_count_until_a_success():
    st = HealthState(HealthConfig(("true",), retries=1, start_period=10), started=100.0)
    assert st.record(res(105, 1)) is None and (st.status, st.failing_streak) == (STARTING, 0)
    assert st.record(res(111, 1)) == UNHEALTHY           # past the start period
    st = HealthState(HealthConfig(("true",), retries=1, start_period=10), started=100.0)
    assert st.record(res(102, 0)) == HEALTHY
    assert st.record(res(103, 1)) == UNHEALTHY           # inside it, but it had succeeded


def test_the_log_keeps_the_last_five_and_views_as_docker():
    st = HealthState(HealthConfig(("true",), retries=3), started=0.0)
    for t in range(7):
        st.record(Result(t, t + 1, t, f"r{t}"))
    v = st.view()
    assert (v["Status"], v["FailingStreak"]) == (UNHEALTHY, 6)
    assert [e["Output"] for e in v["Log"]] == ["r2", "r3", "r4", "r5", "r6"]
    assert v["Log"][0] == {"Start": 2, "End": 3, "ExitCode": 2, "Output": "r2"}
    assert len(health.truncate(b"x" * 10000)) == 4096


# across a daemon restart -------------------------------------------------------------------------
def test_a_saved_state_resumes_only_for_the_same_run():
    cfg = HealthConfig(("true",), retries=2)
    st = HealthState(cfg, started=100.0)
    st.record(res(101, 0))
    saved = st.saved(4242)
    assert saved["pid"] == 4242 and saved["Status"] == HEALTHY
    back = HealthState.resumed(cfg, 100.0, saved, 4242)
    assert back.view() == st.view() and back.status == HEALTHY
    # the streak goes on from where it was: one more failure of 2 makes it unhealthy
    back.record(res(102, 1))
    assert back.record(res(103, 1)) == UNHEALTHY
    assert HealthState.resumed(cfg, 100.0, back.saved(4242), 4242).status == UNHEALTHY
    # another run (a new pid), nothing saved, or a damaged record: starting over
    assert HealthState.resumed(cfg, 100.0, saved, 4243).view() == {"Status": STARTING, "FailingStreak": 0, "Log": []}
    assert HealthState.resumed(cfg, 100.0, None, 4242).status == STARTING
    assert HealthState.resumed(cfg, 100.0, {**saved, "Log": [{"Start": 1}]}, 4242).status == STARTING
    assert HealthState.resumed(cfg, 100.0, {**saved, "Status": "bogus"}, 4242).status == STARTING


# Consul -----------------------------------------------------------------------------------------
def test_registration_carries_a_ttl_check_following_health():
    def payload(h):
        c = Published("c" * 64, "web", {}, (PublishedPort(80, "tcp", 8080),), health=h)
        return registrations("h1", "10.0.0.1", [c])[0].payload(CheckPolicy())

    p = payload("unhealthy")
    assert p["Check"]["TCP"] == "10.0.0.1:8080"
    assert p["Checks"] == [{"CheckID": f"portlink-h1-{'c' * 12}-80-tcp-health", "Name": "container health check",
                            "TTL": "90s", "Status": "critical", "DeregisterCriticalServiceAfter": "1m"}]
    assert payload("starting")["Checks"][0]["Status"] == "warning"
    assert payload("healthy")["Checks"][0]["Status"] == "passing"
    assert "Checks" not in payload(None)
    # A transition changes the hash: the registrar re-registers the instance.
    assert payload("healthy")["Meta"]["portlink-spec"] != payload("unhealthy")["Meta"]["portlink-spec"]


def test_a_server_side_registration_follows_the_served_health():
    c = Published("d" * 64, "srv-web", {}, (PublishedPort(80, "tcp", 20001),), connect="web", health="unhealthy")
    [r] = registrations("h1", "10.0.0.1", [c])
    p = r.payload(CheckPolicy())
    assert p["Connect"] == {"Native": True}
    assert p["Checks"][0]["CheckID"] == f"portlink-h1-{'d' * 12}-80-tls-health"
    assert p["Checks"][0]["Status"] == "critical"
