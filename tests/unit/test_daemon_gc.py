"""portlinkd's tuning of the cyclic collector (runtime.daemon.tune_gc), in a
process of its own: the set-up's objects frozen out of every collection, and a
full collections considered ten times less often (issue 18)."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import gc
from portlink.runtime import daemon
before = gc.get_freeze_count()
young_before = gc.get_threshold()[0]
daemon.tune_gc()
print(before, gc.get_freeze_count(), young_before, *gc.get_threshold())
"""


def test_tune_gc_freezes_the_setup_and_spaces_the_full_collections():
    out = subprocess.run([sys.executable, "-P", "-c", CODE], capture_output=True, text=True, check=True).stdout
    frozen_before, frozen, young_before, young, older, oldest = map(int, out.split())
    assert frozen_before == 0 and frozen > 10_000     # the daemon's modules alone are tens of thousands
    assert young_before == 700 and (young, older, oldest) == (700, 10, 100)
