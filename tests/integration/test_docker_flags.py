"""Docker's remaining flags and commands with real runc and busybox on a simulated
host: --add-host, --dns-search, --dns-option, --init, port, kill -s, wait, top, cp."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile

import pytest

from helpers import wait_for

pytestmark = pytest.mark.root


def ok(r) -> str:
    assert r.returncode == 0, r.stderr
    return r.stdout


def running(h, name: str, *args: str) -> None:
    ok(h.cli("run", "-d", "--name", name, *args))


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        return t.getnames()


# -- /etc/hosts and /etc/resolv.conf ----------------------------------------------------------

def test_add_host_dns_search_and_options_in_the_files(nft_host):
    h = nft_host
    running(h, "db", "busybox", "sleep", "600")
    running(h, "web", "--add-host", "cache.local:10.1.2.3", "--add-host", "v6:::1", "--add-host", "gw:host-gateway",
            "--link", "db", "--dns-search", "example.com", "--dns-search", "corp.example.", "--dns-option", "timeout:2",
            "busybox", "sleep", "600")
    info = h.client.get("/containers/web")
    gw, ip = info["network"]["gateway"], info["network"]["ip"]
    hosts = ok(h.cli("exec", "web", "cat", "/etc/hosts")).splitlines()
    assert hosts[:5] == ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
                         "10.1.2.3\tcache.local", "::1\tv6", f"{gw}\tgw"]
    assert hosts[5] == f"{ip}\t{info['config']['hostname']} web"
    assert hosts[6].split()[1] == "db"
    # Docker's resolvconf.Build order; the user's options first, then the resolver's ndots:0
    assert ok(h.cli("exec", "web", "cat", "/etc/resolv.conf")) == \
        f"search example.com corp.example\nnameserver {gw}\noptions timeout:2 ndots:0\n"
    # the hosts file is rewritten when the link target stops: the --add-host lines stay
    ok(h.cli("stop", "-t", "1", "db"))

    def hosts_now():
        return ok(h.cli("exec", "web", "cat", "/etc/hosts")).splitlines()
    assert wait_for(lambda: len(hosts_now()) == 6)
    assert hosts_now() == hosts[:6]
    # a user ndots over 0 replaces the resolver's
    running(h, "nd", "--dns-option", "ndots:3", "--dns-search", ".", "busybox", "sleep", "600")
    assert ok(h.cli("exec", "nd", "cat", "/etc/resolv.conf")) == f"nameserver {gw}\noptions ndots:3\n"


@pytest.mark.parametrize("flag,value,message", [
    ("--add-host", "nocolon", "bad format for add-host: 'nocolon'"),
    ("--add-host", "db:10.0.0", "invalid IP address in add-host: '10.0.0'"),
    ("--add-host", "bad\nname:10.0.0.1", "invalid host name in add-host"),
    ("--dns-search", "-bad-.com", "-bad-.com is not a valid domain"),
    ("--dns-option", "ndots:x", "invalid --dns-option 'ndots:x'"),
    ("--dns-option", "rotate\noptions debug", "not a resolv.conf option"),
])
def test_bad_flags_refused_and_nothing_left(nft_host, flag, value, message):
    h = nft_host
    r = h.cli("run", "-d", "--name", "bad", f"{flag}={value}", "busybox", "true")
    assert r.returncode == 125 and message in r.stderr
    assert h.client.get("/containers", all="1") == []
    assert not list((h.state_dir / "containers").iterdir())


def test_host_gateway_needs_a_network(nft_host):
    r = nft_host.cli("run", "--net", "none", "--add-host", "gw:host-gateway", "busybox", "true")
    assert r.returncode == 125 and "network 'none' has no gateway" in r.stderr


# -- --init ------------------------------------------------------------------------------------

def test_init_is_pid1_forwards_stop_and_reaps(nft_host):
    h = nft_host
    # A shell as PID 1 ignores SIGTERM (no handler): without --init only the KILL ends it (137).
    script = "for i in 1 2 3; do (sleep 0 &); done; sleep 600 & wait"
    running(h, "plain", "busybox", "sh", "-c", script)
    running(h, "inited", "--init", "busybox", "sh", "-c", script)
    assert ok(h.cli("exec", "inited", "cat", "/proc/1/cmdline")).split("\0")[:2] == ["/sbin/docker-init", "--"]
    assert ok(h.cli("exec", "plain", "cat", "/proc/1/cmdline")).split("\0")[0] == "sh"
    mounts = ok(h.cli("exec", "inited", "cat", "/proc/mounts"))
    assert any(l.split()[1] == "/sbin/docker-init" and "ro" in l.split()[3].split(",") for l in mounts.splitlines())

    def zombies(name):
        out = ok(h.cli("exec", name, "sh", "-c", "cat /proc/[0-9]*/stat 2>/dev/null"))
        return [l for l in out.splitlines() if l.split(") ", 1)[1].startswith("Z")]
    # tini reaps the orphans the subshells left
    assert wait_for(lambda: not zombies("inited"), timeout=10)
    # tini forwards the TERM of `stop` to the shell (not PID 1 there): it ends by that signal
    ok(h.cli("stop", "-t", "120", "inited"))
    assert h.client.get("/containers/inited")["exit_code"] == 143
    ok(h.cli("stop", "-t", "1", "plain"))
    assert h.client.get("/containers/plain")["exit_code"] == 137


# -- port, kill, wait, top -------------------------------------------------------------------

def test_port_lists_mappings_in_docker_format(nft_host):
    h = nft_host
    running(h, "web", "-p", "18080:80", "-p", "127.0.0.1:18053:53/udp", "-p", "18443:443", "busybox", "sleep", "600")
    assert ok(h.cli("port", "web")).splitlines() == [
        "53/udp -> 127.0.0.1:18053", "80/tcp -> 0.0.0.0:18080", "443/tcp -> 0.0.0.0:18443"]
    assert ok(h.cli("port", "web", "80")) == "0.0.0.0:18080\n"
    assert ok(h.cli("port", "web", "53/udp")) == "127.0.0.1:18053\n"
    r = h.cli("port", "web", "81/tcp")
    assert r.returncode == 125 and "No public port '81/tcp' published for web" in r.stderr
    r = h.cli("port", "web", "http")
    assert r.returncode == 125 and "invalid port 'http'" in r.stderr
    ok(h.cli("stop", "-t", "0", "web"))
    assert ok(h.cli("port", "web")) == ""


def test_kill_signals_and_wait_codes(nft_host):
    h = nft_host
    # the shell traps HUP and USR1 and exits with a code naming the signal it got
    running(h, "t", "busybox", "sh", "-c", "trap 'exit 11' HUP; trap 'exit 12' USR1; sleep 600 & wait")
    waiter = subprocess.Popen([*h_cli(h), "wait", "t"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert ok(h.cli("kill", "-s", "SIGHUP", "t")) == "t\n"
        out, err = waiter.communicate(timeout=60)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert (waiter.returncode, out) == (0, "11\n"), err
    running(h, "u", "busybox", "sh", "-c", "trap 'exit 12' USR1; sleep 600 & wait")
    ok(h.cli("kill", "-s", "10", "u"))            # a number
    running(h, "k", "busybox", "sleep", "600")
    ok(h.cli("kill", "k"))                        # KILL by default
    assert ok(h.cli("wait", "u", "k")) == "12\n137\n"
    r = h.cli("kill", "-s", "SIGNOPE", "k")
    assert r.returncode == 125 and "invalid signal 'SIGNOPE'" in r.stderr
    r = h.cli("kill", "k")
    assert r.returncode == 125 and "it is not running" in r.stderr
    r = h.cli("wait", "nosuch")
    assert r.returncode == 125 and "nosuch" in r.stderr


def h_cli(h) -> list[str]:
    from portlink.lab.sandbox import VENV_BIN
    return ["env", f"PORTLINK_HOST={h.socket}", str(VENV_BIN / "portlink")]


def test_kill_with_restart_policy_stays_down(nft_host):
    h = nft_host
    running(h, "r", "--restart", "always", "busybox", "sleep", "600")
    ok(h.cli("kill", "r"))
    assert ok(h.cli("wait", "r")) == "137\n"
    info = h.client.get("/containers/r")
    assert info["status"] == "exited" and info["RestartCount"] == 0


def test_wait_returns_at_the_exit_even_when_the_policy_restarts(nft_host):
    h = nft_host
    running(h, "f", "--restart", "on-failure:1", "busybox", "sh", "-c", "sleep 1; exit 3")
    assert ok(h.cli("wait", "f")) == "3\n"
    # --rm: the code of a container removed at its exit (its die event's), asked while it runs
    running(h, "gone", "--rm", "busybox", "sh", "-c", "sleep 5; exit 4")
    r = h.cli("wait", "gone")
    assert (r.returncode, r.stdout) == (0, "4\n"), r.stderr


def test_top_shows_the_containers_processes(nft_host):
    h = nft_host
    running(h, "t", "busybox", "sh", "-c", "sleep 601 & sleep 602 & wait")
    running(h, "other", "busybox", "sleep", "603")
    out = ok(h.cli("top", "t")).splitlines()
    head = out[0].split()
    assert head == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert out[0].startswith("UID" + " " * 17 + "PID")          # Docker's tabwriter: 20 wide
    cmds = sorted(l.split(None, 7)[7] for l in out[1:])
    assert cmds == ["sh -c sleep 601 & sleep 602 & wait", "sleep 601", "sleep 602"]
    pid = h.client.get("/containers/t")["pid"]
    assert str(pid) in [l.split()[1] for l in out[1:]]           # host pids, as Docker shows
    out = ok(h.cli("top", "t", "-o", "pid,comm")).splitlines()
    assert out[0].split() == ["PID", "COMMAND"] and sorted(l.split()[1] for l in out[1:]) == ["sh", "sleep", "sleep"]
    r = h.cli("top", "t", "-o", "comm")
    assert r.returncode == 125 and "PID" in r.stderr
    ok(h.cli("stop", "-t", "0", "t"))
    r = h.cli("top", "t")
    assert r.returncode == 125 and "not running" in r.stderr


# -- cp ------------------------------------------------------------------------------------------

def test_cp_both_directions_with_docker_rules(nft_host, tmp_path):
    h = nft_host
    running(h, "c", "-v", "vol:/data", "busybox", "sleep", "600")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "b.txt").write_text("beta\n")
    os.symlink("a.txt", src / "link")
    # a file into an existing directory, then under a new name
    ok(h.cli("cp", str(src / "a.txt"), "c:/tmp"))
    ok(h.cli("cp", str(src / "a.txt"), "c:/tmp/renamed"))
    assert ok(h.cli("exec", "c", "cat", "/tmp/a.txt", "/tmp/renamed")) == "alpha\nalpha\n"
    assert ok(h.cli("exec", "c", "stat", "-c", "%u:%g", "/tmp/a.txt")) == "0:0\n"
    # a directory: into an existing one by its name; to a new path as that path
    ok(h.cli("cp", str(src), "c:/tmp"))
    ok(h.cli("cp", str(src), "c:/tmp/copy"))
    ok(h.cli("cp", str(src) + "/.", "c:/data"))               # contents, into the volume
    assert ok(h.cli("exec", "c", "cat", "/tmp/src/sub/b.txt", "/tmp/copy/sub/b.txt", "/data/sub/b.txt")) == \
        "beta\nbeta\nbeta\n"
    assert ok(h.cli("exec", "c", "readlink", "/tmp/src/link")) == "a.txt\n"
    vol = h.state_dir / "volumes" / "plvol-vol" / "_data"
    assert (vol / "a.txt").read_text() == "alpha\n"             # landed in the volume
    # out: a file, a directory, contents, a tar on stdout
    out = tmp_path / "out"
    out.mkdir()
    ok(h.cli("cp", "c:/tmp/renamed", str(out)))
    ok(h.cli("cp", "c:/tmp/src", str(out / "tree")))
    ok(h.cli("cp", "c:/data/.", str(out / "tree")))
    assert (out / "renamed").read_text() == "alpha\n"
    assert (out / "tree" / "sub" / "b.txt").read_text() == "beta\n"
    assert os.readlink(out / "tree" / "link") == "a.txt"
    p = subprocess.run([*h_cli(h), "cp", "c:/tmp/src", "-"], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert sorted(tar_names(p.stdout)) == ["src", "src/a.txt", "src/link", "src/sub", "src/sub/b.txt"]
    # a tar on stdin
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        ti = tarfile.TarInfo("fromstdin.txt")
        ti.size = 3
        t.addfile(ti, io.BytesIO(b"in\n"))
    p = subprocess.run([*h_cli(h), "cp", "-", "c:/tmp"], input=buf.getvalue(), capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert ok(h.cli("exec", "c", "cat", "/tmp/fromstdin.txt")) == "in\n"
    # Docker's errors
    r = h.cli("cp", str(src), "c:/tmp/a.txt")
    assert r.returncode == 125 and "cannot copy a directory to a file" in r.stderr
    r = h.cli("cp", "c:/nope", str(out))
    assert r.returncode == 125 and "no such file or directory" in r.stderr and "/nope" in r.stderr
    r = h.cli("cp", str(src / "a.txt"), "c:/nodir/")
    assert r.returncode == 125 and "must exist" in r.stderr


def test_cp_never_follows_planted_links_out(nft_host, tmp_path):
    h = nft_host
    running(h, "ev", "-v", "shared:/shared", "busybox", "sleep", "600")
    # the container plants links: to the host's /etc through an absolute path, up and
    # out with .., and through /proc's magic links
    ok(h.cli("exec", "ev", "sh", "-c",
             "ln -s /etc /abs && ln -s ../../../../../../../../tmp /up && ln -s /proc/1/root /magic && "
             "mkdir -p /d && ln -s /shared /d/tovol && echo secret-of-ctr > /etc/ctr-only"))
    f = tmp_path / "payload"
    f.write_text("x\n")
    assert not os.path.exists("/etc/payload") and not os.path.exists("/tmp/payload")
    ok(h.cli("cp", str(f), "ev:/abs/"))              # resolves inside: the container's /etc
    ok(h.cli("cp", str(f), "ev:/up/"))               # the container's /tmp
    assert not os.path.exists("/etc/payload") and not os.path.exists("/tmp/payload")
    assert ok(h.cli("exec", "ev", "cat", "/etc/payload", "/tmp/payload")) == "x\nx\n"
    r = h.cli("cp", str(f), "ev:/magic/")
    assert r.returncode == 125 and "magic link" in r.stderr
    # nor into the kernel's files through a plain link to them
    ok(h.cli("exec", "ev", "ln", "-s", "/proc/1", "/pl"))
    r = h.cli("cp", str(f), "ev:/pl/")
    assert r.returncode == 125 and "it is on proc" in r.stderr
    # a link inside the container to its own volume lands in the volume (what it sees)
    ok(h.cli("cp", str(f), "ev:/d/tovol/"))
    assert (h.state_dir / "volumes" / "plvol-shared" / "_data" / "payload").read_text() == "x\n"
    # out: the container's links come out as links, never followed on the host
    out = tmp_path / "out"
    out.mkdir()
    ok(h.cli("cp", "ev:/abs", str(out)))
    assert os.readlink(out / "abs") == "/etc"
    ok(h.cli("cp", "ev:/abs/", str(out / "etc-copy")))   # trailing /: followed, inside the container
    assert (out / "etc-copy" / "ctr-only").read_text() == "secret-of-ctr\n"
    # a replaced file is replaced, not written through: a link at the destination name
    os.symlink("/etc/hostname", out / "trap")
    ok(h.cli("exec", "ev", "sh", "-c", "echo mine > /trap"))
    ok(h.cli("cp", "ev:/trap", str(out / "trap")))
    assert not os.path.islink(out / "trap") and (out / "trap").read_text() == "mine\n"


def test_cp_hostile_tar_refused_and_leaves_nothing(nft_host):
    h = nft_host
    running(h, "c", "busybox", "sleep", "600")
    before = ok(h.cli("exec", "c", "ls", "-a", "/tmp"))
    for members in (
            [("ok.txt", b"fine"), ("../escape.txt", b"bad")],
            [("ok.txt", b"fine"), ("lnk", "/etc"), ("lnk/passwd", b"bad")],
            [("ok.txt", b"fine"), ("up", "../../x")]):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            for name, data in members:
                ti = tarfile.TarInfo(name)
                if isinstance(data, str):
                    ti.type, ti.linkname = tarfile.SYMTYPE, data
                    t.addfile(ti)
                else:
                    ti.size = len(data)
                    t.addfile(ti, io.BytesIO(data))
        p = subprocess.run([*h_cli(h), "cp", "-", "c:/tmp"], input=buf.getvalue(), capture_output=True, timeout=60)
        assert p.returncode == 125 and b"refusing the archive" in p.stderr, p.stderr
        assert ok(h.cli("exec", "c", "ls", "-a", "/tmp")) == before
    assert [p.name for p in (h.state_dir / "containers").iterdir()
            for q in p.iterdir() if q.name.startswith(".cp-")] == []
    # a read-only volume stays read-only
    running(h, "ro", "-v", "rov:/data:ro", "busybox", "sleep", "600")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        t.addfile(tarfile.TarInfo("empty.txt"), io.BytesIO(b""))
    p = subprocess.run([*h_cli(h), "cp", "-", "ro:/data"], input=buf.getvalue(), capture_output=True, timeout=60)
    assert p.returncode == 125 and b"read-only" in p.stderr
    # a stopped container: the same refusals, nothing left mounted or behind
    ok(h.cli("stop", "-t", "0", "c"))
    p = subprocess.run([*h_cli(h), "cp", "-", "c:/tmp"], input=_hostile(), capture_output=True, timeout=60)
    assert p.returncode == 125 and b"refusing the archive" in p.stderr, p.stderr
    assert [q for q in (h.state_dir / "containers").glob("*/.cp*")] == []
    assert [l for l in open("/proc/self/mountinfo") if "/.cp-" in l] == []


def _hostile() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        ti = tarfile.TarInfo("../escape")
        ti.size = 1
        t.addfile(ti, io.BytesIO(b"x"))
    return buf.getvalue()


def test_cp_on_a_stopped_container_and_its_volume(nft_host, tmp_path):
    h = nft_host
    ok(h.cli("run", "--name", "s", "-v", "sv:/data", "-v", "ro:/ro:ro", "busybox", "sh", "-c",
             "echo written > /tmp/w; ln -sfn /data /tovol"))
    out = tmp_path / "w"
    ok(h.cli("cp", "s:/tmp/w", str(out)))
    assert out.read_text() == "written\n"
    f = tmp_path / "f"
    f.write_text("in\n")
    ok(h.cli("cp", str(f), "s:/tmp/f"))
    ok(h.cli("cp", str(f), "s:/tovol/"))          # through the container's link, into the volume
    assert (h.state_dir / "volumes" / "plvol-sv" / "_data" / "f").read_text() == "in\n"
    r = h.cli("cp", str(f), "s:/ro/")
    assert r.returncode == 125 and "read-only" in r.stderr
    assert [l for l in open("/proc/self/mountinfo") if "/.cp-" in l] == []
    ok(h.cli("start", "s"))
    assert ok(h.cli("wait", "s")) == "0\n"
    ok(h.cli("cp", "s:/tmp/f", str(tmp_path / "back")))
    assert (tmp_path / "back").read_text() == "in\n"
