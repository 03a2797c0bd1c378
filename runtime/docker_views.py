"""portlink's records in Docker Engine API shapes (API 1.41). Pure: each
function takes what portlink's own views return (runtime.views, volumes,
networks, images) and renames, never recomputes."""

from __future__ import annotations

import base64
import json
import re
import stat
import struct
import tarfile
import time
from decimal import Decimal
from ipaddress import ip_address

from portlink.errors import InvalidArgument
from portlink.netns.model import container_mac
from portlink.runtime.docker_request import DockerUnsupported

ZERO_TIME = "0001-01-01T00:00:00Z"
STDOUT, STDERR = 1, 2


def frame(stream: int, payload: bytes) -> bytes:
    """One frame of Docker's multiplexed stream (logs, attach and exec without a TTY)."""
    return struct.pack(">BxxxL", stream, len(payload)) + payload

# portlink's statuses as Docker's State.Status
_STATUS = {"creating": "created", "created": "created", "running": "running", "exited": "exited",
           "removing": "removing"}


def iso(t: float | None) -> str:
    if not t:
        return ZERO_TIME
    secs = int(t)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{int((t - secs) * 1e9):09d}Z"


def human_duration(secs: float) -> str:
    """Docker's units.HumanDuration (what `docker ps` shows in STATUS)."""
    s = int(secs)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    m = s // 60
    if m == 1:
        return "About a minute"
    if m < 60:
        return f"{m} minutes"
    h = round(s / 3600)
    if h == 1:
        return "About an hour"
    if h < 48:
        return f"{h} hours"
    if h < 24 * 7 * 2:
        return f"{h // 24} days"
    if h < 24 * 30 * 2:
        return f"{h // 24 // 7} weeks"
    if h < 24 * 365 * 2:
        return f"{h // 24 // 30} months"
    return f"{h // 24 // 365} years"


def status(v: dict) -> str:
    """State.Status in Docker's words."""
    if v["status"] == "exited" and v.get("restarting"):
        return "restarting"
    return _STATUS.get(v["status"], v["status"])


def status_text(v: dict, now: float) -> str:
    """`docker ps`'s STATUS column: Up 5 seconds (healthy), Exited (0) 2 minutes ago, Created."""
    st = status(v)
    if st == "running":
        health = (v.get("State") or {}).get("Health") or {}
        mark = {"healthy": " (healthy)", "unhealthy": " (unhealthy)",
                "starting": " (health: starting)"}.get(health.get("Status"), "")
        return f"Up {human_duration(now - (v['started'] or now))}{mark}"
    if st in ("exited", "restarting"):
        word = "Restarting" if st == "restarting" else "Exited"
        return f"{word} ({v['exit_code'] or 0}) {human_duration(now - (v['finished'] or now))} ago"
    return st.capitalize()


def argv(v: dict) -> list[str]:
    cfg = v["config"]
    return [*(cfg.get("entrypoint") or []), *cfg["cmd"]]


def port_map(v: dict, live: bool = True) -> dict:
    """NetworkSettings.Ports: {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}] or None};
    `live`: only while it runs (a stopped container's ports are reserved, not bound)."""
    if live and v["status"] != "running":
        return {}
    out: dict = {p: None for p in v["exposed"]}
    for p in v["network"]["ports"]:
        key = f"{p['container_port']}/{p['proto']}"
        out[key] = (out.get(key) or []) + [{"HostIp": p["host_ip"], "HostPort": str(p["host_port"])}]
    return out


def _network_entry(v: dict, net_id: str) -> dict:
    n, ip = v["network"], v["network"]["ip"]
    # on a user-defined network, the short ID is a name too (as dockerd lists it: compose looks
    # for it to tell that a container is attached already)
    short = [v["id"][:12]] if n["name"] != "bridge" else []
    return {"IPAMConfig": None, "Links": links(v) or None,
            "Aliases": [*short, *(v["config"].get("aliases") or [])] or None,
            "NetworkID": net_id, "EndpointID": v["id"] if ip else "", "Gateway": n["gateway"] or "",
            "IPAddress": ip or "", "IPPrefixLen": n["prefixlen"] or 0, "IPv6Gateway": "",
            "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
            "MacAddress": container_mac(ip_address(ip)) if ip else "", "DriverOpts": None}


