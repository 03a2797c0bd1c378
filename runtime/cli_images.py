"""`portlink load` and `portlink save`: image archives between a file (or
stdin/stdout) and the daemon's store."""

from __future__ import annotations

import os
import sys

from portlink.runtime.client import CliError, Client


def cmd_load(cl: Client, a) -> int:
    """A file is named to the daemon by its path (it reads it in place, no copy);
    stdin is sent as the request body."""
    if a.input == "-":
        if sys.stdin.isatty():
            raise CliError("load: no archive on stdin; give one with -i FILE or a pipe")
        r = cl.upload("/images/load", sys.stdin.buffer)
    else:
        path = os.path.abspath(a.input)
        if not os.path.isfile(path):
            raise CliError(f"load: {a.input}: no such file")
        r = cl.post("/images/load", {"path": path})
    for w in r["warnings"]:
        print(f"portlink: warning: {w}", file=sys.stderr)
    for img in r["images"]:
        print(img["name"] if a.quiet else f"Loaded image: {img['name']} ({img['id'][7:19]})")
    return 0


def cmd_save(cl: Client, a) -> int:
    if a.output is None and sys.stdout.isatty():
        raise CliError("save: refusing to write an archive to a terminal; use -o FILE or a pipe")
    resp = cl.request("GET", "/images/save", query={"name": a.images}, stream=True)
    if a.output is None:
        for piece in resp.chunks():
            sys.stdout.buffer.write(piece)
        sys.stdout.buffer.flush()
        return 0
    tmp = a.output + ".tmp"
    try:
        with open(tmp, "wb") as f:
            for piece in resp.chunks():
                f.write(piece)
        os.replace(tmp, a.output)     # a broken transfer leaves no half archive under the name
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return 0
