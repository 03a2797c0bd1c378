"""The plan of a container start, as a pure function: the stored record, its
image, its lease and the containers it can see -> what to create (endpoint,
port mappings, file texts, the OCI config). Nothing here touches the kernel,
the store or a file, so every detail of a start is tested without root."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, ip_address
from pathlib import Path

from portlink.catalog.acl import TOKEN_ENV
from portlink.netns import names
from portlink.netns.model import Endpoint, LinkFlow, NetworkSpec, PortMapping
from portlink.runtime import ambassadors, discovery, oci, seccomp, security, validate, volspec
from portlink.runtime import links as linkspec
from portlink.runtime.discovery import Seen
from portlink.catalog import services as registration
from portlink.runtime.image_config import process_args
from portlink.runtime.images import Image, ImageConfig, read_image_file
from portlink.runtime.records import Container

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INIT_PATH = "/sbin/docker-init"     # where Docker puts its init (tini) in a container run with --init


@dataclass(frozen=True)
class Layout:
    """Where a host keeps each container's things."""

    state_dir: Path
    # The daemon's root as runc sees it from the launch namespace (/proc/PID/root:
    # the netns files are not there, runtime.launch_ns); empty: runc runs beside us.
    via_daemon_root: str = ""

    @property
    def containers(self) -> Path:
        return self.state_dir / "containers"

    @property
    def netns_dir(self) -> Path:
        return self.state_dir / names.NETNS_DIR

    @property
    def runc_root(self) -> Path:
        return self.state_dir / "runc"

    def cdir(self, cid: str) -> Path:
        return self.containers / cid

    def netns_path(self, cid: str) -> str:
        return str(self.netns_dir / (names.NETNS_PREFIX + cid[:12]))

    def runc_netns_path(self, cid: str) -> str:
        """The netns file as the container's config names it to runc."""
        return self.via_daemon_root + self.netns_path(cid)

    # volumes (runtime.volumes): Docker's shape, <name>/_data, under portlink's prefix
    @property
    def volumes(self) -> Path:
        return self.state_dir / "volumes"

    def volume_dir(self, name: str) -> Path:
        return self.volumes / (names.VOLUME_PREFIX + name)

    def volume_data(self, name: str) -> Path:
        return self.volume_dir(name) / "_data"

    @staticmethod
    def cgroups_path(cid: str) -> str:
        """runc's cgroupsPath: under each cgroup mount (cgroupfs manager)."""
        return f"/portlink/{cid}"


@dataclass(frozen=True)
class PortRow:
    """A host port reserved for a container (a row of the ports table)."""

    proto: str
    host_port: int
    container_port: int
    host_ip: str = ""


@dataclass(frozen=True)
class StartPlan:
    seen: Seen                                  # the container as name resolution sees it
    endpoint: Endpoint | None                   # None: network 'none', loopback only
    mappings: list[PortMapping]
    files: dict[str, tuple[str, str]]           # container path -> (file in the container dir, text)
    config: dict                                # the OCI config.json
    link_env: list[str] = field(default_factory=list)
    link_flows: list[LinkFlow] = field(default_factory=list)   # icc off: what its links open


def seen_of(c: Container, image_env: list[str], ip: str | None) -> Seen:
    spec = c.spec
    return Seen(id=c.id, name=spec.name, hostname=spec.hostname, network=spec.network, ip=ip,
                aliases=tuple(spec.aliases), exposed=tuple(c.exposed), env=(*image_env, *spec.env),
                links=tuple(linkspec.parse_link(x) for x in spec.links), dns=tuple(spec.dns),
                extra_hosts=tuple(spec.add_hosts))


def endpoint(layout: Layout, cid: str, net: NetworkSpec, ip: IPv4Address) -> Endpoint:
    return Endpoint(container_id=cid, netns_path=layout.netns_path(cid), network=net,
                    address=ip, host_ifname=names.veth_name(cid))


