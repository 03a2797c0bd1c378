"""Container health checks, the pure part: the check a container runs (from its
--health-* flags over the image's HEALTHCHECK) and Docker's state machine.

States: `starting` until the first success (failures inside the start period
do not count), then `healthy` after one success, `unhealthy` after `retries`
consecutive counted failures. The clock is passed in: the monitor
(runtime/health_monitor.py) owns time and processes."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from portlink import parse
from portlink.errors import InvalidArgument, InvalidValue

STARTING, HEALTHY, UNHEALTHY = "starting", "healthy", "unhealthy"
# Docker's defaults
INTERVAL, TIMEOUT, RETRIES, START_PERIOD = 30.0, 30.0, 3, 0.0
LOG_KEEP = 5                 # results kept per container, as Docker
OUTPUT_MAX = 4096            # bytes of a check's output kept
_NS = 1_000_000_000
# Docker's CMD-SHELL: the user's text is run by the shell *inside their container*
# (runc exec, confined like the container), never on the host. tests/unit/test_no_shell.py
# allows exactly this line.
CONTAINER_SHELL = ("/bin/sh", "-c")


@dataclass(frozen=True)
class HealthConfig:
    test: tuple[str, ...]    # the argv run in the container
    interval: float = INTERVAL
    timeout: float = TIMEOUT
    retries: int = RETRIES
    start_period: float = START_PERIOD


def _seconds(what: str, text: str) -> float:
    try:
        v = parse.duration(what, text)
    except InvalidValue as e:
        raise InvalidArgument(str(e)) from None
    return v


def check_flags(cmd: str, interval: str, timeout: str, retries: int | None, start_period: str,
                disabled: bool) -> None:
    """The --health-* flags as given to `run` (InvalidArgument names the flag)."""
    if disabled and (cmd or interval or timeout or retries is not None or start_period):
        raise InvalidArgument("--no-healthcheck conflicts with the --health-* options")
    if not isinstance(cmd, str):
        raise InvalidArgument("field 'health_cmd' must be a string")
    for flag, text in (("--health-interval", interval), ("--health-timeout", timeout)):
        if text and _seconds(flag, text) < 0.1:
            raise InvalidArgument(f"{flag} {text!r}: at least 100ms")
    if start_period and _seconds("--health-start-period", start_period) < 0:
        raise InvalidArgument(f"--health-start-period {start_period!r}: must not be negative")
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool) or retries < 1):
        raise InvalidArgument(f"--health-retries {retries!r}: a whole number, at least 1")


def resolve(spec, image_check: dict | None) -> HealthConfig | None:
    """The check a container runs: its flags over the image's HEALTHCHECK (Docker's
    object: Test, durations in ns, Retries). None: no check (none given, --no-healthcheck
    or Test ["NONE"])."""
    if spec.no_healthcheck:
        return None
    img = image_check or {}
    if spec.health_cmd:
        test: tuple[str, ...] = (*CONTAINER_SHELL, spec.health_cmd)
    else:
        t = img.get("Test") or []
        if not t or t[0] == "NONE" or len(t) < 2:
            return None
        test = (*CONTAINER_SHELL, t[1]) if t[0] == "CMD-SHELL" else tuple(t[1:])

    def dur(flag_text: str, key: str, default: float) -> float:
        if flag_text:
            return _seconds(key, flag_text)
        return img[key] / _NS if img.get(key) else default   # 0 in an image means "the default"

    return HealthConfig(test, interval=dur(spec.health_interval, "Interval", INTERVAL),
                        timeout=dur(spec.health_timeout, "Timeout", TIMEOUT),
                        retries=spec.health_retries or img.get("Retries") or RETRIES,
                        start_period=dur(spec.health_start_period, "StartPeriod", START_PERIOD))


@dataclass(frozen=True)
class Result:
    start: float
    end: float
    exit_code: int           # -1: did not run to the end (timed out, could not exec)
    output: str

    def view(self) -> dict:
        return {"Start": self.start, "End": self.end, "ExitCode": self.exit_code, "Output": self.output}

    @classmethod
    def from_view(cls, v: dict) -> "Result":
        return cls(float(v["Start"]), float(v["End"]), int(v["ExitCode"]), str(v["Output"]))


def truncate(out: bytes) -> str:
    return out[:OUTPUT_MAX].decode("utf-8", "replace")


@dataclass
class HealthState:
    """One run of one container (a restart starts over)."""

    config: HealthConfig
    started: float                              # when the container's process started
    status: str = STARTING
    failing_streak: int = 0
    log: deque = field(default_factory=lambda: deque(maxlen=LOG_KEEP))

    def record(self, r: Result) -> str | None:
        """Count a result; returns the new status if it changed."""
        self.log.append(r)
        before = self.status
        if r.exit_code == 0:
            self.failing_streak = 0
            self.status = HEALTHY
        elif self.status == STARTING and r.start - self.started < self.config.start_period:
            pass   # the start period: a failure does not count until a check succeeds
        else:
            self.failing_streak += 1
            if self.failing_streak >= self.config.retries:
                self.status = UNHEALTHY
        return self.status if self.status != before else None

    def view(self) -> dict:
        """inspect's State.Health, as Docker's."""
        return {"Status": self.status, "FailingStreak": self.failing_streak,
                "Log": [r.view() for r in self.log]}

    def saved(self, pid: int) -> dict:
        """What the container's record keeps of this run's state (runtime/records.py):
        its view and the run's pid, so a later run never takes it for its own."""
        return {"pid": pid, **self.view()}

    @classmethod
    def resumed(cls, config: HealthConfig, started: float, saved: dict | None, pid: int | None) -> "HealthState":
        """The state of a run the daemon finds running at its start: the last state
        recorded for this very run (a daemon restart does not take a healthy service
        out of DNS and the ambassadors until its next check), else `starting`."""
        st = cls(config, started)
        if not saved or saved.get("pid") != pid or saved.get("Status") not in (HEALTHY, UNHEALTHY):
            return st
        try:
            log = [Result.from_view(v) for v in saved.get("Log") or ()]
            streak = int(saved.get("FailingStreak") or 0)
        except (KeyError, TypeError, ValueError):   # a record written by hand or damaged: start over
            return st
        st.status, st.failing_streak = saved["Status"], streak
        st.log.extend(log)
        return st
