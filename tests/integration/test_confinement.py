"""Confinement by default (both firewall drivers): every container runs under
Docker's seccomp profile with Docker's capabilities minus CAP_NET_RAW;
--cap-add/--cap-drop and --security-opt change that, and bad values are refused
before anything is made."""

from __future__ import annotations

import sys

import pytest

import test_api_hostile as hostile
from helpers import in_container_ns
from portlink.runtime import security
from portlink.runtime.seccomp import DEFAULT_PROFILE

pytestmark = pytest.mark.root

# One ICMP echo over a datagram socket (what iputils ping does without CAP_NET_RAW):
# prints the reply's type, 0 (echo reply), or the error.
ICMP_DGRAM = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP); s.settimeout(3)
s.sendto(b"\x08\x00\x00\x00\x00\x00\x00\x01portlink", (sys.argv[1], 0))
print(s.recvfrom(64)[0][0])
"""


def status_field(h, name: str, field: str) -> str:
    out = h.cli("exec", name, "grep", f"^{field}:", "/proc/self/status", check=True).stdout
    return out.split(":", 1)[1].strip()


def cap_mask(caps) -> str:
    return f"{sum(1 << security.ALL_CAPS.index(c) for c in caps):016x}"


def test_default_confinement(host):
    host.cli("run", "-d", "--name", "c", "busybox", "sleep", "600", check=True)
    gw = host.client.get("/containers/c")["network"]["gateway"]
    assert status_field(host, "c", "Seccomp") == "2"            # a filter is on
    assert status_field(host, "c", "NoNewPrivs") == "1"
    assert status_field(host, "c", "CapEff") == cap_mask(security.DEFAULT_CAPS)
    assert "CAP_NET_RAW" not in security.DEFAULT_CAPS
    # A user namespace would give the container root over a new namespace and the
    # kernel surface behind it (nf_tables, mounts): refused, as keyrings are.
    r = host.cli("exec", "c", "unshare", "-Ur", "id")
    assert r.returncode != 0 and "uid=0" not in r.stdout and "not permitted" in r.stderr, (r.stdout, r.stderr)
    for argv in (["mount", "-t", "tmpfs", "tmpfs", "/tmp"], ["unshare", "-m", "true"], ["unshare", "-n", "true"],
                 ["hostname", "other"], ["ip", "link", "add", "d0", "type", "dummy"]):
        r = host.cli("exec", "c", *argv)
        assert r.returncode != 0 and ("not permitted" in r.stderr or "permission denied" in r.stderr), \
            (argv, r.stdout, r.stderr)
    # No raw sockets: busybox's ping (1.35) only knows raw ICMP sockets.
    r = host.cli("exec", "c", "ping", "-c", "1", "-W", "3", gw)
    assert r.returncode != 0 and "permission denied" in r.stderr, r.stderr
    r = host.cli("exec", "c", "arping", "-c", "1", "-w", "2", "-I", "eth0", gw)
    assert r.returncode != 0, r.stdout
    # ...but ping by ICMP datagram sockets works for any user in the container's netns.
    assert host.cli("exec", "c", "cat", "/proc/sys/net/ipv4/ping_group_range",
                    check=True).stdout.split() == ["0", "2147483647"]
    r = in_container_ns(host, "c", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-c", ICMP_DGRAM, gw)
    assert r.stdout.strip() == "0", r.stderr
    sec = host.client.get("/containers/c")["security"]
    assert sec == {"seccomp": DEFAULT_PROFILE, "capabilities": security.capabilities([], []),
                   "no_new_privileges": True, "sysctl": {"net.ipv4.ping_group_range": "0 2147483647"}}


def test_cap_add_net_raw_gives_raw_sockets_back(host):
    host.cli("run", "-d", "--name", "raw", "--cap-add", "net_raw", "--cap-drop", "CAP_MKNOD",
             "busybox", "sleep", "600", check=True)
    gw = host.client.get("/containers/raw")["network"]["gateway"]
    r = host.cli("exec", "raw", "ping", "-c", "1", "-W", "3", gw)
    assert r.returncode == 0, r.stderr
    want = [c for c in security.ALL_CAPS if c in security.DEFAULT_CAPS and c != "CAP_MKNOD" or c == "CAP_NET_RAW"]
    assert status_field(host, "raw", "CapEff") == cap_mask(want)
    assert host.client.get("/containers/raw")["security"]["capabilities"] == want


def test_unconfined_with_sys_admin_is_the_switch(host):
    host.cli("run", "-d", "--name", "free", "--security-opt", "seccomp=unconfined", "--cap-add", "SYS_ADMIN",
             "--security-opt", "no-new-privileges", "busybox", "sleep", "600", check=True)
    assert status_field(host, "free", "Seccomp") == "0"
    r = host.cli("exec", "free", "sh", "-c", "unshare -m true && mount -t tmpfs tmpfs /tmp && echo ok")
    assert r.stdout.strip() == "ok", r.stderr
    assert host.client.get("/containers/free")["security"]["seccomp"] == "unconfined"


def test_a_profile_file_of_ones_own(host, tmp_path):
    # The same format as the default, read by the daemon: here, one that refuses mkdir.
    prof = tmp_path / "nomkdir.json"
    prof.write_text('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"], '
                    '"action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}')
    host.cli("run", "-d", "--name", "own", "--security-opt", f"seccomp={prof}", "busybox", "sleep", "600",
             check=True)
    r = host.cli("exec", "own", "mkdir", "/tmp/x")
    assert r.returncode != 0 and "Operation not permitted" in r.stderr, r.stderr
    assert host.cli("exec", "own", "touch", "/tmp/x").returncode == 0


def test_bad_confinement_is_refused_and_leaves_nothing(host, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    before = hostile.state(host)
    for body, needles in [
        ({"cap_add": ["FOO"]}, ["--cap-add 'FOO': unknown capability"]),
        ({"cap_drop": ["CAP_NOPE"]}, ["--cap-drop 'CAP_NOPE': unknown capability"]),
        ({"security_opt": ["seccomp=/nonexistent/profile.json"]},
         ["seccomp profile '/nonexistent/profile.json' cannot be read"]),
        ({"security_opt": [f"seccomp={bad}"]}, [f"seccomp profile '{bad}' is not JSON"]),
        ({"security_opt": ["apparmor=unconfined"]}, ["--security-opt 'apparmor=unconfined' is not supported"]),
    ]:
        status, answer = hostile.post(host, "/containers", {"image": "busybox", "cmd": ["true"], **body})
        hostile.assert_rejected(host, before, status, answer, *needles)
    r = host.cli("run", "-d", "--cap-add", "FOO", "busybox", "true")
    assert r.returncode != 0 and "'FOO'" in r.stderr and "Traceback" not in r.stderr
    assert hostile.state(host) == before
    hostile.assert_daemon_log_clean(host)
