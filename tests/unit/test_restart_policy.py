"""Restart policies: the --restart flag parsed and checked once, the pure
decision (exit code x policy x count x stopped by the user) and Docker's backoff."""

import pytest

from portlink.errors import InvalidArgument
from portlink.runtime import cli, restart_policy as rp
from portlink.runtime.cli_format import status_text
from portlink.runtime.spec import ContainerSpec


@pytest.mark.parametrize("text,name,n", [
    ("", "no", 0), ("no", "no", 0), ("always", "always", 0), ("unless-stopped", "unless-stopped", 0),
    ("on-failure", "on-failure", 0), ("on-failure:2", "on-failure", 2), ("on-failure:0", "on-failure", 0),
])
def test_parse_accepts_dockers_policies(text, name, n):
    assert rp.parse(text) == rp.Policy(name, n)


@pytest.mark.parametrize("text,words", [
    ("sometimes", "use no, on-failure[:N], always or unless-stopped"),
    ("always:3", "only on-failure takes a maximum retry count"),
    ("on-failure:-1", "the maximum retry count is a number"),
    ("on-failure:x", "the maximum retry count is a number"),
    ("on-failure:", "the maximum retry count is a number"),
])
def test_parse_refuses_with_what_is_accepted(text, words):
    with pytest.raises(InvalidArgument, match=words.replace("[", r"\[").replace("]", r"\]")):
        rp.parse(text)


def test_spec_checks_and_normalises_the_flag_once():
    assert ContainerSpec.from_json({"image": "busybox", "restart": "on-failure:3"}).restart == "on-failure:3"
    assert ContainerSpec.from_json({"image": "busybox", "restart": "no"}).restart == ""
    spec = ContainerSpec.from_json({"image": "busybox", "restart": "always"})
    assert spec.restart_policy == rp.Policy("always")
    assert spec.restart_policy.view() == {"Name": "always", "MaximumRetryCount": 0}
    with pytest.raises(InvalidArgument, match="field 'restart' must be a string"):
        ContainerSpec.from_json({"image": "busybox", "restart": 3})


def test_spec_refuses_restart_with_rm_and_on_an_ambassador():
    with pytest.raises(InvalidArgument, match="--restart and --rm conflict"):
        ContainerSpec.from_json({"image": "busybox", "restart": "always", "rm": True})
    assert ContainerSpec.from_json({"image": "busybox", "restart": "no", "rm": True}).rm is True
    with pytest.raises(InvalidArgument, match="an ambassador is restarted by portlink already"):
        ContainerSpec.from_json({"image": "busybox", "restart": "always", "ambassador": {"service": "db"}})


def test_cli_passes_the_flag():
    ns = cli.build_parser().parse_args(["run", "--restart", "on-failure:2", "busybox"])
    assert ns.restart == "on-failure:2"


NO, ONF, ONF2, ALWAYS, UNLESS = (rp.Policy("no"), rp.Policy("on-failure"), rp.Policy("on-failure", 2),
                                 rp.Policy("always"), rp.Policy("unless-stopped"))


@pytest.mark.parametrize("policy,code,count,stopped,daemon_start,want", [
    (NO, 1, 0, False, False, False),
    (NO, None, 0, False, True, False),
    (ONF, 0, 0, False, False, False),            # success is no failure
    (ONF, 3, 0, False, False, True),
    (ONF, 137, 500, False, False, True),         # no maximum
    (ONF, None, 0, False, False, True),          # unknown code: it was killed
    (ONF2, 3, 1, False, False, True),
    (ONF2, 3, 2, False, False, False),           # gave up after N restarts
    (ONF2, 3, 2, False, True, False),            # ... also at the next daemon start
    (ONF2, 0, 0, False, True, False),
    (ONF2, 3, 0, True, False, False),            # stopped by the user
    (ALWAYS, 0, 0, False, False, True),
    (ALWAYS, 137, 99, False, False, True),
    (ALWAYS, 0, 0, True, False, False),          # a user's stop is never followed by a restart
    (ALWAYS, 0, 0, True, True, True),            # ... but always comes back with the daemon (Docker)
    (UNLESS, 1, 0, False, False, True),
    (UNLESS, None, 0, False, True, True),
    (UNLESS, 0, 0, True, False, False),
    (UNLESS, 0, 0, True, True, False),           # stopped stays stopped across a daemon restart
])
def test_should_restart(policy, code, count, stopped, daemon_start, want):
    assert rp.should_restart(policy, code, count, stopped, daemon_start) is want


def test_backoff_doubles_from_100ms_up_to_a_minute_and_resets_after_10s_up():
    assert [rp.delay(n) for n in range(5)] == [0.1, 0.2, 0.4, 0.8, 1.6]
    assert rp.delay(20) == 60.0 and rp.delay(10**6) == 60.0
    assert rp.next_streak(4, 9.9) == 4
    assert rp.next_streak(4, 10.0) == 0
    assert rp.backoff(0.2, 10.0, 3) == 1.6   # the ambassadors' (runtime.ambassador_policy)


def test_ps_shows_a_pending_restart_as_docker_does():
    c = {"status": "exited", "exit_code": 3, "finished": 1.0, "restarting": True}
    assert status_text(c).startswith("Restarting (3) ")
    assert status_text({**c, "restarting": False}).startswith("Exited (3) ")
