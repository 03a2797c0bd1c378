"""Limits on a simulated host with real containers: the default pids limit in the
cgroup, a fork loop that stops at --pids-limit while the host still runs
containers, a memory hog OOM-killed alone and reported (exit 137, inspect, an
`oom` event), --cpus as a CFS quota, --ulimit inside, bad values refused with
nothing left behind, and the OOM scores of the daemon and its containers."""

from __future__ import annotations

import json
import time

import pytest

from helpers import wait_for
from portlink.lab.sandbox import SimHost
from portlink.runtime import stats
from test_api_hostile import post, state

pytestmark = pytest.mark.root

MiB = 1 << 20
CAP_SYS_RESOURCE = 24


def cgroup_dirs(h: SimHost, name: str) -> tuple[dict[str, str], str | None]:
    """The container's cgroup directories on the host ({v1 controller: dir}, v2 dir)."""
    pid = h.client.get(f"/containers/{name}")["pid"]
    with open(f"/proc/{pid}/cgroup") as f, open("/proc/self/mountinfo") as m:
        return stats.cgroup_dirs(f.read(), m.read())


def cgroup_file(h: SimHost, name: str, controller: str, v1_file: str, v2_file: str) -> str:
    """A controller's file, from its v1 hierarchy where it is mounted (this machine), else v2."""
    v1, v2 = cgroup_dirs(h, name)
    path = f"{v1[controller]}/{v1_file}" if controller in v1 else f"{v2}/{v2_file}"
    with open(path) as f:
        return f.read().strip()


def events(h: SimHost, name: str) -> list[dict]:
    r = h.cli("events", "--until", "0s", "--format", "json", "--filter", f"container={name}")
    assert r.returncode == 0, r.stderr
    return [json.loads(l) for l in r.stdout.splitlines()]


def has_cap(cap: int) -> bool:
    with open("/proc/self/status") as f:
        eff = next(l for l in f if l.startswith("CapEff:")).split()[1]
    return bool(int(eff, 16) >> cap & 1)


def test_defaults_pids_2048_and_oom_scores(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "plain", "busybox", "sleep", "600", check=True)
    assert cgroup_file(h, "plain", "pids", "pids.max", "pids.max") == "2048"
    info = h.client.get("/containers/plain")
    assert info["limits"] == {"pids_limit": 2048, "memory": None, "memory_swap": None, "cpus": None,
                              "cpu_quota": None, "cpu_period": None, "ulimits": [], "oom_score_adj": 0}
    assert info["oom_killed"] is False
    # containers at 0: the OOM killer takes them before the daemon
    with open(f"/proc/{info['pid']}/oom_score_adj") as f:
        assert f.read().strip() == "0"
    with open(f"/proc/{h.proc.pid}/oom_score_adj") as f:
        daemon_adj = f.read().strip()
    if has_cap(CAP_SYS_RESOURCE):
        assert daemon_adj == "-500"
    else:
        # This machine gives root no CAP_SYS_RESOURCE: lowering the score is refused, and said so.
        assert daemon_adj == "0"
        assert "cannot set portlinkd's oom_score_adj to -500" in h.daemon_log()
    r = h.cli("stats", "--no-stream", "--format", "json", "--interval", "0.2", "plain")
    row = json.loads(r.stdout)
    assert row["pids_limit"] == 2048 and row["pids"] == 1


def test_memory_cpus_and_ulimit_reach_the_cgroup_and_the_process(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "capped", "--memory", "64m", "--cpus", "0.5", "--ulimit", "nofile=100:200",
          "--ulimit", "core=0", "busybox", "sleep", "600", check=True)
    v1, v2 = cgroup_dirs(h, "capped")
    if "memory" in v1:
        assert cgroup_file(h, "capped", "memory", "memory.limit_in_bytes", "") == str(64 * MiB)
        assert cgroup_file(h, "capped", "memory", "memory.memsw.limit_in_bytes", "") == str(128 * MiB)
    else:
        assert cgroup_file(h, "capped", "memory", "", "memory.max") == str(64 * MiB)
    if "cpu" in v1:
        assert cgroup_file(h, "capped", "cpu", "cpu.cfs_quota_us", "") == "50000"
        assert cgroup_file(h, "capped", "cpu", "cpu.cfs_period_us", "") == "100000"
    else:
        assert cgroup_file(h, "capped", "cpu", "", "cpu.max") == "50000 100000"
    out = h.cli("exec", "capped", "sh", "-c", "ulimit -n; ulimit -Hn; ulimit -c", check=True).stdout
    assert out.split() == ["100", "200", "0"]
    lim = h.client.get("/containers/capped")["limits"]
    assert (lim["memory"], lim["memory_swap"], lim["cpus"], lim["cpu_quota"], lim["cpu_period"]) == \
        (64 * MiB, 128 * MiB, 0.5, 50000, 100000)
    assert lim["ulimits"] == [{"name": "nofile", "soft": 100, "hard": 200}, {"name": "core", "soft": 0, "hard": 0}]
    row = json.loads(h.cli("stats", "--no-stream", "--format", "json", "--interval", "0.2", "capped").stdout)
    assert row["mem_limit"] == 64 * MiB
    # the init process itself (not only exec) runs with the limits
    r = h.cli("run", "--rm", "--ulimit", "nofile=100:200", "busybox", "sh", "-c", "ulimit -n; ulimit -Hn")
    assert r.returncode == 0 and r.stdout.split() == ["100", "200"], r.stderr


