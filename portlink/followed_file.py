"""A file the daemon writes and an ambassador follows: the linkers map
(portlink.linker_map) and the service's instances (portlink.instances_feed),
both in the per-ambassador directory bound read-only into it (a directory
bind, so a rename in it is seen).

The daemon replaces a file atomically (a temporary file and a rename: a
reader sees the old text or the new, never half) and sends SIGHUP; the
ambassador re-reads at once on SIGHUP and also checks the file's stamp every
second, so a signal sent before its handler was installed is not lost for long.
One SIGHUP handler per event loop serves every followed file."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("portlink.ambassador")


def write(directory: Path, name: str, text: str, durable: bool = True) -> None:
    """Replace `directory/name` with `text` atomically, mode 0644 (readable by the
    ambassador's user: no secret goes in these files). `durable`: fsync before the
    rename (a file rebuilt at every start and change needs none)."""
    tmp = directory / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"   # writers never share one
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, text.encode())
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, directory / name)


def stamp(path: Path) -> tuple | None:
    """What changes when the file is replaced (a rename is a new inode); None: no file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


# One SIGHUP handler per loop, calling every subscriber (the linkers map, the instances).
_subscribers: dict[asyncio.AbstractEventLoop, list[Callable[[], None]]] = {}


def _dispatch(loop: asyncio.AbstractEventLoop) -> None:
    for fn in list(_subscribers.get(loop, ())):
        try:
            fn()
        except Exception:
            log.exception("SIGHUP handler failed")


def on_sighup(fn: Callable[[], None]) -> bool:
    """Call `fn` on SIGHUP; False when no handler can be installed (not the main
    thread: tests), where the poll alone reads the file."""
    loop = asyncio.get_running_loop()
    fns = _subscribers.get(loop)
    if fns is None:
        try:
            loop.add_signal_handler(signal.SIGHUP, _dispatch, loop)
        except (NotImplementedError, RuntimeError, ValueError):
            return False
        fns = _subscribers[loop] = []
    fns.append(fn)
    return True


def off_sighup(fn: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    fns = _subscribers.get(loop)
    if fns is None or fn not in fns:
        return
    fns.remove(fn)
    if not fns:
        del _subscribers[loop]
        try:
            loop.remove_signal_handler(signal.SIGHUP)
        except (NotImplementedError, RuntimeError, ValueError):
            pass


class Follower:
    """Calls `on_text(text)` (None: no file) with the file's content at start and
    whenever it was replaced: at once on SIGHUP, else within `poll` seconds.
    `stat` and `read` are the I/O (unit tests pass fakes)."""

    def __init__(self, path: Path, on_text: Callable[[str | None], None], poll: float = 1.0,
                 stat: Callable[[Path], tuple | None] = stamp,
                 read: Callable[[Path], str | None] = read_text) -> None:
        self.path, self.on_text, self.poll = path, on_text, poll
        self.stat, self.read = stat, read
        self._seen: tuple | None | bool = False     # False: never read
        self._text: str | None = None

    def check(self, force: bool = False) -> bool:
        """Read the file if its stamp changed since the last read (or `force`: a
        SIGHUP, since a replacement within one clock tick that reuses the freed
        inode and keeps the size has the old stamp); whether its text changed."""
        now = self.stat(self.path)
        if now == self._seen and not force:
            return False
        try:
            text = self.read(self.path) if now is not None else None
        except OSError as e:
            log.error("cannot read %s: %s", self.path, e.strerror or e)
            self._seen = False      # try again at the next check
            return False
        first, self._seen = self._seen is False, now
        if not first and text == self._text:
            return False
        self._text = text
        self.on_text(text)
        return True

    async def run(self) -> None:
        """Until cancelled."""
        hup = lambda: self.check(force=True)
        on_sighup(hup)
        try:
            self.check()
            while True:
                await asyncio.sleep(self.poll)
                self.check()
        finally:
            off_sighup(hup)
