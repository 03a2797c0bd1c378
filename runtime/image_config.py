"""An image's configuration (pure): what a container of it runs by default.

`ImageConfig` is what the store keeps in image.json; `from_docker` reads the
"config" object of a Docker / OCI image config (Env, Entrypoint, Cmd, WorkingDir,
User, ExposedPorts, Volumes, Labels, StopSignal, Healthcheck), checking every
value that reaches the OCI process, since the archive is untrusted input;
`to_docker` writes it back for `save`. `process_args` is Docker's precedence of
Entrypoint and Cmd."""

from __future__ import annotations

import posixpath
import signal
from dataclasses import dataclass, field

from portlink.errors import InvalidArgument, InvalidValue
from portlink.runtime import ports as portspec
from portlink.runtime import validate

MAX_ITEMS = 1024            # env entries, ports, volumes, labels of one image


@dataclass(frozen=True)
class ImageConfig:
    cmd: list[str]
    env: list[str]
    workdir: str = "/"
    exposed: list[str] = field(default_factory=list)          # "80/tcp", like --expose
    # From an image archive's config (all optional: an old image.json has none of them).
    entrypoint: list[str] = field(default_factory=list)
    user: str = ""                                            # "postgres", "999:999"
    volumes: list[str] = field(default_factory=list)          # container paths (anonymous volumes)
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = ""                                     # "": SIGTERM
    healthcheck: dict | None = None                           # Docker's Healthcheck object, as given

    @classmethod
    def stored(cls, c: dict) -> "ImageConfig":
        """From image.json: today's fields and the four of images imported before them."""
        return cls(cmd=list(c["cmd"]), env=list(c["env"]), workdir=c["workdir"], exposed=list(c["exposed"]),
                   entrypoint=list(c.get("entrypoint") or []), user=str(c.get("user") or ""),
                   volumes=list(c.get("volumes") or []), labels=dict(c.get("labels") or {}),
                   stop_signal=str(c.get("stop_signal") or ""), healthcheck=c.get("healthcheck"))


def process_args(config: ImageConfig, entrypoint: list[str] | None, cmd: list[str]) -> tuple[list[str], list[str]]:
    """Docker's rule: the entrypoint is `--entrypoint` (None: not given) or the
    image's; the command is the user's, else the image's Cmd, except that giving
    --entrypoint drops the image's Cmd. Returns (entrypoint, cmd); the process runs
    entrypoint + cmd."""
    if entrypoint is not None:
        return list(entrypoint), list(cmd)
    return list(config.entrypoint), list(cmd or config.cmd)


def signal_name(value: str) -> str:
    """A StopSignal as a signal name ("SIGQUIT"); numbers and names without SIG are accepted."""
    text = value.strip().upper()
    if text.isdigit():
        try:
            return signal.Signals(int(text)).name
        except ValueError:
            pass
    else:
        name = text if text.startswith("SIG") else "SIG" + text
        if name in signal.Signals.__members__:
            return name
    raise InvalidArgument(f"invalid stop signal {value!r}: use a signal name like SIGTERM or a number")