def resolve_user(user: str, image: Image) -> tuple[int, int]:
    """--user as uid and gid, looked up in the image's own passwd and group (read
    inside its root: an etc/passwd symlinked to /etc/shadow reads nothing of the host's)."""
    if not user:
        return 0, 0
    read = lambda p: read_image_file(image.rootfs, p)
    return validate.parse_user(user, read("etc/passwd"), read("etc/group"))


# -- the image's config on a container (runtime/image_config.py) ------------------------


def apply_image_config(spec, config: ImageConfig) -> None:
    """What the image gives a container that `run` left open, written into its spec
    once, at create (as Docker's container config shows it): the entrypoint and
    command (Docker's precedence), the user, the stop signal, and the image's labels
    under the user's. Labels in portlink's namespace (portlink.service, ...) decide
    Consul registration: only the person running the container sets those."""
    spec.entrypoint, spec.cmd = process_args(config, spec.entrypoint, spec.cmd)
    spec.user = spec.user or config.user
    spec.stop_signal = spec.stop_signal or config.stop_signal
    spec.labels = {**{k: v for k, v in config.labels.items() if not k.startswith(registration.LABEL)},
                   **spec.labels}


def process(c: Container, config: ImageConfig, ids: tuple[int, int], link_env: list[str] = (),
            files: dict[str, str] | None = None, token_file: str | None = None,
            init_binary: str | None = None, pause_binary: str | None = None) -> oci.ProcessSpec:
    """`token_file`: an ambassador's Consul token on the host, bound read-only at
    ambassadors.TOKEN_PATH; the environment names the path, never the secret.
    `init_binary`: with --init, the host's static tini, bound read-only at INIT_PATH
    and run as PID 1 with the command after `--` (Docker's docker-init).
    `pause_binary`: for a hosted ambassador (its command ambassadors.HOSTED_CMD), the
    host's static portlink-pause, bound read-only at ambassadors.PAUSE_PATH the same way."""
    spec = c.spec
    # Docker's order: PATH and HOSTNAME, the link variables, then the image's and the
    # user's entries replacing or appending (so -e overrides a link variable).
    base = [PATH_ENV, f"HOSTNAME={spec.hostname}"]
    env = linkspec.merge_env(base, list(link_env), [*config.env, *spec.env])
    ro_binds: dict[str, str] = {}
    ro_files: dict[str, str] = {}
    if spec.ambassador:
        env += ["PYTHONDONTWRITEBYTECODE=1"]
        ids = (security.AMBASSADOR_UID, security.AMBASSADOR_GID)
        ro_binds = ambassadors.runtime_binds()
        if token_file:
            env += [f"{TOKEN_ENV}={ambassadors.TOKEN_PATH}"]
            ro_files[ambassadors.TOKEN_PATH] = token_file
            if spec.ambassador.get("identity"):
                # A client side's linkers map and their tokens, beside its own token (runtime.linker_identity).
                ro_binds[ambassadors.LINKERS_PATH] = str(Path(token_file).with_name(ambassadors.LINKERS_DIR))
    if ambassadors.runs_pause(spec):
        if not pause_binary:
            raise ValueError("a hosted ambassador needs portlink-pause's host path")
        ro_files[ambassadors.PAUSE_PATH] = pause_binary
    args = [*(spec.entrypoint or []), *spec.cmd]      # Docker's ENTRYPOINT + CMD (apply_image_config)
    if spec.init:
        if not init_binary:
            raise ValueError("--init needs the init binary's host path")
        ro_files[INIT_PATH] = init_binary
        args = [INIT_PATH, "--", *args]
    return oci.ProcessSpec(args=args, env=env, cwd=spec.workdir or config.workdir or "/",
                           uid=ids[0], gid=ids[1], hostname=spec.hostname, files=files or {},
                           ro_binds=ro_binds, ro_files=ro_files)


