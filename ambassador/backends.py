"""Which backend a new connection tries first: pure bookkeeping, no sockets, the
clock injected so tests can move time.

A pool holds the current backends of one listener port. New connections go to
the backend with the fewest active connections (long-lived connections make
plain round-robin lopsided); ties rotate, so short connections still spread.
A backend that just refused is put last for `cooldown` seconds rather than
dropped: if every backend is cooling down, trying one beats refusing the client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

DEFAULT_COOLDOWN = 5.0


@dataclass(frozen=True)
class Backend:
    address: str
    port: int
    # Where we connect is the identity: a Consul instance re-registered under a
    # new id at the same address is the same backend, not a reroute.
    id: str = field(default="", compare=False)
    # Made once: every connection hashes its backend several times and labels its
    # metrics with it (dataclass's own __hash__ builds a tuple per call).
    label: str = field(init=False, compare=False, repr=False)     # 'ip:port' ('[v6]:port'): metrics, logs
    _hash: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        label = f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"
        object.__setattr__(self, "label", label)
        object.__setattr__(self, "_hash", hash((self.address, self.port)))

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return self.label


class Pool:
    def __init__(self, backends: Iterable[Backend] = (), cooldown: float = DEFAULT_COOLDOWN,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown = cooldown
        self.clock = clock
        self.backends: tuple[Backend, ...] = ()
        self.version = 0                       # bumped by every change of the set
        self.active: dict[Backend, int] = {}   # open connections, also on backends no longer current
        self.failed_at: dict[Backend, float] = {}
        self._turn = 0                         # round-robin pointer for ties
        self.update(backends)

    def __contains__(self, b: object) -> bool:
        return b in self.backends

    def __len__(self) -> int:
        return len(self.backends)

    def update(self, backends: Iterable[Backend]) -> tuple[tuple[Backend, ...], tuple[Backend, ...]]:
        """Make `backends` the current set; (added, removed), each in a stable order."""
        new = tuple(dict.fromkeys(backends))   # de-duplicated, order kept
        old = set(self.backends)
        added = tuple(b for b in new if b not in old)
        removed = tuple(b for b in self.backends if b not in set(new))
        self.backends = new
        if added or removed:
            self.version += 1
        return added, removed

    def cooling(self, b: Backend, now: float | None = None) -> bool:
        at = self.failed_at.get(b)
        if at is None:
            return False
        now = self.clock() if now is None else now
        if now - at >= self.cooldown:
            del self.failed_at[b]   # expired: forget it, so the map never grows
            return False
        return True

    def order(self, now: float | None = None) -> list[Backend]:
        """The current backends in the order a new connection should try them."""
        n = len(self.backends)
        if n <= 1:
            self._turn += 1
            return list(self.backends)     # the usual link: one instance, nothing to weigh
        now = self.clock() if now is None else now
        start = self._turn % n
        self._turn += 1

        def key(item: tuple[int, Backend]):
            i, b = item
            turn = (i - start) % n
            if self.cooling(b, now):
                # Last, the longest-cooling first: the likeliest to be back.
                return (1, self.failed_at[b], turn)
            return (0, self.active.get(b, 0), turn)

        return [b for _, b in sorted(enumerate(self.backends), key=key)]

    def connected(self, b: Backend) -> None:
        self.active[b] = self.active.get(b, 0) + 1
        self.failed_at.pop(b, None)   # it answers: no reason to keep avoiding it

    def released(self, b: Backend) -> None:
        left = self.active.get(b, 0) - 1
        if left > 0:
            self.active[b] = left
        else:
            self.active.pop(b, None)

    def failed(self, b: Backend, now: float | None = None) -> None:
        self.failed_at[b] = self.clock() if now is None else now
