"""Container limits (pure): the flags parsed Docker's way, the OCI config they
make, the messages that name the flag, and the cgroup's OOM kill count."""

import os
import resource
from dataclasses import fields

import pytest

from portlink import parse
from portlink.errors import InvalidArgument
from portlink.runtime import limits, oci
from portlink.runtime.limits import RLIM_INFINITY, HostBounds, Limits, Ulimit
from portlink.runtime.spec import ContainerSpec, Request

MiB, GiB = 1 << 20, 1 << 30
BOUNDS = HostBounds(hard={"nofile": 20000, "nproc": 96363, "core": RLIM_INFINITY, "stack": RLIM_INFINITY}, cpus=2)
CONF = oci.Confinement(caps=[], seccomp=None)
PROC = oci.ProcessSpec(args=["true"], env=[])


# --pids-limit -------------------------------------------------------------------------
@pytest.mark.parametrize("value, want", [(None, 2048), (50, 50), (1, 1), (0, None), (-1, None),
                                         (4194304, 4194304)])
def test_pids_limit_defaults_to_podmans_and_0_or_minus_1_is_unlimited(value, want):
    assert limits.parse_pids(value) == want


@pytest.mark.parametrize("value", [-2, 4194305, "50", 1.5, True])
def test_bad_pids_limits_are_refused_by_flag(value):
    with pytest.raises(InvalidArgument, match=r"^invalid --pids-limit .*0 or -1 for unlimited"):
        limits.parse_pids(value)


# --memory, --memory-swap --------------------------------------------------------------
@pytest.mark.parametrize("text, want", [("", None), (0, None), ("512m", 512 * MiB), ("1g", GiB),
                                        ("1.5g", 3 * GiB // 2), ("6m", 6 * MiB), (6 * MiB, 6 * MiB),
                                        ("32MiB", 32 * MiB), ("10MB", 10 * MiB)])
def test_memory_sizes_are_dockers(text, want):
    assert limits.parse_memory(text) == want


def test_memory_below_6m_is_refused_as_docker_does():
    with pytest.raises(InvalidArgument) as e:
        limits.parse_memory("5m")
    assert str(e.value) == "invalid --memory '5m': the minimum is 6m (6 MiB), as Docker's"


@pytest.mark.parametrize("text", ["lots", "-1", "1x", "1.2.3m", True, [1], 4.5])
def test_bad_memory_names_the_flag(text):
    with pytest.raises(InvalidArgument, match=r"^invalid --memory "):
        limits.parse_memory(text)


@pytest.mark.parametrize("swap, memory, want", [
    ("", 512 * MiB, GiB),               # unset: twice --memory
    (0, 512 * MiB, GiB),
    ("0", 512 * MiB, GiB),
    ("-1", 512 * MiB, -1),              # unlimited swap
    (-1, 512 * MiB, -1),
    ("512m", 512 * MiB, 512 * MiB),     # equal: no swap
    ("2g", 512 * MiB, 2 * GiB),
    ("", None, None),                   # no memory limit: no swap limit either
    ("-1", None, None),
])
def test_memory_swap_is_memory_plus_swap_as_docker(swap, memory, want):
    assert limits.parse_memory_swap(swap, memory) == want


def test_memory_swap_below_memory_is_refused():
    with pytest.raises(InvalidArgument) as e:
        limits.parse_memory_swap("256m", 512 * MiB)
    assert str(e.value) == ("invalid --memory-swap '256m': it is memory plus swap, so at least --memory "
                            "(536870912 bytes); -1 for unlimited swap")


def test_memory_swap_needs_memory():
    with pytest.raises(InvalidArgument) as e:
        limits.parse_memory_swap("1g", None)
    assert str(e.value) == "invalid --memory-swap '1g': --memory-swap needs --memory (it is memory plus swap)"


# --cpus ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value, want, quota", [(0.5, 0.5, 50000), ("0.5", 0.5, 50000), (2, 2.0, 200000),
                                                (0.01, 0.01, 1000), (1.25, 1.25, 125000), (0, None, None)])
def test_cpus_become_a_quota_over_a_100ms_period(value, want, quota):
    cpus = limits.parse_cpus(value, host_cpus=2)
    assert cpus == want
    assert Limits(cpus=cpus).cpu_quota == quota


@pytest.mark.parametrize("value", [0.001, -1, 3, "2.5", "half", float("nan"), float("inf"), True, None,
                                   1e308, -1e308])
