"""The Prometheus text exposition format (version 0.0.4), pure: families of
samples rendered to text, a histogram with fixed buckets, and relabelling of
another exporter's text (the ambassadors' /metrics) so it can be served as
part of the daemon's own. No client library: the format is a few lines."""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def labels(pairs: Mapping[str, object]) -> str:
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in pairs.items()) + "}" if pairs else ""


def number(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


@dataclass
class Family:
    name: str
    type: str                       # counter, gauge, histogram
    help: str
    samples: list[tuple[str, dict, float]] = field(default_factory=list)   # (suffix, labels, value)

    def add(self, value: float, suffix: str = "", **lbl) -> "Family":
        self.samples.append((suffix, lbl, value))
        return self

    def render(self) -> str:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.type}"]
        out += [f"{self.name}{suffix}{labels(lbl)} {number(v)}" for suffix, lbl, v in self.samples]
        return "\n".join(out) + "\n"


class Histogram:
    """Cumulative buckets of observations (seconds); thread-safe."""

    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)   # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        i = bisect.bisect_left(self.buckets, seconds)
        with self._lock:
            self._counts[i] += 1
            self._sum += seconds

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self._counts)

    def into(self, fam: Family, **lbl) -> Family:
        """Add this histogram's _bucket, _sum and _count samples to `fam`."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        running = 0
        for bound, n in zip((*self.buckets, math.inf), counts):
            running += n
            fam.add(running, "_bucket", **lbl, le=number(bound) if bound != math.inf else "+Inf")
        fam.add(total, "_sum", **lbl)
        fam.add(running, "_count", **lbl)
        return fam


def _family_of(sample: str, declared: dict) -> str:
    for suffix in ("", "_bucket", "_sum", "_count"):
        if suffix and sample.endswith(suffix) and sample[: -len(suffix)] in declared:
            return sample[: -len(suffix)]
    return sample


def merge(sources: Iterable[tuple[str, Mapping[str, str]]]) -> str:
    """Several exporters' texts as one, each sample with its source's extra labels
    (e.g. ambassador="amb-db-bridge"); a family is declared once and its samples
    from every source follow its TYPE line, as the format requires."""
    declared: dict[str, list[str]] = {}        # family -> [HELP, TYPE], in first-seen order
    samples: dict[str, list[str]] = {}
    for text, extra in sources:
        add = ",".join(f'{k}="{escape(v)}"' for k, v in extra.items())
        helps: dict[str, str] = {}
        for line in text.splitlines():
            if line.startswith("# HELP "):
                helps[line.split()[2]] = line
            elif line.startswith("# TYPE "):
                name = line.split()[2]
                declared.setdefault(name, [helps.get(name, f"# HELP {name} "), line])
            elif line.strip() and not line.startswith("#"):
                head, _, value = line.rpartition(" ")
                name, brace, rest = head.partition("{")
                lbl = f"{{{add},{rest}" if brace and rest != "}" else f"{{{add}}}"
                samples.setdefault(_family_of(name, declared), []).append(f"{name}{lbl} {value}")
    out = []
    for fam, head in declared.items():
        out += head + samples.pop(fam, [])
    for rest in samples.values():   # samples of undeclared families: untyped, still valid
        out += rest
    return "\n".join(out) + "\n" if out else ""
