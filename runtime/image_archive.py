"""Image archives as people ship them: `docker save` archives and OCI image
layouts, in a tar (plain or gzip/xz-compressed).

Reading is in two parts. The pure part turns the archive's index files into
`ArchivedImage`s (which config, which layers in order, which names):
`docker_images` reads a docker-save manifest.json, `oci_images` an OCI
index.json. `Archive` opens the tar (a compressed one is first unpacked to a
bounded spool file next to the store, since layers are read out of order),
reads those small JSON members with a size cap and hands out each layer as a
stream whose digest is checked once it has been read. `write_docker_archive`
is the other direction, for `save`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import platform
import posixpath
import re
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from portlink.errors import InvalidArgument, RuntimeFailure
from portlink.runtime.image_tar import MAX_MEMBERS, BoundedInfo, open_regular

MAX_JSON = 4 << 20               # one manifest, index or config member
MAX_IMAGES = 64                  # images in one archive
MAX_LAYERS = 256                 # layers of one image (Docker's limit is 127)
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
LAYER_TYPES = ("application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip",
               "application/vnd.docker.image.rootfs.diff.tar.gzip",
               "application/vnd.oci.image.layer.nondistributable.v1.tar",
               "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip")
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


@dataclass(frozen=True)
class Layer:
    member: str                   # its path in the archive
    digest: str | None = None     # sha256 of the bytes as stored, when the format names it


@dataclass(frozen=True)
class ArchivedImage:
    config: str                   # the config member
    config_digest: str | None
    layers: tuple[Layer, ...]
    names: tuple[str, ...] = ()   # as the archive gives them ("redis:7", "docker.io/library/redis:latest")
    legacy: bool = False          # docker-save "<id>/layer.tar": digests are the config's diff_ids


# -- the pure part: index files -> images ---------------------------------------


def member_path(path, what: str) -> str:
    """A path inside the archive, as given by an index file: relative, no `..`."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise InvalidArgument(f"invalid {what} {path!r} in the archive's index")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if path.startswith("/") or ".." in parts or not parts:
        raise InvalidArgument(f"invalid {what} {path!r} in the archive's index: a relative path without '..'")
    return "/".join(parts)


def blob_path(digest) -> str:
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise InvalidArgument(f"invalid digest {digest!r}: only sha256 digests are supported")
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def _digest_of_path(path: str) -> str | None:
    """Docker 25's docker-save names members blobs/sha256/HEX: the name is the digest."""
    m = re.fullmatch(r"blobs/sha256/([0-9a-f]{64})", path)
    return "sha256:" + m.group(1) if m else None


def docker_images(manifest) -> list[ArchivedImage]:
    """A docker-save manifest.json: [{"Config": ..., "RepoTags": [...], "Layers": [...]}]."""
    if not isinstance(manifest, list) or not manifest or len(manifest) > MAX_IMAGES:
        raise InvalidArgument(f"manifest.json must list 1 to {MAX_IMAGES} images")
    out = []
    for entry in manifest:
        if not isinstance(entry, dict):
            raise InvalidArgument("manifest.json: each image must be a JSON object")
        config = member_path(entry.get("Config"), "config path")
        tags = entry.get("RepoTags") or []
        layers = entry.get("Layers") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidArgument("manifest.json: RepoTags must be a list of strings")
        if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
            raise InvalidArgument(f"manifest.json: Layers must be a list of at most {MAX_LAYERS} paths")
        paths = [member_path(p, "layer path") for p in layers]
        legacy = any(_digest_of_path(p) is None for p in paths)
        config_digest = _digest_of_path(config)
        if config_digest is None and re.fullmatch(r"[0-9a-f]{64}\.json", config):
            config_digest = "sha256:" + config[:64]          # docker 20.10: "<id>.json", id = sha256(config)
        out.append(ArchivedImage(config, config_digest, tuple(Layer(p, _digest_of_path(p)) for p in paths),
                                 tuple(tags), legacy))
    return out


def this_platform() -> tuple[str, str]:
    """(architecture, variant) of this machine, as OCI names them."""
    m = platform.machine().lower()
    return {"x86_64": ("amd64", ""), "aarch64": ("arm64", "v8"), "armv7l": ("arm", "v7"),
            "i686": ("386", ""), "ppc64le": ("ppc64le", ""), "s390x": ("s390x", "")}.get(m, (m, ""))


def _pick_platform(manifests: list, arch: tuple[str, str]) -> dict:
    """Of a multi-platform index, the manifest for this machine."""
    fits = [d for d in manifests if isinstance(d, dict) and isinstance(d.get("platform"), dict)
            and d["platform"].get("os", "linux") == "linux" and d["platform"].get("architecture") == arch[0]]
    if len(manifests) == 1 and not fits:
        return manifests[0]
    if not fits:
        raise InvalidArgument(f"the archive has no image for linux/{arch[0]}")
    return next((d for d in fits if d["platform"].get("variant", arch[1]) == arch[1]), fits[0])


