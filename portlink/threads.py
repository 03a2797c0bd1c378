"""Threads named in the kernel too. Python 3.11 keeps a thread's name to itself:
`top -H`, `ps -L`, py-spy's absence and /proc/<pid>/task/*/comm all show every
thread of portlinkd as "portlinkd". Named, a thread that should not be there
(one per client, say) is seen for what it is."""

from __future__ import annotations

import ctypes
import threading

_PR_SET_NAME = 15
_COMM_MAX = 15      # the kernel's TASK_COMM_LEN, less its NUL
_libc = ctypes.CDLL(None, use_errno=True)


def name_os_thread(name: str | None = None) -> None:
    """The calling thread's kernel name: `name`, or its Python name (a pool's
    "api_3"), cut to the kernel's 15 bytes. Best effort: a name is not worth
    failing a thread for."""
    raw = (name or threading.current_thread().name).encode(errors="replace")[:_COMM_MAX]
    _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0)


class Thread(threading.Thread):
    """threading.Thread whose kernel name is its name."""

    def run(self) -> None:
        name_os_thread(self.name)
        super().run()
