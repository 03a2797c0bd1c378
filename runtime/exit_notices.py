"""Who is told the moment a container's process ended: a followed log ends
then (its monitor has drained the output and written the exit code), not
after the cleanup that follows (runc delete, namespace, mounts: tens of ms)."""

from __future__ import annotations

import threading
from collections.abc import Callable


class ExitNotices:
    """Listeners per container id, each called once with the ended run's pid.
    Called from the thread that handles the exit: a listener must not block."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[str, list[Callable[[int], None]]] = {}

    def listen(self, cid: str, fn: Callable[[int], None]) -> Callable[[], None]:
        """Call `fn(pid)` when a run of `cid` ends; returns the function that stops listening."""
        with self._lock:
            self._listeners.setdefault(cid, []).append(fn)

        def stop() -> None:
            with self._lock:
                fns = self._listeners.get(cid, [])
                if fn in fns:
                    fns.remove(fn)
                if not fns:
                    self._listeners.pop(cid, None)
        return stop

    def ended(self, cid: str, pid: int) -> None:
        with self._lock:
            fns = list(self._listeners.get(cid, ()))
        for fn in fns:
            fn(pid)
