"""Image archives made in a test: layers from (name, kind, data) entries, packed
as a docker-save archive or an OCI image layout, the way docker and skopeo write them."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path


def entry(name: str, data: bytes | str | None = b"", kind: str = "file", mode: int | None = None,
          link: str = "", uid: int = 0, gid: int = 0) -> tarfile.TarInfo | tuple:
    info = tarfile.TarInfo(name)
    info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
                 "hard": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE}[kind]
    info.linkname, info.uid, info.gid = link, uid, gid
    info.mode = mode if mode is not None else (0o755 if kind == "dir" else 0o644)
    raw = data.encode() if isinstance(data, str) else (data or b"")
    info.size = len(raw) if kind == "file" else 0
    return info, raw


def layer_tar(entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, raw in entries:
            tf.addfile(info, io.BytesIO(raw) if info.isreg() else None)
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tf.addfile(info, io.BytesIO(data))


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_config(config: dict, layers: list[bytes]) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "config": config,
                       "rootfs": {"type": "layers", "diff_ids": [_sha(x) for x in layers]}}).encode()


def docker_archive(path: Path, layers: list[list], config: dict, tags: list[str], gz: bool = False) -> Path:
    """docker 20.10's `docker save`: <id>/layer.tar, <config sha>.json, manifest.json."""
    tars = [layer_tar(x) for x in layers]
    cfg = image_config(config, tars)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        paths = []
        for t in tars:
            d = hashlib.sha256(t).hexdigest()
            _add(tf, f"{d}/layer.tar", t)
            paths.append(f"{d}/layer.tar")
        _add(tf, f"{hashlib.sha256(cfg).hexdigest()}.json", cfg)
        _add(tf, "manifest.json", json.dumps([{"Config": f"{hashlib.sha256(cfg).hexdigest()}.json",
                                               "RepoTags": tags, "Layers": paths}]).encode())
    path.write_bytes(gzip.compress(buf.getvalue(), 1) if gz else buf.getvalue())
    return path


def oci_archive(path: Path, layers: list[list], config: dict, ref: str = "", gzip_layers: bool = True) -> Path:
    """An OCI image layout in a tar (skopeo's oci-archive), layers gzip-compressed."""
    tars = [layer_tar(x) for x in layers]
    cfg = image_config(config, tars)
    blobs = [gzip.compress(t, 1) if gzip_layers else t for t in tars]
    kind = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gzip_layers else "")
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": _sha(cfg), "size": len(cfg)},
                           "layers": [{"mediaType": kind, "digest": _sha(b), "size": len(b)} for b in blobs]}).encode()
    desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _sha(manifest),
            "size": len(manifest)}
    if ref:
        desc["annotations"] = {"org.opencontainers.image.ref.name": ref}
    with tarfile.open(path, "w") as tf:
        _add(tf, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        _add(tf, "index.json", json.dumps({"schemaVersion": 2, "manifests": [desc]}).encode())
        for b in [cfg, manifest, *blobs]:
            _add(tf, "blobs/sha256/" + hashlib.sha256(b).hexdigest(), b)
    return path