def from_docker(doc: dict) -> tuple[ImageConfig, list[str]]:
    """The image config object of an archive (its top-level JSON) -> ImageConfig and
    warnings (entries portlink cannot use and leaves out). InvalidArgument names the
    field when a value would reach the container's process malformed."""
    if not isinstance(doc, dict):
        raise InvalidArgument("the image config is not a JSON object")
    c = doc.get("config") or doc.get("Config") or {}
    if not isinstance(c, dict):
        raise InvalidArgument("the image config's 'config' is not a JSON object")
    warnings: list[str] = []
    try:
        env = _strings(c, "Env")
        for e in env:
            validate.env_entry(e)
        entrypoint, cmd = _argv(c, "Entrypoint"), _argv(c, "Cmd")
        workdir = _string(c, "WorkingDir") or "/"
        workdir = posixpath.normpath(workdir if workdir.startswith("/") else "/" + workdir)  # Docker makes it absolute
        validate.abs_path("WorkingDir", workdir)
        user = _string(c, "User")
        if any(ch in user for ch in "\0\n/") or len(user) > 256:
            raise InvalidArgument(f"invalid User {user!r}")
        exposed: list[str] = []
        for key in _keys(c, "ExposedPorts"):
            try:
                exposed += portspec.parse_expose(key)
            except (InvalidArgument, InvalidValue):
                warnings.append(f"exposed port {key!r} is not supported (tcp or udp ports only); left out")
        volumes = []
        for key in _keys(c, "Volumes"):
            path = posixpath.normpath(key) if key.startswith("/") else ""
            if not path or path == "/" or "\0" in key:
                raise InvalidArgument(f"invalid Volumes entry {key!r}: an absolute path below /")
            volumes.append(path)
        labels = c.get("Labels") or {}
        if not isinstance(labels, dict) or len(labels) > MAX_ITEMS:
            raise InvalidArgument("invalid Labels: an object of at most 1024 strings")
        for k, v in labels.items():
            validate.label(k, v)
        stop = _string(c, "StopSignal")
        stop = signal_name(stop) if stop else ""
        health = c.get("Healthcheck")
        if health is not None:
            health = _healthcheck(health)
    except InvalidValue as e:
        raise InvalidArgument(str(e)) from None
    except InvalidArgument as e:
        raise InvalidArgument(f"image config: {e}") from None
    return ImageConfig(cmd=cmd, env=env, workdir=workdir, exposed=sorted(set(exposed)), entrypoint=entrypoint,
                       user=user, volumes=sorted(set(volumes)), labels=dict(labels), stop_signal=stop,
                       healthcheck=health), warnings


def to_docker(config: ImageConfig, created: str, diff_ids: list[str], arch: str) -> dict:
    """A Docker / OCI image config for `save` (the inverse of from_docker)."""
    c: dict = {"Env": list(config.env), "Cmd": list(config.cmd) or None, "WorkingDir": config.workdir,
               "Entrypoint": list(config.entrypoint) or None, "User": config.user,
               "ExposedPorts": {p: {} for p in config.exposed} or None,
               "Volumes": {v: {} for v in config.volumes} or None, "Labels": dict(config.labels) or None}
    if config.stop_signal:
        c["StopSignal"] = config.stop_signal
    if config.healthcheck is not None:
        c["Healthcheck"] = config.healthcheck
    return {"architecture": arch, "os": "linux", "created": created,
            "config": {k: v for k, v in c.items() if v is not None},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": created, "created_by": "portlink save"}]}


def _string(c: dict, key: str) -> str:
    v = c.get(key) or ""
    if not isinstance(v, str):
        raise InvalidArgument(f"{key} must be a string")
    return v


def _strings(c: dict, key: str) -> list[str]:
    v = c.get(key) or []
    if not isinstance(v, list) or len(v) > MAX_ITEMS or not all(isinstance(x, str) for x in v):
        raise InvalidArgument(f"{key} must be a list of at most {MAX_ITEMS} strings")
    return list(v)


def _argv(c: dict, key: str) -> list[str]:
    v = _strings(c, key)      # a builder writes the shell form as ["/bin/sh", "-c", "..."] itself
    if any("\0" in a for a in v):
        raise InvalidArgument(f"{key} contains a NUL byte")
    return v


def _keys(c: dict, key: str) -> list[str]:
    v = c.get(key) or {}
    if not isinstance(v, dict) or len(v) > MAX_ITEMS or not all(isinstance(k, str) for k in v):
        raise InvalidArgument(f"{key} must be an object of at most {MAX_ITEMS} entries")
    return list(v)


_HEALTH_DURATIONS = ("Interval", "Timeout", "StartPeriod", "StartInterval")


def _healthcheck(h) -> dict:
    """Docker's Healthcheck: Test (["NONE"], ["CMD", ...], ["CMD-SHELL", "..."]),
    durations in nanoseconds, Retries. Kept as given once its shape is right."""
    if not isinstance(h, dict):
        raise InvalidArgument("Healthcheck must be an object")
    out: dict = {}
    test = _strings(h, "Test")
    if test and test[0] not in ("NONE", "CMD", "CMD-SHELL"):
        raise InvalidArgument(f"Healthcheck Test must start with NONE, CMD or CMD-SHELL, not {test[0]!r}")
    if test:
        out["Test"] = test
    for key in (*_HEALTH_DURATIONS, "Retries"):
        v = h.get(key)
        if v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 62:
            raise InvalidArgument(f"Healthcheck {key} must be a non-negative integer")
        out[key] = v
    return out
