"""portlink's helpers written in C (shim/*.c, built static with musl by
scripts/build-logshim into the venv's bin): where the daemon finds each."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from portlink.errors import RuntimeFailure

LOGSHIM = "portlink-logshim"     # each container's monitor (shim/logshim.c, runtime.runc)
PAUSE = "portlink-pause"         # a hosted ambassador's process (shim/pause.c, runtime.ambassadors)
_SOURCE = {LOGSHIM: "shim/logshim.c", PAUSE: "shim/pause.c"}
_ENV = {LOGSHIM: "PORTLINK_LOGSHIM", PAUSE: "PORTLINK_PAUSE"}   # another build of it (tests, benchmarks)


def find(name: str) -> str:
    """The host path of `name`: its environment variable, else beside the venv's
    python (scripts/build-logshim puts it there), else on PATH."""
    here = [os.environ.get(_ENV[name], ""), str(Path(sys.executable).parent / name),
            str(Path(sys.prefix) / "bin" / name), shutil.which(name) or ""]
    for path in here:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise RuntimeFailure(f"{name} is not built: run ./scripts/setup (it compiles {_SOURCE[name]} with "
                         f"musl-gcc into .venv/bin; or set {_ENV[name]} to the binary)")
