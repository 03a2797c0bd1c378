"""Ambassador containers: what `portlink run --ambassador SERVICE` and a
cross-host link start (pure: the spec and the command line).

An ambassador is an ordinary portlink container (runc, its own namespace and
address on the bridge, a lease, DNS) whose process is portlink's own forwarder,
`python -m portlink.ambassador`, run from this host's Python and portlink
installation, bound recursively read-only into a read-only busybox root. It
runs as a user of its own with no capabilities (runtime.security). It listens
on the service's ports and forwards each connection to a healthy instance from
Consul, rerouting when the instances change."""

from __future__ import annotations

import os
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from portlink import parse
from portlink.catalog.services import META_PORT, META_PORTS
from portlink.errors import InvalidArgument, RuntimeFailure
from portlink.runtime import security
from portlink.reroute import AMBASSADOR_POLICY, DRAIN_DEADLINE, POLICIES

METRICS_PORT = 9102
RUN_DIR = "/run/secrets"   # where Docker and Compose hand secrets; never the daemon's /run/portlink
TOKEN_PATH = f"{RUN_DIR}/consul-token"   # its Consul token, a read-only file bind (runtime.token_files)
LABEL = "portlink.ambassador"      # marks ambassador containers (value: the service)
LINKERS_DIR = "linkers"            # a client side's linkers map and their tokens, in its container dir
LINKERS_PATH = f"{RUN_DIR}/linkers"   # ... bound read-only there (a directory: the map's renames are seen)
KEY_DIR = "/dev/shm/portlink-connect"   # TLS leaf files while OpenSSL loads them: the root is read-only, shm is memory
SERVER_PREFIX = "srv-"             # a server-side ambassador: srv-<served container>
TLS_WARM = 1                       # a client side's --tls-warm (README: Warm connections)
_IDENTITY = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")   # what a service identity may be named
REPO = Path(__file__).resolve().parents[1]
# A plaintext client side served by the host forwarder (runtime.host_forwarder): the
# container's own process only holds its namespace: portlink-pause (shim/pause.c, static
# musl, ~25 KiB of RSS), bound read-only at PAUSE_PATH (runtime.plan).
PAUSE_PATH = "/sbin/portlink-pause"
HOSTED_CMD = [PAUSE_PATH]
# What hosted ambassadors made before portlink-pause run (busybox sleep, ~1.4 MiB):
# their records still say so, and they are still hosted.
LEGACY_HOSTED_CMDS = (["sleep", "2147483647"],)


