"""run --init: the init Docker runs as PID 1 (/sbin/docker-init is tini), here
Debian's tini-static, bound read-only into the container. Static: it runs in any
image, with or without a libc. tini forwards the signals it gets to its child
(so `stop` reaches a shell that would ignore SIGTERM as PID 1) and reaps the
zombies orphans leave."""

from __future__ import annotations

import os

from portlink.errors import RuntimeFailure

ENV = "PORTLINK_INIT"                  # another static init binary (tests, other distributions)
DEFAULT = "/usr/bin/tini-static"       # Debian's package tini


def binary() -> str:
    """The host path of the init; RuntimeFailure says how to install it."""
    path = os.environ.get(ENV) or DEFAULT
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise RuntimeFailure(f"--init needs {path}, which is not installed: install the apt package tini "
                             "(./scripts/setup does)")
    return path
