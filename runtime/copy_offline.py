"""`cp` on a stopped container (Docker's cp works on one too): its root put
together in a private mount namespace of a short-lived helper, never on the host.

The daemon runs `unshare --mount --propagation private PYTHON -m
portlink.runtime.copy_offline REQUEST.json` under the container's lock (no start
meanwhile: the overlay's upper and work directories are the container's). The
helper mounts the overlay as a start would, binds the volumes and host
directories at their targets (resolved in the rootfs by runtime.mount_paths;
read-only ones read-only, tmpfs left out: empty when stopped), does the one
operation with runtime.container_copy's rules, and exits: its mounts end with
its namespace, so a crash leaves nothing mounted. It answers one JSON line."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

from portlink.errors import Conflict, InvalidArgument, NotFound, PortlinkError, RuntimeFailure
from portlink.runtime import container_copy, mount_paths, mounts
from portlink.runtime.volspec import Mount

HELPER_TIMEOUT = 3600
_MS_BIND, _MS_REC, _MS_REMOUNT, _MS_RDONLY = 4096, 16384, 32, 1
_ERRORS = {400: InvalidArgument, 404: NotFound, 409: Conflict}


def run(request: dict, work: Path) -> dict:
    """Run the helper on `request` (written to `work`/request.json); its answer,
    or its error raised as the PortlinkError it was."""
    req_file = work / "request.json"
    req_file.write_text(json.dumps(request))
    argv = ["unshare", "--mount", "--propagation", "private", sys.executable, "-P", "-m",
            "portlink.runtime.copy_offline", str(req_file)]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=HELPER_TIMEOUT)
    except FileNotFoundError:
        raise RuntimeFailure("unshare is not installed (util-linux)") from None
    lines = p.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise RuntimeFailure(f"the copy helper failed: {(p.stderr or p.stdout).strip()[-500:]}") from None
    if "error" in answer:
        raise _ERRORS.get(answer.get("status"), RuntimeFailure)(answer["error"])
    return answer


def _mount(source: str, target: str, readonly: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), None, _MS_BIND | _MS_REC, None) != 0:
        raise RuntimeFailure(f"cannot bind {source} at {target}: {os.strerror(ctypes.get_errno())}")
    if readonly and libc.mount(None, target.encode(), None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_REC, None) != 0:
        raise RuntimeFailure(f"cannot make {target} read-only: {os.strerror(ctypes.get_errno())}")


class _DirRoot(container_copy.ContainerRoot):
    """A directory as the container's `/` (the helper's overlay)."""

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def serve(req: dict) -> dict:
    root = req["target"]
    mounts.mount_overlay(req["lower"], req["upper"], req["work"], root)
    pairs = [(Mount.from_json(m), source) for m, source in req["mounts"]]    # parents first
    targets = mount_paths.resolve_targets(root, pairs)    # symlinks in the rootfs followed inside it
    for m, source in pairs:
        if source is None:
            continue          # a tmpfs: empty while the container is stopped
        where = os.path.join(root, targets[m.target].lstrip("/"))
        os.makedirs(where, exist_ok=True)
        _mount(source, where, m.readonly)
    p = container_copy.CopyPath(req["path"])
    with _DirRoot(req["name"], root) as r:
        if req["op"] == "stat":
            return container_copy.stat_json(r, p)
        if req["op"] == "archive":
            with open(req["tar"], "wb") as out:
                container_copy.archive(r, p, out)
            return {}
        if req["op"] == "extract":
            return {"placed": container_copy.extract(r, p, Path(req["tar"]), Path(req["staging"]))}
    raise InvalidArgument(f"unknown copy operation {req['op']!r}")


def main() -> None:
    try:
        answer = serve(json.loads(Path(sys.argv[1]).read_text()))
    except PortlinkError as e:
        answer = {"error": str(e), "status": e.status}
    except OSError as e:
        answer = {"error": f"copy failed: {e.strerror or e}", "status": 500}
    print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
