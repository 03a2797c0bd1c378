"""The mount namespace containers are started from (touches the kernel).

Why: a new container's mount namespace begins as a copy of the one runc runs
in, which runc then makes a slave of and detaches from its old root; all of it
grows with every mount there (bench/runc_mounts.py: ~22 ms per 1,000 mounts
per run). portlink makes one netns file per container, and each overlay root
was a mount too, so the 1,000th container started from ~4,000 mounts.

So runc starts elsewhere. At start the daemon makes this namespace: a copy of
its own with the mounts it made below its state dir (netns files, overlay
roots) detached, held by a small helper process that waits in it. Each
container's monitor (shim/logshim.c) moves into a private copy of it, attaches
the container's root there (a detached mount, runtime/mounts.py) and runs
runc: a copy of ~20 mounts whatever the number of containers. The netns file
is named to runc through the daemon's root (`/proc/PID/root/...`): it is not
in this namespace.

The copy is of the host's mounts as they were when it was made: a bind source
on a filesystem mounted since is seen through the helper's root, found to be
another file, and the namespace is made again before that container starts."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading

from portlink.errors import RuntimeFailure
from portlink.netns import kernel_ns, names

log = logging.getLogger("portlink.runtime")

OURS = ("overlay", "nsfs")   # what portlink mounts below its state dir
OWN = (names.NETNS_DIR,)     # its dirs there that are mounts of their own (kernel_ns.own_mount)


def mounts_to_detach(mountinfo: str, under: str) -> list[str]:
    """Mount points strictly below `under` of the kinds portlink makes there, and
    its own dirs' mounts, deepest first (pure)."""
    prefix = under.rstrip("/") + "/"
    own = {prefix + d for d in OWN}
    found = []
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if not sep or len(fields) < 5 or not tail:
            continue
        point = kernel_ns.unescape_mount_field(fields[4])
        if point.startswith(prefix) and (tail.split()[0] in OURS or point in own):
            found.append(point)
    return sorted(found, key=lambda p: (-p.count("/"), p))


class _Made:
    """One launch namespace: its helper (which keeps it and lets us look into it) and our fd."""

    def __init__(self, state_dir: str) -> None:
        argv = ["unshare", "--mount", "--propagation", "private", "--",
                sys.executable, "-P", "-m", "portlink.runtime.launch_ns", state_dir]
        try:
            self.helper = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True, cwd="/")
        except FileNotFoundError:
            raise RuntimeFailure("cannot make the launch mount namespace: `unshare` (util-linux) is not installed") from None
        try:
            said = self.helper.stdout.readline()
            if not said.startswith("ready"):
                raise RuntimeFailure("cannot make the launch mount namespace: "
                                     f"{self.helper.stderr.read().strip() or said.strip() or 'its helper said nothing'}")
            self.fd = os.open(f"/proc/{self.helper.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            self._end()
            raise

    def sees(self, path: str) -> bool:
        """`path` is the same file here as in the daemon's namespace (missing in both counts)."""
        try:
            ours = os.stat(path)
        except OSError:
            ours = None
        try:
            theirs = os.stat(f"/proc/{self.helper.pid}/root{path}")
        except OSError:
            theirs = None
        key = lambda st: None if st is None else (st.st_dev, st.st_ino)
        return key(ours) == key(theirs)

    def _end(self) -> None:
        p = self.helper
        with contextlib.suppress(OSError):
            p.stdin.close()    # it reads stdin to its end, then exits
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        for f in (p.stdout, p.stderr):
            f.close()

    def close(self) -> None:
        os.close(self.fd)
        self._end()


class LaunchNamespace:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self._lock = threading.Lock()
        self._made = _Made(state_dir)

    @contextlib.contextmanager
    def held(self, binds: list[str] = ()):
        """The fd to hand to a monitor, for the block (a remade namespace waits for it).
        Made again first if a bind source is not what the daemon sees (a mount since)."""
        with self._lock:
            stale = [b for b in binds if not self._made.sees(b)]
            if stale:
                log.info("the launch namespace is made again: %s is another file there (a mount since it was made)",
                         stale[0])
                old, self._made = self._made, _Made(self.state_dir)
                old.close()
            yield self._made.fd

    def close(self) -> None:
        with self._lock:
            self._made.close()


def main(argv: list[str]) -> int:
    """In the new namespace: detach our mounts, say ready, stay until our stdin ends."""
    (state_dir,) = argv
    with open("/proc/self/mountinfo") as f:
        points = mounts_to_detach(f.read(), state_dir)
    for point in points:
        kernel_ns.unmount(point)
    print(f"ready {len(points)}", flush=True)
    # Wait in it until the daemon closes our stdin (or dies): as cat, ~1 MiB instead of Python's ~10.
    os.execvp("cat", ["cat"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
