"""A container's /etc/hosts is its own to scribble on: junk bytes, a 1 GB file,
a try at a symlink. None of it breaks another `run --link`, an `rm`, or the
daemon's restart, and the scribbler's own hosts is still rewritten when its
link moves (or the error is logged for it alone)."""

from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.root

GB = 1 << 30


def _ip(h, name: str) -> str:
    return h.client.get(f"/containers/{name}")["network"]["ip"]


def _hosts(h, name: str) -> list[str]:
    return h.cli("exec", name, "cat", "/etc/hosts", check=True).stdout.splitlines()


def _host_file(h, name: str):
    return h.state_dir / "containers" / h.client.get(f"/containers/{name}")["id"] / "hosts"


def _linked(h, name: str, target: str = "db") -> None:
    h.cli("run", "-d", "--name", name, "--link", f"{target}:sql", "busybox", "sleep", "600", check=True)


def test_hostile_hosts_files_hurt_only_their_writer(host):
    h = host
    # 1 GB, as the issue says, unless the disk is short: then 64 MiB still shows
    # the size check (a strict read would take it all into memory).
    free = shutil.disk_usage(h.state_dir).free
    big_mb = 1024 if free > 4 * GB else 64
    h.cli("run", "-d", "--name", "db", "busybox", "sleep", "600", check=True)
    for name in ("junk", "big", "sym"):
        _linked(h, name)

    h.cli("exec", "junk", "sh", "-c", r"printf '\377\376\000' >> /etc/hosts", check=True)
    h.cli("exec", "big", "dd", "if=/dev/zero", "of=/etc/hosts", "bs=1M", f"count={big_mb}", check=True)
    assert _host_file(h, "big").stat().st_size == big_mb << 20
    # The file is a bind mount: the container can neither remove nor replace it.
    tried = h.cli("exec", "sym", "sh", "-c", "rm -f /etc/hosts; ln -sf /etc/shadow /etc/hosts; ls -l /etc/hosts")
    assert _host_file(h, "sym").is_file() and not _host_file(h, "sym").is_symlink(), tried.stdout
    # Had it got there anyway (the host side of its file is a symlink to a host
    # secret), the daemon must refuse to follow it.
    secret = h.workdir / "secret"
    secret.write_text("root:secret\n")
    sym_file = _host_file(h, "sym")
    sym_file.unlink()
    sym_file.symlink_to(secret)

    # Another container's run --link, and the refresh it causes, work.
    _linked(h, "fresh")
    db_ip = _ip(h, "db")
    assert any(l.startswith(f"{db_ip}\tsql ") for l in _hosts(h, "fresh"))
    # Junk and a huge file were rewritten in place with the right text.
    for name in ("junk", "big"):
        assert any(l.startswith(f"{db_ip}\tsql ") for l in _hosts(h, name)), name
    assert _host_file(h, "big").stat().st_size < 4096

    # The link target moves: every hosts follows it, the scribblers' too.
    h.cli("exec", "junk", "sh", "-c", r"printf '\377' >> /etc/hosts", check=True)
    h.cli("exec", "big", "dd", "if=/dev/zero", "of=/etc/hosts", "bs=1M", "count=8", check=True)
    h.cli("restart", "-t", "0", "db", check=True)
    moved = _ip(h, "db")
    assert moved != db_ip
    for name in ("junk", "big", "fresh"):
        assert any(l.startswith(f"{moved}\tsql ") for l in _hosts(h, name)), name
    assert secret.read_text() == "root:secret\n"
    errors = [l for l in h.daemon_log().splitlines() if "cannot update /etc/hosts" in l]
    assert len(errors) == 1 and "container sym:" in errors[0], errors
    assert "codec" not in h.daemon_log()

    # The daemon restarts over all of it, and runs a linked container after.
    h.cli("exec", "junk", "sh", "-c", r"printf '\377' >> /etc/hosts", check=True)
    h.stop_daemon()
    h.start_daemon()
    _linked(h, "after")
    assert any(l.startswith(f"{moved}\tsql ") for l in _hosts(h, "after"))
    assert any(l.startswith(f"{moved}\tsql ") for l in _hosts(h, "junk"))
    assert {c["name"] for c in h.client.get("/containers")} == {"db", "junk", "big", "sym", "fresh", "after"}

    # rm of the others and of the scribblers works; nothing of theirs is left.
    for name in ("big", "junk", "sym", "fresh", "after"):
        h.cli("rm", "-f", name, check=True)
    assert [c["name"] for c in h.client.get("/containers", all="1")] == ["db"]
    assert secret.read_text() == "root:secret\n"


def test_restart_replaces_a_scribbled_hosts_file(nft_host):
    h = nft_host
    h.cli("run", "-d", "--name", "db", "busybox", "sleep", "600", check=True)
    _linked(h, "web")
    h.cli("exec", "web", "sh", "-c", r"printf '\377' > /etc/hosts; printf '\377' > /etc/resolv.conf; "
          r"printf '\377' > /etc/hostname", check=True)
    h.cli("restart", "-t", "0", "web", check=True)
    assert any(l.startswith(f"{_ip(h, 'db')}\tsql ") for l in _hosts(h, "web"))
    assert h.cli("exec", "web", "cat", "/etc/resolv.conf", check=True).stdout.startswith("nameserver ")
    hostname = h.client.get("/containers/web")["config"]["hostname"]
    assert h.cli("exec", "web", "cat", "/etc/hostname", check=True).stdout == hostname + "\n"
