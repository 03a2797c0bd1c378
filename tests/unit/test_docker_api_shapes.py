"""The Docker API's pure translations: Docker's create body into portlink's
run request (checked by portlink's own spec afterwards), portlink's views into
Docker's shapes, filters, events and the multiplexed log frame."""

from __future__ import annotations

import json

import pytest

from portlink.errors import InvalidArgument
from portlink.runtime import docker_views as dv
from portlink.runtime.docker_api import _version, frame
from portlink.runtime.docker_request import DockerUnsupported, run_request
from portlink.runtime.spec import Request

# What docker 20.10's CLI sends for `docker run -d busybox true` (the zero values of every flag).
CLI_BODY = {
    "Hostname": "", "Domainname": "", "User": "", "AttachStdin": False, "AttachStdout": False,
    "AttachStderr": False, "Tty": False, "OpenStdin": False, "StdinOnce": False, "Env": [], "Cmd": ["true"],
    "Image": "busybox", "Volumes": {}, "WorkingDir": "", "Entrypoint": None, "OnBuild": None, "Labels": {},
    "HostConfig": {"Binds": None, "ContainerIDFile": "", "LogConfig": {"Type": "", "Config": {}},
                   "NetworkMode": "default", "PortBindings": {}, "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
                   "AutoRemove": False, "VolumeDriver": "", "VolumesFrom": None, "CapAdd": None, "CapDrop": None,
                   "CgroupnsMode": "", "Dns": [], "DnsOptions": [], "DnsSearch": [], "ExtraHosts": None,
                   "GroupAdd": None, "IpcMode": "", "Cgroup": "", "Links": None, "OomScoreAdj": 0, "PidMode": "",
                   "Privileged": False, "PublishAllPorts": False, "ReadonlyRootfs": False, "SecurityOpt": None,
                   "UTSMode": "", "UsernsMode": "", "ShmSize": 0, "ConsoleSize": [0, 0], "Isolation": "",
                   "CpuShares": 0, "Memory": 0, "NanoCpus": 0, "CgroupParent": "", "BlkioWeight": 0,
                   "BlkioWeightDevice": [], "KernelMemory": 0, "MemoryReservation": 0, "MemorySwap": 0,
                   "MemorySwappiness": None, "OomKillDisable": False, "PidsLimit": None, "Ulimits": None,
                   "MaskedPaths": None, "ReadonlyPaths": None},
    "NetworkingConfig": {"EndpointsConfig": {}},
}


def body(config=None, host=None, net=None) -> dict:
    b = json.loads(json.dumps(CLI_BODY))
    b.update(config or {})
    b["HostConfig"].update(host or {})
    if net is not None:
        b["NetworkingConfig"] = net
    return b


def test_the_clis_zero_values_are_a_plain_run():
    assert run_request(body(), "web") == {"image": "busybox", "name": "web", "cmd": ["true"], "network": "bridge"}


