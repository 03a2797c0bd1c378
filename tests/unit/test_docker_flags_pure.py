"""Docker's remaining flags and commands, their pure parts: --add-host, --dns-search,
--dns-option and --init in the spec and the plan, kill's signal names, top's ps
filtering and table, port's lines, cp's argument rules, and cp's path resolution
in a directory standing for a container's root."""

from __future__ import annotations

import io
import os
import signal
import tarfile
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from portlink.errors import Conflict, InvalidArgument, NotFound
from portlink.netns.model import NetworkSpec
from portlink.runtime import container_copy, hostopts, proc_table
from portlink.runtime.cli_cp import local_target, rebase, split_arg
from portlink.runtime.cli_ops import port_lines, private_port, tab_table
from portlink.runtime.client import CliError
from portlink.runtime.discovery import Seen, hosts_file, resolv_conf
from portlink.runtime.images import ImageConfig
from portlink.runtime.plan import INIT_PATH, Layout, plan_start
from portlink.runtime.records import CREATING, Container
from portlink.runtime.signals import parse_signal
from portlink.runtime.spec import ContainerSpec

NET = NetworkSpec(id="n1" * 32, name="front", subnet=ip_network("10.90.0.0/24"),
                  gateway=ip_address("10.90.0.1"), bridge="plb-n1n1n1n1n1n")


# -- --add-host -----------------------------------------------------------------------------

@pytest.mark.parametrize("text,want", [
    ("db:10.0.0.5", ("db", "10.0.0.5")),
    ("v6.local:::1", ("v6.local", "::1")),                 # split at the first ':' (Docker)
    ("my_host:2001:db8::1", ("my_host", "2001:db8::1")),
    ("gw:host-gateway", ("gw", "host-gateway")),
])
def test_add_host_parses_like_docker(text, want):
    assert hostopts.parse_add_host(text) == want


@pytest.mark.parametrize("text,message", [
    ("db", "bad format for add-host: 'db'"),
    (":10.0.0.1", "bad format for add-host: ':10.0.0.1'"),
    ("db:", "invalid IP address in add-host: ''"),
    ("db:10.0.0", "invalid IP address in add-host: '10.0.0'"),
    ("db:host-gateways", "invalid IP address in add-host: 'host-gateways'"),
    ("a b:10.0.0.1", "invalid host name in add-host: 'a b'"),
    ("a\nb:10.0.0.1", "invalid host name in add-host"),
    ("#x:10.0.0.1", "invalid host name in add-host: '#x'"),
])
def test_bad_add_host_named(text, message):
    with pytest.raises(InvalidArgument) as e:
        hostopts.parse_add_host(text)
    assert message in str(e.value)


def test_hosts_file_has_add_host_lines_after_localhost_before_itself():
    me = Seen(id="ab" * 32, name="web", hostname="webhost", network="front", ip="10.90.0.5",
              extra_hosts=("cache:10.1.2.3", "gw:host-gateway", "v6:::1"))
    assert hosts_file(me, {}, "10.90.0.1") == (
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        "10.1.2.3\tcache\n10.90.0.1\tgw\n::1\tv6\n10.90.0.5\twebhost web\n")


def test_spec_checks_the_flags_and_host_gateway_needs_a_network():
    spec = ContainerSpec.from_json({"image": "busybox", "add_hosts": ["a:1.2.3.4"], "dns_search": ["Example.COM."],
                                    "dns_options": ["ndots:2"], "init": True})
    assert spec.dns_search == ["Example.COM"] and spec.init is True
    with pytest.raises(InvalidArgument, match="network 'none' has no gateway"):
        ContainerSpec.from_json({"image": "busybox", "network": "none", "add_hosts": ["gw:host-gateway"]})
    with pytest.raises(InvalidArgument, match="field 'init' must be true or false"):
        ContainerSpec.from_json({"image": "busybox", "init": "yes"})
    with pytest.raises(InvalidArgument, match="field 'add_hosts' must be a list of strings"):
        ContainerSpec.from_json({"image": "busybox", "add_hosts": "a:1.2.3.4"})