def network_settings(v: dict, net_id: str) -> dict:
    n = v["network"]
    entry = _network_entry(v, net_id)
    nets = {} if n["name"] == "none" else {n["name"]: entry}
    return {"Bridge": n["bridge"] or "", "SandboxID": v["id"] if n["netns"] else "", "HairpinMode": False,
            "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0, "Ports": port_map(v),
            "SandboxKey": n["netns"] or "", "SecondaryIPAddresses": None, "SecondaryIPv6Addresses": None,
            "EndpointID": entry["EndpointID"], "Gateway": entry["Gateway"], "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0, "IPAddress": entry["IPAddress"], "IPPrefixLen": entry["IPPrefixLen"],
            "IPv6Gateway": "", "MacAddress": entry["MacAddress"], "Networks": nets}


def health(h: dict) -> dict:
    """State.Health: portlink's has Docker's keys, its log's times as Unix time."""
    log = [{**e, "Start": iso(e.get("Start")), "End": iso(e.get("End"))} for e in h.get("Log") or []]
    return {**h, "Log": log}


def health_config(cfg: dict) -> dict | None:
    if cfg.get("no_healthcheck"):
        return {"Test": ["NONE"]}
    if not cfg.get("health_cmd"):
        return None
    return {"Test": ["CMD-SHELL", cfg["health_cmd"]]}


def container_inspect(v: dict, image_id: str, net_id: str) -> dict:
    """`GET /containers/{id}/json` from portlink's inspect view."""
    cfg, lim, n = v["config"], v["limits"], v["network"]
    st = status(v)
    args = argv(v)
    return {
        "Id": v["id"], "Created": iso(v["created"]), "Path": args[0] if args else "", "Args": args[1:],
        "State": {"Status": st, "Running": st == "running", "Paused": False, "Restarting": st == "restarting",
                  "OOMKilled": bool(v["oom_killed"]), "Dead": False, "Pid": v["pid"] or 0,
                  "ExitCode": v["exit_code"] or 0, "Error": "", "StartedAt": iso(v["started"]),
                  "FinishedAt": iso(v["finished"]),
                  **({"Health": health(v["State"]["Health"])} if (v.get("State") or {}).get("Health") else {})},
        "Image": image_id, "ResolvConfPath": "", "HostnamePath": "", "HostsPath": v["paths"]["hosts"],
        "LogPath": v["paths"]["log"], "Name": "/" + v["name"], "RestartCount": v["RestartCount"],
        "Driver": "overlay", "Platform": "linux", "MountLabel": "", "ProcessLabel": "", "AppArmorProfile": "",
        "ExecIDs": None,
        "HostConfig": {
            "Binds": [x for x in cfg["volumes"] if ":" in x] or None, "ContainerIDFile": "",
            "LogConfig": {"Type": "json-file", "Config": cfg.get("log_opts") or {}},
            "NetworkMode": "default" if n["name"] == "bridge" else n["name"],
            "PortBindings": {k: b for k, b in port_map(v, live=False).items() if b}, "RestartPolicy": {**v["RestartPolicy"], "Name": v["RestartPolicy"]["Name"] or "no"},
            "AutoRemove": cfg["rm"], "VolumeDriver": "", "VolumesFrom": cfg["volumes_from"] or None,
            "CapAdd": cfg["cap_add"] or None, "CapDrop": cfg["cap_drop"] or None, "Dns": cfg["dns"],
            "DnsOptions": cfg["dns_options"], "DnsSearch": cfg["dns_search"], "ExtraHosts": cfg["add_hosts"] or None,
            "Links": links(v) or None,
            "Privileged": False, "PublishAllPorts": False, "ReadonlyRootfs": False,
            "SecurityOpt": cfg["security_opt"] or None,
            "Tmpfs": dict(t.split(":", 1) if ":" in t else (t, "") for t in cfg.get("tmpfs") or []) or None,
            # what every portlink container has: the host's cgroup namespace (runc makes none), Linux's isolation
            "CgroupnsMode": "host", "Isolation": "default",
            "Memory": lim["memory"] or 0, "MemorySwap": lim["memory_swap"] or 0,
            "NanoCpus": int(lim["cpus"] * 1e9) if lim["cpus"] else 0, "PidsLimit": lim["pids_limit"],
            "Ulimits": [{"Name": u["name"], "Soft": u["soft"], "Hard": u["hard"]} for u in lim["ulimits"]] or None,
            "OomScoreAdj": 0, "Init": cfg["init"] or None,
        },
        "GraphDriver": {"Data": None, "Name": "overlay"},
        "Mounts": v["Mounts"],
        "Config": {
            "Hostname": cfg["hostname"], "Domainname": "", "User": cfg["user"], "AttachStdin": False,
            "AttachStdout": False, "AttachStderr": False, "ExposedPorts": {p: {} for p in v["exposed"]} or None,
            "Tty": bool(cfg.get("tty")), "OpenStdin": bool(cfg.get("interactive")), "StdinOnce": False, "Env": cfg["env"], "Cmd": cfg["cmd"],
            "Healthcheck": health_config(cfg), "Image": cfg["image"], "Volumes": None,
            "WorkingDir": cfg["workdir"], "Entrypoint": cfg.get("entrypoint") or None, "OnBuild": None,
            "Labels": cfg["labels"], "StopSignal": cfg.get("stop_signal") or "SIGTERM",
        },
        "NetworkSettings": network_settings(v, net_id),
    }


