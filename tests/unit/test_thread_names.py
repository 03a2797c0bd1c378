"""portlink.threads: a thread's name reaches the kernel (top -H, /proc/*/task/*/comm)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from portlink import threads


def comm() -> str:
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()


def test_a_thread_has_its_name_in_the_kernel_cut_to_fifteen_bytes():
    seen = []
    t = threads.Thread(target=lambda: seen.append(comm()), name="dns-udp-10.77.0.1")
    t.start()
    t.join()
    assert seen == ["dns-udp-10.77.0"]


def test_a_pools_threads_are_named_by_their_prefix_and_number():
    with ThreadPoolExecutor(2, thread_name_prefix="api", initializer=threads.name_os_thread) as pool:
        assert pool.submit(comm).result() == "api_0"


def test_a_plain_thread_keeps_its_creators_kernel_name():
    # Why the daemon names every thread it starts: one it does not shows as its creator.
    out = []

    def creator():
        inner = threading.Thread(target=lambda: out.append(comm()))
        inner.start()
        inner.join()

    t = threads.Thread(target=creator, name="dns")
    t.start()
    t.join()
    assert out == ["dns"]
