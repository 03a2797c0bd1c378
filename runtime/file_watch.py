"""Which of some files changed, from inotify (touches the kernel).

Why: every change that moves a name asks which linkers' hosts files their
containers wrote since portlink last did (runtime.refresh). A stat of each was
~20 ms a link at 900 links; the kernel's queue of events names the few that
moved, and only those are stat-ed. Nothing is read until asked: no thread."""

from __future__ import annotations

import ctypes
import os
import struct
import threading

IN_MODIFY, IN_ATTRIB, IN_DELETE_SELF, IN_MOVE_SELF = 0x2, 0x4, 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED = 0x4000, 0x8000
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
MASK = IN_MODIFY | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF
_EVENT = struct.Struct("iIII")   # wd, mask, cookie, len (then len bytes of name)

_libc = ctypes.CDLL(None, use_errno=True)


class FileWatch:
    """Keys (a container id) and the file each watches. `changed()` returns the
    keys whose file had an event since the last call (None when the kernel's
    queue overflowed); a key asked for but not watched now (no inotify, its
    limit hit, or its file went) is `lost()`: for the caller to check itself."""

    def __init__(self) -> None:
        self._fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)   # -1: every key stays unwatched
        self._by_wd: dict[int, str] = {}
        self._wd: dict[str, int] = {}
        self._lost: set[str] = set()
        self._lock = threading.Lock()

    def watched(self, key: str) -> bool:
        return key in self._wd

    def lost(self) -> set[str]:
        with self._lock:
            return set(self._lost)

    def watch(self, key: str, path: str) -> bool:
        wd = _libc.inotify_add_watch(self._fd, path.encode(), MASK) if self._fd >= 0 else -1
        with self._lock:
            self._drop(key)
            if wd < 0:
                self._lost.add(key)
                return False
            self._lost.discard(key)
            self._wd[key], self._by_wd[wd] = wd, key
        return True

    def forget(self, keys) -> None:
        with self._lock:
            for key in keys:
                self._lost.discard(key)
                wd = self._drop(key)
                if wd is not None:
                    _libc.inotify_rm_watch(self._fd, wd)

    def keys(self) -> set[str]:
        with self._lock:
            return set(self._wd)

    def _drop(self, key: str) -> int | None:
        wd = self._wd.pop(key, None)
        if wd is not None and self._by_wd.get(wd) == key:
            del self._by_wd[wd]
        return wd

    def changed(self) -> set[str] | None:
        """Keys whose file changed since the last call; None: the queue overflowed
        (events were lost), so any may have."""
        if self._fd < 0:
            return set()
        out, overflow = set(), False
        with self._lock:
            while True:
                try:
                    data = os.read(self._fd, 64 * 1024)
                except BlockingIOError:
                    break
                for wd, mask in _events(data):
                    if mask & IN_Q_OVERFLOW:
                        overflow = True
                        continue
                    key = self._by_wd.get(wd)
                    if key is None:
                        continue
                    out.add(key)
                    if mask & IN_IGNORED:     # the file went: lost until watched again
                        self._drop(key)
                        self._lost.add(key)
        return None if overflow else out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _events(data: bytes):
    at = 0
    while at + _EVENT.size <= len(data):
        wd, mask, _, size = _EVENT.unpack_from(data, at)
        yield wd, mask
        at += _EVENT.size + size