def links(v: dict) -> list[str]:
    """HostConfig.Links in Docker's form: "/target:/this/alias" (a cross-host link's
    target, not the ambassador that carries it)."""
    return [f"/{ln.get('target') or ln['name']}:/{v['name']}/{ln['alias']}" for ln in v["links"]]


def container_summary(v: dict, image_id: str, net_id: str, now: float) -> dict:
    """One item of `GET /containers/json`."""
    ports = []
    for key, binds in port_map(v).items():
        port, proto = key.split("/")
        if not binds:
            ports.append({"PrivatePort": int(port), "Type": proto})
        for b in binds or []:
            ports.append({"IP": b["HostIp"], "PrivatePort": int(port), "PublicPort": int(b["HostPort"]),
                          "Type": proto})
    nets = network_settings(v, net_id)["Networks"]
    return {"Id": v["id"], "Names": ["/" + v["name"]], "Image": v["config"]["image"], "ImageID": image_id,
            "Command": " ".join(argv(v)), "Created": int(v["created"]), "Ports": ports,
            "Labels": v["config"]["labels"], "State": status(v), "Status": status_text(v, now),
            "HostConfig": {"NetworkMode": "default" if v["network"]["name"] == "bridge" else v["network"]["name"]},
            "NetworkSettings": {"Networks": nets}, "Mounts": v["Mounts"]}


# filters -----------------------------------------------------------------------------------
def parse_filters(text: str | None, allowed: tuple[str, ...]) -> dict[str, list[str]]:
    """Docker's `filters` query: JSON {"key": {"value": true}} or {"key": ["value"]}."""
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except ValueError:
        raise InvalidArgument(f"invalid filters {text!r}: expected JSON") from None
    if not isinstance(raw, dict):
        raise InvalidArgument("invalid filters: expected a JSON object")
    out = {}
    for key, vals in raw.items():
        if key not in allowed:
            raise InvalidArgument(f"invalid filter {key!r}")
        if isinstance(vals, dict):
            vals = [k for k, on in vals.items() if on]
        if not isinstance(vals, list) or not all(isinstance(x, str) for x in vals):
            raise InvalidArgument(f"invalid filter {key!r}: expected a list of strings")
        out[key] = vals
    return out


CONTAINER_FILTERS = ("id", "name", "label", "status", "exited", "network", "ancestor")
STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


def label_match(labels: dict, want: str) -> bool:
    key, eq, value = want.partition("=")
    return key in labels and (not eq or labels[key] == value)


def container_matches(v: dict, f: dict[str, list[str]]) -> bool:
    """One container against the filters: the values of one key are alternatives (labels: all
    apply), keys all apply."""
    for key, vals in f.items():
        if key == "status":
            bad = [s for s in vals if s not in STATUSES]
            if bad:
                raise InvalidArgument(f"invalid filter 'status={bad[0]}'")
        tests = {
            "id": lambda x: v["id"].startswith(x),
            "name": lambda x: re.search(x.lstrip("/"), v["name"]) is not None,
            "label": lambda x: label_match(v["config"]["labels"], x),
            "status": lambda x: status(v) == x,
            "exited": lambda x: v["status"] == "exited" and str(v["exit_code"] or 0) == x,
            "network": lambda x: v["network"]["name"] == x,
            "ancestor": lambda x: v["config"]["image"] in (x, x.removesuffix(":latest")),
        }
        try:
            if key == "label":            # dockerd: every label given must match (compose's project filters)
                if not all(tests[key](x) for x in vals):
                    return False
            elif not any(tests[key](x) for x in vals):
                return False
        except re.error as e:
            raise InvalidArgument(f"invalid filter 'name={vals}': {e}") from None
    return True


