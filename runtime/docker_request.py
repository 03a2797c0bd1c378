"""Docker's `POST /containers/create` body (Config + HostConfig +
NetworkingConfig) as portlink's run request (runtime.spec's JSON). Pure.

Only the shape is translated here: every value is checked once, by
ContainerSpec/Request, as for portlink's own API. A field portlink has no
equivalent for is refused (DockerUnsupported, 501) unless it holds its zero
value, which Docker's clients send for every flag not given: never a silent no-op."""

from __future__ import annotations

import shlex

from portlink.errors import InvalidArgument, PortlinkError
from portlink.runtime.networks import DEFAULT_NETWORK, NO_NETWORK


class DockerUnsupported(PortlinkError):
    """A Docker feature portlink does not have (501 Not Implemented)."""

    status = 501


# Config keys translated, and those that only steer the client (attach before start).
_CONFIG = {"Image", "Cmd", "Entrypoint", "Env", "ExposedPorts", "Labels", "WorkingDir", "User",
           "Healthcheck", "Hostname", "StopSignal", "Volumes", "Tty", "OpenStdin"}
_CONFIG_CLIENT = {"AttachStdin", "AttachStdout", "AttachStderr", "StdinOnce", "ArgsEscaped"}
_HOST = {"Binds", "Mounts", "Links", "PortBindings", "PublishAllPorts", "RestartPolicy", "Dns", "NetworkMode",
         "Memory", "MemorySwap", "NanoCpus", "PidsLimit", "Ulimits", "CapAdd", "CapDrop", "SecurityOpt",
         "Tmpfs", "VolumesFrom", "AutoRemove", "LogConfig", "ExtraHosts", "DnsSearch", "DnsOptions", "Init"}
# Zero values that are not falsy: what clients send for "not given".
_ZERO = {("HostConfig", "ConsoleSize"): [0, 0], ("HostConfig", "MemorySwappiness"): -1,
         ("HostConfig", "CgroupnsMode"): "private", ("HostConfig", "IpcMode"): "private",
         ("HostConfig", "Isolation"): "default", ("HostConfig", "OomKillDisable"): False}
LOG_DRIVERS = ("", "json-file", "local", "k8s-file")   # portlink keeps one kind of log: these mean it


def refuse_unsupported(obj: dict, known: set[str], where: str) -> None:
    for k, v in obj.items():
        if k in known or not v or _ZERO.get((where, k)) == v:
            continue
        raise DockerUnsupported(f"{where}.{k} is not supported by portlink (given {v!r})")