@dataclass(frozen=True)
class AmbassadorSpec:
    service: str
    ports: tuple[int, ...] = ()          # empty: every port the service's instances publish
    policy: str = AMBASSADOR_POLICY
    drain_deadline: float = DRAIN_DEADLINE
    # Secure links (set by the daemon): a client side dials over mutual TLS as
    # `identity`; a server side serves `service` to authorized clients, each
    # listener forwarding to a fixed backend ("PORT" -> "IP:PORT").
    identity: str | None = None
    backends: tuple[tuple[int, str], ...] = ()
    # A client side made for links refuses a client at no linker's address ("refuse");
    # one a person runs (a sidecar) dials such a client as its own identity ("own").
    unlinked: str = "own"

    @property
    def server_side(self) -> bool:
        return bool(self.backends)

    @classmethod
    def from_json(cls, data: object) -> "AmbassadorSpec":
        if not isinstance(data, dict):
            raise InvalidArgument("field 'ambassador' must be an object {service, ports, policy, drain_deadline}")
        unknown = sorted(set(data) - {"service", "ports", "policy", "drain_deadline", "identity", "backends",
                                      "unlinked"})
        if unknown:
            raise InvalidArgument(f"unknown field(s) in 'ambassador': {', '.join(unknown)}")
        service = data.get("service")
        if not isinstance(service, str) or not service or len(service) > 63 or not service.isascii() or \
                not all(c.isalnum() or c in "-_." for c in service):
            raise InvalidArgument(f"invalid ambassador service {service!r}: a Consul service name")
        ports = data.get("ports", [])
        if not isinstance(ports, list) or not all(parse.is_port(p) for p in ports):
            raise InvalidArgument(f"invalid ambassador ports {ports!r}: TCP port numbers")
        policy = data.get("policy", AMBASSADOR_POLICY)
        if policy not in POLICIES:
            raise InvalidArgument(f"invalid ambassador policy {policy!r}: "
                                  f"use {', '.join(POLICIES[:-1])} or {POLICIES[-1]}")
        deadline = data.get("drain_deadline", DRAIN_DEADLINE)
        if type(deadline) not in (int, float) or not 0 < deadline <= 3600:
            raise InvalidArgument(f"invalid ambassador drain deadline {deadline!r}: 0 to 3600 seconds")
        identity = data.get("identity")
        if identity is not None and not (isinstance(identity, str) and _IDENTITY.match(identity)):
            raise InvalidArgument(f"invalid ambassador identity {identity!r}: a Consul service identity name")
        backends = data.get("backends", {})
        if not isinstance(backends, dict) or not all(
                isinstance(k, str) and k.isdigit() and parse.is_port(int(k)) and isinstance(v, str)
                for k, v in backends.items()):
            raise InvalidArgument(f"invalid ambassador backends {backends!r}: {{\"PORT\": \"IP:PORT\"}}")
        for v in backends.values():
            try:
                parse.hostport("ambassador backend", v)
            except ValueError:
                raise InvalidArgument(f"invalid ambassador backend {v!r}: expected IP:PORT") from None
        if backends and identity:
            raise InvalidArgument("an ambassador is a server side (backends) or a client side (identity), not both")
        unlinked = data.get("unlinked", "own")
        if unlinked not in ("own", "refuse"):
            raise InvalidArgument(f"invalid ambassador unlinked {unlinked!r}: own or refuse")
        return cls(service, tuple(sorted(set(ports))), policy, float(deadline), identity,
                   tuple(sorted((int(k), v) for k, v in backends.items())), unlinked)

    def to_json(self) -> dict:
        out = {"service": self.service, "ports": list(self.ports), "policy": self.policy,
               "drain_deadline": self.drain_deadline}
        if self.identity:
            out["identity"] = self.identity
        if self.backends:
            out["backends"] = {str(p): b for p, b in self.backends}
        if self.unlinked != "own":
            out["unlinked"] = self.unlinked
        return out


def is_hosted(spec) -> bool:
    """An ambassador container whose forwarding is the host forwarder's (a ContainerSpec)."""
    return bool(spec.ambassador) and (list(spec.cmd) == HOSTED_CMD or list(spec.cmd) in LEGACY_HOSTED_CMDS)


def runs_pause(spec) -> bool:
    """A hosted ambassador made since portlink-pause (a ContainerSpec): it needs the binary bound."""
    return bool(spec.ambassador) and list(spec.cmd) == HOSTED_CMD


def hostable(spec: AmbassadorSpec) -> bool:
    """The host forwarder serves plaintext client sides; a secure one (an identity of
    its own, TLS keys) or a server side keeps a process of its own."""
    return not spec.identity and not spec.server_side


def ports_from_catalog(instances) -> list[int]:
    """The TCP ports a service's instances stand for: their portlink-port meta and
    the service's other ports their portlink-ports lists (registered a moment
    apart, they may not all be in the catalog yet); an instance registered by
    someone else stands for its own port."""
    ports = set()
    for i in instances:
        texts = [i.meta_get(META_PORT) or f"{i.port}/tcp", *filter(None, (i.meta_get(META_PORTS) or "").split(","))]
        for text in texts:
            try:
                ports.add(parse.port_proto("portlink-port", text, default=None, protos=("tcp",))[0])
            except ValueError:
                pass   # a udp port, or meta that does not parse
    return sorted(ports)


def runtime_binds() -> dict[str, str]:
    """What this host's Python and portlink need inside the container, read-only
    at the same paths (merged-/usr hosts: /lib and /lib64 live under /usr)."""
    binds = {"/usr": "/usr"}
    for lib in ("lib", "lib64"):
        if Path(f"/usr/{lib}").is_dir():
            binds[f"/{lib}"] = f"/usr/{lib}"
    for p in {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), REPO}:
        if not any(p.is_relative_to(Path(other)) and p != Path(other) for other in binds):
            binds[str(p)] = str(p)
    # An inner path already covered by an outer bind is dropped (one mount is enough).
    return {d: s for d, s in binds.items()
            if not any(d != o and d.startswith(o.rstrip("/") + "/") for o in binds if o != "/usr")}