def test_bad_cpus_name_the_flag_and_the_hosts_cpus(value):
    with pytest.raises(InvalidArgument, match=r"^invalid --cpus "):
        limits.parse_cpus(value, host_cpus=2)


def test_cpus_above_the_host_say_how_many_it_has():
    with pytest.raises(InvalidArgument) as e:
        limits.parse_cpus(3, host_cpus=2)
    assert str(e.value) == "invalid --cpus 3: expected 0.01 to 2 (the CPUs of this host), or 0 for no limit"


# --ulimit ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, want", [
    ("nofile=100:200", Ulimit("nofile", 100, 200)),
    ("nofile=100", Ulimit("nofile", 100, 100)),          # hard defaults to soft
    ("core=0", Ulimit("core", 0, 0)),
    ("core=-1", Ulimit("core", RLIM_INFINITY, RLIM_INFINITY)),
    ("stack=8388608:unlimited", Ulimit("stack", 8388608, RLIM_INFINITY)),
    ("nproc=512:1024", Ulimit("nproc", 512, 1024)),
    ("nofile=20000", Ulimit("nofile", 20000, 20000)),    # at the daemon's hard limit
])
def test_ulimits(text, want):
    assert limits.parse_ulimit(text, BOUNDS.hard) == want


@pytest.mark.parametrize("text, message", [
    ("nofile=100:20001", "invalid --ulimit 'nofile=100:20001': above the daemon's own hard limit of nofile "
                         "(20000), which it may not raise"),
    ("nofile=-1", "invalid --ulimit 'nofile=-1': above the daemon's own hard limit of nofile (20000), "
                  "which it may not raise"),
    ("nofile=200:100", "invalid --ulimit 'nofile=200:100': the soft limit is above the hard limit"),
    ("files=1", "invalid --ulimit 'files=1': unknown limit 'files'; known are as, core, cpu, data, fsize, "
                "locks, memlock, msgqueue, nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack"),
    ("nofile", "invalid --ulimit 'nofile': expected NAME=SOFT[:HARD], like nofile=1024:2048"),
    ("nofile=", "invalid --ulimit 'nofile=': expected NAME=SOFT[:HARD], like nofile=1024:2048"),
    ("nofile=ten", "invalid --ulimit 'nofile=ten': 'ten' is not a number (or -1, unlimited)"),
    ("nofile=1:", "invalid --ulimit 'nofile=1:': '' is not a number (or -1, unlimited)"),
    ("nofile=" + "9" * 5000, "invalid --ulimit 'nofile=" + "9" * 5000 + "': '" + "9" * 5000
     + "' is not a number (or -1, unlimited)"),
])
def test_bad_ulimits_say_why(text, message):
    with pytest.raises(InvalidArgument) as e:
        limits.parse_ulimit(text, BOUNDS.hard)
    assert str(e.value) == message


def test_a_stored_spec_is_not_checked_against_the_host_again():
    assert limits.parse_ulimit("nofile=100:30000") == Ulimit("nofile", 100, 30000)


def test_a_ulimit_given_twice_is_refused():
    with pytest.raises(InvalidArgument, match="^invalid --ulimit: nofile is given twice$"):
        limits.parse_limits(ulimits=["nofile=1", "nofile=2"], bounds=BOUNDS)


def test_host_bounds_are_the_daemons_own():
    b = limits.host_bounds()
    assert b.hard["nofile"] == resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert set(b.hard) == set(limits.ULIMITS) and b.cpus == len(os.sched_getaffinity(0))


# the whole: parse, OCI, inspect ----------------------------------------------------------
def test_no_flags_give_the_default_pids_limit_only():
    lim = limits.parse_limits(bounds=BOUNDS)
    assert lim == Limits(pids=2048)
    assert lim.resources() == {"pids": {"limit": 2048}}


