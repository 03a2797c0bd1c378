"""The OCI config.json given to runc (pure)."""

import json
import resource

import pytest

from portlink.runtime import oci

PROC = oci.ProcessSpec(
    args=["/bin/sh", "-c", "echo hi"],
    env=["PATH=/bin", "HOSTNAME=web"],
    cwd="/srv",
    uid=1000,
    gid=50,
    hostname="web",
    files={"/etc/resolv.conf": "/state/c1/resolv.conf", "/etc/hosts": "/state/c1/hosts"},
)
NETNS = "/state/netns/plc-0123456789ab"
SECCOMP = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}
CONF = oci.Confinement(caps=["CAP_CHOWN", "CAP_NET_BIND_SERVICE"], seccomp=SECCOMP,
                       sysctl={"net.ipv4.ping_group_range": "0 2147483647"})


@pytest.fixture
def cfg():
    return oci.build_config(PROC, "/state/c1/rootfs", NETNS, "/portlink/c1", CONF)


def test_process(cfg):
    p = cfg["process"]
    assert p["args"] == ["/bin/sh", "-c", "echo hi"]
    assert p["env"] == ["PATH=/bin", "HOSTNAME=web"]
    assert p["cwd"] == "/srv"
    assert p["user"] == {"uid": 1000, "gid": 50}
    assert p["noNewPrivileges"] is True
    assert p["terminal"] is False
    assert cfg["hostname"] == "web"
    assert cfg["root"]["path"] == "/state/c1/rootfs"


def test_defaults():
    p = oci.build_config(oci.ProcessSpec(args=["true"], env=[]), "/r", NETNS, "/c", CONF)["process"]
    assert p["cwd"] == "/" and p["user"] == {"uid": 0, "gid": 0}


def test_namespaces(cfg):
    ns = {n["type"]: n for n in cfg["linux"]["namespaces"]}
    assert ns["network"] == {"type": "network", "path": NETNS}
    for t in ("pid", "ipc", "uts", "mount"):
        assert ns[t] == {"type": t}           # no path: a new namespace
    assert len(cfg["linux"]["namespaces"]) == len(ns)   # no type twice


def test_rlimit_nofile_within_hard_limit(cfg):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    (lim,) = [r for r in cfg["process"]["rlimits"] if r["type"] == "RLIMIT_NOFILE"]
    assert 0 < lim["soft"] <= lim["hard"]
    assert lim["hard"] <= hard


@pytest.mark.parametrize("hard, want", [(4096, 4096), (1 << 21, 1048576)])
def test_rlimit_nofile_follows_hard_limit(monkeypatch, hard, want):
    monkeypatch.setattr(oci.resource, "getrlimit", lambda which: (1024, hard))
    (lim,) = oci.build_config(PROC, "/r", NETNS, "/c", CONF)["process"]["rlimits"]
    assert lim == {"type": "RLIMIT_NOFILE", "hard": want, "soft": want}


def test_bind_mounts_for_files(cfg):
    binds = [m for m in cfg["mounts"] if m["type"] == "bind"]
    assert {m["destination"]: m["source"] for m in binds} == PROC.files
    for m in binds:
        assert "rbind" in m["options"]
    dests = [m["destination"] for m in cfg["mounts"]]
    assert dests.index("/proc") < dests.index("/etc/hosts")   # after the base mounts


def test_cgroups_and_security(cfg):
    assert cfg["linux"]["cgroupsPath"] == "/portlink/c1"
    assert cfg["process"]["capabilities"] == {k: ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]
                                              for k in ("bounding", "effective", "permitted")}
    assert cfg["linux"]["seccomp"] == SECCOMP
    assert cfg["linux"]["sysctl"] == {"net.ipv4.ping_group_range": "0 2147483647"}
    assert "/proc/kcore" in cfg["linux"]["maskedPaths"]
    assert "/proc/sys" in cfg["linux"]["readonlyPaths"]


def test_unconfined_has_no_seccomp():
    c = oci.build_config(PROC, "/r", NETNS, "/c", oci.Confinement(caps=[], seccomp=None))
    assert "seccomp" not in c["linux"] and "sysctl" not in c["linux"]
    assert c["process"]["capabilities"]["bounding"] == []


def test_serialisable(cfg):
    assert json.loads(json.dumps(cfg)) == cfg


def test_read_only_binds_and_handed_files_are_recursively_read_only():
    proc = oci.ProcessSpec(args=["true"], env=[], ro_binds={"/usr": "/usr", "/opt/py": "/opt/py"},
                           ro_files={"/run/secrets/consul-token": "/state/c1/consul-token"},
                           files={"/etc/hosts": "/state/c1/hosts"})
    cfg = oci.build_config(proc, "/r", NETNS, "/c", CONF)
    by_dest = {m["destination"]: m for m in cfg["mounts"] if m["type"] == "bind"}
    for dest in ("/usr", "/opt/py", "/run/secrets/consul-token"):
        assert by_dest[dest]["options"] == ["rbind", "ro", "rro", "rnosuid", "rnodev", "rprivate"]
    assert by_dest["/run/secrets/consul-token"]["source"] == "/state/c1/consul-token"
    assert "ro" not in by_dest["/etc/hosts"]["options"]           # the container's own files stay writable
    assert oci.mount_options(cfg) >= {"rro", "rnosuid", "rnodev"}
    assert oci.bind_destinations(cfg) == ["/opt/py", "/run/secrets/consul-token", "/usr", "/etc/hosts"]
    assert cfg["root"]["readonly"] is False


def test_system_fs_mounted_unless_left_out():
    kinds = lambda cfg: [m["type"] for m in cfg["mounts"]]
    full = oci.build_config(PROC, "/r", NETNS, "/c", oci.Confinement(caps=[], seccomp=None))
    assert kinds(full)[:6] == ["proc", "tmpfs", "devpts", "tmpfs", "mqueue", "sysfs"]
    bare = oci.build_config(PROC, "/r", NETNS, "/c", oci.Confinement(caps=[], seccomp=None, system_fs=False))
    assert kinds(bare)[:4] == ["proc", "tmpfs", "devpts", "tmpfs"] and not {"mqueue", "sysfs"} & set(kinds(bare))


def test_read_only_root():
    cfg = oci.build_config(PROC, "/r", NETNS, "/c", oci.Confinement(caps=[], seccomp=None, readonly_root=True))
    assert cfg["root"] == {"path": "/r", "readonly": True}


def test_runc_features_name_the_mount_options(tmp_path):
    from portlink.runtime import runc
    new = tmp_path / "runc-new"
    new.write_text('#!/bin/sh\necho \'{"mountOptions": ["rbind", "ro", "rro", "rprivate"]}\'\n')
    old = tmp_path / "runc-old"          # runc < 1.1: no `features`
    old.write_text("#!/bin/sh\necho 'No help topic for features' >&2; exit 1\n")
    for f in (new, old):
        f.chmod(0o755)
    assert runc._mount_options(str(new)) == {"rbind", "ro", "rro", "rprivate"}
    assert runc._mount_options(str(old)) == frozenset()