def check_readable(binds: dict[str, str]) -> None:
    """The forwarder runs as an unprivileged user: each directory bound for it
    (Python, the venv, portlink's checkout) must be readable and searchable by
    others, as must the forwarder's own package."""
    need = [Path(src) for src in binds.values()] + [REPO / "ambassador", REPO / "ambassador" / "__main__.py"]
    for p in need:
        try:
            mode = p.stat().st_mode
        except OSError as e:
            raise RuntimeFailure(f"the ambassador needs {p}: {e.strerror}") from e
        want = (stat.S_IROTH | stat.S_IXOTH) if stat.S_ISDIR(mode) else stat.S_IROTH
        if mode & want != want:
            raise RuntimeFailure(f"the ambassador runs as uid {security.AMBASSADOR_UID} and cannot read {p} "
                                 f"(mode {stat.S_IMODE(mode):04o}): make it readable by others (chmod o+rX)")


def open_ancestors(rootfs: Path, dests: list[str]) -> None:
    """Lets the forwarder's user reach what is bound for it: each directory of the
    container's root on the way to a bind gets o+x, in this container's own
    layer (an overlay copy-up). The image's /root is 0700, and a pyenv Python
    lives under it. Directories runc creates are 0755; a symlink or a file on
    the way is never followed (runc refuses the mount then)."""
    for dest in dests:
        d = rootfs
        for part in Path(dest).parts[1:-1]:
            d = d / part
            try:
                st = os.lstat(d)
            except FileNotFoundError:
                break
            if not stat.S_ISDIR(st.st_mode):
                break
            if not st.st_mode & stat.S_IXOTH:
                os.chmod(d, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def command(spec: AmbassadorSpec, ports: list[int], consul_url: str) -> list[str]:
    argv = [str(Path(sys.prefix) / "bin" / "python"), "-P", "-m", "portlink.ambassador"]
    for p in ports:
        argv += ["--listen", str(p)]
    if spec.server_side:
        # "I actually talk to frontdb": mutual TLS in as the service, plaintext to the
        # served container over the local bridge.
        for p, b in spec.backends:
            argv += ["--backend", f"{p}={b}"]
        return argv + ["--tls-serve", spec.service, "--tls-keys", KEY_DIR, "--consul", consul_url, "--policy", spec.policy,
                       "--drain-deadline", f"{spec.drain_deadline:g}", "--metrics", f"0.0.0.0:{METRICS_PORT}"]
    argv += ["--service", spec.service, "--consul", consul_url, "--policy", spec.policy,
             "--drain-deadline", f"{spec.drain_deadline:g}", "--metrics", f"0.0.0.0:{METRICS_PORT}"]
    if spec.identity:
        # Follows the service's Connect instances; each linker dials as itself (the map), over
        # a warm link per server side and identity, reused client after client
        # (ambassador/link.py): connect-per-request and reroutes skip most handshakes.
        argv += ["--tls-warm", str(TLS_WARM), "--tls-dial", spec.identity, "--tls-keys", KEY_DIR,
                 "--tls-linkers", LINKERS_PATH]
        if spec.unlinked == "refuse":
            argv += ["--tls-unlinked", "refuse"]
    return argv


def identity_name(ambassador: str, host_id: str) -> str:
    """A client-side ambassador's Connect identity: its name and this host's id,
    so the same ambassador name on two hosts is two identities (and two intentions).
    A DNS label of at most 63 characters, as Consul's service identities need."""
    head = re.sub(r"[^a-z0-9-]", "-", ambassador.lower()).strip("-")[:63 - len(host_id) - 1].strip("-")
    return f"{head or 'amb'}-{host_id}"


def server_name(served: str) -> str:
    """The server-side ambassador of a container ("I actually talk to frontdb")."""
    return f"{SERVER_PREFIX}{served}"[:63].rstrip("-_.")


def container_name(service: str, network: str) -> str:
    """The shared ambassador for a service on a network (cross-host links reuse it)."""
    return f"amb-{service}-{network}"[:63].rstrip("-_.")
