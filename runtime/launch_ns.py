"""The mount namespace containers are started from (touches the kernel).

Why: a new container's mount namespace begins as a copy of the one runc runs
in, which runc then makes a slave of and detaches from its old root; all of it
grows with every mount there (bench/runc_mounts.py: ~22 ms per 1,000 mounts
per run). portlink makes one netns file per container, and each overlay root
was a mount too, so the 1,000th container started from ~4,000 mounts.

So runc starts elsewhere. At start the daemon makes this namespace: a copy of
its own, with the mounts it made below its state dir (netns files, overlay
roots) detached, held by an fd only (it goes with the daemon; the next one
makes it again, with the host's mounts as they are then). Each container's
monitor (shim/logshim.c) moves into a private copy of it, attaches the
container's root there (a detached mount, runtime/mounts.py) and runs runc:
a copy of ~20 mounts whatever the number of containers. The netns file is
named to runc through the daemon's root (`/proc/PID/root/...`): it is not
in this namespace.

A host mount made after the daemon started is not in it: a bind source on such
a mount needs a daemon restart (README: Container roots and the launch
namespace)."""

from __future__ import annotations

import os
import subprocess
import sys

from portlink.errors import RuntimeFailure
from portlink.netns import kernel_ns

OURS = ("overlay", "nsfs")   # what portlink mounts below its state dir


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo."""
    return field.encode().decode("unicode_escape").encode("latin-1").decode(errors="surrogateescape")


def mounts_to_detach(mountinfo: str, under: str) -> list[str]:
    """Mount points strictly below `under` of the kinds portlink makes there,
    deepest first (pure)."""
    prefix = under.rstrip("/") + "/"
    found = []
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if not sep or len(fields) < 5 or not tail:
            continue
        point = _unescape(fields[4])
        if point.startswith(prefix) and tail.split()[0] in OURS:
            found.append(point)
    return sorted(found, key=lambda p: (-p.count("/"), p))


def open_launch_namespace(state_dir: str) -> int:
    """The launch namespace's fd (O_CLOEXEC): made by `unshare`, whose child
    detaches the daemon's container mounts in it and waits until we hold it."""
    argv = ["unshare", "--mount", "--propagation", "private", "--",
            sys.executable, "-P", "-m", "portlink.runtime.launch_ns", state_dir]
    try:
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd="/")
    except FileNotFoundError:
        raise RuntimeFailure("cannot make the launch mount namespace: `unshare` (util-linux) is not installed") from None
    try:
        said = p.stdout.readline()
        if not said.startswith("ready"):
            p.stdin.close()
            err = p.stderr.read().strip()
            p.wait(10)
            raise RuntimeFailure(f"cannot make the launch mount namespace: {err or said.strip() or 'its helper said nothing'}")
        fd = os.open(f"/proc/{p.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        p.stdin.close()   # the helper exits; the fd holds the namespace
        p.wait(10)
        return fd
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for f in (p.stdout, p.stderr):
            f.close()


def main(argv: list[str]) -> int:
    """In the new namespace: detach our mounts, say ready, wait to be held."""
    (state_dir,) = argv
    with open("/proc/self/mountinfo") as f:
        points = mounts_to_detach(f.read(), state_dir)
    for point in points:
        kernel_ns.unmount(point)
    print(f"ready {len(points)}", flush=True)
    sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
