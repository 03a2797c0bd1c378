"""Running real Consul agents (processes) for the tests, the lab, the benchmarks
and the demo: a dev agent, or servers and clients that form a cluster, each
bound to one address (usually inside a namespace the caller made).

The binary is the one `scripts/build-consul` built and cached (make setup
runs it); PORTLINK_CONSUL names another."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from portlink.errors import RuntimeFailure

VERSION = "v1.16.3"   # keep in step with scripts/build-consul (the last MPL-2.0 release)


def consul_binary() -> str:
    """The Consul agent binary: $PORTLINK_CONSUL, the build cache, or PATH."""
    env = os.environ.get("PORTLINK_CONSUL")
    if env:
        if not os.access(env, os.X_OK):
            raise RuntimeFailure(f"PORTLINK_CONSUL={env!r} is not an executable file")
        return env
    cache = Path(os.environ.get("PORTLINK_CACHE")
                 or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "portlink")
    built = cache / "consul" / VERSION / "consul"
    if os.access(built, os.X_OK):
        return str(built)
    found = shutil.which("consul")
    if found:
        return found
    raise RuntimeFailure(f"no Consul binary: run scripts/build-consul (make setup does) to build {VERSION}, "
                         "or set PORTLINK_CONSUL to one")


@dataclass(frozen=True)
class AgentSecurity:
    """ACLs (default deny) and gossip encryption for an agent. Written to a 0600
    config file in its data dir, never on its command line."""

    encrypt: str                      # gossip key: base64 of 32 random bytes, the same on every agent
    management: str                   # acl.tokens.initial_management (servers bootstrap with it)
    agent_token: str = ""             # acl.tokens.agent: registers this node (created after the leader)

    def hcl(self) -> str:
        tokens = f'    initial_management = "{self.management}"\n'
        if self.agent_token:
            tokens += f'    agent = "{self.agent_token}"\n'
        return (f'encrypt = "{self.encrypt}"\n'
                'acl {\n  enabled = true\n  default_policy = "deny"\n  down_policy = "extend-cache"\n'
                f'  enable_token_persistence = true\n  tokens {{\n{tokens}  }}\n}}\n')


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """A secret file, created with its mode (never readable by others, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


@dataclass
class AgentSpec:
    name: str                         # node name, unique in the cluster
    bind: str                         # the one address it listens on (HTTP, DNS, serf, RPC)
    data_dir: Path
    mode: str = "dev"                 # dev | server | client
    join: list[str] = field(default_factory=list)
    bootstrap_expect: int = 0
    datacenter: str = "dc1"
    security: AgentSecurity | None = None   # None: no ACLs, no gossip encryption

    @property
    def security_file(self) -> Path:
        return self.data_dir / "security.hcl"

    def argv(self, binary: str) -> list[str]:
        hcl = ('disable_update_check = true\n'
               'performance { raft_multiplier = 1 }\n'      # fastest elections: a lab, not a WAN
               'log_level = "warn"\n'
               # Cumulative counters (GET /v1/agent/metrics?format=prometheus): the benches count
               # the HTTP requests an agent served (bench/scale_hosts.py); the default in-memory
               # sink keeps only 10 s intervals.
               'telemetry { prometheus_retention_time = "30m"\n  disable_hostname = true }\n'
               # Connect's built-in CA and intentions: what secure links use (a dev agent has it on).
               'connect { enabled = true }\n'
               # A daemon holds one blocking query per followed service (catalog.config.CONNECTIONS).
               'limits { http_max_conns_per_client = 4096 }\n')
        argv = [binary, "agent", f"-node={self.name}", f"-bind={self.bind}", f"-client={self.bind}",
                f"-datacenter={self.datacenter}", "-hcl", hcl]
        if self.security:
            argv += [f"-config-file={self.security_file}"]
        if self.mode == "dev":
            return argv + ["-dev"]
        argv += [f"-data-dir={self.data_dir / 'data'}"]
        if self.mode == "server":
            argv += ["-server", f"-bootstrap-expect={self.bootstrap_expect or 1}"]
        return argv + [f"-retry-join={j}" for j in self.join if j != self.bind] + ["-retry-interval=1s"]


@dataclass
class Agent:
    spec: AgentSpec
    proc: subprocess.Popen
    netns: str | None = None          # path of the namespace it runs in; None: this one
    argv: list[str] = field(default_factory=list)

    @property
    def token(self) -> str | None:
        """The management token (ACLs on): the tests' and the lab's own calls use it."""
        return self.spec.security.management if self.spec.security else None

    def get(self, path: str, timeout: float = 2.0, token: str | None = None) -> tuple[int, dict, object]:
        """GET from this agent's HTTP API, from inside its namespace; with the
        management token unless `token` is given ("" for none: anonymous)."""
        return http_get(f"{self.http}{path}", timeout, self.netns, token=self._token(token))

    def put(self, path: str, body: object = None, timeout: float = 5.0,
            token: str | None = None) -> tuple[int, dict, object]:
        return http_get(f"{self.http}{path}", timeout, self.netns, method="PUT", body=body, token=self._token(token))

    def post(self, path: str, body: object = None, timeout: float = 5.0,
             token: str | None = None) -> tuple[int, dict, object]:
        return http_get(f"{self.http}{path}", timeout, self.netns, method="POST", body=body,
                        token=self._token(token))

    def _token(self, token: str | None) -> str | None:
        return self.token if token is None else token   # "": anonymous

    @property
    def http(self) -> str:
        return f"http://{self.spec.bind}:8500"

    @property
    def log_path(self) -> Path:
        return self.spec.data_dir / "consul.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-3000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10) -> None:
        """End our own child by its pid: SIGTERM, then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def start_agent(spec: AgentSpec, netns: str | None = None, new_session: bool = False) -> Agent:
    """Start an agent, inside the network namespace at `netns` if given;
    `new_session`: it outlives its starter (the lab)."""
    spec.data_dir.mkdir(parents=True, exist_ok=True)
    if spec.security:
        write_private(spec.security_file, spec.security.hcl())
    prefix = ["nsenter", f"--net={netns}"] if netns else []
    argv = [*prefix, *spec.argv(consul_binary())]
    log = open(spec.data_dir / "consul.log", "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=new_session)
    log.close()
    return Agent(spec, proc, netns, argv)


# The lab acts as its Consul's operator: a call into a lab host's namespace made
# without a token carries that lab's management token (registered by the lab
# for each of its namespaces: netns path -> token file). token="" asks for none.
OPERATOR_TOKENS: dict[str, Path] = {}


def http_get(url: str, timeout: float = 2.0, netns: str | None = None, method: str = "GET",
             body: object = None, token: str | None = None) -> tuple[int, dict, object]:
    """One request to a Consul agent: (status, headers, decoded JSON or text).
    With `netns`, the socket is opened inside that namespace (by a thread that
    enters it), so a lab address is never looked for on the machine's own network.
    `token`: sent as X-Consul-Token; None: the lab's operator token for a lab
    namespace (OPERATOR_TOKENS), else none; "": anonymous."""
    if token is None and netns in OPERATOR_TOKENS:
        try:
            token = OPERATOR_TOKENS[netns].read_text().strip()
        except OSError:
            token = None      # the lab is going away
    if netns:
        out: list = []

        def inside() -> None:
            from portlink.netns.kernel_ns import entered
            try:
                with entered(netns):
                    out.append(http_get(url, timeout, None, method, body, token or ""))
            except BaseException as e:
                out.append(e)
        t = threading.Thread(target=inside, daemon=True)
        t.start()
        t.join(timeout + 5)
        if not out:
            raise TimeoutError(f"{method} {url} did not finish")
        if isinstance(out[0], BaseException):
            raise out[0]
        return out[0]
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("X-Consul-Token", token)    # a header: never in a URL or a log line
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read().decode()
            try:
                return r.status, dict(r.headers), json.loads(text) if text else None
            except ValueError:
                return r.status, dict(r.headers), text
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def wait_ready(agent: Agent, timeout: float = 60) -> None:
    """Until the agent has a leader and knows it (Consul's own readiness rule)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if agent.proc.poll() is not None:
            raise RuntimeFailure(f"consul agent {agent.spec.name} exited ({agent.proc.returncode}): {agent.log()}")
        try:
            code, _, leader = agent.get("/v1/status/leader")
            if code == 200 and leader:
                code, headers, _ = agent.get("/v1/catalog/nodes")
                if code == 200 and headers.get("X-Consul-Knownleader", headers.get("X-Consul-KnownLeader")) == "true":
                    return
            last = f"HTTP {code}"
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    raise RuntimeFailure(f"consul agent {agent.spec.name} at {agent.http} not ready within {timeout}s ({last}): "
                         f"{agent.log()}")
