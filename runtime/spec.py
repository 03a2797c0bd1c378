"""What a user asks for when they run a container, checked once (pure).

`ContainerSpec.from_json` checks the shape (types, unknown fields) and every
value that needs no state: names, env, --dns, labels, log options, -p/--expose
and --link syntax; `Request.parse` the limits too (against the daemon's own hard
rlimits and CPUs). `Request` is the checked spec with its parsed parts, so the
runtime never parses or validates the same text twice. What needs the state
(the image, the network, the link targets) is checked by the plan."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from portlink.catalog import services as registration
from portlink.errors import InvalidArgument
from portlink.runtime import ambassadors, health, hostopts, logfmt, restart_policy, security, validate, volspec
from portlink.runtime import limits as limitspec
from portlink.runtime import links as linkspec
from portlink.runtime import ports as portspec
from portlink.runtime.image_config import signal_name
from portlink.runtime.images import check_name as check_image_name
from portlink.runtime.networks import DEFAULT_NETWORK, NO_NETWORK

_LISTS = ("cmd", "env", "publish", "expose", "dns", "links", "aliases", "add_hosts", "dns_search", "dns_options")
_STRINGS = ("image", "name", "network", "hostname", "workdir", "user", "stop_signal")


@dataclass
class ContainerSpec:
    """What the user asked for; stored as JSON. Unknown fields are rejected."""

    image: str
    name: str = ""
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    publish: list[str] = field(default_factory=list)
    expose: list[str] = field(default_factory=list)
    network: str = DEFAULT_NETWORK
    hostname: str = ""
    dns: list[str] = field(default_factory=list)
    workdir: str = ""
    user: str = ""
    rm: bool = False
    tty: bool = False                                   # -t: a pty, held by the container's monitor
    interactive: bool = False                           # -i: stdin kept open for attach clients
    # limits (runtime/limits.py, Docker's flags), checked by parsed_limits
    pids_limit: int | None = None                       # --pids-limit; None: 2048; 0 or -1: unlimited
    memory: str | int = ""                              # --memory 512m (or bytes); "": no limit
    memory_swap: str | int = ""                         # --memory-swap: memory plus swap; -1: unlimited swap
    cpus: float = 0                                     # --cpus 0.5; 0: no limit
    ulimits: list[str] = field(default_factory=list)    # --ulimit nofile=1024:2048
    labels: dict[str, str] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)      # --link name[:alias]
    aliases: list[str] = field(default_factory=list)    # --network-alias: more DNS names
    ambassador: dict = field(default_factory=dict)      # {service, ports, policy, drain_deadline}
    log_opts: dict = field(default_factory=dict)        # --log-opt max-size=10m / max-file=3 (over the daemon's)
    # confinement (runtime.security)
    security_opt: list[str] = field(default_factory=list)   # seccomp=unconfined|PATH, no-new-privileges
    cap_add: list[str] = field(default_factory=list)        # NET_RAW, CAP_SYS_ADMIN, ALL
    cap_drop: list[str] = field(default_factory=list)
    # volumes and mounts (runtime.volspec); resolved at create into the record's mounts
    volumes: list[str] = field(default_factory=list)        # -v [NAME:|/HOST:]/PATH[:ro]
    mounts: list[str] = field(default_factory=list)         # --mount type=volume|bind|tmpfs,...
    tmpfs: list[str] = field(default_factory=list)          # --tmpfs /PATH[:OPTIONS]
    volumes_from: list[str] = field(default_factory=list)   # --volumes-from CONTAINER[:ro|:rw]
    # the image's config (runtime/image_config.py): None / "" take the image's
    entrypoint: list[str] | None = None                 # --entrypoint; [] clears the image's
    stop_signal: str = ""                               # --stop-signal SIGQUIT
    # health checks (runtime/health.py): "" / None take the image's HEALTHCHECK or Docker's defaults
    health_cmd: str = ""                                # --health-cmd, run with /bin/sh -c
    health_interval: str = ""                           # --health-interval 30s
    health_timeout: str = ""                            # --health-timeout 30s
    health_retries: int | None = None                   # --health-retries 3
    health_start_period: str = ""                       # --health-start-period 0s
    no_healthcheck: bool = False                        # --no-healthcheck: none, not even the image's
    # restart policy (runtime.restart_policy)
    restart: str = ""                                   # --restart no|on-failure[:N]|always|unless-stopped
    # Docker's remaining run flags (runtime.hostopts)
    add_hosts: list[str] = field(default_factory=list)     # --add-host NAME:IP|host-gateway
    dns_search: list[str] = field(default_factory=list)    # --dns-search DOMAIN ('.': none)
    dns_options: list[str] = field(default_factory=list)   # --dns-option ndots:2
    init: bool = False                                     # --init: tini as PID 1 (/sbin/docker-init)

    @classmethod
    def from_json(cls, data: dict) -> "ContainerSpec":
        if not isinstance(data, dict):
            raise InvalidArgument("the container spec must be a JSON object")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise InvalidArgument(f"unknown field(s) in the container spec: {', '.join(unknown)}")
        if "image" not in data:
            raise InvalidArgument("no image given")
        spec = cls(**data)
        for f in _LISTS:
            v = getattr(spec, f)
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise InvalidArgument(f"field {f!r} must be a list of strings")
        if not isinstance(spec.labels, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in spec.labels.items()):
            raise InvalidArgument("field 'labels' must map strings to strings")
        if spec.ambassador:
            ambassadors.AmbassadorSpec.from_json(spec.ambassador)
        for f in ("rm", "tty", "interactive"):
            if not isinstance(getattr(spec, f), bool):
                raise InvalidArgument(f"field {f!r} must be true or false")
        for f in _STRINGS:
            if not isinstance(getattr(spec, f), str):
                raise InvalidArgument(f"field {f!r} must be a string")
        spec._check_confinement()
        spec._check_values()
        spec._check_mount_fields()
        spec._check_image_config()
        spec._check_health()
        spec._check_restart()
        spec._check_host_opts()
        return spec

    @classmethod
    def stored(cls, data: dict) -> "ContainerSpec":
        """A spec read back from the state: it was checked when it was stored."""
        return cls(**data)

    def _check_values(self) -> None:
        """Values, before anything is made: every message names the field."""
        self.image = check_image_name(self.image)     # canonical: "redis:latest" is "redis"
        if self.name:
            validate.name("container", self.name)
        validate.network_ref(self.network)
        if self.hostname:
            validate.hostname(self.hostname)
        if self.workdir:
            validate.abs_path("workdir", self.workdir)
        validate.argv("cmd", self.cmd)
        for e in self.env:
            validate.env_entry(e)
        for d in self.dns:
            validate.ip("--dns", d)
        for a in self.aliases:
            validate.name("network alias", a)
        for k, v in self.labels.items():
            validate.label(k, v)
        logfmt.parse_log_opts(self.log_opts)

    def _check_image_config(self) -> None:
        if self.entrypoint is not None:
            if not isinstance(self.entrypoint, list) or not all(isinstance(x, str) for x in self.entrypoint):
                raise InvalidArgument("field 'entrypoint' must be a list of strings (or null: the image's)")
            validate.argv("entrypoint", self.entrypoint)
        if self.stop_signal:
            self.stop_signal = signal_name(self.stop_signal)

    def _check_health(self) -> None:
        for f in ("health_interval", "health_timeout", "health_start_period"):
            if not isinstance(getattr(self, f), str):
                raise InvalidArgument(f"field {f!r} must be a string")
        if not isinstance(self.no_healthcheck, bool):
            raise InvalidArgument("field 'no_healthcheck' must be true or false")
        health.check_flags(self.health_cmd, self.health_interval, self.health_timeout, self.health_retries,
                           self.health_start_period, self.no_healthcheck)
    def _check_host_opts(self) -> None:
        """--add-host, --dns-search, --dns-option, --init: Docker's checks (runtime.hostopts)."""
        for h in self.add_hosts:
            if hostopts.parse_add_host(h)[1] == hostopts.HOST_GATEWAY and self.network == NO_NETWORK:
                raise InvalidArgument(f"invalid --add-host {h!r}: a container on network 'none' has no gateway")
        self.dns_search = [hostopts.check_dns_search(d) for d in self.dns_search]
        for o in self.dns_options:
            hostopts.check_dns_option(o)
        if not isinstance(self.init, bool):
            raise InvalidArgument("field 'init' must be true or false")
        if self.init and self.ambassador:
            raise InvalidArgument("an ambassador runs its own process as PID 1: give no --init")

    # restart policy ----------------------------------------------------------------
    def _check_restart(self) -> None:
        policy = restart_policy.parse(self.restart)
        self.restart = "" if policy.name == restart_policy.NO else policy.text
        if self.restart and self.rm:
            raise InvalidArgument("--restart and --rm conflict: a container removed when it exits "
                                  "cannot be restarted (drop one of them)")
        if self.restart and self.ambassador:
            raise InvalidArgument("an ambassador is restarted by portlink already: give no --restart")

    @property
    def restart_policy(self) -> restart_policy.Policy:
        return restart_policy.parse(self.restart)

    def _check_confinement(self) -> None:
        for f in ("security_opt", "cap_add", "cap_drop"):
            v = getattr(self, f)
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise InvalidArgument(f"field {f!r} must be a list of strings")
        security.parse_security_opts(self.security_opt)
        security.check_caps(self.cap_add, self.cap_drop)

    def _check_mount_fields(self) -> None:
        for f in ("volumes", "mounts", "tmpfs", "volumes_from"):
            v = getattr(self, f)
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise InvalidArgument(f"field {f!r} must be a list of strings")
        if self.ambassador and (self.volumes or self.mounts or self.tmpfs or self.volumes_from):
            raise InvalidArgument("an ambassador takes no volumes or mounts")

    def parsed_limits(self, bounds: limitspec.HostBounds | None = None) -> limitspec.Limits:
        """The limits; `bounds` None: a stored spec, checked against the host when it was stored."""
        return limitspec.parse_limits(self.pids_limit, self.memory, self.memory_swap, self.cpus, self.ulimits, bounds)


