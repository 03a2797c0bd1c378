"""The Docker Engine API front door (portlinkd --docker-socket), driven by
Debian's docker client (/usr/bin/docker from docker.io, 20.10: API 1.41)
against a simulated host's portlinkd. No dockerd runs anywhere."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import tarfile
import time

import pytest

from helpers import container_env, wait_for
from image_archives import docker_archive, entry
from portlink.lab.sandbox import SimHost

pytestmark = pytest.mark.root

DOCKER = "/usr/bin/docker"    # Debian's 20.10 client; /usr/local/bin/docker is another, newer one
COMPOSE = "/usr/bin/docker-compose"   # Debian's docker-compose 1.29 (apt package docker-compose)

# web + db + redis: links (with an alias), depends_on, a named volume, a user network
COMPOSE_APP = """\
version: "2.4"
services:
  db:
    image: busybox
    command: ["sh", "-c", "mkdir -p /data/www; echo rows > /data/www/index.html; echo db-ready;
              exec httpd -f -p 5432 -h /data/www"]
    volumes: ["dbdata:/data"]
    networks: [appnet]
  redis:
    image: busybox
    command: ["sh", "-c", "echo redis-ready; exec httpd -f -p 6379"]
    networks: [appnet]
  web:
    image: busybox
    command: ["sh", "-c", "echo web-ready; exec httpd -f -p 80"]
    links: ["db:sql", "redis"]
    depends_on: [db, redis]
    ports: ["8080:80"]
    networks: [appnet]
volumes:
  dbdata:
networks:
  appnet:
"""


class Docker:
    """The docker CLI, pointed at one host's Docker socket, with its own config dir."""

    def __init__(self, sock: str, config_dir: str) -> None:
        self.sock = sock
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_CONFIG": config_dir}

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        p = subprocess.run([DOCKER, *args], capture_output=True, text=True, env=self.env, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
        return p

    def out(self, *args: str, **kw) -> str:
        return self.run(*args, **kw).stdout.strip()

    def compose(self, project_dir: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        p = subprocess.run([COMPOSE, "--no-ansi", "-p", "app", *args], capture_output=True, text=True,
                           env=self.env, timeout=timeout, stdin=subprocess.DEVNULL, cwd=project_dir)
        if p.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
        return p

    def inspect(self, ref: str) -> dict:
        return json.loads(self.out("inspect", ref))[0]

    def http(self, method: str, path: str) -> tuple[int, dict, bytes]:
        """A raw request to the Docker socket (what no CLI command shows: headers, versions)."""
        conn = http.client.HTTPConnection("localhost", timeout=10)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(self.sock)
        conn.sock = s
        try:
            conn.request(method, path)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()


@pytest.fixture
def dk(tmp_path):
    sock = str(tmp_path / "docker.sock")
    h = SimHost.start("dk", extra_args=["--docker-socket", sock])
    try:
        d = Docker(sock, str(tmp_path / "docker-config"))
        d.host = h
        yield d
    finally:
        errors = h.destroy()
    assert not errors, errors


def test_version_ping_info_and_negotiation(dk):
    assert dk.out("version", "--format", "{{.Server.APIVersion}} {{.Client.APIVersion}}") == "1.41 1.41"
    assert dk.out("info", "--format", "{{.OSType}} {{.Swarm.LocalNodeState}}") == "linux inactive"
    assert oct(os.stat(dk.sock).st_mode & 0o777) == "0o600"     # root-only, as portlink's own socket
    for method in ("GET", "HEAD"):
        status, headers, body = dk.http(method, "/_ping")
        assert status == 200 and headers["api-version"] == "1.41", headers
        assert headers["docker-experimental"] == "false" and headers["ostype"] == "linux"
        assert body == (b"OK" if method == "GET" else b"")
    status, _, body = dk.http("GET", "/v1.30/version")          # an older client: served
    assert status == 200 and json.loads(body)["ApiVersion"] == "1.41"
    status, _, body = dk.http("GET", "/v1.99/version")          # a newer one: told the maximum
    assert status == 400 and "Maximum supported API version is 1.41" in json.loads(body)["message"]
    status, _, body = dk.http("GET", "/v1.41/no/such/endpoint")
    assert status == 404 and json.loads(body) == {"message": "page not found"}


def test_run_ps_logs_inspect_stop_rm(dk):
    h = dk.host
    assert dk.out("volume", "create", "data") == "data"
    cid = dk.out("run", "-d", "--name", "web", "-p", "8080:80", "-e", "GREETING=hi", "-v", "data:/data",
                 "--restart", "on-failure:3", "--label", "tier=front", "busybox", "sh", "-c",
                 "echo $GREETING > /data/g; echo out; echo err >&2; exec httpd -f -p 80 -h /data")
    assert len(cid) == 64
    ps = dk.out("ps", "--format", "{{.Names}}|{{.Ports}}|{{.Status}}|{{.Command}}")
    name, ports, status, command = ps.split("|")
    assert (name, ports) == ("web", "0.0.0.0:8080->80/tcp") and status.startswith("Up "), ps
    assert command.startswith('"sh -c ')
    # the published port answers on the host, and the file written on the volume is served
    got = wait_for(lambda: h.ns.run("timeout", "3", "busybox", "wget", "-qO-", "http://127.0.0.1:8080/g",
                                    check=False).stdout.strip(), 10)
    assert got == "hi"
    # logs: the multiplexed stream splits stdout and stderr again
    logs = wait_for(lambda: (lambda p: p if "err" in p.stderr else None)(dk.run("logs", "web")), 10)
    assert logs.stdout == "out\n" and logs.stderr == "err\n"

    info = dk.inspect("web")
    assert info["Id"] == cid and info["Name"] == "/web"
    assert info["State"]["Status"] == "running" and info["State"]["Running"] and info["State"]["Pid"] > 0
    assert "GREETING=hi" in info["Config"]["Env"] and info["Config"]["Labels"] == {"tier": "front"}
    assert info["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    net = info["NetworkSettings"]["Networks"]["bridge"]
    assert net["IPAddress"] == h.client.get("/containers/web")["network"]["ip"]
    assert net["MacAddress"] == "02:42:" + ":".join(f"{int(b):02x}" for b in net["IPAddress"].split("."))
    assert net["Gateway"] and info["NetworkSettings"]["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0",
                                                                              "HostPort": "8080"}]}
    assert [(m["Type"], m["Name"], m["Destination"]) for m in info["Mounts"]] == [("volume", "data", "/data")]

    # filters
    assert dk.out("ps", "-q", "--no-trunc", "--filter", "label=tier=front") == cid
    assert dk.out("ps", "-q", "--filter", "label=tier=back") == ""
    assert dk.out("ps", "-aq", "--no-trunc", "--filter", "name=we", "--filter", "status=running") == cid
    assert dk.out("ps", "-aq", "--filter", "status=exited") == ""
    bad = dk.run("ps", "--filter", "colour=red", check=False)
    assert bad.returncode != 0 and "invalid filter 'colour'" in bad.stderr

    assert dk.out("stop", "-t", "2", "web") == "web"
    after = dk.inspect("web")["State"]
    assert after["Status"] == "exited" and not after["Running"] and after["FinishedAt"] > after["StartedAt"]
    assert dk.out("ps", "-aq", "--no-trunc", "--filter", "status=exited") == cid
    assert dk.out("ps", "-q") == ""
    assert dk.out("rm", "web") == "web"
    gone = dk.run("container", "inspect", "web", check=False)
    assert gone.returncode != 0 and "No such container: web" in gone.stderr
    assert dk.out("volume", "ls", "--format", "{{.Name}}") == "data"
    assert dk.out("volume", "rm", "data") == "data"
    assert dk.out("volume", "ls", "-q") == ""


def test_logs_follow_tail_timestamps_and_wait(dk):
    dk.run("run", "-d", "--name", "counter", "busybox", "sh", "-c",
           "for i in 1 2 3; do echo line$i; sleep 0.3; done; exit 3")
    # -f follows until the container stops: all three lines, then the command ends by itself
    follow = dk.run("logs", "-f", "counter", timeout=30)
    assert follow.stdout.splitlines() == ["line1", "line2", "line3"]
    assert dk.out("wait", "counter") == "3"
    last = dk.out("logs", "--tail", "1", "-t", "counter")
    stamp, text = last.split(" ")
    assert text == "line3" and stamp.endswith("Z") and stamp[:4].isdigit()
    assert dk.inspect("counter")["State"]["ExitCode"] == 3
    # kill: the not running container is a conflict, a running one gets the signal
    dk.run("run", "-d", "--name", "sleeper", "busybox", "sh", "-c", 'trap "exit 7" TERM; while :; do sleep 0.1; done')
    assert dk.out("kill", "--signal", "TERM", "sleeper") == "sleeper"
    assert wait_for(lambda: dk.inspect("sleeper")["State"]["Status"] == "exited", 10)
    assert dk.inspect("sleeper")["State"]["ExitCode"] == 7      # TERM it was, caught by its trap
    again = dk.run("kill", "sleeper", check=False)
    assert again.returncode != 0 and "is not running" in again.stderr
    # restart and rm -f of a running one
    dk.run("restart", "-t", "1", "sleeper")
    assert dk.inspect("sleeper")["State"]["Running"]
    refused = dk.run("rm", "sleeper", check=False)
    assert refused.returncode != 0 and "Stop the container before attempting removal or force remove" in refused.stderr
    assert dk.out("rm", "-f", "sleeper", "counter") == "sleeper\ncounter"
    assert dk.out("ps", "-aq") == ""


def test_create_then_start_and_link(dk):
    h = dk.host
    dk.run("run", "-d", "--name", "db", "--expose", "5432", "busybox", "sleep", "600")
    # create: made and checked, not started (portlink's "created" state)
    dk.run("create", "--name", "app", "--link", "db:sql", "busybox", "sleep", "600")
    assert dk.inspect("app")["State"]["Status"] == "created"
    assert dk.out("ps", "-a", "--filter", "status=created", "--format", "{{.Names}} {{.Status}}") == "app Created"
    dk.run("start", "app")
    info = dk.inspect("app")
    assert info["State"]["Running"] and info["HostConfig"]["Links"] == ["/db:/app/sql"]
    db_ip = dk.inspect("db")["NetworkSettings"]["IPAddress"]
    env = container_env(h, "app")
    assert f"SQL_PORT=tcp://{db_ip}:5432" in env and "SQL_NAME=/app/sql" in env
    hosts = h.cli("exec", "app", "cat", "/etc/hosts").stdout
    assert any(line.split()[:2] == [db_ip, "sql"] for line in hosts.splitlines()), hosts
    # a link to a container that does not exist: portlink's own refusal, as a 404
    bad = dk.run("run", "-d", "--name", "lost", "--link", "nosuch:x", "busybox", "true", check=False)
    assert bad.returncode != 0 and "cannot link to 'nosuch'" in bad.stderr
    assert "lost" not in dk.out("ps", "-a", "--format", "{{.Names}}")


def test_networks(dk):
    nid = dk.out("network", "create", "--subnet", "10.99.7.0/24", "appnet")
    assert dk.out("network", "ls", "--format", "{{.Name}} {{.Driver}}", "--filter", "name=appnet") == "appnet bridge"
    dk.run("run", "-d", "--name", "n1", "--network", "appnet", "--network-alias", "svc", "busybox", "sleep", "600")
    n1 = dk.inspect("n1")
    ip = n1["NetworkSettings"]["Networks"]["appnet"]["IPAddress"]
    assert ip.startswith("10.99.7.") and n1["NetworkSettings"]["Networks"]["appnet"]["NetworkID"] == nid
    # the short ID, then the given aliases, as dockerd lists them on a user network
    assert n1["NetworkSettings"]["Networks"]["appnet"]["Aliases"] == [n1["Id"][:12], "svc"]
    net = json.loads(dk.out("network", "inspect", "appnet"))[0]
    assert net["IPAM"]["Config"] == [{"Subnet": "10.99.7.0/24", "Gateway": "10.99.7.1"}]
    assert [c["Name"] for c in net["Containers"].values()] == ["n1"]
    assert net["Containers"][n1["Id"]]["IPv4Address"] == f"{ip}/24"
    busy = dk.run("network", "rm", "appnet", check=False)
    assert busy.returncode != 0            # portlink refuses to remove a network in use
    dk.run("rm", "-f", "n1")
    assert dk.out("network", "rm", "appnet") == "appnet"
    assert "appnet" not in dk.out("network", "ls", "--format", "{{.Name}}")
    missing = dk.run("network", "inspect", "appnet", check=False)
    assert missing.returncode != 0 and "No such network: appnet" in missing.stderr


def test_load_images_tag_rmi_save(dk, tmp_path):
    archive = docker_archive(tmp_path / "app.tar", [[entry("app/hello.txt", b"hello\n")]],
                             {"Cmd": ["/app/hello"], "Labels": {"made-by": "test"}, "ExposedPorts": {"7000/tcp": {}}},
                             ["example.com/team/app:1"])
    assert dk.out("load", "-i", str(archive)) == "Loaded image: example.com/team/app:1"
    # a bad archive: the error comes in the stream (as dockerd's), the client prints it and fails
    (tmp_path / "bad.tar").write_bytes(b"abc")
    bad = dk.run("load", "-i", str(tmp_path / "bad.tar"), check=False)
    assert bad.returncode != 0 and "not a tar archive" in bad.stderr
    rows = dk.out("images", "--format", "{{.Repository}}:{{.Tag}}").splitlines()
    assert sorted(rows) == ["busybox:latest", "example.com/team/app:1"]
    img = json.loads(dk.out("image", "inspect", "example.com/team/app:1"))[0]
    assert img["Config"]["Cmd"] == ["/app/hello"] and img["Config"]["Labels"] == {"made-by": "test"}
    assert img["Id"].startswith("sha256:") and img["RepoTags"] == ["example.com/team/app:1"]
    dk.run("tag", "example.com/team/app:1", "app:2")
    assert sorted(json.loads(dk.out("image", "inspect", "app:2"))[0]["RepoTags"]) == [
        "app:2", "example.com/team/app:1"]
    assert dk.out("rmi", "app:2") == "Untagged: app:2"
    # docker save: a docker-save archive again, which docker load reads back
    dk.run("save", "-o", str(tmp_path / "out.tar"), "example.com/team/app:1")
    with tarfile.open(tmp_path / "out.tar") as tf:
        manifest = json.load(tf.extractfile("manifest.json"))
    assert manifest[0]["RepoTags"] == ["example.com/team/app:1"]
    dk.run("rmi", "example.com/team/app:1")
    assert dk.out("images", "-q", "example.com/team/app") == ""
    missing = dk.run("image", "inspect", "example.com/team/app:1", check=False)
    assert missing.returncode != 0 and "No such image" in missing.stderr
    # no pulling: a clear error, nothing made
    pull = dk.run("run", "-d", "nosuchimage:1", "true", check=False)
    assert pull.returncode != 0 and "not supported by portlink" in pull.stderr


def test_events_bounded(dk):
    t0 = time.time() - 1
    dk.run("run", "-d", "--name", "ev", "busybox", "sh", "-c", "exit 4")
    assert dk.out("wait", "ev") == "4"
    dk.run("rm", "ev")
    t1 = time.time() + 1
    out = dk.out("events", "--since", f"{t0:.3f}", "--until", f"{t1:.3f}", "--filter", "container=ev",
                 "--format", "{{json .}}", timeout=30)
    evs = [json.loads(line) for line in out.splitlines()]
    assert [e["Action"] for e in evs] == ["create", "start", "die", "destroy"], out
    die = evs[2]
    assert die["Type"] == "container" and die["Actor"]["Attributes"]["name"] == "ev"
    assert die["Actor"]["Attributes"]["exitCode"] == "4" and die["timeNano"] // 10**9 == die["time"]
    # filter by type: a network made meanwhile is not a container event
    nets = dk.out("events", "--since", f"{t0:.3f}", "--until", f"{time.time() + 1:.3f}",
                  "--filter", "type=network", "--format", "{{.Action}}", timeout=30)
    assert "start" not in nets.split()


def test_unsupported_is_a_clear_error_and_nothing_made(dk):
    for args, words in (
        (["run", "-d", "--privileged", "busybox", "true"], "HostConfig.Privileged is not supported"),
        (["run", "-d", "--network", "host", "busybox", "true"], "network mode 'host' is not supported"),
        (["run", "-d", "--log-driver", "syslog", "busybox", "true"], "log driver 'syslog' is not supported"),
        (["run", "-d", "--domainname", "example.com", "busybox", "true"], "Config.Domainname is not supported"),
        (["network", "create", "-d", "overlay", "ov"], "network driver 'overlay' is not supported"),
    ):
        p = dk.run(*args, check=False)
        assert p.returncode != 0 and words in p.stderr, (args, p.stderr)
    assert dk.out("ps", "-aq") == ""
    dk.run("run", "-d", "--name", "x", "busybox", "sleep", "600")
    for args, words in ((["exec", "-u", "nobody", "x", "true"], "ExecConfig.User is not supported"),
                        (["pause", "x"], "pause is not supported")):
        p = dk.run(*args, check=False, timeout=30)
        assert p.returncode != 0 and words in p.stderr, (args, p.stderr)
    status, _, body = dk.http("POST", "/v1.41/containers/x/pause")
    assert status == 501 and json.loads(body) == {"message": "pause is not supported by portlink's Docker API"}


def test_exec(dk):
    dk.run("run", "-d", "--name", "x", "busybox", "sleep", "600")
    p = dk.run("exec", "x", "sh", "-c", "echo out; echo err >&2; exit 5", check=False)
    assert (p.returncode, p.stdout, p.stderr) == (5, "out\n", "err\n")
    assert dk.out("exec", "-w", "/etc", "-e", "A=b", "x", "sh", "-c", "echo $A $(pwd)") == "b /etc"
    dk.run("exec", "-d", "x", "sh", "-c", "echo detached > /tmp/d")
    assert wait_for(lambda: dk.run("exec", "x", "cat", "/tmp/d", check=False).stdout == "detached\n", 10)
    dk.run("stop", "-t", "1", "x")
    stopped = dk.run("exec", "x", "true", check=False)
    assert stopped.returncode != 0 and "is not running" in stopped.stderr


def test_foreground_run_attach_and_rm(dk):
    # attach (output only): a foreground run prints the container's stdout and stderr apart
    # and exits with its code; start -a runs it again the same way
    fg = dk.run("run", "--name", "fg", "busybox", "sh", "-c", "echo one; echo two >&2; exit 3", check=False)
    assert (fg.returncode, fg.stdout, fg.stderr) == (3, "one\n", "two\n")
    again = dk.run("start", "-a", "fg", check=False)
    assert (again.returncode, again.stdout, again.stderr) == (3, "one\n", "two\n")
    # --rm: the container is gone when the command returns
    assert dk.out("run", "--rm", "--name", "once", "busybox", "echo", "hi") == "hi"
    assert dk.out("ps", "-a", "--format", "{{.Names}}") == "fg"
    # -i: stdin through the container's monitor, its end closes the container's stdin
    i = subprocess.run([DOCKER, "run", "-i", "--rm", "busybox", "sh", "-c", "cat; echo done >&2"], input="piped\n",
                       capture_output=True, text=True, env=dk.env, timeout=60)
    assert (i.returncode, i.stdout, i.stderr) == (0, "piped\n", "done\n"), i.stderr
    x = subprocess.run([DOCKER, "exec", "-i", "fgx", "true"], capture_output=True, text=True, env=dk.env, timeout=30)
    assert x.returncode != 0 and "No such container: fgx" in x.stderr


def test_a_created_container_survives_a_daemon_restart(dk):
    h = dk.host
    dk.run("create", "--name", "later", "-p", "8090:80", "busybox", "httpd", "-f", "-p", "80")
    h.stop_daemon()
    h.start_daemon()
    assert dk.inspect("later")["State"]["Status"] == "created"   # kept, not rolled back as a half-made run
    # its port stays reserved while it waits
    clash = dk.run("run", "-d", "--name", "other", "-p", "8090:80", "busybox", "true", check=False)
    assert clash.returncode != 0 and "8090" in clash.stderr
    dk.run("start", "later")
    assert dk.inspect("later")["State"]["Running"]
    assert dk.out("port", "later") == "80/tcp -> 0.0.0.0:8090"


def test_limits_health_dns_publish_all_entrypoint(dk):
    dk.run("run", "-d", "--name", "tuned", "--memory", "64m", "--cpus", "0.5", "--pids-limit", "50",
           "--dns", "10.0.0.2", "--health-cmd", "test -e /tmp/ok", "--health-interval", "1s",
           "--health-retries", "1", "--expose", "7000", "-P", "-w", "/tmp", "--entrypoint", "/bin/sh",
           "busybox", "-c", "touch ok; exec sleep 600")
    info = dk.inspect("tuned")
    hc = info["HostConfig"]
    assert (hc["Memory"], hc["NanoCpus"], hc["PidsLimit"], hc["Dns"]) == (64 << 20, 500_000_000, 50, ["10.0.0.2"])
    assert info["Config"]["Healthcheck"] == {"Test": ["CMD-SHELL", "test -e /tmp/ok"]}
    assert (info["Path"], info["Args"], info["Config"]["WorkingDir"]) == ("/bin/sh", ["-c", "touch ok; exec sleep 600"],
                                                                         "/tmp")
    # -P: the exposed port on a host port the daemon picked
    bound = info["NetworkSettings"]["Ports"]["7000/tcp"]
    assert len(bound) == 1 and int(bound[0]["HostPort"]) > 0
    # the health check runs and its state is Docker's State.Health, in ps too
    assert wait_for(lambda: dk.inspect("tuned")["State"].get("Health", {}).get("Status") == "healthy", 30)
    assert dk.out("ps", "--format", "{{.Status}}").endswith("(healthy)")
    # the cgroup has the limits: the same ones as `portlink run --memory`
    assert dk.host.client.get("/containers/tuned")["limits"]["memory"] == 64 << 20


def test_prune(dk):
    dk.run("network", "create", "spare")
    dk.run("network", "create", "used")
    dk.run("run", "-d", "--name", "up", "--network", "used", "busybox", "sleep", "600")
    dk.run("create", "--name", "made", "busybox", "true")
    dk.run("run", "--name", "done", "busybox", "true")
    ids = {dk.inspect(n)["Id"] for n in ("made", "done")}
    out = dk.out("container", "prune", "-f").splitlines()
    assert out[0] == "Deleted Containers:" and set(out[1:3]) == ids and out[3:] == ["", "Total reclaimed space: 0B"]
    assert dk.out("ps", "-a", "--format", "{{.Names}}") == "up"
    assert dk.out("network", "prune", "-f") == "Deleted Networks:\nspare"
    assert sorted(dk.out("network", "ls", "--format", "{{.Name}}").split()) == ["bridge", "used"]
    lab = dk.run("container", "prune", "-f", "--filter", "label=x", check=False)
    assert lab.returncode != 0 and "prune filter 'label' is not supported" in lab.stderr
    # image prune -a: busybox is used by `up`, so it stays
    dk.run("image", "prune", "-a", "-f")
    assert dk.out("images", "--format", "{{.Repository}}") == "busybox"


def test_stats(dk):
    dk.run("run", "-d", "--name", "busy", "--memory", "64m", "busybox", "sh", "-c", "while :; do :; done")
    out = dk.out("stats", "--no-stream", "--format", "{{.Name}}|{{.CPUPerc}}|{{.MemUsage}}|{{.PIDs}}", "busy")
    name, cpu, mem, pids = out.split("|")
    assert (name, pids) == ("busy", "1") and mem.endswith(" / 64MiB"), out
    assert float(cpu.rstrip("%")) > 0          # a busy loop: CPU time between the two samples


def test_host_options_kill_and_wait(dk):
    # --add-host, --dns-search, --dns-option, --init: the flags' fields, in the files and in inspect
    dk.run("run", "-d", "--name", "opts", "--add-host", "db.local:10.1.2.3", "--dns-search", "example.com",
           "--dns-option", "ndots:2", "--init", "busybox", "sleep", "600")
    hc = dk.inspect("opts")["HostConfig"]
    assert (hc["ExtraHosts"], hc["DnsSearch"], hc["DnsOptions"], hc["Init"]) == \
        (["db.local:10.1.2.3"], ["example.com"], ["ndots:2"], True)
    assert "10.1.2.3\tdb.local" in dk.out("exec", "opts", "cat", "/etc/hosts")
    resolv = dk.out("exec", "opts", "cat", "/etc/resolv.conf")
    assert "search example.com" in resolv and "options ndots:2" in resolv
    assert dk.out("exec", "opts", "cat", "/proc/1/comm") != "sleep"       # tini is PID 1
    # kill -s: portlink's kill (a signal the container survives keeps it running)
    dk.run("run", "-d", "--name", "trap", "busybox", "sh", "-c",
           "trap 'echo got-usr1' USR1; while :; do sleep 0.1; done")
    dk.run("kill", "-s", "USR1", "trap")
    assert wait_for(lambda: "got-usr1" in dk.out("logs", "trap"), 10)
    assert dk.inspect("trap")["State"]["Running"]
    dk.run("kill", "trap")
    assert dk.out("wait", "trap") == "137"
    again = dk.run("kill", "trap", check=False)
    assert again.returncode != 0 and "is not running" in again.stderr


def test_compose_up_ps_logs_down(dk, tmp_path):
    (tmp_path / "docker-compose.yml").write_text(COMPOSE_APP)
    up = dk.compose(str(tmp_path), "up", "-d")
    # depends_on: db and redis come before web; one of each (the project filters by all its labels)
    lines = up.stderr.splitlines()
    assert [x.split()[1] for x in lines if x.startswith("Creating app_")][-1] == "app_web_1", up.stderr
    ps = dk.compose(str(tmp_path), "ps").stdout.splitlines()
    rows = sorted(line.split()[0] for line in ps[2:])
    assert rows == ["app_db_1", "app_redis_1", "app_web_1"], ps
    assert "0.0.0.0:8080->80/tcp" in next(x for x in ps if x.startswith("app_web_1"))
    assert wait_for(lambda: all(w in dk.compose(str(tmp_path), "logs").stdout
                                for w in ("db-ready", "redis-ready", "web-ready")), 10)
    # the network, volume and containers carry compose's labels, as it reads them back
    net = json.loads(dk.out("network", "inspect", "app_appnet"))[0]
    assert net["Labels"]["com.docker.compose.project"] == "app"
    assert dk.inspect("app_web_1")["Config"]["Labels"]["com.docker.compose.service"] == "web"
    assert json.loads(dk.out("volume", "inspect", "app_dbdata"))[0]["Labels"]["com.docker.compose.volume"] == "dbdata"
    # links: from the endpoint config, portlink links (names in /etc/hosts, env vars), aliases kept
    web = dk.inspect("app_web_1")
    assert "/app_db_1:/app_web_1/sql" in web["HostConfig"]["Links"]
    assert "web" in web["NetworkSettings"]["Networks"]["app_appnet"]["Aliases"]
    assert dk.out("exec", "app_web_1", "wget", "-qO-", "http://sql:5432/") == "rows"
    assert dk.compose(str(tmp_path), "exec", "-T", "web", "wget", "-qO-", "http://sql:5432/").stdout == "rows\n"
    redis_ip = web_ip(dk, "app_redis_1")
    hosts = dk.out("exec", "app_web_1", "cat", "/etc/hosts").splitlines()
    assert any(x.split()[0] == redis_ip and "redis" in x.split()[1:] for x in hosts if x.strip()), hosts
    down = dk.compose(str(tmp_path), "down", "-v")
    assert "Removing network app_appnet" in down.stderr and "Removing volume app_dbdata" in down.stderr
    assert dk.out("ps", "-aq") == ""
    assert dk.out("volume", "ls", "-q") == ""
    assert dk.out("network", "ls", "--format", "{{.Name}}") == "bridge"


def web_ip(dk, name: str) -> str:
    return dk.inspect(name)["NetworkSettings"]["Networks"]["app_appnet"]["IPAddress"]


class Pty:
    """The docker CLI on a real terminal (a pty of the test's, 30 rows by 100 columns)."""

    def __init__(self, dk, *args: str) -> None:
        import fcntl
        import pty as ptymod
        import struct
        import termios
        self.master, slave = ptymod.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        self.proc = subprocess.Popen([DOCKER, *args], stdin=slave, stdout=slave, stderr=slave, env=dk.env,
                                     start_new_session=True)
        os.close(slave)
        self.seen = b""

    def expect(self, text: str, timeout: float = 20) -> str:
        import select
        end = time.monotonic() + timeout
        while text.encode() not in self.seen:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} not seen in {self.seen!r}")
            if select.select([self.master], [], [], left)[0]:
                try:
                    self.seen += os.read(self.master, 4096)
                except OSError:        # EIO: the docker client is gone
                    raise AssertionError(f"{text!r} not seen; the client ended: {self.seen!r}") from None
        return self.seen.decode(errors="replace")

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def wait(self, timeout: float = 20) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            os.close(self.master)


def test_run_exec_attach_on_a_terminal(dk):
    # run -it: the container's pty through its monitor; the terminal's size reaches it (resize)
    t = Pty(dk, "run", "-it", "--name", "term", "busybox", "sh")
    t.expect("# ")
    t.send("stty size; echo $((6*7))\r")
    t.expect("30 100")
    t.expect("42")
    t.send("exit 3\r")
    assert t.wait() == 3
    info = dk.inspect("term")
    assert (info["Config"]["Tty"], info["Config"]["OpenStdin"], info["State"]["ExitCode"]) == (True, True, 3)
    # -t without -i: the TTY's raw stream (no frames), in logs too
    assert dk.run("run", "-t", "--name", "rawt", "busybox", "echo", "raw").stdout.rstrip("\r\n") == "raw"
    assert dk.run("logs", "rawt").stdout.rstrip("\r\n") == "raw"
    # exec -it: a pty of its own, sized as the terminal
    dk.run("run", "-d", "-it", "--name", "bg", "busybox", "sh")
    e = Pty(dk, "exec", "-it", "bg", "sh")
    e.expect("# ")
    e.send("tty; stty size; exit 4\r")
    e.expect("/dev/pts/")
    e.expect("30 100")
    assert e.wait() == 4
    # attach: stdin to the container's shell, then ctrl-p ctrl-q detaches and leaves it running
    a = Pty(dk, "attach", "bg")
    a.send("echo at-$((1+1))\r")
    a.expect("at-2")
    a.send("\x10\x11")
    a.expect("read escape sequence")
    code = a.wait()
    assert code in (0, 1), a.seen        # 20.10's client prints the escape as its error
    assert dk.inspect("bg")["State"]["Running"]
    assert "at-2" in dk.out("logs", "bg")


def test_top_and_cp(dk, tmp_path):
    dk.run("run", "-d", "--name", "box", "busybox", "sh", "-c", "mkdir -p /srv/d; echo inside > /srv/d/f; "
           "ln -s d /srv/ln; exec sleep 600")
    assert wait_for(lambda: dk.run("exec", "box", "test", "-e", "/srv/ln", check=False).returncode == 0, 10)
    # top: the host's ps, the container's rows only (portlink's top)
    top = dk.out("top", "box").splitlines()
    assert top[0].split()[:3] == ["UID", "PID", "PPID"] and len(top) == 2 and top[1].endswith("sleep 600"), top
    assert dk.out("top", "box", "-o", "pid,comm").splitlines()[1].split()[1] == "sleep"
    # cp out: a file, a directory (docker's rules: the name kept), a not-found path
    dk.run("cp", "box:/srv/d/f", str(tmp_path / "copy"))
    assert (tmp_path / "copy").read_text() == "inside\n"
    dk.run("cp", "box:/srv/d", str(tmp_path))
    assert (tmp_path / "d" / "f").read_text() == "inside\n"
    dk.run("cp", "box:/srv/ln/.", str(tmp_path / "via-link"))      # /. follows the link, copies the contents
    assert (tmp_path / "via-link" / "f").read_text() == "inside\n"
    missing = dk.run("cp", "box:/nope", str(tmp_path), check=False)
    assert missing.returncode != 0 and "/nope" in missing.stderr
    # cp in: a file and a directory, then read back inside
    (tmp_path / "up.txt").write_text("from host\n")
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "x").write_text("x\n")
    dk.run("cp", str(tmp_path / "up.txt"), "box:/srv/")
    dk.run("cp", str(tmp_path / "tree"), "box:/srv/tree")
    assert dk.out("exec", "box", "cat", "/srv/up.txt", "/srv/tree/sub/x") == "from host\nx"
    # a file over a directory: refused, as dockerd does
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "d").write_text("file\n")
    bad = dk.run("cp", str(tmp_path / "other" / "d"), "box:/srv/", check=False)
    assert bad.returncode != 0 and "directory" in bad.stderr, bad.stderr
    assert dk.out("exec", "box", "cat", "/srv/d/f") == "inside"
    # a stopped container: its files still (portlink's offline copy)
    dk.run("stop", "-t", "1", "box")
    dk.run("cp", "box:/srv/up.txt", str(tmp_path / "after-stop"))
    assert (tmp_path / "after-stop").read_text() == "from host\n"
    top_stopped = dk.run("top", "box", check=False)
    assert top_stopped.returncode != 0 and "is not running" in top_stopped.stderr
    archive_a = dk.run("cp", "-a", str(tmp_path / "up.txt"), "box:/srv/", check=False)
    assert archive_a.returncode != 0 and "cp -a (copyUIDGID) is not supported" in archive_a.stderr
