"""The volume store (runtime.volumes) over a real SQLite store in a temporary dir:
rows and directories, users read from container records, removal, prune, seed,
recovery after a crash between the row and the directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from portlink.errors import Conflict, InvalidArgument, NotFound
from portlink.runtime.plan import Layout
from portlink.runtime.records import CREATING, Container, Records
from portlink.runtime.spec import ContainerSpec
from portlink.runtime.state import Store
from portlink.runtime.volspec import TMPFS, VOLUME, Mount
from portlink.runtime.volumes import Volumes


@pytest.fixture
def vols(tmp_path):
    store = Store(tmp_path / "state.db")
    yield Volumes(store, Layout(tmp_path))
    store.close()


def add_container(v: Volumes, name: str, *mounts: Mount) -> Container:
    c = Container(id=name * 8, name=name, spec=ContainerSpec(image="busybox", name=name), exposed=(),
                  status=CREATING, mounts=mounts)
    Records(v.store).insert(c, [])
    return c


def test_create_is_idempotent_and_named_with_the_prefix(vols, tmp_path):
    v = vols.create("data", {"tier": "db"})
    assert v["Mountpoint"] == str(tmp_path / "volumes" / "plvol-data" / "_data")
    assert Path(v["Mountpoint"]).is_dir() and v["Labels"] == {"tier": "db"} and v["UsedBy"] == []
    (Path(v["Mountpoint"]) / "f").write_text("kept")
    assert vols.create("data")["Name"] == "data"                        # as docker: the same volume
    assert (Path(v["Mountpoint"]) / "f").read_text() == "kept"
    anon = vols.create()
    assert len(anon["Name"]) == 64 and anon["Anonymous"] is False        # `volume create` names are not anonymous
    with pytest.raises(InvalidArgument, match="invalid volume name"):
        vols.create("../x")


def test_in_use_is_refused_naming_the_containers(vols):
    vols.create("data")
    add_container(vols, "db", Mount(VOLUME, "/d", "data"))
    add_container(vols, "backup", Mount(VOLUME, "/d", "data", readonly=True), Mount(TMPFS, "/t"))
    with pytest.raises(Conflict, match=r"volume 'data' is in use by container\(s\) backup, db"):
        vols.remove("data")
    assert vols.get("data")["UsedBy"] == ["backup", "db"]
    assert [v["Name"] for v in vols.list(dangling=False)] == ["data"]
    Records(vols.store).delete("db" * 8)
    Records(vols.store).delete("backup" * 8)
    assert vols.remove("data") is True
    assert not vols.layout.volume_dir("data").exists()
    assert list(vols.layout.volumes.iterdir()) == []                    # no trash left behind
    with pytest.raises(NotFound, match="volume 'data' not found"):
        vols.remove("data")
    assert vols.remove("data", force=True) is False


def test_ensure_records_the_maker_and_prune(vols):
    vols.create("named")
    made = vols.ensure((Mount(VOLUME, "/a", "named"), Mount(VOLUME, "/b", "a" * 64, anonymous=True),
                        Mount(VOLUME, "/c", "auto"), Mount(TMPFS, "/t")), creator="c1")
    assert made == ["a" * 64, "auto"] and vols.made_by("c1") == ["a" * 64, "auto"]
    add_container(vols, "user", Mount(VOLUME, "/c", "auto"))
    vols.ensure((Mount(VOLUME, "/z", "b" * 64, anonymous=True),), creator="c2")
    assert vols.prune() == ["a" * 64, "b" * 64]                          # unused anonymous ones only
    assert vols.prune(all=True) == ["named"]                             # then unused named ones
    assert [v["Name"] for v in vols.list()] == ["auto"]                  # in use: kept


def test_seed_copies_the_images_content_once(vols, tmp_path):
    rootfs = tmp_path / "image"
    (rootfs / "var" / "lib" / "db").mkdir(parents=True)
    (rootfs / "var" / "lib" / "db" / "init.sql").write_text("CREATE")
    os.symlink("/etc/shadow", rootfs / "var" / "lib" / "db" / "link")   # copied as a link, never followed
    os.chmod(rootfs / "var" / "lib" / "db", 0o700)
    os.symlink("/var/lib", rootfs / "lib2")
    vols.ensure((Mount(VOLUME, "/lib2/db", "db"),), creator="c")
    assert vols.seed("db", rootfs, "/lib2/db") is True
    data = vols.layout.volume_data("db")
    assert (data / "init.sql").read_text() == "CREATE"
    assert os.readlink(data / "link") == "/etc/shadow"
    assert oct(data.stat().st_mode & 0o7777) == "0o700"
    (data / "init.sql").write_text("CHANGED")
    assert vols.seed("db", rootfs, "/lib2/db") is False                 # not empty: left alone
    assert (data / "init.sql").read_text() == "CHANGED"
    vols.ensure((Mount(VOLUME, "/nothing", "empty"),), creator="c")
    assert vols.seed("empty", rootfs, "/nothing") is False


def test_reconcile_after_a_crash(vols, caplog):
    vols.create("lost-dir")
    vols.layout.volume_dir("lost-dir").rename(vols.layout.volumes / ".trash-lost-dir-0000")   # crash mid-rm
    stray = vols.layout.volume_dir("stray")
    (stray / "_data").mkdir(parents=True)
    (stray / "_data" / "precious").write_text("x")
    repaired = vols.reconcile()
    assert repaired == ["volume lost-dir: directory made again", "volume trash .trash-lost-dir-0000 removed"]
    assert vols.layout.volume_data("lost-dir").is_dir()
    assert (stray / "_data" / "precious").read_text() == "x"              # never deleted
    assert "no record accounts for" in caplog.text
    assert vols.create("stray")["Name"] == "stray"                        # adopted with its data
    assert (vols.layout.volume_data("stray") / "precious").exists()