# networks, volumes, images ----------------------------------------------------------------------
def network_json(s, containers: dict[str, dict] | None = None, labels: dict | None = None) -> dict:
    """`GET /networks/{id}`; `containers`: id -> {Name, IPv4Address, MacAddress, ...}."""
    return {"Name": s.name, "Id": s.id, "Created": ZERO_TIME, "Scope": "local", "Driver": "bridge",
            "EnableIPv6": False, "IPAM": {"Driver": "default", "Options": None,
                                         "Config": [{"Subnet": str(s.subnet), "Gateway": str(s.gateway)}]},
            "Internal": s.internal, "Attachable": False, "Ingress": False, "ConfigFrom": {"Network": ""},
            "ConfigOnly": False, "Containers": containers or {},
            "Options": {"com.docker.network.bridge.name": s.bridge,
                        "com.docker.network.bridge.enable_icc": str(bool(s.icc)).lower()},
            "Labels": labels or {}}


def network_endpoint(v: dict) -> dict:
    ip = v["network"]["ip"]
    return {"Name": v["name"], "EndpointID": v["id"], "MacAddress": container_mac(ip_address(ip)),
            "IPv4Address": f"{ip}/{v['network']['prefixlen']}", "IPv6Address": ""}


def volume_json(vol: dict) -> dict:
    """portlink's volume view has Docker's keys already; UsedBy and Anonymous are its own."""
    return {k: vol[k] for k in ("Name", "Driver", "Mountpoint", "CreatedAt", "Labels", "Scope", "Options")}


def image_summary(img, names: list[str]) -> dict:
    return {"Id": img.id, "ParentId": "", "RepoTags": names, "RepoDigests": None, "Created": int(img.created),
            "Size": img.size, "VirtualSize": img.size, "SharedSize": -1, "Labels": img.config.labels or None,
            "Containers": -1}


def image_inspect(img, names: list[str]) -> dict:
    c = img.config
    return {"Id": img.id, "RepoTags": names, "RepoDigests": [], "Parent": "", "Comment": "",
            "Created": iso(img.created), "Container": "", "DockerVersion": "", "Author": "",
            "Config": {"Env": c.env, "Cmd": c.cmd, "Entrypoint": c.entrypoint or None, "WorkingDir": c.workdir,
                       "User": c.user, "ExposedPorts": {p: {} for p in c.exposed} or None,
                       "Volumes": {p: {} for p in c.volumes} or None, "Labels": c.labels or None,
                       "StopSignal": c.stop_signal or None, "Healthcheck": c.healthcheck},
            "Architecture": "amd64", "Os": "linux", "Size": img.size, "VirtualSize": img.size,
            "GraphDriver": {"Data": None, "Name": "overlay"}, "RootFS": {"Type": "layers", "Layers": []},
            "Metadata": {"LastTagTime": ZERO_TIME}}


