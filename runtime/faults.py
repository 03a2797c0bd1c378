"""Fault points: named steps of run, start and rm where the crash tests make
the daemon die as a power cut would (SIGKILL, no cleanup, no flush).

`PORTLINK_FAULT=start.veth` in portlinkd's environment arms one point (a comma
list arms several); unset, `point()` is a set lookup and nothing else. The
tests restart the daemon after each death and check that state and kernel
agree (tests/integration/test_crash.py), so every step in POINTS must leave a
journal that reconciliation can finish or roll back."""

from __future__ import annotations

import os
import signal

ENV = "PORTLINK_FAULT"

# In the order a `run` takes them (start.* are also the steps of `start`), then `rm`.
POINTS = (
    "run.created",      # row CREATING, host ports reserved, nothing in the kernel
    "run.ambassador",   # a cross-host link's ambassador started, the linking container not yet made
    "run.volumes",      # its new volumes recorded and made (a run with volumes: tests/integration/test_volumes.py)
    "start.mount",      # overlay root mounted
    "start.netns",      # network namespace created
    "start.lease",      # address leased
    "start.pin",        # layer-2 pin (port . MAC . address) in the bridge table, no veth yet
    "start.veth",       # veth pair made and addressed
    "start.firewall",   # published ports in the DNAT maps
    "start.files",      # hosts, resolv.conf, hostname and config.json written
    "start.runc",       # the process runs; status not yet RUNNING
    "run.running",      # RUNNING; DNS, hosts files and Consul not yet told
    "rm.marked",        # row REMOVING, process still running
    "rm.killed",        # process killed
    "rm.undo",          # half of the journal undone
    "rm.undone",        # kernel objects gone; rows not yet deleted
)

_armed = frozenset(filter(None, os.environ.get(ENV, "").split(",")))
unknown = _armed - set(POINTS)
if unknown:   # a typo in a test would otherwise test nothing
    raise SystemExit(f"portlinkd: unknown fault point(s) in ${ENV}: {', '.join(sorted(unknown))}")


def point(name: str) -> None:
    """Die here if the tests armed this step."""
    if name in _armed:
        os.kill(os.getpid(), signal.SIGKILL)