def _obj(v, what: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return v


def _strs(v, what: str) -> list[str]:
    """A list of strings; null is empty; a string is one item (Docker's old forms)."""
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise InvalidArgument(f"{what} must be a list of strings")
    return v


def network_name(mode: str) -> str:
    """HostConfig.NetworkMode: Docker's default bridge is portlink's default network."""
    if mode in ("", "default", "bridge"):
        return DEFAULT_NETWORK
    if mode == "host" or mode.startswith("container:"):
        raise DockerUnsupported(f"network mode {mode!r} is not supported by portlink: each container has "
                                "its own network namespace")
    return mode


def link(text: str) -> str:
    """A link as Docker's clients send it ("db:sql", "/db:/web/sql") as portlink's name:alias."""
    name, _, alias = text.partition(":")
    name = name.lstrip("/")
    alias = alias.rsplit("/", 1)[-1]
    return f"{name}:{alias}" if alias else name


def publish(bindings: dict) -> list[str]:
    """HostConfig.PortBindings {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]} as -p specs."""
    out = []
    for port, binds in _obj(bindings, "HostConfig.PortBindings").items():
        for b in binds or [{}]:
            b = _obj(b, f"HostConfig.PortBindings[{port!r}]")
            ip, hport = b.get("HostIp") or "", b.get("HostPort") or ""
            if not isinstance(ip, str) or not isinstance(hport, str):
                raise InvalidArgument(f"HostConfig.PortBindings[{port!r}]: HostIp and HostPort are strings")
            out.append(f"{ip}:{hport}:{port}" if ip else f"{hport}:{port}" if hport else port)
    return out


def mount(m: dict) -> str:
    """HostConfig.Mounts[i] as a --mount spec."""
    m = _obj(m, "HostConfig.Mounts[]")
    refuse_unsupported(m, {"Type", "Source", "Target", "ReadOnly", "VolumeOptions", "TmpfsOptions", "BindOptions",
                     "Consistency"}, "Mount")
    kind = m.get("Type") or "volume"
    parts = [f"type={kind}"]
    if m.get("Source"):
        parts.append(f"source={m['Source']}")
    parts.append(f"target={m.get('Target') or ''}")
    if m.get("ReadOnly"):
        parts.append("readonly")
    vol = _obj(m.get("VolumeOptions"), "VolumeOptions")
    refuse_unsupported(vol, {"NoCopy"}, "VolumeOptions")
    if vol.get("NoCopy"):
        parts.append("volume-nocopy")
    refuse_unsupported(_obj(m.get("BindOptions"), "BindOptions"), set(), "BindOptions")
    tmpfs = _obj(m.get("TmpfsOptions"), "TmpfsOptions")
    refuse_unsupported(tmpfs, {"SizeBytes", "Mode"}, "TmpfsOptions")
    if tmpfs.get("SizeBytes"):
        parts.append(f"tmpfs-size={tmpfs['SizeBytes']}")
    if tmpfs.get("Mode"):
        parts.append(f"tmpfs-mode={tmpfs['Mode']:o}")
    return ",".join(parts)


def _bind_target(bind: str) -> str:
    """The container path of a Binds entry: "src:/dst[:opts]" or "/dst" (anonymous)."""
    parts = bind.split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _duration(ns, what: str) -> str:
    """Docker's nanoseconds as portlink's duration text ("" for 0: the default)."""
    if not ns:
        return ""
    if not isinstance(ns, int) or ns < 0:
        raise InvalidArgument(f"Healthcheck.{what} must be a number of nanoseconds")
    return f"{ns // 1_000_000}ms" if ns % 1_000_000 == 0 else f"{ns / 1e9!r}s"


def healthcheck(h: dict, spec: dict) -> None:
    h = _obj(h, "Config.Healthcheck")
    refuse_unsupported(h, {"Test", "Interval", "Timeout", "Retries", "StartPeriod"}, "Healthcheck")
    test = _strs(h.get("Test"), "Healthcheck.Test")
    if test[:1] == ["NONE"]:
        spec["no_healthcheck"] = True
        return
    if test[:1] == ["CMD-SHELL"] and len(test) == 2:
        spec["health_cmd"] = test[1]
    elif test[:1] == ["CMD"] and len(test) > 1:
        spec["health_cmd"] = shlex.join(test[1:])   # portlink runs it with /bin/sh -c: the same argv
    elif test:
        raise InvalidArgument(f"invalid Healthcheck.Test {test!r}: expected [\"CMD-SHELL\", cmd], "
                              "[\"CMD\", arg...] or [\"NONE\"] ([] takes the image's)")
    for key, field in (("Interval", "health_interval"), ("Timeout", "health_timeout"),
                       ("StartPeriod", "health_start_period")):
        if h.get(key):
            spec[field] = _duration(h[key], key)
    if h.get("Retries"):
        spec["health_retries"] = h["Retries"]


def run_request(body: dict, name: str = "", image_exposed: list[str] = ()) -> dict:
    """The run request for `docker create`'s body. `image_exposed`: the image's
    EXPOSEd ports (PublishAllPorts publishes them too)."""
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    host = _obj(body.get("HostConfig"), "HostConfig")
    netcfg = _obj(body.get("NetworkingConfig"), "NetworkingConfig")
    config = {k: v for k, v in body.items() if k not in ("HostConfig", "NetworkingConfig")}
    refuse_unsupported(config, _CONFIG | _CONFIG_CLIENT, "Config")
    refuse_unsupported(host, _HOST, "HostConfig")
    image = config.get("Image")
    if not isinstance(image, str) or not image:
        raise InvalidArgument("Config.Image: no image given")
    spec: dict = {"image": image}
    if name:
        spec["name"] = name
    cmd = config.get("Cmd")
    spec["cmd"] = _strs(cmd, "Config.Cmd")
    if config.get("Entrypoint") is not None:
        ep = _strs(config["Entrypoint"], "Config.Entrypoint")
        spec["entrypoint"] = [] if ep == [""] else ep    # --entrypoint "": none, not the image's
    spec["env"] = _strs(config.get("Env"), "Config.Env")
    spec["expose"] = sorted(_obj(config.get("ExposedPorts"), "Config.ExposedPorts"))
    spec["labels"] = _obj(config.get("Labels"), "Config.Labels")
    for key, field in (("WorkingDir", "workdir"), ("User", "user"), ("Hostname", "hostname"),
                       ("StopSignal", "stop_signal")):
        if config.get(key):
            spec[field] = config[key]
    if config.get("Tty"):
        spec["tty"] = True            # a pty held by the container's monitor
    if config.get("OpenStdin"):
        spec["interactive"] = True    # stdin kept open for attach clients
    if config.get("Healthcheck"):
        healthcheck(config["Healthcheck"], spec)
    binds = _strs(host.get("Binds"), "HostConfig.Binds")
    mounts = host.get("Mounts") or []
    tmpfs = _obj(host.get("Tmpfs"), "HostConfig.Tmpfs")
    # Config.Volumes: anonymous volumes, except where a bind, mount or tmpfs already goes
    # (clients such as docker-py list every -v target there too; dockerd lets the bind win).
    taken = {_bind_target(b) for b in binds} | {_obj(m, "Mount").get("Target") for m in mounts} | set(tmpfs)
    spec["volumes"] = [p for p in sorted(_obj(config.get("Volumes"), "Config.Volumes")) if p not in taken]
    spec["volumes"] += binds
    spec["mounts"] = [mount(m) for m in mounts]
    spec["tmpfs"] = [f"{p}:{o}" if o else p for p, o in tmpfs.items()]
    spec["volumes_from"] = _strs(host.get("VolumesFrom"), "HostConfig.VolumesFrom")
    spec["links"] = [link(x) for x in _strs(host.get("Links"), "HostConfig.Links")]
    spec["publish"] = publish(host.get("PortBindings"))
    if host.get("PublishAllPorts"):
        bound = {p.rsplit(":", 1)[-1] for p in spec["publish"]}
        spec["publish"] += [p for p in sorted({*spec["expose"], *image_exposed}) if p not in bound]
    rp = _obj(host.get("RestartPolicy"), "HostConfig.RestartPolicy")
    refuse_unsupported(rp, {"Name", "MaximumRetryCount"}, "RestartPolicy")
    if rp.get("Name") not in (None, "", "no"):
        n = rp.get("MaximumRetryCount") or 0
        spec["restart"] = f"{rp['Name']}:{n}" if n else rp["Name"]
    elif rp.get("MaximumRetryCount"):
        raise InvalidArgument("RestartPolicy.MaximumRetryCount is only for on-failure")
    spec["dns"] = _strs(host.get("Dns"), "HostConfig.Dns")
    spec["add_hosts"] = _strs(host.get("ExtraHosts"), "HostConfig.ExtraHosts")
    spec["dns_search"] = _strs(host.get("DnsSearch"), "HostConfig.DnsSearch")
    spec["dns_options"] = _strs(host.get("DnsOptions"), "HostConfig.DnsOptions")
    if host.get("Init") is not None:
        if not isinstance(host["Init"], bool):
            raise InvalidArgument("HostConfig.Init must be true, false or null")
        spec["init"] = host["Init"]
    spec["network"] = network_name(host.get("NetworkMode") or "")
    spec["aliases"], ep_links = endpoint(netcfg, spec["network"], host.get("NetworkMode") or "")
    spec["links"] += [x for x in (link(t) for t in ep_links) if x not in spec["links"]]
    if host.get("Memory"):
        spec["memory"] = host["Memory"]
    if host.get("MemorySwap"):
        spec["memory_swap"] = host["MemorySwap"]
    if host.get("NanoCpus"):
        if not isinstance(host["NanoCpus"], int):
            raise InvalidArgument("HostConfig.NanoCpus must be an integer")
        spec["cpus"] = host["NanoCpus"] / 1e9
    if host.get("PidsLimit") is not None:
        spec["pids_limit"] = host["PidsLimit"]
    spec["ulimits"] = [f"{u.get('Name')}={u.get('Soft')}:{u.get('Hard')}" for u in host.get("Ulimits") or []]
    spec["cap_add"] = _strs(host.get("CapAdd"), "HostConfig.CapAdd")
    spec["cap_drop"] = _strs(host.get("CapDrop"), "HostConfig.CapDrop")
    spec["security_opt"] = _strs(host.get("SecurityOpt"), "HostConfig.SecurityOpt")
    if host.get("AutoRemove"):
        spec["rm"] = True
    log = _obj(host.get("LogConfig"), "HostConfig.LogConfig")
    if log.get("Type") not in (None, *LOG_DRIVERS):
        raise DockerUnsupported(f"log driver {log['Type']!r} is not supported by portlink: its logs are files "
                                f"read with `docker logs` (use json-file)")
    if log.get("Config"):
        spec["log_opts"] = _obj(log["Config"], "LogConfig.Config")
    if spec["network"] == NO_NETWORK:
        spec.pop("aliases")
    return {k: v for k, v in spec.items() if v not in ([], {}) or k == "cmd"}


def endpoint(netcfg: dict, network: str, mode: str) -> tuple[list[str], list[str]]:
    """NetworkingConfig.EndpointsConfig: one endpoint, on the container's network
    (portlink puts a container on one network): its Aliases (DNS names) and its
    Links (what compose sends for `links:`: portlink's links, the same as HostConfig's)."""
    eps = _obj(netcfg.get("EndpointsConfig"), "NetworkingConfig.EndpointsConfig")
    refuse_unsupported(netcfg, {"EndpointsConfig"}, "NetworkingConfig")
    names: list[str] = []
    links: list[str] = []
    for net, ep in eps.items():
        if net not in (network, mode):
            raise DockerUnsupported(f"cannot attach to network {net!r} too: a portlink container is on one "
                                    f"network ({network!r})")
        ep = _obj(ep, f"EndpointsConfig[{net!r}]")
        refuse_unsupported(ep, {"Aliases", "Links", "NetworkID", "EndpointID"}, "EndpointSettings")
        names += _strs(ep.get("Aliases"), "EndpointSettings.Aliases")
        links += _strs(ep.get("Links"), "EndpointSettings.Links")
    return names, links