def oci_images(index, read_json: Callable[[str, str | None], object],
               arch: tuple[str, str] | None = None) -> list[ArchivedImage]:
    """An OCI layout's index.json -> images. `read_json(member, digest)` reads a
    blob (the digest checked). A nested index (multi-platform) gives the image
    for this machine."""
    arch = arch or this_platform()
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise InvalidArgument("index.json must be an object with a 'manifests' list")
    if not index["manifests"] or len(index["manifests"]) > MAX_IMAGES:
        raise InvalidArgument(f"index.json must list 1 to {MAX_IMAGES} manifests")
    out = []
    for desc in index["manifests"]:
        if not isinstance(desc, dict):
            raise InvalidArgument("index.json: each manifest descriptor must be an object")
        annotations = desc.get("annotations") or {}
        names = tuple(n for n in (annotations.get(CONTAINERD_NAME), annotations.get(REF_NAME))
                      if isinstance(n, str) and n)
        for _ in range(4):   # nested indexes, bounded
            if desc.get("mediaType") not in (OCI_INDEX, DOCKER_LIST):
                break
            nested = read_json(blob_path(desc.get("digest")), desc.get("digest"))
            if not isinstance(nested, dict) or not isinstance(nested.get("manifests"), list) or not nested["manifests"]:
                raise InvalidArgument(f"index {desc.get('digest')} has no manifests")
            desc = _pick_platform(nested["manifests"], arch)
            if not isinstance(desc, dict):
                raise InvalidArgument("index.json: each manifest descriptor must be an object")
        else:
            raise InvalidArgument("index.json: indexes nested more than 4 deep")
        manifest = read_json(blob_path(desc.get("digest")), desc.get("digest"))
        if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
            raise InvalidArgument(f"manifest {desc.get('digest')} has no config descriptor")
        layers = manifest.get("layers") or []
        if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
            raise InvalidArgument(f"manifest {desc.get('digest')}: layers must be a list of at most {MAX_LAYERS}")
        refs = []
        for layer in layers:
            if not isinstance(layer, dict):
                raise InvalidArgument(f"manifest {desc.get('digest')}: each layer must be a descriptor")
            if layer.get("mediaType") not in LAYER_TYPES:
                raise InvalidArgument(f"layer {layer.get('digest')} has media type {layer.get('mediaType')!r}; "
                                      "supported: tar and tar+gzip layers")
            refs.append(Layer(blob_path(layer.get("digest")), layer["digest"]))
        cfg = manifest["config"].get("digest")
        out.append(ArchivedImage(blob_path(cfg), cfg, tuple(refs), names))
    return out


def reference_name(ref: str) -> str:
    """An image reference as the store names it: docker.io/library/ and :latest
    dropped ("docker.io/library/redis:latest" -> "redis"), a digest dropped."""
    ref = ref.split("@", 1)[0]
    for prefix in ("docker.io/", "index.docker.io/"):
        ref = ref.removeprefix(prefix)
    ref = ref.removeprefix("library/")
    return ref.removesuffix(":latest")


# -- reading the archive --------------------------------------------------------


class HashingReader(io.RawIOBase):
    """A read-only stream that hashes what passes through it."""

    def __init__(self, f: BinaryIO):
        self.f, self.h = f, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.f.read(len(b))
        self.h.update(data)
        b[:len(data)] = data
        return len(data)

    def finish(self) -> str:
        while data := self.f.read(1 << 20):
            self.h.update(data)
        return "sha256:" + self.h.hexdigest()


def _spool_decompressed(path: str, spool_dir: Path, limit: int) -> str | None:
    """A gzip or xz archive unpacked into a spool file (at most `limit` bytes: a
    bomb stops there); None if the archive is not compressed."""
    with open_regular(path) as f:
        magic = f.read(6)
    if magic[:2] == b"\x1f\x8b":
        opener = gzip.open
    elif magic == b"\xfd7zXZ\x00":
        opener = lzma.open
    else:
        return None
    fd, spool = tempfile.mkstemp(prefix=".tmp-load-", suffix=".tar", dir=spool_dir)
    try:
        with os.fdopen(fd, "wb") as out, opener(path, "rb") as src:
            done = 0
            while chunk := src.read(1 << 20):
                done += len(chunk)
                if done > limit:
                    raise InvalidArgument(f"{path}: unpacks to more than {limit} bytes; refusing the archive")
                out.write(chunk)
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as e:
        os.unlink(spool)
        if isinstance(e, OSError) and e.errno is not None:
            raise RuntimeFailure(f"cannot unpack {path}: {e.strerror or e}") from None
        raise InvalidArgument(f"{path} is not a valid compressed archive: {e}") from None
    except BaseException:
        os.unlink(spool)
        raise
    return spool


