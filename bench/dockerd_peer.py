"""bench/dockerd_peer: Docker itself (Debian's docker.io: dockerd 20.10, containerd
1.6, runc) as a peer in the benchmarks, sealed in a sandbox of its own.

    with DockerPeer.start("clidkr") as d:          # plt-clidkr-<hex> netns + private dirs
        d.load(archive, "plt-bench/busybox")       # a docker-save archive: no registry
        d.docker("run", "--rm", "plt-bench/busybox", "true")
        d.api.containers.list()                    # docker-py on the same socket

The sandbox:

- a network namespace `plt-<role>-<hex>` (ip netns add). dockerd's docker0 bridge,
  its user networks, veths and every iptables rule it writes (iptables-nft here) land
  in it; its sysctls (ip_forward, bridge-nf-call-*) are per namespace;
- a private mount namespace inside it, held by a `sleep` (the holder), with tmpfs over
  /run and /etc/docker: containerd's shim sockets (/run/containerd/s, fixed in 1.6),
  iptables' lock and dockerd's key.json (/etc/docker, fixed in 20.10) stay there, and
  the overlay and netns mounts of containers vanish with the namespace;
- everything else under one work dir /tmp/plt-<role>-<hex>-*: containerd's root,
  state, sockets and opt dir (its config file), dockerd's data-root, exec-root,
  pidfile, socket (-H unix://...), an empty daemon.json, and the client's config dir;
- containers' cgroups under /<sandbox name> in each cgroup v1 controller
  (--cgroup-parent, cgroupfs driver), removed at the end;
- no registry: images come from `docker load`, and `run` passes `--pull never`. The
  sandbox has no route out (checked), so the embedded DNS cannot forward anywhere.

`close()` removes containers through the API, stops dockerd and then containerd by
their pids (SIGTERM, then SIGKILL), ends any process left in the mount namespace or
the cgroup parent (all started by this module), the holder, the cgroups, the netns and the work dir;
errors are collected and returned, never raised halfway. `RootRules` reads the root
namespace's nftables ruleset, iptables-save output and the sysctls dockerd writes,
so a bench can assert they are byte-identical after the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from portlink.lab.sandbox import Namespace

DOCKERD = "/usr/sbin/dockerd"
CONTAINERD = "/usr/bin/containerd"
DOCKER = "/usr/bin/docker"          # the 20.10 client (/usr/local/bin/docker is newer)
CGROUP_ROOT = Path("/sys/fs/cgroup")
START_TIMEOUT = 60.0
ROOT_SYSCTLS = ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables",
                "net/bridge/bridge-nf-call-ip6tables", "net/ipv4/conf/all/route_localnet")


class DockerPeerError(RuntimeError):
    pass


def available() -> str | None:
    """None when this machine has what the peer needs, else why not."""
    for path in (DOCKERD, CONTAINERD, DOCKER, shutil.which("runc") or "/usr/sbin/runc"):
        if not os.access(path, os.X_OK):
            return f"{path} not found: install docker.io (scripts/setup)"
    return None


@dataclass(frozen=True)
class RootRules:
    """The root namespace's firewall and the sysctls dockerd would write, as text."""

    nft: str
    iptables: str
    sysctls: str

    @classmethod
    def read(cls) -> "RootRules":
        def out(*argv: str) -> str:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            return p.stdout if p.returncode == 0 else f"<{argv[0]} failed: {p.stderr.strip()}>"
        ipt = "".join(out(tool) for tool in ("iptables-save", "ip6tables-save") if shutil.which(tool))
        # Comment lines carry a timestamp; chain counters move with traffic.
        ipt = re.sub(r"\[\d+:\d+\]", "", "\n".join(l for l in ipt.splitlines() if not l.startswith("#")))
        sysctls = []
        for name in ROOT_SYSCTLS:
            try:
                sysctls.append(f"{name}={Path('/proc/sys', name).read_text().strip()}")
            except OSError:
                sysctls.append(f"{name}=<absent>")
        # -s: stateless, without counter values
        return cls(nft=out("nft", "-s", "list", "ruleset"), iptables=ipt, sysctls="\n".join(sysctls))

    def changes(self) -> list[str]:
        now = RootRules.read()
        return [f"root namespace {what} changed:\n--- before\n{a}\n--- after\n{b}"
                for what, a, b in (("nftables ruleset", self.nft, now.nft),
                                   ("iptables-save", self.iptables, now.iptables),
                                   ("sysctls", self.sysctls, now.sysctls)) if a != b]