def test_all_flags():
    lim = limits.parse_limits(50, "32m", "-1", "0.5", ["nofile=100:200", "core=0"], BOUNDS)
    assert lim == Limits(pids=50, memory=32 * MiB, memory_swap=-1, cpus=0.5,
                         ulimits=(Ulimit("nofile", 100, 200), Ulimit("core", 0, 0)))
    assert lim.resources() == {"pids": {"limit": 50}, "memory": {"limit": 33554432, "swap": -1},
                               "cpu": {"quota": 50000, "period": 100000}}
    assert lim.rlimits(20000) == [{"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
                                  {"type": "RLIMIT_NOFILE", "hard": 200, "soft": 100}]
    assert lim.view() == {"pids_limit": 50, "memory": 33554432, "memory_swap": -1, "cpus": 0.5,
                          "cpu_quota": 50000, "cpu_period": 100000,
                          "ulimits": [{"name": "nofile", "soft": 100, "hard": 200},
                                      {"name": "core", "soft": 0, "hard": 0}],
                          "oom_score_adj": 0}


def test_unlimited_pids_are_written_as_max():
    assert Limits(pids=None).resources() == {"pids": {"limit": -1}}


def test_the_default_nofile_stays_unless_a_ulimit_sets_it():
    assert Limits(ulimits=(Ulimit("nproc", 10, 20),)).rlimits(4096) == [
        {"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096},
        {"type": "RLIMIT_NPROC", "hard": 20, "soft": 10}]


def test_oci_config_carries_the_limits_and_oom_score_adj_0():
    lim = Limits(pids=50, memory=64 * MiB, memory_swap=128 * MiB, cpus=1.5, ulimits=(Ulimit("nofile", 100, 200),))
    cfg = oci.build_config(PROC, "/r", "/ns", "/portlink/c1", CONF, lim)
    assert cfg["linux"]["resources"] == {
        "devices": [{"allow": False, "access": "rwm"}], "pids": {"limit": 50},
        "memory": {"limit": 67108864, "swap": 134217728}, "cpu": {"quota": 150000, "period": 100000}}
    assert cfg["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 200, "soft": 100}]
    assert cfg["process"]["oomScoreAdj"] == 0


def test_oci_config_without_limits_still_caps_pids():
    cfg = oci.build_config(PROC, "/r", "/ns", "/portlink/c1", CONF)
    assert cfg["linux"]["resources"]["pids"] == {"limit": 2048}
    assert "memory" not in cfg["linux"]["resources"] and "cpu" not in cfg["linux"]["resources"]
    assert cfg["process"]["oomScoreAdj"] == 0


# the spec --------------------------------------------------------------------------------
def test_request_parses_the_limits_once():
    req = Request.parse({"image": "busybox", "pids_limit": 50, "memory": "32m", "cpus": 0.5,
                         "ulimits": ["nofile=100:200"]})
    assert req.limits == Limits(pids=50, memory=32 * MiB, memory_swap=64 * MiB, cpus=0.5,
                                ulimits=(Ulimit("nofile", 100, 200),))


@pytest.mark.parametrize("field, value, flag", [
    ("pids_limit", -5, "--pids-limit"), ("memory", "1k", "--memory"), ("memory_swap", "1g", "--memory-swap"),
    ("cpus", "lots", "--cpus"), ("ulimits", ["nofile=x"], "--ulimit"), ("ulimits", "nofile=1", "--ulimit"),
])
def test_bad_limits_in_a_request_name_the_flag(field, value, flag):
    with pytest.raises(InvalidArgument, match=f"^invalid {flag}"):
        Request.parse({"image": "busybox", field: value})


def test_a_stored_spec_from_before_limits_gets_the_defaults():
    spec = ContainerSpec.stored({"image": "busybox", "name": "old"})
    assert spec.parsed_limits() == Limits(pids=2048)


# sizes: one parser --------------------------------------------------------------------
@pytest.mark.parametrize("text, want", [("1m", MiB), ("512k", 512 << 10), ("1.5m", 3 << 19), ("65536", 65536),
                                        (65536, 65536), ("2g", 2 * GiB), ("1t", 1 << 40), (" 32 KiB ", 32 << 10)])
def test_sizes(text, want):
    assert parse.size("--memory", text) == want


@pytest.mark.parametrize("text", ["", "ten", "-1m", "1x", -1, None, "9" * 400 + "t"])
def test_bad_sizes_name_the_field(text):
    with pytest.raises(InvalidArgument, match=r"^invalid --memory .*expected a size like 10m, 512k or 1g"):
        parse.size("--memory", text)


# OOM kill counts -------------------------------------------------------------------------
def test_oom_kills_from_v1_oom_control():
    assert limits.oom_kills_v1("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n") == 3
    assert limits.oom_kills_v1("oom_kill_disable 0\nunder_oom 0\n") is None     # kernels before 4.13


def test_oom_kills_from_v2_memory_events():
    assert limits.oom_kills_v2("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n") == 1
    assert limits.oom_kills_v2("") is None


# the CLI sends the flags as given ---------------------------------------------------------
def test_run_flags_become_the_request_body():
    from portlink.runtime import cli, cli_commands
    a = cli.build_parser().parse_args(["run", "--pids-limit", "50", "-m", "32m", "--memory-swap", "-1",
                                       "--cpus", "0.5", "--ulimit", "nofile=100:200", "--ulimit", "core=0",
                                       "busybox", "true"])
    assert cli_commands._limits_body(a) == {"pids_limit": 50, "memory": "32m", "memory_swap": "-1", "cpus": 0.5,
                                            "ulimits": ["nofile=100:200", "core=0"]}
    a = cli.build_parser().parse_args(["run", "--cpus", "half", "busybox", "true"])
    assert cli_commands._limits_body(a) == {"cpus": "half"}    # the daemon names what is wrong
    assert cli_commands._limits_body(cli.build_parser().parse_args(["run", "busybox"])) == {}


# OOM reporting: the record, the daemon's own score -------------------------------------
def _records(tmp_path):
    from portlink.runtime.records import Records
    from portlink.runtime.state import Store
    return Records(Store(tmp_path / "state.db"))


def test_an_oom_kill_is_kept_in_the_record_until_the_next_start(tmp_path):
    from portlink.runtime.records import CREATING, Container
    recs = _records(tmp_path)
    c = Container(id="c" * 64, name="hog", spec=ContainerSpec(image="busybox", memory="32m"), exposed=(),
                  status=CREATING, created=1.0)
    recs.insert(c, [])
    recs.set_running(c, 42)
    recs.set_exited(c.id, 137, oom_killed=True)
    got = recs.get(c.id)
    assert (got.status, got.exit_code, got.oom_killed, got.spec.memory) == ("exited", 137, True, "32m")
    assert '"oom_killed":true' in got.document().replace(" ", "")
    recs.set_running(got, 43)
    assert recs.get(c.id).oom_killed is False
    recs.set_exited(c.id, 0)
    assert recs.get(c.id).oom_killed is False


def test_a_row_from_before_oom_reporting_reads_as_not_killed(tmp_path):
    recs = _records(tmp_path)
    recs.store.execute("INSERT INTO containers(id,name,spec,status,created) VALUES (?,?,?,?,?)", "d" * 64, "old",
                       '{"spec": {"image": "busybox", "name": "old"}, "exposed": []}', "exited", 1.0)
    old = recs.get("d" * 64)
    assert old.oom_killed is False and old.spec.parsed_limits() == Limits(pids=2048)


def test_the_daemon_lowers_its_oom_score_as_dockerd(tmp_path, caplog):
    from portlink.runtime import daemon
    f = tmp_path / "oom_score_adj"
    assert daemon.protect_from_oom(str(f)) is True
    assert f.read_text() == "-500"
    assert daemon.protect_from_oom(str(tmp_path / "no" / "such")) is False
    assert "cannot set portlinkd's oom_score_adj to -500" in caplog.text


def test_an_exit_reads_the_oom_count_before_the_cgroup_goes_then_reports_oom_and_die(tmp_path):
    from portlink.runtime.events import EventLog
    from portlink.runtime.lifecycle import Lifecycle, LifecycleDeps
    from portlink.runtime.records import CREATING, Container
    order = []

    class Journal:            # undoing the runc step is what deletes the cgroup
        def undo(self, owner, keep=("dir",), fault=None):
            order.append("undo")
            return []

    recs = _records(tmp_path)
    events = EventLog(tmp_path / "events.jsonl")
    deps = dict.fromkeys(f.name for f in fields(LifecycleDeps))     # what an exit does not use: None
    deps.update(records=recs, journal=Journal(), events=events,
                oom_kills=lambda cid: order.append("read") or 1)
    life = Lifecycle(LifecycleDeps(**deps))
    c = Container(id="e" * 64, name="hog", spec=ContainerSpec(image="busybox"), exposed=(), status=CREATING)
    recs.insert(c, [])
    recs.set_running(c, 42)
    assert life.exited(c.id, 42, 137) is not None
    assert order == ["read", "undo"]
    assert recs.get(c.id).oom_killed is True
    got = [(e.action, e.attrs) for e in events.read()]
    assert got == [("oom", {"network": "bridge"}),
                   ("die", {"network": "bridge", "exit_code": 137, "oom_killed": True})]