def test_every_supported_field_and_portlinks_own_check_accepts_it():
    got = run_request(body(
        {"Cmd": ["sh", "-c", "x"], "Entrypoint": ["/init"], "Env": ["A=1"], "ExposedPorts": {"9000/tcp": {}},
         "Labels": {"k": "v"}, "WorkingDir": "/srv", "User": "nobody", "Hostname": "h1", "StopSignal": "SIGQUIT",
         "Volumes": {"/anon": {}, "/data": {}},
         "Healthcheck": {"Test": ["CMD-SHELL", "wget -q localhost"], "Interval": 2_000_000_000,
                         "Timeout": 500_000_000, "Retries": 4, "StartPeriod": 0}},
        {"Binds": ["vol:/data:ro"], "Links": ["/db:/web/sql", "cache"],
         "PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}], "53/udp": [{"HostPort": ""}]},
         "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2}, "Dns": ["10.0.0.2"],
         "NetworkMode": "appnet", "Memory": 64 << 20, "NanoCpus": 500_000_000, "PidsLimit": 100,
         "Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 2048}], "CapDrop": ["NET_RAW"],
         "Tmpfs": {"/run": "size=1m"}, "AutoRemove": False, "LogConfig": {"Type": "json-file",
                                                                          "Config": {"max-size": "1m"}},
         "Mounts": [{"Type": "tmpfs", "Target": "/scratch", "TmpfsOptions": {"SizeBytes": 1048576}}]},
        {"EndpointsConfig": {"appnet": {"Aliases": ["api"]}}}), "web")
    assert got == {
        "image": "busybox", "name": "web", "cmd": ["sh", "-c", "x"], "entrypoint": ["/init"], "env": ["A=1"],
        "expose": ["9000/tcp"], "labels": {"k": "v"}, "workdir": "/srv", "user": "nobody", "hostname": "h1",
        "stop_signal": "SIGQUIT", "health_cmd": "wget -q localhost", "health_interval": "2000ms",
        "health_timeout": "500ms", "health_retries": 4,
        "volumes": ["/anon", "vol:/data:ro"],                       # /data: the bind wins
        "mounts": ["type=tmpfs,target=/scratch,tmpfs-size=1048576"], "tmpfs": ["/run:size=1m"],
        "links": ["db:sql", "cache"], "publish": ["127.0.0.1:8080:80/tcp", "53/udp"],
        "restart": "on-failure:2", "dns": ["10.0.0.2"], "network": "appnet", "aliases": ["api"],
        "memory": 64 << 20, "cpus": 0.5, "pids_limit": 100, "ulimits": ["nofile=1024:2048"],
        "cap_drop": ["NET_RAW"], "log_opts": {"max-size": "1m"}}
    req = Request.parse(got)       # portlink's own checks: the one place values are validated
    assert [r.key() for r in req.publish] == ["80/tcp", "53/udp"]


def test_host_options_map_onto_the_flags_fields():
    got = run_request(body(host={"ExtraHosts": ["db.local:10.1.2.3", "gw:host-gateway"],
                                 "DnsSearch": ["example.com"], "DnsOptions": ["ndots:2"], "Init": True}))
    assert (got["add_hosts"], got["dns_search"], got["dns_options"], got["init"]) == \
        (["db.local:10.1.2.3", "gw:host-gateway"], ["example.com"], ["ndots:2"], True)
    spec = Request.parse(got)
    assert (spec.spec.dns_search, spec.spec.init) == (["example.com"], True)   # portlink's own checks pass
    assert "init" not in run_request(body(host={"Init": None}))
    with pytest.raises(InvalidArgument, match="HostConfig.Init"):
        run_request(body(host={"Init": "yes"}))


def test_tty_and_open_stdin_are_the_monitors_fields():
    got = run_request(body({"Tty": True, "OpenStdin": True, "StdinOnce": True, "AttachStdin": True}))
    assert (got["tty"], got["interactive"]) == (True, True)
    assert "tty" not in run_request(body())


def test_compose_endpoint_links_and_aliases():
    got = run_request(body(host={"NetworkMode": "app_net", "Links": ["/cache:/web/c"]},
                           net={"EndpointsConfig": {"app_net": {"Aliases": ["web"], "Links": ["app_db_1:sql",
                                                                                             "app_redis_1"]}}}))
    assert (got["links"], got["aliases"]) == (["cache:c", "app_db_1:sql", "app_redis_1"], ["web"])
    with pytest.raises(DockerUnsupported, match="EndpointSettings.IPAMConfig"):
        run_request(body(host={"NetworkMode": "n"},
                         net={"EndpointsConfig": {"n": {"IPAMConfig": {"IPv4Address": "10.0.0.9"}}}}))


def test_label_filters_all_apply():
    f = {"label": ["com.docker.compose.project=app", "com.docker.compose.oneoff=False"]}
    assert dv.container_matches(VIEW_LABELS(project="app", oneoff="False"), f)
    assert not dv.container_matches(VIEW_LABELS(project="app", oneoff="True"), f)


def VIEW_LABELS(project: str, oneoff: str) -> dict:
    return {**VIEW, "config": {**VIEW["config"], "labels": {"com.docker.compose.project": project,
                                                          "com.docker.compose.oneoff": oneoff}}}