class Archive:
    """An open image archive: its members by path, the images it holds."""

    def __init__(self, path: str, spool_dir: Path, limit: int):
        self.path = path
        self.spool = _spool_decompressed(path, spool_dir, limit)
        try:
            self.raw = open_regular(self.spool or path)
            try:
                self.tar = tarfile.open(fileobj=self.raw, mode="r:", tarinfo=BoundedInfo)
            except (tarfile.TarError, EOFError, OSError):
                raise InvalidArgument(f"{path} is not a tar archive") from None
            self.members: dict[str, tarfile.TarInfo] = {}
            for i, m in enumerate(self.tar):
                if i >= MAX_MEMBERS:
                    raise InvalidArgument(f"{path} has more than {MAX_MEMBERS} entries; refusing it")
                self.members["/".join(p for p in m.name.split("/") if p not in ("", "."))] = m
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if getattr(self, "raw", None) is not None:
            self.raw.close()
        if self.spool:
            try:
                os.unlink(self.spool)
            except FileNotFoundError:
                pass
            self.spool = None

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _member(self, name: str) -> tarfile.TarInfo:
        """A regular member; symlinks inside the archive (docker save links a repeated
        layer to its first copy) are followed by name only, never on disk."""
        for _ in range(8):
            m = self.members.get(name)
            if m is None:
                raise InvalidArgument(f"{self.path} has no member {name!r} (named by its index); "
                                      "is it a complete docker-save or OCI archive?")
            if m.isreg():
                return m
            if not m.issym():
                raise InvalidArgument(f"{self.path}: member {name!r} is not a regular file")
            name = member_path(posixpath.normpath(posixpath.join(posixpath.dirname(name), m.linkname)),
                               "symlinked member")
        raise InvalidArgument(f"{self.path}: member {name!r}: too many symlinks")

    def open(self, name: str) -> BinaryIO:
        return self.tar.extractfile(self._member(name))

    def read_json(self, name: str, digest: str | None = None):
        m = self._member(name)
        if m.size > MAX_JSON:
            raise InvalidArgument(f"{self.path}: {name} is {m.size} bytes; an index or config is at most {MAX_JSON}")
        data = self.tar.extractfile(m).read()
        if digest is not None and "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise InvalidArgument(f"{self.path}: {name} does not match its digest {digest}; refusing the archive")
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise InvalidArgument(f"{self.path}: {name} is not valid JSON: {e}") from None

    def config_bytes(self, image: ArchivedImage) -> bytes:
        self.read_json(image.config, image.config_digest)      # checked and valid JSON
        return self.tar.extractfile(self._member(image.config)).read()

    def images(self) -> list[ArchivedImage]:
        if "manifest.json" in self.members:
            return docker_images(self.read_json("manifest.json"))
        if "index.json" in self.members:
            if "oci-layout" in self.members:
                layout = self.read_json("oci-layout")
                if not isinstance(layout, dict) or layout.get("imageLayoutVersion") != "1.0.0":
                    raise InvalidArgument(f"{self.path}: unsupported oci-layout {layout!r}")
            return oci_images(self.read_json("index.json"), self.read_json)
        raise InvalidArgument(f"{self.path} is neither a docker-save archive (manifest.json) nor an OCI "
                              "image layout (index.json); for a plain rootfs tarball use `image import`")


# -- writing: save ---------------------------------------------------------------


def _owner_neutral(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uname = info.gname = ""    # numeric ids only: the host's user names mean nothing in the image
    return info


def write_layer(rootfs: Path, out: Path) -> str:
    """The root filesystem as one layer tar; its sha256 (the diff_id)."""
    with open(out, "wb") as f:
        h = HashingWriter(f)
        with tarfile.open(fileobj=h, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for entry in sorted(os.listdir(rootfs)):
                tar.add(rootfs / entry, arcname=entry, filter=_owner_neutral)
        return "sha256:" + h.h.hexdigest()


class HashingWriter(io.RawIOBase):
    def __init__(self, f: BinaryIO):
        self.f, self.h = f, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.h.update(b)
        return self.f.write(b)


def write_docker_archive(out: Path, images: list[tuple[list[str], Callable[[list[str]], dict], Path]],
                         work: Path) -> None:
    """A docker-save archive at `out`: for each (names, config_for(diff_ids), rootfs)
    one layer, its config "<sha256>.json" and an entry of manifest.json. `work`: a
    private directory for the layer files."""
    manifest = []
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for i, (names, config_for, rootfs) in enumerate(images):
            layer = work / f"layer-{i}.tar"
            diff_id = write_layer(rootfs, layer)
            layer_dir = diff_id.removeprefix("sha256:")
            tar.add(layer, arcname=f"{layer_dir}/layer.tar", filter=_owner_neutral)
            os.unlink(layer)
            config = json.dumps(config_for([diff_id]), sort_keys=True).encode()
            cid = hashlib.sha256(config).hexdigest()
            _add_bytes(tar, f"{cid}.json", config)
            manifest.append({"Config": f"{cid}.json", "RepoTags": names, "Layers": [f"{layer_dir}/layer.tar"]})
        _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))
