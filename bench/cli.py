#!/usr/bin/env python3
"""bench/cli: the `portlink` command's own cost, and `run --rm` against podman's.

A sandbox host (plt-clibench-*) with its own portlinkd runs 20 detached
containers (`busybox sleep 3600`). Then, against that daemon:

  ps       `portlink ps` wall time (process start to exit, output read), over
           --rounds rounds: the thin client's import and one API call. The
           warm-up writes the CLI's bytecode cache (.pyc), as any first run does,
           even where the environment sets PYTHONDONTWRITEBYTECODE.
  run_rm   `portlink run --rm busybox true`, end to end (create, start, the
           log stream, the exit code, the removal).
  podman   `podman run --rm` of the same busybox rootfs (`podman import`ed from
           portlink's image), in the same rounds, order rotated every round.
           podman runs in a sandbox namespace of its own (plt-clipod-*) with its
           own storage, run and tmp dirs, network config dir and an empty
           containers.conf, so it shares nothing with a system podman. Two
           ways: its default bridge network (netavark, inside that namespace:
           like portlink's default network) and `--network none`.
  docker   `docker run --rm` of the same image (`portlink save` -> `docker
           load`), same rounds and rotation, against Debian's dockerd 20.10 with
           its own containerd, sealed in a sandbox (plt-clidkr-*: netns, private
           mount namespace, its own data-root, exec-root, pidfile and socket; see
           bench/dockerd_peer.py); default bridge and `--network none`.
  ps       also `docker ps` and `podman ps`, each with the same number of
           detached `sleep 3600` containers as portlink's.

Also `python -c pass` with the venv's python: the floor any Python CLI has.
And where portlink's run --rm goes, in the same rounds (`phases_ms`): the
same requests the CLI makes, timed in this process (create + start, the
followed log to its end, the removal, which answers the exit code), and `runc_floor_ms`: bare `runc
run --detach` then `runc delete` of the image's rootfs with runc's default
spec (its own --root in the temp dir), the runtime every side here calls.

Prints one JSON line. Progress goes to stderr, only when it is a tty. Exit 0
whether or not the targets (ps median <= 100 ms; run --rm <= 1/3 of Docker's and
of Podman's) are met; non-zero on errors.

Safety: nothing runs in the root network namespace except the CLIs, which
only talk to the daemon's UNIX socket. The sandboxes, containers, podman's
storage and the temp dir are removed in a finally block (also on error, Ctrl-C
or SIGTERM), then the root namespace's links, netns list and nftables tables
are compared with what was there before, and its nftables ruleset,
iptables-save output and forwarding sysctls must be byte-identical (dockerd
writes iptables rules and sysctls, in its sandbox only).

Run as root:  .venv/bin/python -P bench/cli.py [--rounds 20] [--containers 20]"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dockerd_peer import DockerPeer, DockerPeerError, RootRules  # noqa: E402

from portlink.lab.rootcheck import RootState  # noqa: E402
from portlink.lab.sandbox import VENV_BIN, Namespace, SimHost, unmount_under  # noqa: E402

TARGET_PS_MS = 100
TARGET_RUN_RM_RATIO = 1 / 3          # portlink's run --rm at most a third of Docker's and Podman's
PODMAN_IMAGE = "localhost/plt-clibench-busybox"
DOCKER_IMAGE = "plt-clibench/busybox"


def progress(msg: str) -> None:
    if sys.stderr.isatty():
        print(f"[bench/cli] {msg}", file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    print(f"bench/cli: {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


def _sh(*cmd: str, check: bool = True, timeout: float = 60) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return r.stdout



def timed(argv: list[str], env: dict | None = None, timeout: float = 120) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL)
    return time.perf_counter() - t0, p


def _ms(xs: list[float]) -> float | None:
    return round(statistics.median(xs) * 1000, 1) if xs else None


def _p90_ms(xs: list[float]) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[max(0, -(-9 * len(s) // 10) - 1)] * 1000, 1)


class Podman:
    """podman with everything of its own under `root`, run in namespace `ns`."""

    def __init__(self, ns: Namespace, root: str) -> None:
        self.ns, self.root = ns, root
        for d in ("storage", "run", "tmp", "netcfg"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        conf = os.path.join(root, "containers.conf")
        open(conf, "w").close()             # no system or user containers.conf applies
        self.env = {**os.environ, "CONTAINERS_CONF": conf}
        self.base = ns.argv("podman", "--root", f"{root}/storage", "--runroot", f"{root}/run",
                            "--tmpdir", f"{root}/tmp", "--network-config-dir", f"{root}/netcfg",
                            "--storage-driver", "overlay", "--cgroup-manager", "cgroupfs",
                            "--events-backend", "file", "--runtime", "runc")
        # The process may not raise rlimits past its hard limits (no CAP_SYS_RESOURCE):
        # podman's defaults (nofile 1048576, nproc) would fail in runc.
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        self.ulimits = ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096"]

    def cmd(self, *args: str) -> list[str]:
        return [*self.base, *args]

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        p = subprocess.run(self.cmd(*args), capture_output=True, text=True, env=self.env, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise BenchError(f"podman {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
        return p.stdout

    def run_rm_argv(self, network: str) -> list[str]:
        return self.cmd("run", "--rm", *self.ulimits, "--network", network, PODMAN_IMAGE, "true")

    def cleanup(self) -> list[str]:
        errors = []
        for args in (("rm", "-af", "-t", "0"), ("rmi", "-af")):
            try:
                self.run(*args, check=False, timeout=60)
            except (subprocess.TimeoutExpired, OSError) as e:
                errors.append(f"podman {' '.join(args)}: {e}")
        return errors


def docker_run_rm_argv(dk: DockerPeer, network: str) -> list[str]:
    return dk.argv("run", "--rm", "--pull", "never", "--network", network, DOCKER_IMAGE, "true")


RUN_BODY = {"image": "busybox", "cmd": ["true"], "network": "bridge"}


def phases(h: SimHost) -> dict[str, float]:
    """One run --rm's requests as the CLI makes them, each timed (seconds)."""
    cl = h.client
    t0 = time.perf_counter()
    c = cl.post("/containers", RUN_BODY)
    t1 = time.perf_counter()
    cl.request("GET", f"/containers/{c['id']}/logs", query={"follow": "1", "format": "cri"}, stream=True).read()
    t2 = time.perf_counter()
    gone = cl.delete(f"/containers/{c['id']}", force="1", volumes="1")    # answers the exit code
    t3 = time.perf_counter()
    if gone.get("exit_code") != 0:
        raise BenchError(f"phases: exit code {gone.get('exit_code')!r}, expected 0")
    return {"create_start": t1 - t0, "log_to_exit": t2 - t1, "delete": t3 - t2}