def test_publish_all_ports_adds_the_exposed_ones_not_bound_yet():
    got = run_request(body({"ExposedPorts": {"9000/tcp": {}, "80/tcp": {}}},
                           {"PublishAllPorts": True, "PortBindings": {"80/tcp": [{"HostPort": "8080"}]}}),
                      image_exposed=["6379/tcp"])
    assert got["publish"] == ["8080:80/tcp", "6379/tcp", "9000/tcp"]


@pytest.mark.parametrize("config,host,words", [
    ({}, {"Privileged": True}, "HostConfig.Privileged is not supported"),
    ({"Domainname": "example.com"}, {}, "Config.Domainname is not supported"),
    ({}, {"NetworkMode": "host"}, "network mode 'host'"),
    ({}, {"NetworkMode": "container:x"}, "network mode 'container:x'"),
    ({}, {"GroupAdd": ["audio"]}, "HostConfig.GroupAdd"),
    ({}, {"ShmSize": 1 << 20}, "HostConfig.ShmSize"),
    ({}, {"LogConfig": {"Type": "syslog"}}, "log driver 'syslog'"),
    ({"StopTimeout": 3}, {}, "Config.StopTimeout"),
])
def test_what_portlink_lacks_is_refused_not_ignored(config, host, words):
    with pytest.raises(DockerUnsupported, match=words) as e:
        run_request(body(config, host))
    assert e.value.status == 501


def test_a_second_network_is_refused_and_bad_shapes_are_400():
    with pytest.raises(DockerUnsupported, match="one network"):
        run_request(body(net={"EndpointsConfig": {"other": {}}}))
    with pytest.raises(InvalidArgument, match="Config.Env must be a list of strings"):
        run_request(body({"Env": [1]}))
    with pytest.raises(InvalidArgument, match="no image"):
        run_request(body({"Image": ""}))
    with pytest.raises(InvalidArgument, match="Healthcheck.Test"):
        run_request(body({"Healthcheck": {"Test": ["BOGUS"]}}))


def test_healthcheck_forms():
    assert run_request(body({"Healthcheck": {"Test": ["NONE"]}}))["no_healthcheck"] is True
    assert run_request(body({"Healthcheck": {"Test": ["CMD", "redis-cli", "ping it"]}}))["health_cmd"] == \
        "redis-cli 'ping it'"


def test_version_bounds():
    _version(1, 41)
    _version(1, 24)
    with pytest.raises(InvalidArgument, match="too new. Maximum supported API version is 1.41"):
        _version(1, 42)
    with pytest.raises(InvalidArgument, match="too old"):
        _version(1, 11)


def test_frame_is_dockers_multiplexed_header():
    assert frame(1, b"hi\n") == b"\x01\x00\x00\x00\x00\x00\x00\x03hi\n"
    assert frame(2, b"x" * 300)[:8] == b"\x02\x00\x00\x00\x00\x00\x01\x2c"


def test_human_duration_as_docker_prints_it():
    assert [dv.human_duration(s) for s in (0.4, 1, 59, 60, 150, 3600, 7200, 3 * 86400, 20 * 86400)] == [
        "Less than a second", "1 second", "59 seconds", "About a minute", "2 minutes", "About an hour",
        "2 hours", "3 days", "2 weeks"]


