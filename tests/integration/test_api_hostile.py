"""Hostile input to the daemon's API, over the real UNIX socket with raw HTTP:
malformed and oversized bodies, unknown fields, wrong types, hostile names and
values. Each is a 4xx JSON error naming the problem, never a 500 or a traceback
in the daemon's log, and nothing is created. And no shell ever sees a command."""

from __future__ import annotations

import http.client
import json
import socket

import pytest

from conftest import snapshot
from helpers import container_env, wait_for

pytestmark = pytest.mark.root

LIMIT = 1 << 20   # the daemon's MAX_BODY


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=60)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(60)
        s.connect(self.unix_path)
        self.sock = s


def raw(h, method: str, path: str, body: bytes | None = None, chunked: bool = False) -> tuple[int, dict]:
    """One request with exactly these bytes; the answer must be a JSON object."""
    conn = _Unix(h.socket)
    try:
        headers = {"Content-Type": "application/json"}
        if chunked:
            conn.putrequest(method, path)
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            try:
                for i in range(0, len(body), 64 << 10):
                    piece = body[i:i + (64 << 10)]
                    conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                conn.send(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass   # the daemon may answer and close before the whole body is sent
        else:
            conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        text = resp.read()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            raise AssertionError(f"{method} {path}: {resp.status} with a non-JSON body {text[:200]!r}") from None
    finally:
        conn.close()


def post(h, path: str, obj) -> tuple[int, dict]:
    return raw(h, "POST", path, json.dumps(obj).encode())


def state(h) -> dict:
    """What a request could have made: containers, networks, images, netns, links, rules."""
    snap = snapshot(h)
    snap["networks"] = sorted(n["name"] for n in h.client.get("/networks"))
    snap["images"] = sorted(i["name"] for i in h.client.get("/images"))
    snap["image_dirs"] = sorted(p.name for p in (h.state_dir / "images").iterdir())
    return snap


def assert_daemon_log_clean(h) -> None:
    log = h.daemon_log()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]


def assert_rejected(h, before: dict, status: int, body: dict, *needles: str, code: int = 400) -> None:
    assert status == code, (status, body)
    assert set(body) == {"error"} and isinstance(body["error"], str)
    for n in needles:
        assert n in body["error"], (n, body["error"])
    assert state(h) == before


# -- bodies ---------------------------------------------------------------------