class RuncFloor:
    """Bare runc on a minimal bundle (the image's rootfs, runc's default spec,
    `true`): what any runtime built on runc pays at least for a run and a delete."""

    def __init__(self, tmp: str, rootfs: Path) -> None:
        self.bundle = os.path.join(tmp, "runc-floor")
        self.root = os.path.join(tmp, "runc-floor-root")
        os.makedirs(self.bundle)
        _sh("runc", "spec", "--bundle", self.bundle)
        with open(os.path.join(self.bundle, "config.json")) as f:
            spec = json.load(f)
        spec["root"] = {"path": str(rootfs), "readonly": True}
        spec["process"].update(args=["true"], terminal=False)
        with open(os.path.join(self.bundle, "config.json"), "w") as f:
            json.dump(spec, f)
        self.made: list[str] = []
        self.n = 0

    def once(self) -> float:
        self.n += 1
        cid = f"plt-clibench-floor-{os.getpid()}-{self.n}"
        self.made.append(cid)
        t0 = time.perf_counter()
        _sh("runc", "--root", self.root, "run", "--detach", "--bundle", self.bundle, cid)
        _sh("runc", "--root", self.root, "delete", "--force", cid)
        dt = time.perf_counter() - t0
        self.made.remove(cid)
        return dt

    def cleanup(self) -> list[str]:
        errors = []
        for cid in self.made:
            p = subprocess.run(["runc", "--root", self.root, "delete", "--force", cid], capture_output=True, text=True)
            if p.returncode != 0 and "not exist" not in p.stderr:
                errors.append(f"runc delete {cid}: {p.stderr.strip()}")
        return errors


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def measure(a: argparse.Namespace, h: SimHost, pod: Podman, dk: DockerPeer, floor_runc: RuncFloor,
            deadline: float) -> dict:
    env = {**os.environ, "PORTLINK_HOST": h.socket}
    portlink = str(VENV_BIN / "portlink")
    stopped_early = False

    progress(f"starting {a.containers} detached containers")
    for i in range(a.containers):
        p = h.cli("run", "-d", "--name", f"clib{i}", "busybox", "sleep", "3600")
        if p.returncode != 0:
            raise BenchError(f"portlink run -d failed: {p.stderr.strip()}")
        pod.run("run", "-d", *pod.ulimits, "--name", f"clib{i}", PODMAN_IMAGE, "sleep", "3600")
        dk.docker("run", "-d", "--pull", "never", "--name", f"clib{i}", DOCKER_IMAGE, "sleep", "3600")

    # warm-up, untimed: page cache, the daemon's first requests, podman's network, and
    # the CLI's bytecode cache, as a user's first run (or pip, at install) writes it:
    # the environment may set PYTHONDONTWRITEBYTECODE, and then every timed run would
    # compile portlink's modules from source. The timed runs keep the environment as is.
    warm_env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    envs = {portlink: warm_env, pod.base[0]: pod.env, dk.argv()[0]: dk.env}
    for argv in ([portlink, "ps"], [portlink, "run", "--rm", "busybox", "true"],
                 pod.run_rm_argv("bridge"), pod.run_rm_argv("none"), pod.cmd("ps"),
                 docker_run_rm_argv(dk, "bridge"), docker_run_rm_argv(dk, "none"), dk.argv("ps")):
        _, p = timed(argv, envs[argv[0]])
        if p.returncode != 0:
            raise BenchError(f"{' '.join(argv[-6:])} failed ({p.returncode}): {p.stderr.strip()[-500:]}")

    floor, ps, pod_ps, dk_ps = [], [], [], []
    progress(f"ps x {a.rounds}: portlink, podman, docker")
    for i in range(a.rounds):
        if time.monotonic() > deadline:
            stopped_early = True
            break
        for name, argv, e, out in (("portlink", [portlink, "ps"], env, ps), ("podman", pod.cmd("ps"), pod.env, pod_ps),
                                   ("docker", dk.argv("ps"), dk.env, dk_ps)):
            dt, p = timed(argv, e)
            if p.returncode != 0 or len(p.stdout.splitlines()) != a.containers + 1:
                raise BenchError(f"{name} ps: exit {p.returncode}, {len(p.stdout.splitlines())} lines: "
                                 f"{p.stderr.strip()[-500:]}")
            out.append(dt)
        dt, p = timed([str(VENV_BIN / "python"), "-c", "pass"])
        floor.append(dt)

    sides = {
        "portlink": ([portlink, "run", "--rm", "busybox", "true"], env),
        "podman": (pod.run_rm_argv("bridge"), pod.env),
        "podman_none": (pod.run_rm_argv("none"), pod.env),
        "docker": (docker_run_rm_argv(dk, "bridge"), dk.env),
        "docker_none": (docker_run_rm_argv(dk, "none"), dk.env),
    }
    times: dict[str, list[float]] = {k: [] for k in sides}
    order = list(sides) + ["phases", "runc_floor"]
    phase_times: dict[str, list[float]] = {}
    progress(f"run --rm x {a.rounds}: {', '.join(order)}")
    for i in range(a.rounds):
        if time.monotonic() > deadline:
            stopped_early = True
            break
        for name in order[i % len(order):] + order[:i % len(order)]:     # rotated every round
            if name == "phases":
                for k, v in phases(h).items():
                    phase_times.setdefault(k, []).append(v)
                continue
            if name == "runc_floor":
                times.setdefault(name, []).append(floor_runc.once())
                continue
            argv, e = sides[name]
            dt, p = timed(argv, e)
            if p.returncode != 0:
                raise BenchError(f"{name} run --rm failed ({p.returncode}): {p.stderr.strip()[-500:]}")
            times[name].append(dt)

    left = h.client.get("/containers", all="1")
    if len(left) != a.containers:
        raise BenchError(f"{len(left)} containers after the run --rm rounds, expected {a.containers}")
    for name, ids in (("podman", pod.run("ps", "-aq").split()), ("docker", dk.docker("ps", "-aq").stdout.split())):
        if len(ids) != a.containers:
            raise BenchError(f"{len(ids)} {name} containers after the run --rm rounds, expected {a.containers}")

    pl, pm, dm = _ms(times["portlink"]), _ms(times["podman"]), _ms(times["docker"])
    return {
        "bench": "cli",
        "containers": a.containers,
        "rounds": len(ps),
        "ps_median_ms": _ms(ps),
        "ps_p90_ms": _p90_ms(ps),
        "ps_min_ms": round(min(ps) * 1000, 1) if ps else None,
        "python_floor_median_ms": _ms(floor),
        "run_rm_median_ms": pl,
        "run_rm_p90_ms": _p90_ms(times["portlink"]),
        "podman_run_rm_median_ms": pm,
        "podman_run_rm_p90_ms": _p90_ms(times["podman"]),
        "podman_run_rm_network_none_median_ms": _ms(times["podman_none"]),
        "docker_run_rm_median_ms": dm,
        "docker_run_rm_p90_ms": _p90_ms(times["docker"]),
        "docker_run_rm_network_none_median_ms": _ms(times["docker_none"]),
        "phases_ms": {k: _ms(v) for k, v in phase_times.items()},
        "runc_floor_ms": _ms(times.get("runc_floor", [])),
        "podman_ps_median_ms": _ms(pod_ps),
        "docker_ps_median_ms": _ms(dk_ps),
        "docker_version": dk.docker("version", "--format", "{{.Server.Version}}").stdout.strip(),
        "ratio_run_rm": _ratio(pl, pm),
        "ratio_run_rm_vs_docker": _ratio(pl, dm),
        "ratio_run_rm_network_none_vs_docker": _ratio(pl, _ms(times["docker_none"])),
        "ratio_ps_vs_podman": _ratio(_ms(ps), _ms(pod_ps)),
        "ratio_ps_vs_docker": _ratio(_ms(ps), _ms(dk_ps)),
        "target_ps_median_ms": TARGET_PS_MS,
        "target_run_rm_ratio_max": round(TARGET_RUN_RM_RATIO, 3),
        "met": {"ps": bool(ps) and _ms(ps) <= TARGET_PS_MS,
                "run_rm_vs_docker": bool(pl and dm) and pl <= dm * TARGET_RUN_RM_RATIO,
                "run_rm_vs_podman": bool(pl and pm) and pl <= pm * TARGET_RUN_RM_RATIO},
        "stopped_early": stopped_early,
        "loadavg": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="portlink CLI: ps wall time, run --rm against podman")
    ap.add_argument("--rounds", type=int, default=20, help="rounds of ps and of run --rm (default 20)")
    ap.add_argument("--containers", type=int, default=20, help="detached containers listed by ps (default 20)")
    ap.add_argument("--max-seconds", type=float, default=600, help="no new round starts after this (default 600)")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        warn("needs root (namespaces, runc, podman)")
        return 2
    if not 1 <= a.rounds <= 1000 or not 0 <= a.containers <= 500:
        warn("--rounds must be 1 to 1000 and --containers 0 to 500")
        return 2
    for tool in ("podman", "runc", "nsenter", "unshare", "ip", "nft", "tar"):
        if shutil.which(tool) is None:
            warn(f"{tool} not found: run scripts/setup")
            return 2

    root_before = RootState.read()
    rules_before = RootRules.read()
    deadline = time.monotonic() + a.max_seconds

    def on_term(signum, frame):
        raise KeyboardInterrupt
    old_term = signal.signal(signal.SIGTERM, on_term)
    h: SimHost | None = None
    pod_ns: Namespace | None = None
    pod: Podman | None = None
    dk: DockerPeer | None = None
    floor_runc: RuncFloor | None = None
    tmp = tempfile.mkdtemp(prefix="plt-clibench-", dir="/tmp")
    made_ns: list[str] = []
    rc, doc, errors = 0, None, []
    try:
        progress("starting the sandbox host")
        h = SimHost.start("clibench")
        made_ns.append(h.ns.name)
        pod_ns = Namespace.create("clipod")
        made_ns.append(pod_ns.name)
        pod = Podman(pod_ns, os.path.join(tmp, "podman"))
        # the same busybox rootfs for podman: portlink's own image, as a tarball
        rootfs = h.state_dir / "images" / "busybox" / "rootfs"
        if not rootfs.is_dir():
            raise BenchError(f"no busybox image at {rootfs}")
        tarball = os.path.join(tmp, "busybox.tar")
        _sh("tar", "--numeric-owner", "-C", str(rootfs), "-cf", tarball, ".")
        pod.run("import", "--change", "CMD=/bin/sh", tarball, PODMAN_IMAGE)
        # and for docker, portlink's image as a docker-save archive
        archive = os.path.join(tmp, "busybox-docker.tar")
        h.cli("save", "-o", archive, "busybox", check=True)
        progress("starting the sandboxed dockerd")
        dk = DockerPeer.start("clidkr")
        made_ns.append(dk.ns.name)
        dk.load(archive, DOCKER_IMAGE)
        floor_runc = RuncFloor(tmp, rootfs)
        doc = measure(a, h, pod, dk, floor_runc, deadline)
    except KeyboardInterrupt:
        warn("interrupted; cleaning up")
        rc = 130
    except (BenchError, DockerPeerError, RuntimeError, subprocess.TimeoutExpired, OSError) as e:
        warn(str(e))
        rc = 1
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            if floor_runc is not None:
                errors += floor_runc.cleanup()
            if dk is not None:
                errors += dk.close()
            if pod is not None:
                errors += pod.cleanup()
            if pod_ns is not None:
                pod_ns.delete()
            if h is not None:
                errors += h.destroy()
            errors += unmount_under(Path(tmp))
            shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGTERM, old_term)

    leaks = [f"cleanup: {e}" for e in errors]
    leaks += root_before.leaks(lambda n: n in made_ns, tmp)
    leaks += rules_before.changes()
    for l in leaks:
        warn("LEAK CHECK: " + l)
    if rc:
        return rc
    if leaks:
        return 1
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
