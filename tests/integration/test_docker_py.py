"""docker-py (PyPI `docker`), the Python client, against portlinkd's Docker
socket: its high-level API as a program would use it."""

from __future__ import annotations

import docker
import pytest
from docker.errors import APIError, NotFound

from helpers import wait_for
from portlink.lab.sandbox import SimHost

pytestmark = pytest.mark.root


@pytest.fixture
def client(tmp_path):
    sock = str(tmp_path / "docker.sock")
    h = SimHost.start("dpy", extra_args=["--docker-socket", sock])
    c = None
    try:
        c = docker.DockerClient(base_url=f"unix://{sock}", version="auto", timeout=60)
        c.portlink_host = h
        yield c
    finally:
        if c is not None:
            c.close()
        errors = h.destroy()
    assert not errors, errors


def test_version_negotiated(client):
    assert client.api.api_version == "1.41"
    v = client.version()
    assert v["ApiVersion"] == "1.41" and v["Os"] == "linux"
    assert client.ping() is True


def test_containers_run_list_get_logs_stop_remove(client):
    h = client.portlink_host
    web = client.containers.run("busybox", ["sh", "-c", "echo ready; echo oops >&2; exec httpd -f -p 80 -h /tmp"],
                                name="web", detach=True, ports={"80/tcp": 8081}, environment={"MODE": "test"},
                                labels={"app": "demo"}, restart_policy={"Name": "always"})
    assert web.name == "web" and web.status == "created"    # as returned by create, before start
    web.reload()
    assert web.status == "running" and web.attrs["State"]["Pid"] > 0
    assert web.ports == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8081"}]}
    assert "MODE=test" in web.attrs["Config"]["Env"] and web.labels == {"app": "demo"}
    assert web.attrs["HostConfig"]["RestartPolicy"]["Name"] == "always"
    assert web.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] == \
        h.client.get("/containers/web")["network"]["ip"]

    assert [c.name for c in client.containers.list()] == ["web"]
    assert [c.id for c in client.containers.list(filters={"label": "app=demo"})] == [web.id]
    assert client.containers.list(filters={"label": "app=other"}) == []
    assert client.containers.get("web").id == web.id
    assert client.containers.get(web.id[:12]).name == "web"

    assert wait_for(lambda: web.logs(stdout=True, stderr=False) == b"ready\n", 10)
    assert web.logs(stdout=False, stderr=True) == b"oops\n"
    assert set(web.logs().splitlines()) == {b"ready", b"oops"}
    stream = web.logs(stream=True, follow=False)
    assert b"".join(stream).count(b"\n") == 2

    # exec through portlink's own exec: output and exit code
    code, out = web.exec_run(["sh", "-c", "echo $MODE; exit 2"])
    assert (code, out) == (2, b"test\n")
    code, (o, e) = web.exec_run(["sh", "-c", "echo a; echo b >&2"], demux=True)
    assert (code, o, e) == (0, b"a\n", b"b\n")

    # stats: one sample (with the one before it), then a bounded stream
    one = web.stats(stream=False)
    assert one["id"] == web.id and one["cpu_stats"]["cpu_usage"]["total_usage"] > 0
    assert one["precpu_stats"]["system_cpu_usage"] > 0 and one["pids_stats"]["current"] >= 1
    it = web.stats(stream=True, decode=True)
    first, second = next(it), next(it)
    assert second["precpu_stats"]["cpu_usage"]["total_usage"] == first["cpu_stats"]["cpu_usage"]["total_usage"]
    it.close()

    web.stop(timeout=2)
    web.reload()
    assert web.status == "exited"
    assert client.containers.list() == [] and [c.name for c in client.containers.list(all=True)] == ["web"]
    # a stopped `always` container is not restarted: the user stopped it
    assert client.containers.get("web").status == "exited"
    web.remove()
    with pytest.raises(NotFound):
        client.containers.get("web")


def test_run_without_detach_returns_the_output_and_exit_code(client):
    # run() without detach waits for the exit and reads the logs; a failing command raises
    out = client.containers.run("busybox", ["sh", "-c", "echo hello"], remove=False, name="once")
    assert out == b"hello\n"
    assert client.containers.get("once").attrs["State"]["ExitCode"] == 0
    with pytest.raises(docker.errors.ContainerError) as err:
        client.containers.run("busybox", ["sh", "-c", "echo bad >&2; exit 5"], name="fails")
    assert err.value.exit_status == 5 and b"bad" in err.value.stderr


def test_networks_volumes_images(client):
    net = client.networks.create("pynet", ipam=docker.types.IPAMConfig(
        pool_configs=[docker.types.IPAMPool(subnet="10.98.3.0/24")]))
    assert [n.name for n in client.networks.list(names=["pynet"])] == ["pynet"]
    vol = client.volumes.create("pyvol", labels={"k": "v"})
    assert client.volumes.get("pyvol").attrs["Labels"] == {"k": "v"}
    ctr = client.containers.run("busybox", ["sh", "-c", "echo x > /v/f; sleep 600"], detach=True, name="c1",
                                network="pynet", volumes={"pyvol": {"bind": "/v", "mode": "rw"}})
    ctr.reload()
    assert ctr.attrs["NetworkSettings"]["Networks"]["pynet"]["IPAddress"].startswith("10.98.3.")
    net.reload()
    assert list(net.attrs["Containers"]) == [ctr.id]
    ctr.remove(force=True)
    net.remove()
    assert client.networks.list(names=["pynet"]) == []
    vol.remove()
    assert [v.name for v in client.volumes.list()] == []
    img = client.images.get("busybox")
    assert "busybox:latest" in img.tags and img.id.startswith("sha256:")
    with pytest.raises(APIError) as e:
        client.images.pull("redis")
    assert e.value.status_code == 501


