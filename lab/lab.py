"""The multi-host lab: N simulated hosts on this machine, for the demo, the
tests and the benchmarks.

  switch    plt-lab-<name>-sw   a bridge inside its own namespace (never the root one)
  hostK     plt-lab-<name>-hK   underlay 10.99.0.K/24 on the switch, its own portlinkd
                                (state in the lab dir) and a Consul agent: hosts 1-3
                                are the servers, the others clients

Everything is recorded in <dir>/lab.json as it is made (namespaces, pids, the
command line of each pid), so `down` removes exactly what `up` made, even
after `up` failed half-way, and ends only its own processes, by pid."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from portlink.errors import Conflict, InvalidArgument, NotFound, RuntimeFailure
from portlink.lab import consul_acl, daemon_proc
from portlink.lab.consul_agent import OPERATOR_TOKENS, Agent, AgentSpec, start_agent, wait_ready
from portlink.lab.daemon_proc import VENV_BIN, Daemon
from portlink.lab.sandbox import Namespace, Switch, sh, unmount_under
from portlink.runtime.client import Client, CliError

LAB_ROOT = Path(os.environ.get("PORTLINK_LAB_DIR", "/run/portlink-lab"))
SUBNET = "10.99.0"
MAX_HOSTS = 20
SERVERS = 3


def host_ip(k: int) -> str:
    return f"{SUBNET}.{k}"


@dataclass
class LabHost:
    name: str                 # host1 ...
    ns: str                   # namespace name
    ip: str
    workdir: str
    consul_role: str          # server | client
    daemon_pid: int | None = None
    consul_pid: int | None = None

    @property
    def socket(self) -> str:
        return f"{self.workdir}/portlink.sock"

    @property
    def docker_socket(self) -> str:
        """The host's Docker API (portlinkd --docker-socket): DOCKER_HOST in `lab exec`."""
        return f"{self.workdir}/docker.sock"

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.ns}"


@dataclass
class Lab:
    name: str
    dir: str
    switch_ns: str = ""
    hosts: list[LabHost] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)   # pid -> its start time: our own, not a reused pid
    secure_links: bool = True     # daemons run --secure-links (False: plaintext links, for benchmarks)
    link_datapath: str = "proxy"  # daemons' --link-datapath (kernel: plaintext links by nftables DNAT)

    # records ----------------------------------------------------------------
    @classmethod
    def path_of(cls, name: str) -> Path:
        return LAB_ROOT / name / "lab.json"

    @classmethod
    def load(cls, name: str) -> "Lab":
        try:
            data = json.loads(cls.path_of(name).read_text())
        except FileNotFoundError:
            raise NotFound(f"no lab named {name!r} (portlink lab up --name {name})") from None
        hosts = [LabHost(**h) for h in data.pop("hosts")]
        lab = cls(hosts=hosts, **data)
        lab.operate()
        return lab

    def operate(self) -> None:
        """This process's calls into the lab's namespaces act as the lab's Consul operator."""
        for h in self.hosts:
            OPERATOR_TOKENS[h.netns_path] = management_token_file(self)

    def save(self) -> None:
        p = Path(self.dir) / "lab.json"
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(p)

    def host(self, name: str) -> LabHost:
        for h in self.hosts:
            if h.name == name or h.ns == name:
                return h
        raise NotFound(f"no host {name!r} in lab {self.name!r}: hosts are "
                       f"{', '.join(h.name for h in self.hosts)}")

    def _own(self, proc: subprocess.Popen) -> int:
        self.pids[str(proc.pid)] = _start_time(proc.pid)
        self.save()
        return proc.pid

    def alive(self, pid: int | None) -> bool:
        """Is `pid` still the process we started (not a reused pid)?"""
        return bool(pid) and str(pid) in self.pids and _start_time(pid) == self.pids[str(pid)]


def _start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot: with the pid, unique."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19]) if fields[0] != "Z" else -1   # a zombie has ended


def validate_name(name: str) -> str:
    if not (name.isascii() and name.replace("-", "").isalnum() and 1 <= len(name) <= 12):
        raise InvalidArgument(f"invalid lab name {name!r}: letters, digits and '-', at most 12")
    return name


def up(hosts: int, name: str = "lab", progress=print, secure_links: bool = True,
       link_datapath: str = "proxy") -> Lab:
    """Make the lab; on any failure, remove what was made and raise."""
    validate_name(name)
    if not 1 <= hosts <= MAX_HOSTS:
        raise InvalidArgument(f"invalid --hosts {hosts}: expected 1 to {MAX_HOSTS}")
    if Lab.path_of(name).exists():
        raise Conflict(f"lab {name!r} is already up (portlink lab down --name {name})")
    d = LAB_ROOT / name
    d.mkdir(parents=True, exist_ok=False, mode=0o700)
    lab = Lab(name=name, dir=str(d), secure_links=secure_links, link_datapath=link_datapath)
    lab.save()
    try:
        _build(lab, hosts, progress)
    except BaseException:
        errors = down(name, progress=lambda *_: None)
        if errors:
            progress(f"cleanup after the failed start reported: {errors}")
        raise
    return lab