VIEW = {"id": "ab" * 32, "name": "web", "status": "running", "pid": 42, "exit_code": None, "created": 100.0,
        "started": 101.0, "finished": None, "oom_killed": False, "restarting": False, "RestartCount": 0,
        "RestartPolicy": {"Name": "", "MaximumRetryCount": 0}, "exposed": ["80/tcp", "9000/tcp"],
        "config": {"image": "busybox", "cmd": ["httpd"], "entrypoint": ["/bin/sh"], "labels": {"tier": "front"},
                   "env": [], "hostname": "h", "user": "", "workdir": "", "rm": False, "volumes": [],
                   "volumes_from": [], "cap_add": [], "cap_drop": [], "dns": [], "security_opt": [],
                   "aliases": [], "log_opts": {}, "add_hosts": ["db.local:10.1.2.3"], "dns_search": ["lab"],
                   "dns_options": [], "init": True, "tty": False, "interactive": False},
        "limits": {"memory": None, "memory_swap": None, "cpus": None, "pids_limit": 2048, "ulimits": []},
        "network": {"name": "bridge", "ip": "10.77.0.2", "gateway": "10.77.0.1", "prefixlen": 16,
                    "bridge": "pl-br0", "netns": "/x/ns",
                    "ports": [{"proto": "tcp", "host_ip": "0.0.0.0", "host_port": 8080, "container_port": 80}]},
        "paths": {"hosts": "/x/hosts", "log": "/x/log"}, "links": [{"name": "db", "alias": "sql"}],
        "Mounts": [], "State": {"Health": {"Status": "healthy", "FailingStreak": 0,
                             "Log": [{"Start": 101.5, "End": 101.75, "ExitCode": 0, "Output": ""}]}}}


def test_container_shapes():
    s = dv.container_summary(VIEW, "sha256:1", "n1", now=131.0)
    assert s["Names"] == ["/web"] and s["Command"] == "/bin/sh httpd" and s["Status"] == "Up 30 seconds (healthy)"
    assert s["Ports"] == [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
                          {"PrivatePort": 9000, "Type": "tcp"}]
    i = dv.container_inspect(VIEW, "sha256:1", "n1")
    assert i["Path"] == "/bin/sh" and i["Args"] == ["httpd"] and i["State"]["Health"]["Status"] == "healthy"
    assert (i["HostConfig"]["ExtraHosts"], i["HostConfig"]["DnsSearch"], i["HostConfig"]["Init"]) == \
        (["db.local:10.1.2.3"], ["lab"], True)
    # times are RFC 3339 text, as Go's client parses them
    assert i["State"]["Health"]["Log"] == [{"Start": "1970-01-01T00:01:41.500000000Z",
                                            "End": "1970-01-01T00:01:41.750000000Z", "ExitCode": 0, "Output": ""}]
    assert i["NetworkSettings"]["Networks"]["bridge"]["MacAddress"] == "02:42:0a:4d:00:02"
    assert i["HostConfig"]["Links"] == ["/db:/web/sql"] and i["HostConfig"]["NetworkMode"] == "default"
    stopped = {**VIEW, "status": "exited", "exit_code": 3, "finished": 200.0}
    assert dv.status_text(stopped, 320.0) == "Exited (3) 2 minutes ago"
    assert dv.container_inspect(stopped, "", "")["NetworkSettings"]["Ports"] == {}   # reserved, not bound
    assert dv.status_text({**VIEW, "status": "created"}, 0) == "Created"


def test_filters():
    f = dv.parse_filters('{"label": {"tier=front": true}, "status": ["running"]}', dv.CONTAINER_FILTERS)
    assert f == {"label": ["tier=front"], "status": ["running"]}
    assert dv.container_matches(VIEW, f)
    assert not dv.container_matches(VIEW, {"label": ["tier=back"]})
    assert dv.container_matches(VIEW, {"name": ["^we"], "id": ["abab"]})
    assert not dv.container_matches(VIEW, {"exited": ["0"]})
    with pytest.raises(InvalidArgument, match="invalid filter 'colour'"):
        dv.parse_filters('{"colour": ["red"]}', dv.CONTAINER_FILTERS)
    with pytest.raises(InvalidArgument, match="status=sleeping"):
        dv.container_matches(VIEW, {"status": ["sleeping"]})


def test_event_shape_and_filters():
    e = dv.event_json({"time": 1700000000.25, "type": "container", "action": "die", "name": "web",
                       "id": "ab" * 32, "attrs": {"exit_code": 3, "network": "bridge"}})
    assert e["Type"] == "container" and e["Action"] == "die" and e["status"] == "die"
    assert e["Actor"] == {"ID": "ab" * 32, "Attributes": {"name": "web", "exitCode": "3", "network": "bridge"}}
    assert (e["time"], e["timeNano"]) == (1700000000, 1700000000250000000)
    assert dv.event_filters({"container": ["web"], "type": ["container"]}) == ["container=web", "type=container"]
    with pytest.raises(DockerUnsupported, match="event filter 'label'"):
        dv.event_filters({"label": ["a=b"]})


