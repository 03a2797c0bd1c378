"""The pure parts of image archives: index files -> images, the image config ->
ImageConfig, Docker's entrypoint/cmd precedence, whiteout names, image names."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from portlink.errors import InvalidArgument
from portlink.runtime.image_archive import docker_images, member_path, oci_images, reference_name
from portlink.runtime.image_config import ImageConfig, from_docker, process_args, signal_name, to_docker
from portlink.runtime.image_layers import LayerGuard, whiteout_of
from portlink.runtime.images import ImageStore, check_name

D1, D2, D3 = ("sha256:" + c * 64 for c in "123")


# -- docker-save manifest.json ------------------------------------------------------

def test_docker_manifest_legacy_and_blobs():
    got = docker_images([{"Config": "a" * 64 + ".json", "RepoTags": ["redis:7"], "Layers": ["x/layer.tar", "./y/layer.tar"]},
                         {"Config": "blobs/sha256/" + "2" * 64, "RepoTags": None, "Layers": ["blobs/sha256/" + "3" * 64]}])
    assert got[0].config_digest == "sha256:" + "a" * 64 and got[0].legacy and got[0].names == ("redis:7",)
    assert [l.member for l in got[0].layers] == ["x/layer.tar", "y/layer.tar"] and got[0].layers[0].digest is None
    assert got[1].config_digest == D2 and not got[1].legacy and got[1].layers[0].digest == D3 and got[1].names == ()


@pytest.mark.parametrize("manifest, needle", [
    ([], "1 to 64"), ({"Config": "x"}, "1 to 64"), (["x"], "JSON object"),
    ([{"Config": "../c.json", "Layers": []}], "without '..'"), ([{"Config": "/c.json", "Layers": []}], "relative"),
    ([{"Config": "c.json", "Layers": ["a/../../l.tar"]}], "layer path"),
    ([{"Config": "c.json", "Layers": "l.tar"}], "Layers"), ([{"Config": "c.json", "RepoTags": "x"}], "RepoTags"),
])
def test_docker_manifest_refused(manifest, needle):
    with pytest.raises(InvalidArgument, match=needle):
        docker_images(manifest)


# -- OCI index.json -------------------------------------------------------------------

def _blobs(index_desc_type="application/vnd.oci.image.manifest.v1+json"):
    manifest = {"config": {"digest": D1}, "layers": [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D2},
        {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": D3}]}
    return {"blobs/sha256/" + "9" * 64: manifest}


def test_oci_index_with_names_and_nested_platforms():
    mdig, ldig = "sha256:" + "9" * 64, "sha256:" + "8" * 64
    blobs = {**_blobs(), "blobs/sha256/" + "8" * 64: {"manifests": [
        {"digest": "sha256:" + "7" * 64, "platform": {"os": "linux", "architecture": "arm64"}},
        {"digest": mdig, "platform": {"os": "linux", "architecture": "amd64"}}]}}
    index = {"manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdig,
         "annotations": {"io.containerd.image.name": "docker.io/library/redis:7", "org.opencontainers.image.ref.name": "7"}},
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": ldig}]}
    seen = []
    got = oci_images(index, lambda m, d: seen.append((m, d)) or blobs[m], arch=("amd64", ""))
    assert got[0].names == ("docker.io/library/redis:7", "7") and got[0].config == "blobs/sha256/" + "1" * 64
    assert [(l.member, l.digest) for l in got[0].layers] == [("blobs/sha256/" + "2" * 64, D2), ("blobs/sha256/" + "3" * 64, D3)]
    assert got[1].names == () and got[1].config_digest == D1
    assert all(d == "sha256:" + m.rsplit("/", 1)[1] for m, d in seen)      # every blob read is digest-checked


@pytest.mark.parametrize("index, needle", [
    ({}, "manifests"), ({"manifests": []}, "1 to 64"),
    ({"manifests": [{"digest": "md5:00"}]}, "sha256"),
    ({"manifests": [{"digest": "sha256:" + "9" * 64}]}, None),
])
def test_oci_index_refused(index, needle):
    if needle is None:   # a layer of a media type portlink cannot apply
        blobs = {"blobs/sha256/" + "9" * 64: {"config": {"digest": D1},
                                              "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
                                                          "digest": D2}]}}
        with pytest.raises(InvalidArgument, match="tar\\+zstd"):
            oci_images(index, lambda m, d: blobs[m])
        return
    with pytest.raises(InvalidArgument, match=needle):
        oci_images(index, lambda m, d: {})


@pytest.mark.parametrize("path", ["", "/abs", "a/../../b", "..", None, "a\0b"])
def test_member_path_refuses(path):
    with pytest.raises(InvalidArgument):
        member_path(path, "layer path")


@pytest.mark.parametrize("ref, name", [
    ("docker.io/library/redis:latest", "redis"), ("redis:latest", "redis"), ("redis:7", "redis:7"),
    ("index.docker.io/bitnami/pg:15", "bitnami/pg:15"), ("example.com:5000/a/b:1", "example.com:5000/a/b:1"),
    ("redis@sha256:" + "1" * 64, "redis"),
])
def test_reference_names(ref, name):
    assert reference_name(ref) == name
    assert check_name(ref) == name


# -- the image config ------------------------------------------------------------------

def test_from_docker_reads_every_field():
    cfg, warnings = from_docker({"config": {
        "Env": ["PATH=/usr/bin", "PGDATA=/data"], "Entrypoint": ["/entry.sh"], "Cmd": ["postgres"],
        "WorkingDir": "srv/../app", "User": "postgres", "ExposedPorts": {"5432/tcp": {}, "53/udp": {}, "9/sctp": {}},
        "Volumes": {"/data/": {}}, "Labels": {"a": "b"}, "StopSignal": "2",
        "Healthcheck": {"Test": ["CMD-SHELL", "pg_isready"], "Interval": 5, "Retries": 3}}})
    assert cfg == ImageConfig(cmd=["postgres"], env=["PATH=/usr/bin", "PGDATA=/data"], workdir="/app",
                              exposed=["53/udp", "5432/tcp"], entrypoint=["/entry.sh"], user="postgres",
                              volumes=["/data"], labels={"a": "b"}, stop_signal="SIGINT",
                              healthcheck={"Test": ["CMD-SHELL", "pg_isready"], "Interval": 5, "Retries": 3})
    assert warnings == ["exposed port '9/sctp' is not supported (tcp or udp ports only); left out"]


def test_from_docker_minimal_and_round_trip():
    cfg, _ = from_docker({"config": None})
    assert cfg == ImageConfig(cmd=[], env=[], workdir="/")
    full, _ = from_docker({"config": {"Env": ["A=1"], "Cmd": ["x"], "Entrypoint": ["e"], "User": "1:2",
                                      "ExposedPorts": {"80/tcp": {}}, "Volumes": {"/v": {}}, "StopSignal": "SIGQUIT",
                                      "Labels": {"k": "v"}, "Healthcheck": {"Test": ["NONE"]}}})
    back, _ = from_docker(to_docker(full, "2024-01-01T00:00:00Z", [D1], "amd64"))
    assert back == full


@pytest.mark.parametrize("config, needle", [
    ({"Env": ["NOEQUALS"]}, "KEY=value"), ({"Env": "A=1"}, "Env"), ({"Cmd": ["a\0b"]}, "NUL"),
    ({"Entrypoint": [1]}, "Entrypoint"), ({"User": "a\nb"}, "User"), ({"Volumes": {"rel": {}}}, "Volumes"),
    ({"Volumes": {"/": {}}}, "Volumes"), ({"Labels": {"bad key": "v"}}, "label key"),
    ({"StopSignal": "SIGNOPE"}, "stop signal"), ({"Healthcheck": {"Test": ["RUN", "x"]}}, "Healthcheck"),
    ({"Healthcheck": {"Interval": -1}}, "Interval"), ({"WorkingDir": 5}, "WorkingDir"),
])
def test_from_docker_refuses(config, needle):
    with pytest.raises(InvalidArgument, match=needle):
        from_docker({"config": config})


def test_old_image_json_still_loads(tmp_path):
    """An image.json written before these fields existed."""
    d = tmp_path / "old"
    (d / "rootfs").mkdir(parents=True)
    (d / "image.json").write_text(json.dumps({"name": "old", "created": 1.0, "size": 3, "config": {
        "cmd": ["sh"], "env": ["PATH=/bin"], "workdir": "/", "exposed": ["80/tcp"]}}))
    img = ImageStore(tmp_path).get("old")
    assert img.config == ImageConfig(cmd=["sh"], env=["PATH=/bin"], workdir="/", exposed=["80/tcp"])
    assert img.id == "" and img.config.stop_signal == "" and img.config.healthcheck is None


# -- Docker's entrypoint / cmd precedence ---------------------------------------------

IMG = ImageConfig(cmd=["-c", "default"], env=[], entrypoint=["/bin/sh"])


@pytest.mark.parametrize("entrypoint, cmd, expected", [
    (None, [], (["/bin/sh"], ["-c", "default"])),            # the image's both
    (None, ["-c", "mine"], (["/bin/sh"], ["-c", "mine"])),   # run's args replace CMD only
    (["/bin/echo"], [], (["/bin/echo"], [])),                # --entrypoint drops the image's CMD
    (["/bin/echo"], ["hi"], (["/bin/echo"], ["hi"])),
    ([], ["ls"], ([], ["ls"])),                              # --entrypoint "" clears it
])
def test_process_args(entrypoint, cmd, expected):
    assert process_args(IMG, entrypoint, cmd) == expected


def test_process_args_without_image_entrypoint():
    assert process_args(ImageConfig(cmd=["sh"], env=[]), None, []) == ([], ["sh"])


@pytest.mark.parametrize("given, name", [("TERM", "SIGTERM"), ("sigquit", "SIGQUIT"), ("9", "SIGKILL"),
                                         ("SIGINT", "SIGINT")])
def test_signal_names(given, name):
    assert signal_name(given) == name


# -- whiteouts --------------------------------------------------------------------------

@pytest.mark.parametrize("name, plan", [
    ("etc/.wh.passwd", ("delete", "etc/passwd")), (".wh.top", ("delete", "top")),
    ("var/cache/.wh..wh..opq", ("opaque", "var/cache")), (".wh..wh..opq", ("opaque", "")),
    ("a/.wh..wh.plnk", ("ignore", "a/.wh..wh.plnk")), ("etc/passwd", None), ("etc/x.wh.y", None),
])
def test_whiteout_plan(name, plan):
    assert whiteout_of(name) == plan


def test_whiteout_of_nothing_refused():
    with pytest.raises(InvalidArgument, match="whiteout"):
        whiteout_of("etc/.wh.")


def _layer(entries) -> tarfile.TarFile:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.type = {"f": tarfile.REGTYPE, "d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE}[kind]
            if kind == "l":
                info.linkname = data
            else:
                info.size = len(data)
            info.mode = 0o755 if kind == "d" else 0o644
            tf.addfile(info, io.BytesIO(data.encode()) if kind == "f" else None)
    buf.seek(0)
    return tarfile.open(fileobj=buf, mode="r")


def test_layer_guard_applies_whiteouts_in_any_order(tmp_path):
    """Unprivileged: files only. Opaque and whiteouts touch lower layers only."""
    root = tmp_path / "root"
    root.mkdir()
    guard = LayerGuard(io.BytesIO(), 0, None)
    for layer in ([("d", "d", ""), ("d/a", "f", "1"), ("d/b", "f", "2"), ("x", "f", "x"), ("l", "l", "/x")],
                  [("d/new", "f", "n"), ("d/.wh..wh..opq", "f", ""), (".wh.x", "f", ""), ("l", "f", "file"),
                   ("x", "f", "again")]):
        guard.begin_layer()
        _layer(layer).extractall(root, filter=guard)
    assert sorted(p.name for p in (root / "d").iterdir()) == ["new"]
    assert (root / "x").read_text() == "again" and (root / "l").read_text() == "file" and not (root / "l").is_symlink()
    assert guard.whiteouts == 2


def test_apply_image_config_fills_what_run_left_open():
    from portlink.runtime.plan import apply_image_config
    from portlink.runtime.spec import ContainerSpec
    img = ImageConfig(cmd=["postgres"], env=[], entrypoint=["/entry.sh"], user="postgres", stop_signal="SIGINT",
                      labels={"team": "db", "portlink.service": "evil", "keep": "image"})
    spec = ContainerSpec(image="pg", labels={"keep": "mine"})
    apply_image_config(spec, img)
    assert (spec.entrypoint, spec.cmd, spec.user, spec.stop_signal) == (["/entry.sh"], ["postgres"], "postgres", "SIGINT")
    assert spec.labels == {"team": "db", "keep": "mine"}      # portlink.* labels only from the person running it
    mine = ContainerSpec(image="pg", cmd=["psql"], user="0", stop_signal="SIGTERM", entrypoint=[])
    apply_image_config(mine, img)
    assert (mine.entrypoint, mine.cmd, mine.user, mine.stop_signal) == ([], ["psql"], "0", "SIGTERM")