MALFORMED = [
    (b"{bad", "malformed JSON"),
    (b"{\"image\": \"busybox\",}", "malformed JSON"),
    (b"{} trailing", "malformed JSON"),
    (b"\xff\xfe\x00garbage", "malformed JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nested too deeply"),
    (b'{"image": "busybox", "x": ' + b"9" * 5000 + b"}", "malformed JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'"busybox"', "must be a JSON object"),
    (b"null", "must be a JSON object"),
    (b"42", "must be a JSON object"),
    (b'{"image": "busybox", "name": "\\ud800"}', "surrogate"),
    (b'{"\\udfff": 1}', "surrogate"),
]


def test_malformed_bodies_are_400_on_every_endpoint(nft_host):
    h = nft_host
    before = state(h)
    for path in ("/containers", "/networks", "/images", "/containers/nosuch/exec"):
        for body, needle in MALFORMED:
            status, answer = raw(h, "POST", path, body)
            assert_rejected(h, before, status, answer, needle)
    assert_daemon_log_clean(h)


def test_huge_bodies_are_413(nft_host):
    h = nft_host
    before = state(h)
    big = json.dumps({"image": "busybox", "cmd": ["echo", "x" * (2 * LIMIT)]}).encode()
    for chunked in (False, True):
        status, answer = raw(h, "POST", "/containers", big, chunked=chunked)
        assert_rejected(h, before, status, answer, f"request body too large (limit {LIMIT} bytes)", code=413)
    # just under the limit is parsed (and then judged on its content)
    fits = json.dumps({"image": "busybox", "cmd": ["true"], "labels": {"k": "x" * (LIMIT - 200)}}).encode()
    assert len(fits) < LIMIT
    status, answer = raw(h, "POST", "/containers", fits)
    assert_rejected(h, before, status, answer, "invalid value of label k")
    assert h.client.get("/_ping")["ok"] is True   # the daemon is still there
    assert_daemon_log_clean(h)


def test_unknown_paths_and_methods_are_json_errors(nft_host):
    h = nft_host
    before = state(h)
    status, answer = raw(h, "GET", "/nope")
    assert_rejected(h, before, status, answer, "Not Found", "/nope", code=404)
    status, answer = raw(h, "PUT", "/containers", b"{}")
    assert_rejected(h, before, status, answer, "Method Not Allowed", code=405)
    status, answer = raw(h, "DELETE", "/images/..%2f..%2fetc")
    assert status in (400, 404) and "error" in answer
    assert_daemon_log_clean(h)


# -- fields: unknown, wrong types, hostile values ------------------------------------


BAD_REQUESTS = [
    # unknown fields, named
    ("/containers", {"image": "busybox", "bogus": 1, "Cmd": ["x"]}, "unknown field(s) in the container spec: Cmd, bogus"),
    ("/containers", {"image": "busybox", "ambassador": {"service": "db", "evil": 1}}, "unknown field(s) in 'ambassador': evil"),
    ("/networks", {"name": "n1", "mtu": 9000}, "unknown field(s): mtu"),
    ("/images", {"path": "/x.tar", "name": "x", "cmd": ["sh"]}, "unknown field(s): cmd"),
    # wrong types
    ("/containers", {"image": "busybox", "env": "x"}, "field 'env' must be a list of strings"),
    ("/containers", {"image": "busybox", "publish": 5}, "field 'publish' must be a list of strings"),
    ("/containers", {"image": "busybox", "cmd": [1, 2]}, "field 'cmd' must be a list of strings"),
    ("/containers", {"image": "busybox", "labels": ["a=b"]}, "field 'labels' must map strings to strings"),
    ("/containers", {"image": "busybox", "rm": "yes"}, "field 'rm' must be true or false"),
    ("/containers", {"image": 5}, "field 'image' must be a string"),
    ("/containers", {"image": "busybox", "name": None}, "field 'name' must be a string"),
    ("/containers", {"image": "busybox", "ambassador": "db"}, "field 'ambassador' must be an object"),
    ("/networks", {"name": ["n1"]}, "invalid network name"),
    ("/networks", {"name": "n1", "subnet": 5}, "field 'subnet' must be a string"),
    ("/networks", {"name": "n1", "subnet": "10.99.0.0/24", "gateway": 5}, "field 'gateway' must be a string"),
    ("/images", {"path": 5, "name": "x"}, "invalid tar path 5"),
    ("/images", {"path": "/x.tar", "name": 5}, "invalid image name 5"),
    ("/images", {"name": "x"}, "invalid tar path None"),
    # names: path separators, .., metacharacters, NUL, newlines, length
    ("/containers", {"image": "busybox", "name": "a/b"}, "invalid container name 'a/b'"),
    ("/containers", {"image": "busybox", "name": ".."}, "invalid container name '..'"),
    ("/containers", {"image": "busybox", "name": "web;rm -rf /"}, "invalid container name"),
    ("/containers", {"image": "busybox", "name": "$(touch x)"}, "invalid container name"),
    ("/containers", {"image": "busybox", "name": "web\u0000x"}, "invalid container name"),
    ("/containers", {"image": "busybox", "name": "web\n"}, "invalid container name"),
    ("/containers", {"image": "busybox", "name": "w" * 64}, "invalid container name"),
    ("/containers", {"image": "../../etc"}, "invalid image name '../../etc'"),
    ("/containers", {"image": "busybox\n"}, "invalid image name"),
    ("/containers", {"image": "busybox", "network": "../x"}, "invalid network name '../x'"),
    ("/containers", {"image": "busybox", "network": "n\u0000"}, "invalid network name"),
    ("/containers", {"image": "busybox", "hostname": "a;b"}, "invalid hostname 'a;b'"),
    ("/containers", {"image": "busybox", "hostname": "h" * 64}, "invalid hostname"),
    ("/containers", {"image": "busybox", "hostname": "web\nx"}, "invalid hostname"),
    ("/containers", {"image": "busybox", "aliases": ["a/b"]}, "invalid network alias name 'a/b'"),
    ("/containers", {"image": "busybox", "links": ["../db"]}, "invalid --link '../db'"),
    ("/containers", {"image": "busybox", "links": ["db:a b"]}, "invalid link alias name 'a b'"),
    ("/networks", {"name": "a/b"}, "invalid network name 'a/b'"),
    ("/networks", {"name": ".."}, "invalid network name '..'"),
    ("/networks", {"name": "n;reboot"}, "invalid network name"),
    ("/networks", {"name": "n" * 64}, "invalid network name"),
    ("/networks", {"name": "none"}, "reserved"),
    ("/networks", {"name": "n1", "subnet": "0.0.0.0/0"}, "invalid subnet"),
    ("/networks", {"name": "n1", "subnet": "10.99.0.0/33"}, "invalid subnet"),
    ("/networks", {"name": "n1", "subnet": "10.99.0.0/24\n"}, "invalid subnet"),
    ("/images", {"path": "/x.tar", "name": "../x"}, "invalid image name '../x'"),
    ("/images", {"path": "/x.tar", "name": "Upper"}, "invalid image name"),
    ("/images", {"path": "relative.tar", "name": "x"}, "invalid tar path 'relative.tar'"),
    ("/images", {"path": "/tmp/a\u0000b.tar", "name": "x"}, "invalid tar path"),
    ("/images", {"path": "/dev/zero", "name": "x"}, "/dev/zero: not a regular file"),
    ("/images", {"path": "/etc", "name": "x"}, "/etc: not a regular file"),
    # env, labels, dns, ports, workdir, cmd
    ("/containers", {"image": "busybox", "env": ["A=1\nB=2"]}, "invalid environment value for A"),
    ("/containers", {"image": "busybox", "env": ["A=\u0000"]}, "invalid environment value for A"),
    ("/containers", {"image": "busybox", "env": ["A\nB=1"]}, "invalid environment entry"),
    ("/containers", {"image": "busybox", "env": ["=1"]}, "invalid environment entry"),
    ("/containers", {"image": "busybox", "labels": {"a b": "c"}}, "invalid label key 'a b'"),
    ("/containers", {"image": "busybox", "labels": {"k": "v\n"}}, "invalid value of label k"),
    ("/containers", {"image": "busybox", "labels": {"k": "v\u0000"}}, "invalid value of label k"),
    ("/containers", {"image": "busybox", "labels": {"portlink.service": "Bad Name"}}, "portlink.service"),
    ("/containers", {"image": "busybox", "dns": ["8.8.8.8; rm -rf /"]}, "invalid --dns"),
    ("/containers", {"image": "busybox", "dns": ["dns.example"]}, "invalid --dns 'dns.example'"),
    ("/containers", {"image": "busybox", "publish": ["70000:80"]}, "invalid port '70000'"),
    ("/containers", {"image": "busybox", "publish": ["80:0"]}, "invalid port '0'"),
    ("/containers", {"image": "busybox", "publish": ["-1:80"]}, "invalid"),
    ("/containers", {"image": "busybox", "publish": ["80/sctp"]}, "sctp"),
    ("/containers", {"image": "busybox", "expose": ["99999"]}, "invalid port '99999'"),
    ("/containers", {"image": "busybox", "workdir": "relative"}, "invalid workdir 'relative'"),
    ("/containers", {"image": "busybox", "cmd": ["echo", "a\u0000b"]}, "invalid cmd: argument 1"),
    ("/containers", {"image": "busybox", "user": "root\n"}, "invalid --user"),
    ("/containers", {"image": "busybox", "user": "nosuchuser"}, "unknown user 'nosuchuser'"),
]


def test_bad_fields_are_400_naming_the_field_and_create_nothing(nft_host):
    h = nft_host
    h.client.get("/networks/bridge")   # the default network exists before the snapshot
    before = state(h)
    assert before["networks"] == ["bridge"] and before["images"] == ["busybox"]
    for path, obj, needle in BAD_REQUESTS:
        status, answer = post(h, path, obj)
        assert status == 400, (path, obj, status, answer)
        assert needle in answer["error"], (path, obj, answer)
    after = wait_for(lambda: (lambda s: s if s == before else None)(state(h)), timeout=10) or state(h)
    assert after == before
    assert h.cli("ps", "-a", "-q").stdout.strip() == ""
    assert_daemon_log_clean(h)


# -- no shell, anywhere -------------------------------------------------------------------


def test_commands_and_env_are_passed_literally(nft_host):
    """Shell syntax in a command, an env value or an exec is data: busybox echo prints
    it back verbatim, and the files the payloads would `touch` never appear, neither
    on the host nor in the container."""
    h = nft_host
    host_marker = h.workdir / "pwned-host"
    payloads = [f"$(touch {host_marker})", f"`touch {host_marker}`", f"; touch {host_marker}",
                f"&& touch {host_marker}", f"| touch {host_marker}", "$(touch /tmp/pwned-in)",
                "`touch /tmp/pwned-in`", "; touch /tmp/pwned-in", "$HOME", "*", "'\"", "a\nb"]
    r = h.cli("run", "--rm", "busybox", "echo", *payloads)
    assert r.returncode == 0, r.stderr
    assert r.stdout == " ".join(payloads) + "\n"

    env = [f"P{i}={p}" for i, p in enumerate(payloads) if "\n" not in p]
    args = [a for e in env for a in ("-e", e)]
    h.cli("run", "-d", "--name", "lit", *args, "busybox", "sleep", "600", check=True)
    got = container_env(h, "lit")
    assert all(e in got for e in env), got
    r = h.cli("exec", "lit", "echo", *payloads)
    assert r.returncode == 0 and r.stdout == " ".join(payloads) + "\n", r.stderr
    r = h.cli("exec", "-e", f"X=$(touch {host_marker})", "lit", "env")
    assert f"X=$(touch {host_marker})" in r.stdout.splitlines(), (r.stdout, r.stderr)
    listing = h.cli("exec", "lit", "ls", "-a", "/tmp").stdout.split()
    assert "pwned-in" not in listing and "pwned-host" not in listing
    assert not host_marker.exists()
    assert not list(h.workdir.rglob("pwned-*"))
    assert_daemon_log_clean(h)


def test_exec_and_network_bodies_are_type_checked(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "c", "busybox", "sleep", "600", check=True)
    for obj, needle in [({"cmd": "id"}, "cmd"), ({"cmd": [1]}, "cmd"), ({"cmd": ["id"], "tty": "yes"}, "tty"),
                        ({"cmd": ["id"], "env": ["A=1\nB=2"]}, "value for A"), ({"cmd": ["id"], "colour": 1}, "colour"),
                        ({"cmd": ["id"], "workdir": "rel/dir"}, "workdir")]:
        status, answer = post(h, "/containers/c/exec", obj)
        assert status == 400 and needle in answer["error"], (obj, status, answer)
    before = h.client.get("/networks")
    for obj, needle in [({"name": "n1", "internal": "no"}, "internal"), ({"name": "n1", "icc": 0}, "icc")]:
        status, answer = post(h, "/networks", obj)
        assert status == 400 and needle in answer["error"], (obj, status, answer)
    assert h.client.get("/networks") == before
    assert_daemon_log_clean(h)
