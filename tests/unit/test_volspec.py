"""-v, --mount, --tmpfs and --volumes-from parsed and checked (runtime.volspec), without root."""

from __future__ import annotations

import pytest

from portlink.errors import InvalidArgument
from portlink.runtime import volspec
from portlink.runtime.spec import Request
from portlink.runtime.volspec import BIND, TMPFS, VOLUME, Mount, VolumesFrom


@pytest.mark.parametrize("text, want", [
    ("data:/var/lib/db", Mount(VOLUME, "/var/lib/db", "data")),
    ("data:/var/lib/db:ro", Mount(VOLUME, "/var/lib/db", "data", readonly=True)),
    ("data:/srv/:rw,nocopy", Mount(VOLUME, "/srv", "data", nocopy=True)),
    ("/srv/www:/usr/share/www:ro", Mount(BIND, "/usr/share/www", "/srv/www", readonly=True)),
    ("/data", Mount(VOLUME, "/data", anonymous=True)),
    ("/data:ro", Mount(VOLUME, "/data", readonly=True, anonymous=True)),
    ("my.vol_1-x:/a//b", Mount(VOLUME, "/a/b", "my.vol_1-x")),
])
def test_volume_flag(text, want):
    assert volspec.parse_volume_flag(text) == want


@pytest.mark.parametrize("text, message", [
    ("data:relative", "must be an absolute path"),
    ("data:/x:relative", "unknown option 'relative'"),
    ("data:/", "cannot mount over the container's root"),
    ("data:/srv/../etc", "'..' is not allowed"),
    ("/host/../etc:/x", "'..' is not allowed"),
    ("data:/proc", "/proc is the kernel's"),
    ("data:/proc/sys/kernel", "/proc is the kernel's"),
    ("data:/sys/fs", "/sys is the kernel's"),
    ("data:/etc/hosts", "portlink writes that file"),
    ("./data:/x", "invalid volume name './data'"),
    ("d:/x", "invalid volume name 'd'"),
    ("data:/x:z", "unknown option 'z'"),
    ("data:/x:ro:extra", "use --mount for paths"),
    ("data:/x:", "an empty part"),
    (":/x", "an empty part"),
    ("/h:/x:nocopy", "nocopy applies to volumes"),
    ("data:/x\ny", "no control characters"),
    ("", "expected [NAME:|HOST-PATH:]TARGET"),
])
def test_volume_flag_errors(text, message):
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[").replace("(", r"\(")):
        volspec.parse_volume_flag(text)


@pytest.mark.parametrize("text, want", [
    ("type=volume,source=db,target=/var/lib/db", Mount(VOLUME, "/var/lib/db", "db")),
    ("src=db,dst=/d,readonly", Mount(VOLUME, "/d", "db", readonly=True)),
    ("type=volume,target=/d,volume-nocopy", Mount(VOLUME, "/d", anonymous=True, nocopy=True)),
    ("type=bind,source=/srv,destination=/srv,ro=true", Mount(BIND, "/srv", "/srv", readonly=True)),
    ("type=bind,source=/srv,target=/srv,readonly=false,bind-propagation=rprivate", Mount(BIND, "/srv", "/srv")),
    ("type=tmpfs,target=/run/x,tmpfs-size=10m,tmpfs-mode=700",
     Mount(TMPFS, "/run/x", tmpfs_size=10 << 20, tmpfs_mode=0o700)),
])
def test_mount_flag(text, want):
    assert volspec.parse_mount_flag(text) == want


@pytest.mark.parametrize("text, message", [
    ("type=nfs,target=/x", "type 'nfs' is not one of"),
    ("type=volume,source=db", "no target"),
    ("type=bind,target=/x", "a bind needs source=HOST-PATH"),
    ("type=bind,source=rel,target=/x", "expected an absolute path on the host"),
    ("type=tmpfs,source=x,target=/x", "a tmpfs has no source"),
    ("type=tmpfs,target=/x,tmpfs-size=1", "expected 4k to 1p"),
    ("type=tmpfs,target=/x,tmpfs-size=lots", "expected a size like"),
    ("type=tmpfs,target=/x,tmpfs-mode=999", "expected an octal mode"),
    ("type=volume,target=/x,tmpfs-size=1m", "tmpfs-size does not apply to type=volume"),
    ("type=bind,source=/a,target=/x,bind-propagation=shared", "only bind-propagation=rprivate"),
    ("type=volume,target=/x,volume-driver=nfs", "unknown key 'volume-driver'"),
    ("target=/x,target=/y", "target given twice"),
    ("target=/x,readonly=maybe", "expected true or false"),
    ("type=volume,target=/sys", "/sys is the kernel's"),
    ("type", "type needs a value"),
])
def test_mount_flag_errors(text, message):
    with pytest.raises(InvalidArgument, match=message):
        volspec.parse_mount_flag(text)


def test_tmpfs_flag():
    assert volspec.parse_tmpfs_flag("/run") == Mount(TMPFS, "/run")
    assert volspec.parse_tmpfs_flag("/run:rw,exec,nosuid,size=1m,mode=755") == \
        Mount(TMPFS, "/run", tmpfs_size=1 << 20, tmpfs_mode=0o755, tmpfs_exec=True)
    for text, message in (("/run:suid", "suid is not allowed"), ("/run:dev", "dev is not allowed"),
                          ("/run:uid=5", "unknown option 'uid=5'"), ("run", "absolute path"),
                          ("/proc/x", "/proc is the kernel's"), ("/run:size=0", "expected 4k")):
        with pytest.raises(InvalidArgument, match=message):
            volspec.parse_tmpfs_flag(text)


def test_volumes_from():
    assert volspec.parse_volumes_from("db") == VolumesFrom("db")
    assert volspec.parse_volumes_from("db:ro") == VolumesFrom("db", "ro")
    assert volspec.parse_volumes_from("ab" * 32 + ":rw") == VolumesFrom("ab" * 32, "rw")
    for text in ("db:rx", "../db", "", "db:ro:rw"):
        with pytest.raises(InvalidArgument, match="invalid --volumes-from"):
            volspec.parse_volumes_from(text)


def test_request_parses_every_mount_flag_once():
    req = Request.parse({"image": "busybox", "volumes": ["data:/data", "/cache"], "mounts": ["type=tmpfs,target=/t"],
                         "tmpfs": ["/run:size=1m"], "volumes_from": ["db:ro"]})
    assert [m.target for m in req.mounts] == ["/data", "/cache", "/t", "/run"]
    assert req.volumes_from == [VolumesFrom("db", "ro")]


@pytest.mark.parametrize("data, message", [
    ({"volumes": ["a1:/x", "/h:/x"]}, "duplicate mount point '/x'"),
    ({"volumes": ["a1:/x"], "tmpfs": ["/x/"]}, "duplicate mount point '/x'"),
    ({"volumes": "a1:/x"}, "field 'volumes' must be a list of strings"),
    ({"mounts": [1]}, "field 'mounts' must be a list of strings"),
    ({"volumes": [f"/v{i}" for i in range(65)]}, "too many mounts"),
    ({"volumes": ["a1:/x"], "ambassador": {"service": "db", "ports": [1]}}, "an ambassador takes no volumes"),
    ({"volumes_from": ["db:wx"]}, "invalid --volumes-from"),
])
def test_request_errors(data, message):
    with pytest.raises(InvalidArgument, match=message):
        Request.parse({"image": "busybox", **data})


def test_resolve_precedence_and_order():
    names = iter(["anon1", "anon2"])
    explicit = [Mount(VOLUME, "/data/logs", "logs"), Mount(VOLUME, "/cache", anonymous=True)]
    shared = [volspec.shared(Mount(BIND, "/data/logs", "/h"), "ro"),
              volspec.shared(Mount(VOLUME, "/backup", "bk", anonymous=True), "ro")]
    got = volspec.resolve(explicit, shared, ["/data", "/cache", "/backup"], lambda: next(names))
    # explicit beats --volumes-from beats the image's VOLUME; parents first
    assert got == (
        Mount(VOLUME, "/backup", "bk", readonly=True, nocopy=True),
        Mount(VOLUME, "/cache", "anon1", anonymous=True),
        Mount(VOLUME, "/data", "anon2", anonymous=True),
        Mount(VOLUME, "/data/logs", "logs"),
    )
    with pytest.raises(InvalidArgument, match="image VOLUME"):
        volspec.resolve([], [], ["relative"], lambda: "x")


def test_volumes_from_keeps_or_forces_the_mode():
    m = Mount(VOLUME, "/d", "v", readonly=True, anonymous=True)
    assert volspec.shared(m, "") == Mount(VOLUME, "/d", "v", readonly=True, nocopy=True)
    assert volspec.shared(m, "rw").readonly is False


def test_oci_entries_and_inspect_view():
    ro = volspec.oci_mount(Mount(VOLUME, "/d", "v", readonly=True), "/s/v/_data", "/d")
    assert ro == {"destination": "/d", "type": "bind", "source": "/s/v/_data",
                  "options": ["rbind", "rprivate", "nosuid", "nodev", "rnosuid", "rnodev", "ro", "rro"]}
    t = volspec.oci_mount(Mount(TMPFS, "/t", tmpfs_size=1 << 20), "", "/t")
    assert t == {"destination": "/t", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "nodev", "noexec", "mode=1777", "size=1048576"]}
    assert volspec.oci_mount(Mount(TMPFS, "/t"), "", "/t")["options"][-1] == f"size={64 << 20}"
    view = volspec.docker_view(Mount(VOLUME, "/d", "v", readonly=True), "/s/v/_data")
    assert {k: view[k] for k in ("Type", "Name", "Source", "Destination", "RW")} == \
        {"Type": "volume", "Name": "v", "Source": "/s/v/_data", "Destination": "/d", "RW": False}
