"""Image archives through the real CLI and daemon: docker-save and OCI archives
made here from directory trees load with their layers, whiteouts and config
exactly; hostile layers are refused and leave nothing; save/load round-trips;
the Redis and PostgreSQL images built from Debian's packages serve a client in
another container through --link."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from image_archives import docker_archive, entry, oci_archive
from portlink.lab.sandbox import VENV_BIN
from portlink.runtime.images import find_busybox

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]


def base_layer() -> list:
    """A busybox root: the shell and the tools the checks use."""
    bb = find_busybox().read_bytes()
    tools = ["sh", "cat", "ls", "echo", "id", "pwd", "sleep", "env"]
    return [entry("bin", kind="dir"), entry("bin/busybox", bb, mode=0o755),
            *[entry(f"bin/{t}", kind="sym", link="busybox") for t in tools],
            entry("etc", kind="dir"), entry("etc/passwd", "root:x:0:0::/root:/bin/sh\napp:x:1234:1234::/:/bin/sh\n"),
            entry("etc/group", "root:x:0:\napp:x:1234:\n"), entry("etc/keep", "kept\n"), entry("etc/gone", "x"),
            entry("opq", kind="dir"), entry("opq/old", "old"), entry("opq/sub", kind="dir"), entry("opq/sub/f", "f"),
            entry("d2f", kind="dir"), entry("d2f/inner", "i"), entry("link", kind="sym", link="/etc/keep"),
            entry("tmp", kind="dir", mode=0o1777)]


def top_layer() -> list:
    return [entry("etc/.wh.gone"), entry("opq/new", "new\n"), entry("opq/.wh..wh..opq"),   # marker after a sibling
            entry("d2f", "now a file\n"), entry("link", "a file now\n"), entry("etc/keep", "replaced\n"),
            entry("dev", kind="dir"), entry("dev/null0", kind="chr")]


CONFIG = {"Env": ["PATH=/bin", "GREETING=hello from the image"], "Entrypoint": ["/bin/sh", "-c"],
          "Cmd": ["ls -A /etc /opq; cat /etc/keep /link /d2f; echo $GREETING; pwd; id -u"],
          "WorkingDir": "/opq", "User": "app", "ExposedPorts": {"7000/tcp": {}}, "Volumes": {"/data": {}},
          "Labels": {"team": "core"}, "StopSignal": "SIGQUIT",
          "Healthcheck": {"Test": ["CMD", "true"], "Interval": 2_000_000_000, "Retries": 2}}

# /etc/hostname, hosts and resolv.conf: the runtime's bind mounts
EXPECTED = ["/etc:", "group", "hostname", "hosts", "keep", "passwd", "resolv.conf", "", "/opq:", "new", "replaced", "a file now", "now a file",
            "hello from the image", "/opq", "1234"]


def _run_out(h, *args) -> list[str]:
    r = h.cli("run", "--rm", *args)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_layers_whiteouts_and_config_load_and_run(nft_host, tmp_path):
    h = nft_host
    arch = docker_archive(tmp_path / "app.tar.gz", [base_layer(), top_layer()], CONFIG,
                          ["example.com/team/app:1", "app:latest"], gz=True)
    r = h.cli("load", "-i", str(arch))
    assert r.returncode == 0, r.stderr
    assert [l.split(" (")[0] for l in r.stdout.splitlines()] == ["Loaded image: example.com/team/app:1",
                                                                  "Loaded image: app"]
    assert "skipped 1 device/fifo" in r.stderr
    assert _run_out(h, "app") == EXPECTED
    assert _run_out(h, "example.com/team/app:1") == EXPECTED
    # --entrypoint replaces the image's and drops its Cmd; -u and -w still win over the image's
    assert _run_out(h, "--entrypoint", "/bin/echo", "app:latest") == [""]
    assert _run_out(h, "--entrypoint", "/bin/sh", "-u", "0", "-w", "/", "app", "-c", "id -u; pwd") == ["0", "/"]
    info = json.loads(h.cli("image", "inspect", "app", check=True).stdout)[0]
    assert info["config"] == {"entrypoint": ["/bin/sh", "-c"], "cmd": CONFIG["Cmd"], "env": CONFIG["Env"],
                              "workdir": "/opq", "user": "app", "exposed": ["7000/tcp"], "volumes": ["/data"],
                              "labels": {"team": "core"}, "stop_signal": "SIGQUIT",
                              "healthcheck": CONFIG["Healthcheck"]}
    h.cli("run", "-d", "--name", "svc", "app", "sleep 600", check=True)
    c = h.client.get("/containers/svc")
    assert c["exposed"] == ["7000/tcp"] and c["config"]["stop_signal"] == "SIGQUIT"
    assert c["config"]["labels"] == {"team": "core"} and c["config"]["user"] == "app"
    h.cli("rm", "-f", "svc", check=True)
    # loading the same archive again is a no-op; from stdin as well
    with open(arch, "rb") as f:
        r = subprocess.run([str(VENV_BIN / "portlink"), "load", "-q"], stdin=f, capture_output=True, text=True,
                           env={**os.environ, "PORTLINK_HOST": h.socket}, timeout=60)
    assert r.returncode == 0 and r.stdout.split() == ["example.com/team/app:1", "app"], r.stderr


def test_oci_layout_and_tag(nft_host, tmp_path):
    h = nft_host
    arch = oci_archive(tmp_path / "oci.tar", [base_layer(), top_layer()], CONFIG, ref="oci/app:2")
    h.cli("load", "-i", str(arch), check=True)
    assert _run_out(h, "oci/app:2") == EXPECTED
    assert h.cli("image", "tag", "oci/app:2", "mine", check=True).stdout.strip() == "mine"
    assert _run_out(h, "mine") == EXPECTED
    ids = {i["name"]: i["id"] for i in h.client.get("/images")}
    assert ids["mine"] == ids["oci/app:2"]
    h.cli("image", "rm", "oci/app:2", check=True)
    assert _run_out(h, "mine") == EXPECTED     # a tag is a name of its own


def test_save_then_load_round_trips(nft_host, tmp_path):
    h = nft_host
    h.cli("load", "-i", str(docker_archive(tmp_path / "a.tar", [base_layer(), top_layer()], CONFIG, ["rt:1"])),
          check=True)
    before = json.loads(h.cli("image", "inspect", "rt:1", check=True).stdout)[0]
    out = tmp_path / "saved.tar"
    h.cli("save", "-o", str(out), "rt:1", check=True)
    h.cli("image", "rm", "rt:1", check=True)
    assert h.cli("load", "-q", "-i", str(out), check=True).stdout.split() == ["rt:1"]
    after = json.loads(h.cli("image", "inspect", "rt:1", check=True).stdout)[0]
    assert after["config"] == before["config"] and after["size"] == before["size"]
    assert _run_out(h, "rt:1") == EXPECTED


def _hostile(outside: Path) -> dict[str, tuple[list, str]]:
    s = str(outside / "sentinel")
    return {
        "dotdot": ([entry("ok"), entry("../../../../../.." + s, "pwned")], "'..'"),
        "absolute": ([entry(s, "pwned")], "absolute path"),
        "symlink-then-write": ([entry("esc", kind="sym", link=str(outside)), entry("esc/sentinel", "pwned")],
                               "esc/sentinel"),
        "write-through-lower-symlink": ([entry("link/x", "x")], "'link'"),
        "whiteout-through-symlink": ([entry("esc/.wh.sentinel")], "esc"),   # esc: a symlink in the lower layer
        "relative-escape": ([entry("up", kind="sym", link="../../../..")], "escapes"),
        "whiteout-dotdot": ([entry("etc/.wh..")], "whiteout"),
    }


def test_hostile_layers_are_refused_and_leave_nothing(nft_host, tmp_path):
    h = nft_host
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_bytes(b"untouched\n")
    images = h.state_dir / "images"
    before_ls, before_dirs = h.cli("image", "ls", check=True).stdout, sorted(os.listdir(images))
    for case, (top, needle) in _hostile(outside).items():
        lower = base_layer() + ([entry("esc", kind="sym", link=str(outside))] if case.startswith("whiteout-th")
                                else [])
        arch = docker_archive(tmp_path / f"{case}.tar", [lower, top], {"Cmd": ["sh"]}, ["evil:1"])
        r = h.cli("load", "-i", str(arch))
        assert r.returncode == 125, (case, r.stdout, r.stderr)
        assert "layer 2 of 2" in r.stderr and needle in r.stderr and "refusing" in r.stderr, (case, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert h.cli("image", "ls", check=True).stdout == before_ls, case
        assert sorted(os.listdir(images)) == before_dirs, case          # no image, no .tmp-*
        assert sorted(os.listdir(outside)) == ["sentinel"], case
        assert (outside / "sentinel").read_bytes() == b"untouched\n", case
    # a layer that does not match its digest in the config
    arch = docker_archive(tmp_path / "ok.tar", [base_layer()], {"Cmd": ["sh"]}, ["evil:1"])
    data = arch.read_bytes().replace(b"kept\n", b"evil\n")
    (tmp_path / "bad.tar").write_bytes(data)
    r = h.cli("load", "-i", str(tmp_path / "bad.tar"))
    assert r.returncode == 125 and "does not match its digest" in r.stderr, r.stderr
    assert sorted(os.listdir(images)) == before_dirs
    assert "Traceback" not in h.daemon_log()


def _built(name: str) -> Path:
    """The archive scripts/build-images made (cached: instant once setup ran)."""
    out = subprocess.run([str(ROOT / "scripts/build-images"), name], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.split("\t")[1].strip())


def _until(fn, what: str, timeout: float = 60):
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = fn()
        if last.returncode == 0:
            return last
        time.sleep(0.3)
    raise AssertionError(f"{what} within {timeout}s: {last.stdout} {last.stderr}")


def test_redis_image_answers_through_a_link(nft_host):
    h = nft_host
    assert h.cli("load", "-q", "-i", str(_built("redis")), check=True).stdout.split() == ["portlink/redis:7"]
    h.cli("run", "-d", "--name", "cache", "portlink/redis:7", check=True)
    c = h.client.get("/containers/cache")
    assert c["exposed"] == ["6379/tcp"] and c["config"]["user"] == "redis"
    # EXPOSE gives the linker Docker's variables, as --expose does; redis-cli from the same image
    r = _until(lambda: h.cli("run", "--rm", "--link", "cache:redis", "portlink/redis:7", "sh", "-c",
                             'redis-cli -h "$REDIS_PORT_6379_TCP_ADDR" -p "$REDIS_PORT_6379_TCP_PORT" ping'),
               "redis answering")
    assert r.stdout.strip() == "PONG"
    r = h.cli("run", "--rm", "--link", "cache:redis", "portlink/redis:7", "redis-cli", "-h", "redis",
              "set", "k", "v")
    assert r.stdout.strip() == "OK", r.stderr
    uid = h.cli("exec", "cache", "cat", "/proc/1/status", check=True).stdout
    assert any(l.split()[:2] == ["Uid:", "999"] for l in uid.splitlines())


def test_postgres_image_answers_psql_through_a_link(nft_host):
    h = nft_host
    h.cli("load", "-i", str(_built("postgres")), check=True)
    h.cli("run", "-d", "--name", "db", "portlink/postgres:15", check=True)
    assert h.client.get("/containers/db")["config"]["stop_signal"] == "SIGINT"
    r = _until(lambda: h.cli("run", "--rm", "--link", "db:db", "portlink/postgres:15",
                             "psql", "-h", "db", "-U", "postgres", "-Atc", "select 1"), "postgres answering", 90)
    assert r.stdout.strip() == "1"
    h.cli("stop", "db", check=True)
    assert h.client.get("/containers/db")["exit_code"] == 0       # SIGINT: PostgreSQL's fast shutdown