def _build(lab: Lab, n: int, progress) -> None:
    prefix = f"lab-{lab.name}"
    sw = Switch.create(f"{prefix}-sw")
    lab.switch_ns = sw.ns.name
    lab.save()
    servers = [host_ip(k) for k in range(1, min(n, SERVERS) + 1)]
    for k in range(1, n + 1):
        ns = Namespace.create(f"{prefix}-h{k}")
        h = LabHost(name=f"host{k}", ns=ns.name, ip=host_ip(k), workdir=str(Path(lab.dir) / f"host{k}"),
                    consul_role="server" if k <= SERVERS else "client")
        lab.hosts.append(h)
        lab.save()
        Path(h.workdir).mkdir(mode=0o700)
        sw.attach(ns, h.ip)
    progress(f"switch {lab.switch_ns}; hosts {', '.join(f'{h.name}={h.ip}' for h in lab.hosts)}")
    # Secrets first (0600 files): the agents' config and the daemons' flags name them.
    consul_acl.make_lab_secrets(Path(lab.dir))
    for h in lab.hosts:
        consul_acl.make_host_secrets(_secrets(h))
    lab.operate()
    agents: list[Agent] = []
    for h in lab.hosts:
        agent = start_agent(_agent_spec(lab, h), h.netns_path, new_session=True)
        h.consul_pid = lab._own(agent.proc)
        agents.append(agent)
    lab.save()
    daemons = [_start_daemon(lab, h) for h in lab.hosts]
    for agent in agents:
        wait_ready(agent, timeout=60)
    consul_acl.bootstrap({h.name: a for h, a in zip(lab.hosts, agents)}, {h.name: _secrets(h) for h in lab.hosts})
    progress(f"consul: {len(servers)} server(s), {len(agents) - len(servers)} client(s), leader elected, "
             "ACLs (default deny) and gossip encryption on")
    for d in daemons:
        d.wait_ready(timeout=60)
    progress(f"portlinkd up on {len(lab.hosts)} host(s)")


def _secrets(h: LabHost) -> consul_acl.HostSecrets:
    return consul_acl.HostSecrets(Path(h.workdir))


def management_token_file(lab: Lab) -> Path:
    """The lab's Consul management token (mode 0600): the operator's, for `lab exec`."""
    return Path(lab.dir) / consul_acl.MANAGEMENT_FILE


def _agent_spec(lab: Lab, h: LabHost) -> AgentSpec:
    """The agent of host `h`: the same arguments, data dir and secrets every time it starts."""
    servers = [s.ip for s in lab.hosts if s.consul_role == "server"]
    return AgentSpec(h.name, h.ip, Path(h.workdir) / "consul", mode=h.consul_role,
                     bootstrap_expect=len(servers), join=servers,
                     security=consul_acl.agent_security(Path(lab.dir), _secrets(h)))


def agent_stop(name: str, hosts: list[str], progress=print) -> None:
    """Stop the Consul agents of `hosts` (SIGTERM, then SIGKILL): a fault drill."""
    lab = Lab.load(name)
    errors: list[str] = []
    for h in [lab.host(x) for x in hosts]:
        _end(lab, h.consul_pid, errors, f"{h.name} consul")
        progress(f"{h.name}: consul agent stopped")
    if errors:
        raise RuntimeFailure("; ".join(errors))


def agent_start(name: str, hosts: list[str], timeout: float = 60, progress=print) -> None:
    """Start the Consul agents of `hosts` again, with the arguments and data dir
    `up` gave them, and wait until each knows a leader (servers that were all
    down elect one only once a quorum is back: start them together). The new
    pid is recorded like the first, so `down` ends it."""
    lab = Lab.load(name)
    chosen = [lab.host(x) for x in hosts]
    for h in chosen:
        if lab.alive(h.consul_pid):
            raise Conflict(f"the Consul agent of {h.name} is running (pid {h.consul_pid}): "
                           f"portlink lab consul stop {h.name} first")
    agents: list[Agent] = []
    for h in chosen:
        if h.consul_pid:
            _reap(h.consul_pid)                    # killed by hand: a zombie of ours, maybe
            lab.pids.pop(str(h.consul_pid), None)
        agent = start_agent(_agent_spec(lab, h), h.netns_path, new_session=True)
        h.consul_pid = lab._own(agent.proc)
        lab.save()
        agents.append(agent)
    deadline = time.monotonic() + timeout
    for agent in agents:
        wait_ready(agent, timeout=max(1.0, deadline - time.monotonic()))
        progress(f"{agent.spec.name}: consul agent up (pid {agent.proc.pid}), leader known")


def daemon_restart(name: str, host: str, timeout: float = 60) -> None:
    """Stop the portlinkd of `host` (SIGTERM, then SIGKILL) and start it again with
    the arguments and state `up` gave it; its containers keep running meanwhile.
    Returns once it answers. The new pid is recorded like the first."""
    lab = Lab.load(name)
    h = lab.host(host)
    errors: list[str] = []
    _end(lab, h.daemon_pid, errors, f"{h.name} portlinkd")
    if errors:
        raise RuntimeFailure("; ".join(errors))
    if h.daemon_pid:
        lab.pids.pop(str(h.daemon_pid), None)
    _start_daemon(lab, h).wait_ready(timeout=timeout)