# -- --dns-search, --dns-option ------------------------------------------------------------------

@pytest.mark.parametrize("text,want", [("example.com", "example.com"), ("example.com.", "example.com"),
                                       (" corp ", "corp"), (".", "."), ("a-1.b2.c", "a-1.b2.c")])
def test_dns_search_like_docker(text, want):
    assert hostopts.check_dns_search(text) == want


@pytest.mark.parametrize("text", ["-bad.com", "bad-.com", "123.456", "a..b", "a b", "a\nsearch evil", "", "x" * 300])
def test_bad_dns_search_named(text):
    with pytest.raises(InvalidArgument) as e:
        hostopts.check_dns_search(text)
    assert "is not a valid domain" in str(e.value)


@pytest.mark.parametrize("text", ["ndots:0", "ndots:15", "timeout:3", "attempts:5", "rotate", "edns0", "trust-ad"])
def test_dns_options_accepted(text):
    assert hostopts.check_dns_option(text) == text


@pytest.mark.parametrize("text,message", [
    ("ndots", "ndots takes a number"), ("ndots:16", "ndots:0 to ndots:15"), ("timeout:x", "timeout takes a number"),
    ("rotate:1", "not a resolv.conf option"), ("bogus", "not a resolv.conf option"),
    ("edns0\nnameserver 6.6.6.6", "not a resolv.conf option"),
])
def test_bad_dns_option_named(text, message):
    with pytest.raises(InvalidArgument) as e:
        hostopts.check_dns_option(text)
    assert repr(text) in str(e.value) and message in str(e.value)


def test_resolv_conf_in_docker_order():
    assert resolv_conf("10.90.0.1", [], ["a.example", "b.example"], ["timeout:2"]) == \
        "search a.example b.example\nnameserver 10.90.0.1\noptions timeout:2 ndots:0\n"
    # a user ndots over 0 wins; ndots:0 given is kept and the resolver's added (Docker's rule)
    assert resolv_conf("10.90.0.1", [], [], ["ndots:2"]) == "nameserver 10.90.0.1\noptions ndots:2\n"
    assert resolv_conf("10.90.0.1", [], [], ["ndots:0"]) == "nameserver 10.90.0.1\noptions ndots:0 ndots:0\n"
    assert resolv_conf("10.90.0.1", [], ["."], []) == "nameserver 10.90.0.1\noptions ndots:0\n"
    assert resolv_conf("10.90.0.1", []) == "nameserver 10.90.0.1\noptions ndots:0\n"   # unchanged
    # network none: the servers themselves, the user's options only
    assert resolv_conf(None, ["192.0.2.53"], ["x.example"], ["rotate"]) == \
        "search x.example\nnameserver 192.0.2.53\noptions rotate\n"


# -- --init in the plan ------------------------------------------------------------------------

def _container(**spec) -> Container:
    s = ContainerSpec(**{"image": "busybox", "name": "web", "hostname": "webhost", "cmd": ["sh", "-c", "x"],
                         "network": "front", **spec})
    return Container(id="ab" * 32, name="web", spec=s, exposed=(), status=CREATING)