def test_a_fork_loop_stops_at_the_pids_limit_and_the_host_still_runs_containers(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "bomb", "--pids-limit", "50", "busybox", "sleep", "600", check=True)
    # The limit is in place before anything forks (never run the loop without it).
    assert cgroup_file(h, "bomb", "pids", "pids.max", "pids.max") == "50"
    # Bounded three ways: 200 iterations, sleepers of 30 s, and the CLI's timeout.
    loop = "i=0; while [ $i -lt 200 ]; do sleep 30 >/dev/null 2>&1 & i=$((i+1)); done; echo looped"
    h.cli("exec", "bomb", "sh", "-c", loop, timeout=60)
    current = int(cgroup_file(h, "bomb", "pids", "pids.current", "pids.current"))
    refused = cgroup_file(h, "bomb", "pids", "pids.events", "pids.events")
    assert 40 <= current <= 50, current
    assert int(refused.split()[1]) > 0, refused      # "max N": forks the limit refused
    # The host's own pids are untouched: another container runs to the end.
    r = h.cli("run", "--rm", "busybox", "echo", "still fine", timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "still fine", r.stderr
    assert h.client.get("/containers/bomb")["status"] == "running"


def test_a_memory_hog_is_oom_killed_alone_and_reported(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "neighbour", "busybox", "sleep", "600", check=True)
    # 64 MiB in the shell's own memory (the container's init), against a 32 MiB limit
    hog = "x=$(head -c 67108864 /dev/zero | tr '\\0' x); echo survived"
    r = h.cli("run", "--name", "hog", "--memory", "32m", "busybox", "sh", "-c", hog, timeout=60)
    assert r.returncode == 137, (r.returncode, r.stdout, r.stderr)
    assert "survived" not in r.stdout
    info = h.client.get("/containers/hog")
    assert (info["status"], info["exit_code"], info["oom_killed"]) == ("exited", 137, True)
    evs = [(e["action"], e["attrs"].get("oom_killed")) for e in events(h, "hog")]
    assert evs[-2:] == [("oom", None), ("die", True)], evs
    die = events(h, "hog")[-1]
    assert die["attrs"]["exit_code"] == 137
    # alone: the neighbour and the daemon go on
    assert h.client.get("/containers/neighbour")["status"] == "running"
    assert h.proc.poll() is None
    assert h.client.get("/containers/neighbour")["oom_killed"] is False
    # a start again clears it until the next OOM kill
    h.client.post("/containers/hog/start")
    assert wait_for(lambda: h.client.get("/containers/hog")["status"] == "exited", timeout=30)
    assert h.client.get("/containers/hog")["oom_killed"] is True


BAD = [
    ({"pids_limit": -5}, "--pids-limit"),
    ({"memory": "1m"}, "invalid --memory '1m': the minimum is 6m"),
    ({"memory": "lots"}, "invalid --memory 'lots'"),
    ({"memory_swap": "1g"}, "--memory-swap needs --memory"),
    ({"memory": "64m", "memory_swap": "32m"}, "invalid --memory-swap '32m'"),
    ({"cpus": 4096}, "invalid --cpus 4096"),
    ({"cpus": "half"}, "invalid --cpus 'half'"),
    ({"ulimits": ["bogus=1"]}, "unknown limit 'bogus'"),
    ({"ulimits": ["nofile=200:100"]}, "the soft limit is above the hard limit"),
]


def test_bad_values_are_refused_naming_the_flag_and_leave_nothing(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "keep", "busybox", "sleep", "600", check=True)
    before = state(h)
    with open(f"/proc/{h.proc.pid}/limits") as f:
        hard = int(next(l for l in f if l.startswith("Max open files")).split()[4])
    cases = BAD + [({"ulimits": [f"nofile=100:{hard + 1}"]},
                    f"above the daemon's own hard limit of nofile ({hard}), which it may not raise")]
    for extra, needle in cases:
        status, body = post(h, "/containers", {"image": "busybox", "cmd": ["true"], **extra})
        assert status == 400 and needle in body["error"], (extra, status, body)
        assert state(h) == before, extra
    # and from the CLI: one line naming the flag, exit 125
    r = h.cli("run", "-d", "--memory", "5m", "busybox", "true")
    assert r.returncode == 125 and "invalid --memory '5m'" in r.stderr and "Traceback" not in r.stderr
    r = h.cli("run", "-d", "--ulimit", "nofile=x", "busybox", "true")
    assert r.returncode == 125 and "invalid --ulimit 'nofile=x'" in r.stderr
    time.sleep(0.1)
    assert state(h) == before