def _start_daemon(lab: Lab, h: LabHost) -> Daemon:
    # Its own session: the daemon outlives `lab up` and a ^C in the terminal.
    d = daemon_proc.start(h.socket, f"{h.workdir}/state",
                          ["--consul", f"{h.ip}:8500", "--advertise", h.ip, "--consul-check-interval", "2",
                           *(["--secure-links"] if lab.secure_links else []), "--docker-socket", h.docker_socket,
                           *(["--link-datapath", lab.link_datapath] if lab.link_datapath != "proxy" else []),
                           *consul_acl.daemon_args(_secrets(h), h.name)],
                          netns=h.netns_path, log_path=Path(h.workdir) / "portlinkd.log", new_session=True,
                          name=f"portlinkd on {h.name}")
    h.daemon_pid = d.pid
    lab._own(d.proc)              # records the pid and saves: with this host's daemon_pid in it
    return d


def _end(lab: Lab, pid: int | None, errors: list[str], what: str) -> None:
    """End a process the lab started (by `up` in this process or another), by its
    recorded pid and start time: SIGTERM, then SIGKILL."""
    if not lab.alive(pid):
        return

    def ours() -> bool:
        _reap(pid)
        return lab.alive(pid)
    try:
        daemon_proc.stop_pid(pid, ours)
    except OSError as e:
        errors.append(f"{what} (pid {pid}): {e}")


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)     # our child only when `up` ran in this process
    except ChildProcessError:
        pass


def down(name: str = "lab", progress=print) -> list[str]:
    """Remove everything the lab made; best effort, every error collected."""
    lab = Lab.load(name)
    errors: list[str] = []
    for h in lab.hosts:
        if lab.alive(h.daemon_pid):
            try:
                r = Client(h.socket).post("/system/prune")
                # The lab's Consul goes away with it: entries it could not remove do not matter.
                errors += [f"{h.name}: {e}" for e in r["errors"] if not e.startswith("consul:")]
            except (CliError, OSError) as e:
                errors.append(f"{h.name}: prune: {e}")
        _end(lab, h.daemon_pid, errors, f"{h.name} portlinkd")
    for h in lab.hosts:
        _end(lab, h.consul_pid, errors, f"{h.name} consul")
    for h in lab.hosts:
        sh("ip", "netns", "del", h.ns, check=False)
        errors += [e for e in unmount_under(Path(h.workdir)) if not e.startswith("leaked mount")]
    if lab.switch_ns:
        sh("ip", "netns", "del", lab.switch_ns, check=False)
    leftover = [n for n in [*(h.ns for h in lab.hosts), lab.switch_ns] if n and Path(f"/run/netns/{n}").exists()]
    errors += [f"namespace {n} still exists" for n in leftover]
    shutil.rmtree(lab.dir, ignore_errors=True)
    for h in lab.hosts:
        OPERATOR_TOKENS.pop(h.netns_path, None)
    progress(f"lab {name!r} removed" + (f" with errors: {errors}" if errors else ""))
    return errors


def ls() -> list[dict]:
    out = []
    if not LAB_ROOT.is_dir():
        return out
    for d in sorted(LAB_ROOT.iterdir()):
        try:
            lab = Lab.load(d.name)
        except (NotFound, ValueError, TypeError):
            continue
        for h in lab.hosts:
            out.append({"lab": lab.name, "host": h.name, "ip": h.ip, "namespace": h.ns, "socket": h.socket,
                        "docker_socket": h.docker_socket, "consul": h.consul_role, "portlinkd": "up" if lab.alive(h.daemon_pid) else "down",
                        "consul_agent": "up" if lab.alive(h.consul_pid) else "down"})
    return out


def exec_argv(name: str, host: str, argv: list[str]) -> tuple[list[str], dict]:
    """The command line and environment that run `argv` on a lab host: inside its
    namespace, with `portlink` talking to that host's daemon."""
    lab = Lab.load(name)
    h = lab.host(host)
    if not argv:
        raise InvalidArgument("lab exec needs a command: portlink lab exec host1 -- portlink ps")
    if argv[0] == "portlink":
        argv = [str(VENV_BIN / "portlink"), *argv[1:]]
    env = {**os.environ, "PORTLINK_HOST": h.socket, "CONSUL_HTTP_ADDR": f"{h.ip}:8500",
           "DOCKER_HOST": f"unix://{h.docker_socket}",
           "CONSUL_HTTP_TOKEN_FILE": str(management_token_file(lab)),
           "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    return ["nsenter", f"--net={h.netns_path}", *argv], env


def main_exec(name: str, host: str, argv: list[str]) -> int:
    cmd, env = exec_argv(name, host, argv)
    return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    sys.exit("use: portlink lab up|ls|exec|consul|down")