def test_repo_tags():
    assert [dv.repo_tag(n) for n in ("redis", "redis:7", "example.com:5000/app", "a/b@sha256:00")] == [
        "redis:latest", "redis:7", "example.com:5000/app:latest", "a/b@sha256:00"]


def test_stats_shape():
    assert dv.system_cpu_ns("cpu  100 0 50 800 10 0 40 0 0 0\ncpu0 1 2 3\n", 100) == 10_000_000_000
    sample = lambda t, ns: {"id": "ab" * 32, "time": t, "cpu_ns": ns, "pids": 3, "pids_limit": 2048,
                            "memory": {"usage": 10, "rss": 6, "cache": 4, "limit": 64}, "blkio": None,
                            "task_io": {"read": 1, "write": 2},
                            "net": {"rx_bytes": 5, "tx_bytes": 6, "rx_packets": 1, "tx_packets": 2,
                                    "rx_dropped": 0, "tx_dropped": 0}}
    s = dv.stats_json(sample(2.0, 900), sample(1.0, 400), 5000, 3000, 2, "web")
    assert (s["cpu_stats"]["cpu_usage"]["total_usage"], s["precpu_stats"]["cpu_usage"]["total_usage"]) == (900, 400)
    assert (s["cpu_stats"]["system_cpu_usage"], s["precpu_stats"]["system_cpu_usage"]) == (5000, 3000)
    assert s["memory_stats"] == {"usage": 10, "limit": 64, "stats": {"cache": 4, "rss": 6}}
    assert s["pids_stats"] == {"current": 3, "limit": 2048} and s["networks"]["eth0"]["rx_bytes"] == 5
    assert s["name"] == "/web" and s["blkio_stats"]["io_service_bytes_recursive"][1]["value"] == 2
    first = dv.stats_json(sample(2.0, 900), None, 5000, 0, 2, "web")
    assert first["precpu_stats"]["system_cpu_usage"] == 0 and first["preread"] == dv.ZERO_TIME


def test_path_stat_header_is_gos_file_mode():
    import base64
    import stat
    assert dv.go_file_mode(stat.S_IFDIR | 0o755) == (1 << 31) | 0o755
    assert dv.go_file_mode(stat.S_IFLNK | 0o777) == (1 << 27) | 0o777
    assert dv.go_file_mode(stat.S_IFREG | stat.S_ISUID | 0o4755 & 0o777) == (1 << 23) | 0o755
    assert dv.go_file_mode(stat.S_IFCHR | 0o666) == (1 << 26) | (1 << 21) | 0o666
    got = json.loads(base64.b64decode(dv.path_stat_header(
        {"name": "f", "size": 3, "mode": stat.S_IFREG | 0o644, "mtime": 1.5, "linkTarget": None})))
    assert got == {"name": "f", "size": 3, "mode": 0o644, "mtime": "1970-01-01T00:00:01.500000000Z",
                   "linkTarget": ""}


def test_rebase_tar_renames_the_top_entry_and_hard_links(tmp_path):
    import io
    import tarfile
    src = tmp_path / "in.tar"
    with tarfile.open(src, "w") as t:
        d = tarfile.TarInfo("ln")
        d.type = tarfile.DIRTYPE
        t.addfile(d)
        f = tarfile.TarInfo("ln/f")
        f.size = 2
        t.addfile(f, io.BytesIO(b"hi"))
        h = tarfile.TarInfo("ln/h")
        h.type, h.linkname = tarfile.LNKTYPE, "ln/f"
        t.addfile(h)
    dv.rebase_tar(src, tmp_path / "out.tar", ".")
    with tarfile.open(tmp_path / "out.tar") as t:
        assert [(m.name, m.linkname) for m in t] == [(".", ""), ("./f", ""), ("./h", "./f")]
        assert t.extractfile("./f").read() == b"hi"
