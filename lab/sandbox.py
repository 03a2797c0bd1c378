"""Simulated hosts on one machine: each a network namespace of its own with its
own portlinkd and state dir. Used by the tests, the demo and the benchmarks so
that nothing ever touches the machine's root network namespace.

Namespaces are named plt-<role>-<random> (portlink test) and each host's work
dir is $TMPDIR/plt-<role>-<random>-*, with its daemon's pid and start time in
portlinkd.pid, so a sweep after a killed run finds them all (daemon, containers,
log shims, mounts, directories, namespaces): `python -m portlink.lab.sandbox --clean`."""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from portlink.netns import kernel_ns
from portlink.runtime import procstart
from portlink.runtime.runc import Runc
from portlink.lab import daemon_proc
from portlink.lab.daemon_proc import VENV_BIN
from portlink.runtime.client import Client, CliError

SANDBOX_PREFIX = "plt-"
DAEMON_PID = "portlinkd.pid"    # in a SimHost's work dir: "<pid> <start time>"


def sh(*argv: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run a command (argument list, never a shell) and capture its output as text."""
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    return p


@dataclass
class Namespace:
    """A named network namespace made with iproute2, deleted by `delete()`."""

    name: str

    @classmethod
    def create(cls, role: str) -> "Namespace":
        ns = cls(f"{SANDBOX_PREFIX}{role}-{secrets.token_hex(3)}")
        sh("ip", "netns", "add", ns.name)
        ns.run("ip", "link", "set", "lo", "up")
        return ns

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def argv(self, *argv: str) -> list[str]:
        # nsenter, not `ip netns exec`: the latter remounts /sys and hides cgroups.
        return ["nsenter", f"--net={self.path}", *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return sh(*self.argv(*argv), check=check, timeout=timeout, **kw)

    def popen(self, *argv: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*argv), **kw)

    def delete(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)


def link_namespaces(a: Namespace, a_ip: str, b: Namespace, b_ip: str, prefix: int = 24) -> None:
    """A veth pair between two sandbox namespaces, addressed: a simple underlay."""
    # "ul-": sandbox underlay, never mistaken for a portlink bridge or veth
    ia, ib = f"ul-{secrets.token_hex(4)}", f"ul-{secrets.token_hex(4)}"
    sh("ip", "link", "add", ia, "netns", a.name, "type", "veth", "peer", "name", ib, "netns", b.name)
    for ns, ifname, ip in ((a, ia, a_ip), (b, ib, b_ip)):
        ns.run("ip", "addr", "add", f"{ip}/{prefix}", "dev", ifname)
        ns.run("ip", "link", "set", ifname, "up")


@dataclass
class Switch:
    """A lab switch: a bridge inside a namespace of its own (never the root one);
    `attach` plugs a namespace in with an address on the lab subnet."""

    ns: Namespace
    bridge: str = "sw0"

    @classmethod
    def create(cls, role: str = "sw") -> "Switch":
        sw = cls(Namespace.create(role))
        sw.ns.run("ip", "link", "add", sw.bridge, "type", "bridge")
        sw.ns.run("ip", "link", "set", sw.bridge, "up")
        return sw

    def attach(self, ns: Namespace, ip: str, prefix: int = 24) -> None:
        port, inside = f"ul-{secrets.token_hex(4)}", f"ul-{secrets.token_hex(4)}"
        sh("ip", "link", "add", port, "netns", self.ns.name, "type", "veth", "peer", "name", inside,
           "netns", ns.name)
        self.ns.run("ip", "link", "set", port, "master", self.bridge, "up")
        ns.run("ip", "addr", "add", f"{ip}/{prefix}", "dev", inside)
        ns.run("ip", "link", "set", inside, "up")

    def delete(self) -> None:
        self.ns.delete()


@dataclass
class SimHost:
    """A simulated portlink host: namespace + portlinkd + state dir."""

    ns: Namespace
    workdir: Path
    firewall: str = "nftables"
    extra_args: list[str] = field(default_factory=list)
    daemon: daemon_proc.Daemon | None = None
    env: dict[str, str] = field(default_factory=dict)   # extra daemon environment (fault points)

    @classmethod
    def start(cls, role: str = "host", firewall: str = "nftables", extra_args: list[str] | None = None) -> "SimHost":
        ns = Namespace.create(role)
        h = cls(ns, Path(tempfile.mkdtemp(prefix=f"{ns.name}-")), firewall, extra_args or [])
        try:
            h.start_daemon()
        except BaseException:
            h.destroy()
            raise
        return h

    @property
    def socket(self) -> str:
        return str(self.workdir / "portlink.sock")

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def client(self) -> Client:
        return Client(self.socket)

    def start_daemon(self, timeout: float = 30) -> None:
        self.daemon = daemon_proc.start(self.socket, self.state_dir, ["--firewall", self.firewall, *self.extra_args],
                                        netns=self.ns.path, log_path=self.workdir / "portlinkd.log", env=self.env,
                                        name=f"portlinkd in {self.ns.name}")
        # For a sweep after a killed run (clean()): which process was this host's daemon.
        pid = self.daemon.proc.pid
        (self.workdir / DAEMON_PID).write_text(f"{pid} {procstart.process_start(pid)}\n")
        self.daemon.wait_ready(timeout)

    @property
    def proc(self) -> subprocess.Popen | None:
        """The daemon's process (nsenter exec()s portlinkd: its pid is the daemon's)."""
        return self.daemon.proc if self.daemon else None

    @proc.setter
    def proc(self, value: None) -> None:
        if value is not None:
            raise ValueError("start_daemon() starts the daemon; only None (forget it) may be set")
        self.daemon = None

    def daemon_log(self) -> str:
        return daemon_proc.log_tail(self.workdir / "portlinkd.log", chars=None)

    def stop_daemon(self, sig: int = signal.SIGTERM) -> None:
        if self.daemon:
            self.daemon.stop(sig)   # our own child, by its pid
        self.daemon = None

    def cli(self, *args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {**os.environ, "PORTLINK_HOST": self.socket}
        p = subprocess.run([str(VENV_BIN / "portlink"), *args], capture_output=True, text=True,
                           timeout=timeout, env=env, stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise RuntimeError(f"portlink {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
        return p

    def destroy(self) -> list[str]:
        """Prune everything, stop the daemon, delete the namespace; returns the errors."""
        errors: list[str] = []
        if self.daemon and self.daemon.running():
            try:
                r = self.client.post("/system/prune")
                errors += r["errors"]
            except (CliError, OSError) as e:
                errors.append(f"prune: {e}")
        self.stop_daemon()
        self.ns.delete()
        errors += unmount_under(self.workdir)
        shutil.rmtree(self.workdir, ignore_errors=True)
        return errors


def unmount_under(root: Path) -> list[str]:
    """Lazily unmount whatever is still mounted below `root` (overlays, netns
    files), deepest first, so removing the directory cannot fail on a mount."""
    prefix = str(root).rstrip("/") + "/"
    errors = []
    for mp in sorted((m for m in kernel_ns.mount_points() if m.startswith(prefix)), key=len, reverse=True):
        try:
            kernel_ns.unmount(mp)
            errors.append(f"leaked mount {mp} (unmounted)")
        except OSError as e:
            errors.append(str(e))
    return errors


def clean() -> list[str]:
    """Remove what a killed test run left (its teardown never ran): each sandbox
    host's daemon, containers and their log shims, mounts and work dir, then every
    plt-* namespace."""
    gone = []
    for wd in sorted(Path(tempfile.gettempdir()).glob(f"{SANDBOX_PREFIX}*")):
        if wd.is_dir() and (wd / "state").is_dir():
            gone += clean_workdir(wd)
    for line in sh("ip", "netns", "list", check=False).stdout.split("\n"):
        name = line.split(" ")[0]
        if name.startswith(SANDBOX_PREFIX):
            sh("ip", "netns", "del", name, check=False)
            gone.append(f"netns {name}")
    return gone


def _exited(pid: int) -> bool:
    """Ended but not yet reaped by its parent (state Z): nothing left to stop."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def clean_workdir(wd: Path) -> list[str]:
    """One SimHost's leftovers: its daemon (by the recorded pid, only while that pid
    is still the process started), its runc containers with their log shims, then
    its mounts and the directory."""
    done = []
    try:
        pid, start = (int(x) for x in (wd / DAEMON_PID).read_text().split())
        ours = lambda: procstart.is_same(pid, start) and not _exited(pid)
        if ours():
            daemon_proc.stop_pid(pid, ours)
            done.append(f"portlinkd {pid}")
    except (OSError, ValueError):
        pass   # no record, or a host made before records were kept: no daemon to stop
    state = wd / "state"
    runc = Runc(state / "runc")
    for cid in runc.list_ids():
        err = runc.delete(cid, state / "containers" / cid)   # force: kills it, then sees its shim out
        done.append(f"container {cid[:12]}" + (f" ({err})" if err else ""))
    done += unmount_under(wd)
    # A throwaway host's volumes live in its work dir and go with it: said, not silent.
    vols = state / "volumes"
    done += [f"volume {d.name.removeprefix('plvol-')} (with the test host)"
             for d in (sorted(vols.glob("plvol-*")) if vols.is_dir() else [])]
    shutil.rmtree(wd, ignore_errors=True)
    return done + [f"dir {wd}"]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="portlink sandbox helpers")
    p.add_argument("--clean", action="store_true",
                   help="remove what killed test runs left: plt-* hosts' daemons, containers, mounts, dirs, namespaces")
    if p.parse_args().clean:
        print("\n".join(clean()) or "nothing to clean")