def repo_tag(name: str) -> str:
    """portlink keeps "redis" for redis:latest; Docker shows the tag."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last or "@" in last else name + ":latest"


# events ----------------------------------------------------------------------------------------
# portlink's actions that Docker's clients know under the same name; others keep portlink's.
def event_json(e: dict) -> dict:
    """A portlink event (runtime.events) in Docker's event shape."""
    kind = {"ambassador": "container"}.get(e["type"], e["type"])
    attrs = {k: str(v) for k, v in (e.get("attrs") or {}).items()}
    attrs["name"] = e["name"]
    if "exit_code" in attrs:
        attrs["exitCode"] = attrs.pop("exit_code")
    ns = int(Decimal(repr(e["time"])) * 1_000_000_000)   # a float would blur the nanoseconds
    actor = e.get("id") or e["name"]
    out = {"Type": kind, "Action": e["action"], "Actor": {"ID": actor, "Attributes": attrs},
           "scope": "local", "time": ns // 1_000_000_000, "timeNano": ns}
    if kind == "container":
        out.update({"status": e["action"], "id": actor, "from": attrs.get("image", "")})
    return out


EVENT_FILTERS = ("type", "event", "container", "name", "network", "label", "image", "volume")


def event_filters(f: dict[str, list[str]]) -> list[str]:
    """Docker's event filters as portlink's `key=value` items (runtime.events.parse_filters);
    the keys portlink's events have no field for are refused."""
    items = []
    for key, vals in f.items():
        if key in ("label", "image", "volume"):
            raise DockerUnsupported(f"event filter {key!r} is not supported by portlink "
                                    "(type, event, container, name, network are)")
        items += [f"{key}={v}" for v in vals]
    return items


# stats -----------------------------------------------------------------------------------------
def system_cpu_ns(proc_stat: str, clk_tck: int) -> int:
    """The host's CPU time (all cores, all states) from /proc/stat's "cpu" line: what
    Docker's stats call system_cpu_usage (the client divides a container's delta by it)."""
    for line in proc_stat.splitlines():
        if line.startswith("cpu "):
            return sum(int(x) for x in line.split()[1:8]) * 1_000_000_000 // clk_tck
    return 0


def _cpu(s: dict | None, system: int, cpus: int) -> dict:
    total = (s or {}).get("cpu_ns") or 0
    return {"cpu_usage": {"total_usage": total, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "system_cpu_usage": system if s else 0, "online_cpus": cpus,
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}


def stats_json(cur: dict, prev: dict | None, sys_now: int, sys_prev: int, cpus: int, name: str) -> dict:
    """`GET /containers/{id}/stats` from portlink's samples (runtime.stats.sample):
    `prev` is the sample before (precpu_stats), None for the first."""
    mem, net, blk = cur.get("memory"), cur.get("net"), cur.get("blkio") or cur.get("task_io")
    return {
        "read": iso(cur["time"]), "preread": iso(prev["time"]) if prev else ZERO_TIME,
        "pids_stats": {k: v for k, v in (("current", cur.get("pids")), ("limit", cur.get("pids_limit")))
                       if v is not None},
        "blkio_stats": {"io_service_bytes_recursive": [
            {"major": 0, "minor": 0, "op": "read", "value": blk["read"]},
            {"major": 0, "minor": 0, "op": "write", "value": blk["write"]}] if blk else None},
        "num_procs": 0, "storage_stats": {},
        "cpu_stats": _cpu(cur, sys_now, cpus), "precpu_stats": _cpu(prev, sys_prev, cpus),
        "memory_stats": {"usage": mem["usage"], "limit": mem["limit"] or 0,
                         "stats": {"cache": mem["cache"], "rss": mem["rss"]}} if mem else {},
        "name": "/" + name, "id": cur["id"],
        **({"networks": {"eth0": {"rx_bytes": net["rx_bytes"], "rx_packets": net["rx_packets"], "rx_errors": 0,
                                  "rx_dropped": net["rx_dropped"], "tx_bytes": net["tx_bytes"],
                                  "tx_packets": net["tx_packets"], "tx_errors": 0,
                                  "tx_dropped": net["tx_dropped"]}}} if net else {}),
    }


# cp: the container path stat header -------------------------------------------------------------
_GO_TYPE = ((stat.S_ISDIR, 1 << 31), (stat.S_ISLNK, 1 << 27), (stat.S_ISBLK, 1 << 26),
            (stat.S_ISCHR, (1 << 26) | (1 << 21)), (stat.S_ISFIFO, 1 << 25), (stat.S_ISSOCK, 1 << 24))


def go_file_mode(mode: int) -> int:
    """A Unix st_mode as Go's os.FileMode (what docker's client reads from the stat header)."""
    out = mode & 0o777
    for test, bit in _GO_TYPE:
        if test(mode):
            out |= bit
            break
    for unix, go in ((stat.S_ISUID, 1 << 23), (stat.S_ISGID, 1 << 22), (stat.S_ISVTX, 1 << 20)):
        if mode & unix:
            out |= go
    return out


def path_stat_header(st: dict) -> str:
    """X-Docker-Container-Path-Stat: base64 of {name, size, mode, mtime, linkTarget} (portlink's stat)."""
    body = {"name": st["name"], "size": st["size"], "mode": go_file_mode(st["mode"]), "mtime": iso(st["mtime"]),
            "linkTarget": st["linkTarget"] or ""}
    return base64.b64encode(json.dumps(body).encode()).decode()


def rebase_tar(src, dst, top: str) -> None:
    """Copy the tar at `src` to `dst` with its top entry renamed `top` (hard links
    too): a `/.` path's archive starts at "." for Docker's client, which rebases
    it onto the destination (portlink's own client drops the top entry instead)."""
    from portlink.runtime.cli_cp import rebase
    with tarfile.open(src, "r|") as tin, open(dst, "wb") as out, \
            tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tout:
        for m in tin:
            m.name = rebase(m.name, top)
            if m.islnk():
                m.linkname = rebase(m.linkname, top)
            tout.addfile(m, tin.extractfile(m) if m.isreg() else None)