def test_init_runs_tini_as_pid1_bound_read_only():
    c = _container(init=True, entrypoint=["/entry"], add_hosts=["gw:host-gateway"], dns_search=["corp"])
    plan = plan_start(c, ImageConfig(cmd=["sh"], env=[]), (0, 0), Layout(Path("/var/lib/pl")), NET,
                      ip_address("10.90.0.5"), [], {}, [], init_binary="/usr/bin/tini-static")
    assert plan.config["process"]["args"] == [INIT_PATH, "--", "/entry", "sh", "-c", "x"]
    m = [m for m in plan.config["mounts"] if m["destination"] == INIT_PATH]
    assert len(m) == 1 and m[0]["source"] == "/usr/bin/tini-static" and "ro" in m[0]["options"]
    assert "10.90.0.1\tgw\n" in plan.files["/etc/hosts"][1]
    assert plan.files["/etc/resolv.conf"][1] == "search corp\nnameserver 10.90.0.1\noptions ndots:0\n"
    plain = plan_start(_container(), ImageConfig(cmd=["sh"], env=[]), (0, 0), Layout(Path("/x")), NET,
                       ip_address("10.90.0.5"), [], {}, [])
    assert plain.config["process"]["args"] == ["sh", "-c", "x"]
    assert INIT_PATH not in [m["destination"] for m in plain.config["mounts"]]


# -- kill -s ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,want", [("KILL", 9), ("SIGKILL", 9), ("sigterm", 15), ("hup", 1), ("10", 10),
                                       (" USR2 ", 12), ("RTMIN+1", int(signal.SIGRTMIN) + 1),
                                       ("SIGRTMAX-1", int(signal.SIGRTMAX) - 1), ("CLD", 17)])
def test_signals_like_docker(text, want):
    assert parse_signal(text) == want


@pytest.mark.parametrize("text", ["0", "65", "-9", "SIGNOPE", "", "9x", "٩", "SIG"])
def test_unknown_signal_named(text):
    with pytest.raises(InvalidArgument) as e:
        parse_signal(text)
    assert f"invalid signal {text!r}" in str(e.value)


# -- top ----------------------------------------------------------------------------------------

PS = """UID          PID    PPID  C STIME TTY          TIME CMD
root           1       0  0 08:00 ?        00:00:01 /sbin/init
root         500     490  0 08:01 ?        00:00:00 sh -c sleep 1 & wait
root         501     500  0 08:01 ?        00:00:00 sleep 1
root         600       1  0 08:02 ?        00:00:00 other
"""


def test_top_keeps_the_containers_rows_and_the_command_whole():
    got = proc_table.parse_ps(PS, {500, 501})
    assert got["Titles"] == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert got["Processes"] == [["root", "500", "490", "0", "08:01", "?", "00:00:00", "sh -c sleep 1 & wait"],
                                ["root", "501", "500", "0", "08:01", "?", "00:00:00", "sleep 1"]]


def test_top_needs_a_pid_column_and_refuses_renaming_one_to_pid():
    with pytest.raises(InvalidArgument, match="PID"):
        proc_table.parse_ps("COMMAND\nsh\n", {1})
    assert proc_table.check_ps_args("-o pid,comm") == ["-o", "pid,comm"]
    assert proc_table.check_ps_args("-o pid=PID") == ["-o", "pid=PID"]
    with pytest.raises(InvalidArgument, match='specifying "comm=PID" is not allowed'):
        proc_table.check_ps_args("-o pid -o comm=PID")


def test_top_table_is_dockers_tabwriter():
    out = tab_table([["UID", "PID", "CMD"], ["root", "12345678901234567890", "sleep 1"]])
    assert out.splitlines() == ["UID" + " " * 17 + "PID" + " " * 20 + "CMD",
                                "root" + " " * 16 + "12345678901234567890   sleep 1"]


# -- port ---------------------------------------------------------------------------------------

PORTS = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}], "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "53"}],
         "443/tcp": [{"HostIp": "::", "HostPort": "8443"}, {"HostIp": "0.0.0.0", "HostPort": "8443"}]}