def confinement(c: Container, profile: dict | None, machine: seccomp.Machine | None) -> oci.Confinement:
    """Capabilities from --cap-add/--cap-drop; the seccomp profile (None: unconfined)
    resolved for them and this machine; ping without CAP_NET_RAW. An ambassador:
    no capabilities, low ports without one, a read-only root; a hosted one's pause
    no /sys or /dev/mqueue."""
    amb = bool(c.spec.ambassador)
    caps = [] if amb else security.capabilities(c.spec.cap_add, c.spec.cap_drop)
    rules = seccomp.convert(profile, caps, machine or seccomp.this_machine()) if profile is not None else None
    sysctl = security.AMBASSADOR_SYSCTL if amb else security.PING_SYSCTL
    return oci.Confinement(caps=caps, seccomp=rules, sysctl=dict(sysctl), readonly_root=amb,
                           system_fs=not ambassadors.runs_pause(c.spec))


def mappings(ports: list[PortRow], ip: IPv4Address) -> list[PortMapping]:
    return [PortMapping(p.proto, p.host_port, ip, p.container_port, ip_address(p.host_ip) if p.host_ip else None)
            for p in sorted(ports, key=lambda p: (p.proto, p.host_port))]


def mount_source(m: volspec.Mount, layout: Layout) -> str | None:
    """A mount's directory on the host: a volume's data dir, a bind's path; None: a tmpfs."""
    if m.type == volspec.VOLUME:
        return str(layout.volume_data(m.source))
    return m.source if m.type == volspec.BIND else None


def user_mounts(c: Container, layout: Layout, targets: dict[str, str] | None) -> list[dict]:
    """The container's volumes, binds and tmpfs as OCI mounts, parents first;
    `targets`: where each lands, resolved in its rootfs (runtime.mount_paths)."""
    targets = targets or {}
    return [volspec.oci_mount(m, mount_source(m, layout) or "", targets.get(m.target, m.target))
            for m in c.mounts]


def plan_start(c: Container, config: ImageConfig, ids: tuple[int, int], layout: Layout,
               net: NetworkSpec | None, ip: IPv4Address | None, ports: list[PortRow],
               peers: dict[str, Seen], default_dns: list[str],
               profile: dict | None = None, machine: seccomp.Machine | None = None,
               token_file: str | None = None, mount_targets: dict[str, str] | None = None,
               init_binary: str | None = None, pause_binary: str | None = None) -> StartPlan:
    """`peers`: the running containers by name, as name resolution sees them.
    `profile`: the seccomp profile as read from its file (None: unconfined).
    `token_file`: an ambassador's Consul token file (runtime.token_files).
    `mount_targets`: the container's mount targets resolved in its rootfs.
    `init_binary`: the host's tini-static, for --init (runtime.lifecycle finds it).
    `pause_binary`: the host's portlink-pause, for a hosted ambassador (likewise)."""
    cdir = layout.cdir(c.id)
    me = seen_of(c, config.env, str(ip) if ip is not None else None)
    link_env = [v for link, child in discovery.resolve_links(me, peers) if child is not None
                for v in linkspec.link_env(c.spec.name, link.alias, child.linked())]
    gateway = str(net.gateway) if ip is not None and net is not None else None
    texts = {
        "/etc/hosts": ("hosts", discovery.hosts_file(me, peers, gateway)),
        "/etc/resolv.conf": ("resolv.conf", discovery.resolv_conf(
            gateway, c.spec.dns or default_dns, c.spec.dns_search, c.spec.dns_options)),
        "/etc/hostname": ("hostname", c.spec.hostname + "\n"),
    }
    binds = {dest: str(cdir / fname) for dest, (fname, _) in texts.items()}
    proc = process(c, config, ids, link_env, binds, token_file, init_binary, pause_binary)
    ns = layout.runc_netns_path(c.id)
    ep = endpoint(layout, c.id, net, ip) if net is not None and ip is not None else None
    return StartPlan(seen=me, endpoint=ep, mappings=mappings(ports, ip) if ep else [], files=texts,
                     config=oci.build_config(proc, str(cdir / "rootfs"), ns, layout.cgroups_path(c.id),
                                             confinement(c, profile, machine), c.spec.parsed_limits(),
                                             user_mounts(c, layout, mount_targets)),
                     link_env=link_env,
                     link_flows=discovery.link_flows(me, peers) if ep is not None and not net.icc else [])