def _ns_inode(pid: int, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _stop(proc: subprocess.Popen, what: str, grace: float = 20.0) -> str | None:
    """Our own child, by its pid: SIGTERM, then SIGKILL; an error string or None."""
    if proc.poll() is not None:
        return None
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return None if sig == signal.SIGTERM else f"{what} (pid {proc.pid}) needed SIGKILL"
        except subprocess.TimeoutExpired:
            continue
    return f"{what} (pid {proc.pid}) did not exit"


@dataclass
class DockerPeer:
    ns: Namespace
    workdir: Path
    holder: subprocess.Popen | None = None
    containerd: subprocess.Popen | None = None
    dockerd: subprocess.Popen | None = None
    cgroup_parent: str = ""
    _api: object | None = field(default=None, repr=False)

    # -- paths
    @property
    def socket(self) -> str:
        return str(self.workdir / "docker.sock")

    @property
    def containerd_socket(self) -> str:
        return str(self.workdir / "containerd.sock")

    @property
    def env(self) -> dict[str, str]:
        """Environment of the docker client: this daemon, a private config dir."""
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}",
                "DOCKER_CONFIG": str(self.workdir / "client")}

    # -- lifecycle
    @classmethod
    def start(cls, role: str = "dkr", storage_driver: str = "overlay2", iptables: bool = True) -> "DockerPeer":
        why = available()
        if why:
            raise DockerPeerError(why)
        ns = Namespace.create(role)
        d = cls(ns, Path(tempfile.mkdtemp(prefix=f"{ns.name}-")), cgroup_parent=f"/{ns.name}")
        try:
            d._start(storage_driver, iptables)
        except BaseException as e:
            errors = d.close()
            if errors and isinstance(e, Exception):
                raise DockerPeerError(f"{e}; teardown: {'; '.join(errors)}") from e
            raise
        return d

    def __enter__(self) -> "DockerPeer":
        return self

    def __exit__(self, *exc) -> None:
        errors = self.close()
        if errors:
            print(f"dockerd_peer: teardown: {'; '.join(errors)}", flush=True, file=sys.stderr)

    def _in_mnt(self, *argv: str) -> list[str]:
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", *argv]

    def _start(self, storage_driver: str, iptables: bool) -> None:
        w = self.workdir
        for sub in ("containerd/root", "containerd/state", "containerd/opt", "data", "exec", "client"):
            (w / sub).mkdir(parents=True)
        self._check_sealed()
        # The holder: first process of the private mount namespace, which it keeps alive.
        self.holder = subprocess.Popen(
            self.ns.argv("unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                         "mount -t tmpfs -o mode=0755 plt-dkr-run /run && "
                         "mount -t tmpfs -o mode=0700 plt-dkr-etc /etc/docker && echo ready && exec sleep 86400"),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.holder.stdout.readline().strip()
        if line != "ready":
            self.holder.wait(timeout=10)
            raise DockerPeerError(f"private mount namespace failed: {self.holder.stderr.read().strip()}")
        (w / "containerd.toml").write_text(f"""version = 2
root = "{w}/containerd/root"
state = "{w}/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.containerd_socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{w}/containerd/opt"
""")
        (w / "daemon.json").write_text("{}\n")
        with open(w / "containerd.log", "wb") as log:
            self.containerd = subprocess.Popen(self._in_mnt(CONTAINERD, "--config", str(w / "containerd.toml")),
                                               stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self._wait(lambda: os.path.exists(self.containerd_socket), self.containerd, "containerd")
        argv = [DOCKERD, "--config-file", str(w / "daemon.json"), "--data-root", str(w / "data"),
                "--exec-root", str(w / "exec"), "--pidfile", str(w / "dockerd.pid"),
                "-H", f"unix://{self.socket}", "--containerd", self.containerd_socket,
                "--containerd-namespace", self.ns.name, "--containerd-plugins-namespace", f"{self.ns.name}-p",
                "--storage-driver", storage_driver, "--exec-opt", "native.cgroupdriver=cgroupfs",
                "--cgroup-parent", self.cgroup_parent, f"--iptables={'true' if iptables else 'false'}",
                "--ip6tables=false", "--userland-proxy=false"]
        with open(w / "dockerd.log", "wb") as log:
            self.dockerd = subprocess.Popen(self._in_mnt(*argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            env={**os.environ, "DOCKER_TMPDIR": str(w / "data" / "tmp")})
        self._wait(self._pings, self.dockerd, "dockerd")

    def _pings(self) -> bool:
        p = subprocess.run([DOCKER, "version", "--format", "{{.Server.Version}}"], env=self.env,
                           capture_output=True, text=True, timeout=10)
        return p.returncode == 0 and bool(p.stdout.strip())

    def _wait(self, ready, proc: subprocess.Popen, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if proc.poll() is not None:
                raise DockerPeerError(f"{what} exited ({proc.returncode}) at start; its log ends:\n"
                                      f"{self.log_tail(what)}")
            if time.monotonic() > deadline:
                raise DockerPeerError(f"{what} not ready within {START_TIMEOUT:.0f}s; its log ends:\n"
                                      f"{self.log_tail(what)}")
            time.sleep(0.1)

    def log_tail(self, what: str, chars: int = 3000) -> str:
        try:
            return (self.workdir / f"{what}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _check_sealed(self) -> None:
        """No route out of the sandbox: nothing Docker does (DNS forwarding, pulls) can leave."""
        for probe in ("1.1.1.1", "8.8.8.8", "10.0.0.1", "192.168.0.1"):
            if self.ns.run("ip", "route", "get", probe, check=False).returncode == 0:
                raise DockerPeerError(f"{self.ns.name} has a route to {probe}")

    # -- use
    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        p = subprocess.run([DOCKER, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise DockerPeerError(f"docker {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()[-800:]}")
        return p

    def argv(self, *args: str) -> list[str]:
        return [DOCKER, *args]

    @property
    def api(self):
        """docker-py on this daemon's socket (imported on first use)."""
        if self._api is None:
            import docker
            self._api = docker.DockerClient(base_url=f"unix://{self.socket}", timeout=120)
        return self._api

    def load(self, archive: str, tag: str) -> None:
        """`docker load` a docker-save archive and tag its image `tag`."""
        out = self.docker("load", "-i", archive).stdout
        m = re.search(r"Loaded image(?: ID)?: (\S+)", out)
        if not m:
            raise DockerPeerError(f"docker load printed no image: {out!r}")
        self.docker("tag", m.group(1), tag)

    def container_pid(self, name: str) -> int:
        return int(self.docker("inspect", "-f", "{{.State.Pid}}", name).stdout.strip())

    def container_ip(self, name: str, network: str) -> str:
        doc = json.loads(self.docker("inspect", name).stdout)[0]
        return doc["NetworkSettings"]["Networks"][network]["IPAddress"]

    # -- teardown
    def close(self) -> list[str]:
        errors: list[str] = []
        if self.dockerd is not None and self.dockerd.poll() is None:
            try:
                ids = self.docker("ps", "-aq", check=False, timeout=30).stdout.split()
                if ids:
                    self.docker("rm", "-f", *ids, check=False, timeout=120)
            except (subprocess.TimeoutExpired, OSError) as e:
                errors.append(f"docker rm: {e}")
        if self._api is not None:
            with contextlib.suppress(Exception):
                self._api.close()
        for proc, what in ((self.dockerd, "dockerd"), (self.containerd, "containerd")):
            if proc is not None:
                err = _stop(proc, what)
                if err:
                    errors.append(err)
        if self.holder is not None:
            errors += self._end_leftovers()
            err = _stop(self.holder, "mount namespace holder", grace=5)
            if err:
                errors.append(err)
        errors += self._remove_cgroups()
        self.ns.delete()
        if os.path.exists(self.ns.path):
            errors.append(f"netns {self.ns.name} still exists")
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.workdir.exists():
            errors.append(f"{self.workdir} still exists")
        return errors

    def _in_our_cgroup(self, pid: int) -> bool:
        try:
            text = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return False
        return any(line.split(":", 2)[-1].startswith(f"{self.cgroup_parent}/") for line in text.splitlines())

    def _end_leftovers(self) -> list[str]:
        """Processes still in our private mount namespace other than the holder (shims),
        or in our cgroup parent (containers' processes, which have mount namespaces of
        their own): all descend from what this module started."""
        mnt = _ns_inode(self.holder.pid, "mnt")
        if mnt == _ns_inode(os.getpid(), "mnt"):
            mnt = None
        left = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != self.holder.pid
                and ((mnt is not None and _ns_inode(int(p), "mnt") == mnt) or self._in_our_cgroup(int(p)))]
        errors = [f"left in the sandbox after dockerd and containerd stopped: pid {p} "
                  f"({Path(f'/proc/{p}/comm').read_text().strip() if os.path.exists(f'/proc/{p}/comm') else '?'})"
                  for p in left]
        for p in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        deadline = time.monotonic() + 10      # gone (or a zombie) before the cgroups are removed
        while time.monotonic() < deadline and any(_running(p) for p in left):
            time.sleep(0.05)
        return errors

    def _remove_cgroups(self) -> list[str]:
        errors = []
        if not self.cgroup_parent:
            return errors
        for ctrl in sorted(CGROUP_ROOT.iterdir()) if CGROUP_ROOT.is_dir() else []:
            top = ctrl / self.cgroup_parent.lstrip("/")
            if not top.is_dir() or top.is_symlink():
                continue
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True) + [top]:
                try:
                    d.rmdir()
                except OSError as e:
                    errors.append(f"cgroup {d}: {e}")
        return errors
