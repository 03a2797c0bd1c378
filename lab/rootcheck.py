"""The machine's root network namespace, before and after a benchmark: a run
must leave its links, namespaces and nftables tables as it found them."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from collections.abc import Callable


def _lines(*argv: str) -> list[str]:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return [l for l in p.stdout.splitlines() if l.strip()]


@dataclass(frozen=True)
class RootState:
    links: frozenset[str]
    netns: frozenset[str]
    nft_tables: frozenset[str]

    @classmethod
    def read(cls) -> "RootState":
        return cls(links=frozenset(l.split()[0].split("@")[0] for l in _lines("ip", "-br", "link")),
                   netns=frozenset(l.split()[0] for l in _lines("ip", "netns", "list")),
                   nft_tables=frozenset(l.strip() for l in _lines("nft", "list", "tables")))

    def leaks(self, ours: Callable[[str], bool], tmp: str | None = None) -> list[str]:
        """What a run left behind since `self` was read: namespaces it made
        (`ours(name)`), new root links or tables, its `tmp` directory."""
        now = RootState.read()
        out = []
        left = sorted(n for n in now.netns - self.netns if ours(n))
        if left:
            out.append(f"namespaces left: {left}")
        if now.links - self.links:
            out.append(f"new links in the root namespace: {sorted(now.links - self.links)}")
        if now.nft_tables - self.nft_tables:
            out.append(f"new nftables tables in the root namespace: {sorted(now.nft_tables - self.nft_tables)}")
        if tmp and os.path.exists(tmp):
            out.append(f"{tmp} still exists")
        return out