def test_port_lines_in_dockers_format_and_natural_order():
    assert port_lines(PORTS, "web") == ["53/udp -> 127.0.0.1:53", "80/tcp -> 0.0.0.0:8080",
                                        "443/tcp -> 0.0.0.0:8443", "443/tcp -> [::]:8443"]
    assert port_lines(PORTS, "web", "443") == ["[::]:8443", "0.0.0.0:8443"]
    assert port_lines(PORTS, "web", "53/udp") == ["127.0.0.1:53"]
    with pytest.raises(CliError, match="No public port '53/tcp' published for web"):
        port_lines(PORTS, "web", "53")
    assert private_port("80") == "80/tcp"
    assert private_port("80/") == "80/tcp"          # Docker: an empty protocol is tcp
    for bad in ("http", "0", "70000", "80/icmp", "/tcp"):
        with pytest.raises(CliError, match="invalid port"):
            private_port(bad)


# -- cp's arguments -------------------------------------------------------------------------------

@pytest.mark.parametrize("arg,want", [("web:/etc", ("web", "/etc")), ("web:", ("web", "/")), ("-", (None, "-")),
                                      ("./a:b", (None, "./a:b")), ("/x:y", (None, "/x:y")), ("file", (None, "file")),
                                      ("web:rel/p", ("web", "rel/p"))])
def test_cp_args_split_like_docker(arg, want):
    assert split_arg(arg) == want


def test_cp_rebase_renames_or_drops_the_top_entry():
    assert rebase("etc/passwd", "copy") == "copy/passwd"
    assert rebase("etc", "copy") == "copy"
    assert rebase("etc/passwd", None) == "passwd" and rebase("etc", None) is None
    assert rebase("./bin/sh", None) == "bin/sh"


