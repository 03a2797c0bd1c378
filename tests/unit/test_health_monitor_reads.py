"""HealthMonitor.tick reads the running containers at most once per READ_EVERY
(issue 18: five reads a second of every running row while links were made)."""

from __future__ import annotations

from portlink.runtime import health_monitor
from portlink.runtime.health_monitor import HealthMonitor


class Records:
    def __init__(self) -> None:
        self.reads = 0

    def running(self) -> list:
        self.reads += 1
        return []


def test_the_running_containers_are_read_once_per_interval():
    records = Records()
    mon = HealthMonitor(records, None, None, None, workers=1)
    try:
        every = health_monitor.READ_EVERY
        for i in range(10):                       # ten ticks within one interval
            mon.tick(100.0 + i * every / 10)
        assert records.reads == 1
        mon.tick(100.0 + every)                   # the next interval
        assert records.reads == 2
        mon.tick(50.0)                            # a clock that went back reads again
        assert records.reads == 3
    finally:
        mon.close()