def test_labels_top_archive_stdin_and_tty(client):
    import io
    import tarfile
    net = client.networks.create("lbl", labels={"com.docker.compose.project": "p"})
    assert client.networks.get("lbl").attrs["Labels"] == {"com.docker.compose.project": "p"}
    assert [n.name for n in client.networks.list(filters={"label": "com.docker.compose.project=p"})] == ["lbl"]
    ctr = client.containers.run("busybox", ["sleep", "600"], detach=True, name="py", network="lbl",
                                extra_hosts={"db.local": "10.1.2.3"}, init=True)
    hc = client.containers.get("py").attrs["HostConfig"]
    assert (hc["Init"], hc["ExtraHosts"]) == (True, ["db.local:10.1.2.3"])
    # top, and the archive endpoints both ways
    top = ctr.top()
    assert top["Titles"][:2] == ["UID", "PID"] and any(p[-1] == "sleep 600" for p in top["Processes"])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo("hello.txt")
        info.size = 3
        t.addfile(info, io.BytesIO(b"hi\n"))
    assert ctr.put_archive("/tmp", buf.getvalue()) is True
    chunks, stat = ctr.get_archive("/tmp/hello.txt")
    assert stat["name"] == "hello.txt" and stat["size"] == 3
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as t:
        assert t.extractfile("hello.txt").read() == b"hi\n"
    assert b"10.1.2.3\tdb.local" in ctr.exec_run(["cat", "/etc/hosts"]).output
    # exec with a TTY: the raw stream, a terminal inside
    tty = ctr.exec_run(["sh", "-c", "tty; echo out"], tty=True)
    assert tty.exit_code == 0 and tty.output.startswith(b"/dev/pts/") and b"out\r\n" in tty.output
    # stdin over the hijacked socket of an exec
    ex = client.api.exec_create(ctr.id, ["sh", "-c", "read x; echo got-$x"], stdin=True)
    sock = client.api.exec_start(ex["Id"], socket=True)
    raw = sock._sock
    raw.sendall(b"word\n")
    raw.settimeout(20)
    got = b""
    while b"got-word" not in got:
        data = raw.recv(4096)
        if not data:
            break
        got += data
    raw.close()
    assert b"got-word" in got
    ctr.remove(force=True)
    net.remove()


def test_what_docker_pys_own_suite_found(client):
    """Fixes from docker-py's own integration tests (make docker-py-suite)."""
    api = client.api
    # kill -9 answers once the container has stopped: exited 137, removable without force
    ctr = client.containers.run("busybox", ["sleep", "600"], detach=True, name="k")
    ctr.kill()
    st = api.inspect_container(ctr.id)["State"]
    assert (st["Running"], st["ExitCode"]) == (False, 137)
    ctr.remove()
    # rm of a running container: 409 in dockerd's words
    ctr = client.containers.run("busybox", ["sleep", "600"], detach=True, name="r",
                                tmpfs={"/scratch": "size=3M"})
    with pytest.raises(APIError) as e:
        ctr.remove()
    assert e.value.status_code == 409 and "Stop the container before" in e.value.explanation
    hc = api.inspect_container(ctr.id)["HostConfig"]
    assert (hc["Tmpfs"], hc["CgroupnsMode"], hc["Isolation"]) == ({"/scratch": "size=3M"}, "host", "default")
    # removing a link is a 501, not a 404 that reads as "no such container"
    with pytest.raises(APIError) as e:
        api.remove_container(ctr.id + "/lnk", link=True)
    assert e.value.status_code == 501
    ctr.remove(force=True)
    # images by ID: inspect, tag, save; info counts images, not names
    img = client.images.get("busybox")
    assert client.images.get(img.id).id == img.id and client.images.get(img.short_id).id == img.id
    assert api.tag(img.id, "copy", "v1") is True
    assert "copy:v1" in client.images.get("copy:v1").tags
    assert client.info()["Images"] == len({i.id for i in client.images.list()}) == 1
    assert len(b"".join(img.save())) > 100_000     # the archive of the image the ID names
    with pytest.raises(NotFound):
        client.images.get("sha256:" + "0" * 64)
    # swarm: leave off a swarm is dockerd's 503 (leave --force takes it as done), the rest 501
    assert api.leave_swarm(force=True) is True
    for call in (lambda: api.init_swarm("127.0.0.1"), lambda: api.inspect_distribution("busybox"),
                 lambda: api.plugins(), lambda: api.services()):
        with pytest.raises(APIError) as e:
            call()
        assert e.value.status_code == 501 and "not supported by portlink" in e.value.explanation


def test_exec_tty_at_create_frames_at_start(client):
    # create's Tty gives the process a terminal; start's (docker-py: false unless told) the stream's
    # form: the terminal's output in stdout frames, as dockerd sends it
    ctr = client.containers.run("busybox", ["sleep", "600"], detach=True, name="t")
    ex = client.api.exec_create(ctr.id, ["sh", "-c", "tty; echo out"], tty=True)
    out = client.api.exec_start(ex["Id"])
    assert out.startswith(b"/dev/pts/") and b"out\r\n" in out
    assert client.api.exec_inspect(ex["Id"])["ExitCode"] == 0
    raw = client.api.exec_start(client.api.exec_create(ctr.id, ["echo", "x"], tty=True)["Id"], tty=True)
    assert raw == b"x\r\n"       # start with Tty: the raw stream
    ctr.remove(force=True)


def test_load_of_a_bad_archive_is_an_error_in_the_stream(client):
    # as dockerd: 200 and the error in the JSON stream, which docker-py raises as ImageLoadError
    with pytest.raises(docker.errors.ImageLoadError) as e:
        client.images.load(b"abc")
    assert "not a tar archive" in str(e.value)