def test_cp_local_destination_rules(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    assert local_target(str(tmp_path / "dir"), "file", False) == (str(tmp_path / "dir"), None)
    assert local_target(str(tmp_path / "dir"), "dir", True) == (str(tmp_path / "dir"), "")
    assert local_target(str(tmp_path / "file"), "file", False) == (str(tmp_path), "file")
    assert local_target(str(tmp_path / "new"), "dir", False) == (str(tmp_path), "new")
    with pytest.raises(CliError, match="cannot copy a directory to a file"):
        local_target(str(tmp_path / "file"), "dir", False)
    with pytest.raises(CliError, match="must exist"):
        local_target(str(tmp_path / "new") + "/", "file", False)
    with pytest.raises(CliError, match="no such directory"):
        local_target(str(tmp_path / "no" / "new"), "file", False)


# -- cp's path resolution in a directory standing for a container's root --------------------------

class _Root(container_copy.ContainerRoot):
    def __init__(self, path: Path) -> None:      # no process: the directory is the root
        self.name = "ctr"
        self.fd = os.open(path, os.O_PATH | os.O_DIRECTORY)


@pytest.fixture
def rootfs(tmp_path):
    root = tmp_path / "rootfs"
    outside = tmp_path / "outside"
    for d in (root / "etc", root / "tmp", outside):
        d.mkdir(parents=True)
    (root / "etc" / "hosts").write_text("in\n")
    (outside / "secret").write_text("host's\n")
    os.symlink("/etc", root / "abs")                                   # absolute: the container's /etc
    os.symlink("../../../../../../outside", root / "up")               # .. stops at the root
    os.symlink(str(outside), root / "hostpath")                        # the host's path, resolved inside
    os.symlink("../../../../tmp", root / "uptmp")                     # .. up to the root, then its /tmp
    return root, outside


def test_paths_resolve_inside_the_root(rootfs):
    root, outside = rootfs
    with _Root(root) as r:
        assert container_copy.stat_json(r, container_copy.CopyPath("/abs/hosts"))["size"] == 3
        assert container_copy.stat_json(r, container_copy.CopyPath("abs"))["linkTarget"] == "/etc"
        assert container_copy.stat_json(r, container_copy.CopyPath("/abs/"))["kind"] == "dir"
        with pytest.raises(NotFound):
            container_copy.stat_json(r, container_copy.CopyPath("/up/secret"))
        with pytest.raises(NotFound):
            container_copy.stat_json(r, container_copy.CopyPath("/hostpath/secret"))
        assert container_copy.stat_json(r, container_copy.CopyPath("/uptmp/"))["kind"] == "dir"
    # (a /proc magic link needs a mounted /proc: test_docker_flags.py covers it in a container)


def _tar(*members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            if isinstance(data, str):
                ti.type, ti.linkname = tarfile.SYMTYPE, data
                t.addfile(ti)
            elif data is None:
                ti.type = tarfile.DIRTYPE
                t.addfile(ti)
            else:
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def test_extract_replaces_planted_links_never_writes_through(rootfs, tmp_path):
    root, outside = rootfs
    os.symlink(str(outside / "secret"), root / "tmp" / "f")        # a planted link at the name
    os.symlink(str(outside), root / "tmp" / "d")                   # and at a directory's name
    tar = tmp_path / "in.tar"
    tar.write_bytes(_tar(("f", b"new\n"), ("d", None), ("d/g", b"g\n"), ("l", "/etc/hosts")))
    staging = tmp_path / "staging"
    staging.mkdir()
    with _Root(root) as r:
        assert container_copy.extract(r, container_copy.CopyPath("/uptmp"), tar, staging) == 4
    assert (outside / "secret").read_text() == "host's\n" and os.listdir(outside) == ["secret"]
    assert not (root / "tmp" / "f").is_symlink() and (root / "tmp" / "f").read_text() == "new\n"
    assert (root / "tmp" / "d" / "g").read_text() == "g\n" and not (root / "tmp" / "d").is_symlink()
    assert os.readlink(root / "tmp" / "l") == "/etc/hosts"
    assert os.listdir(staging) == []


@pytest.mark.parametrize("members,message", [
    ((("ok", b"1"), ("../x", b"2")), "contains '..'"),
    ((("ok", b"1"), ("s", "/etc"), ("s/x", b"2")), "which is a symlink"),
    ((("ok", b"1"), ("s", "../../x")), "escapes the image root"),
])
def test_extract_refuses_a_hostile_tar_before_touching_the_root(rootfs, tmp_path, members, message):
    root, _ = rootfs
    tar = tmp_path / "in.tar"
    tar.write_bytes(_tar(*members))
    staging = tmp_path / "staging"
    staging.mkdir()
    with _Root(root) as r, pytest.raises(InvalidArgument) as e:
        container_copy.extract(r, container_copy.CopyPath("/tmp"), tar, staging)
    assert message in str(e.value) and "refusing the archive" in str(e.value)
    assert os.listdir(root / "tmp") == [] and os.listdir(staging) == []


def test_extract_never_replaces_a_directory_with_a_file(rootfs, tmp_path):
    root, _ = rootfs
    tar = tmp_path / "in.tar"
    tar.write_bytes(_tar(("first", b"1"), ("etc", b"not a dir")))
    staging = tmp_path / "staging"
    staging.mkdir()
    with _Root(root) as r, pytest.raises(Conflict, match="cannot overwrite directory '/etc'"):
        container_copy.extract(r, container_copy.CopyPath("/"), tar, staging)
    assert not (root / "first").exists()          # checked before anything was placed


def test_archive_keeps_links_as_links_and_names_the_top(rootfs):
    root, _ = rootfs
    os.symlink("/hostpath/secret", root / "etc" / "trap")
    buf = io.BytesIO()
    with _Root(root) as r:
        container_copy.archive(r, container_copy.CopyPath("/abs/"), buf)     # followed: /etc
    buf.seek(0)
    with tarfile.open(fileobj=buf) as t:
        got = {m.name: (m.type, m.linkname) for m in t.getmembers()}
        assert t.extractfile("abs/hosts").read() == b"in\n"
    # named as asked (Docker: the base name of the path given), the links inside not followed
    assert got == {"abs": (tarfile.DIRTYPE, ""), "abs/hosts": (tarfile.REGTYPE, ""),
                   "abs/trap": (tarfile.SYMTYPE, "/hostpath/secret")}