@dataclass
class Request:
    """A checked spec and its parsed parts."""

    spec: ContainerSpec
    publish: list[portspec.PortRequest]
    expose: list[str]                          # from --expose and -p, "80/tcp"
    links: list[linkspec.LinkRequest]
    limits: limitspec.Limits
    # volumes and mounts: parsed here, resolved against the state by lifecycle.check_mounts
    mounts: list[volspec.Mount] = field(default_factory=list)
    volumes_from: list[volspec.VolumesFrom] = field(default_factory=list)
    resolved_mounts: tuple[volspec.Mount, ...] = ()

    @classmethod
    def parse(cls, data: dict) -> "Request":
        spec = ContainerSpec.from_json(data)
        publish = [r for p in spec.publish for r in portspec.parse_publish(p)]
        portspec.check_conflicts(publish)
        expose = sorted({e for x in spec.expose for e in portspec.parse_expose(x)} | {r.key() for r in publish})
        links = [linkspec.parse_link(x) for x in spec.links]
        linkspec.check_links(links)
        registration.validate_labels(spec.labels)
        limits = spec.parsed_limits(limitspec.host_bounds())
        if spec.network == NO_NETWORK:
            if publish:
                raise InvalidArgument("cannot publish ports of a container on network 'none'")
            if links:
                raise InvalidArgument("--link needs a network: a container on network 'none' cannot reach another")
        req = cls(spec, publish, expose, links, limits)
        req.mounts = volspec.parse_all(spec.volumes, spec.mounts, spec.tmpfs)
        req.volumes_from = [volspec.parse_volumes_from(x) for x in spec.volumes_from]
        return req
