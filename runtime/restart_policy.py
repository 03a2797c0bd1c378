"""Restart policies (`run --restart`), Docker's semantics, pure.

`no` never restarts; `on-failure[:N]` restarts after a non-zero exit, at most N
times (no N: no limit); `always` after any exit; `unless-stopped` like always,
except after a stop by the user. A stop by the user is never followed by a
restart while the daemon runs; on the daemon's next start (a daemon restart, a
reboot) `always` comes back even so, `unless-stopped` does not (as Docker).
An exit whose code is unknown (the process died while the daemon was away) is
a failure: it was killed. Delays: `backoff`."""

from __future__ import annotations

from dataclasses import dataclass

from portlink.errors import InvalidArgument

NO, ON_FAILURE, ALWAYS, UNLESS_STOPPED = "no", "on-failure", "always", "unless-stopped"
NAMES = (NO, ON_FAILURE, ALWAYS, UNLESS_STOPPED)

FIRST_DELAY = 0.1       # Docker's: 100 ms, doubling after each restart ...
LONGEST_DELAY = 60.0    # ... up to a minute,
RESET_AFTER = 10.0      # and back to the first once a run lasted this long


def backoff(first: float, longest: float, attempts: int) -> float:
    """The delay before restart number `attempts` + 1 of a crash loop: doubling from
    `first`, capped at `longest`. Shared with the ambassadors' restarts."""
    return min(longest, first * 2 ** min(attempts, 64))


@dataclass(frozen=True)
class Policy:
    name: str = NO
    max_retries: int = 0    # on-failure:N; 0: no limit

    @property
    def text(self) -> str:
        return f"{self.name}:{self.max_retries}" if self.name == ON_FAILURE and self.max_retries else self.name

    def view(self) -> dict:
        """Docker's HostConfig.RestartPolicy."""
        return {"Name": "" if self.name == NO else self.name, "MaximumRetryCount": self.max_retries}


def parse(text: str) -> Policy:
    """`--restart` as given: "" is `no`. InvalidArgument names what is accepted."""
    if not isinstance(text, str):
        raise InvalidArgument("field 'restart' must be a string")
    name, sep, count = text.partition(":")
    name = name or NO
    if name not in NAMES:
        raise InvalidArgument(f"invalid --restart {text!r}: use no, on-failure[:N], always or unless-stopped")
    if not sep:
        return Policy(name)
    if name != ON_FAILURE:
        raise InvalidArgument(f"invalid --restart {text!r}: only on-failure takes a maximum retry count")
    if not count.isdigit() or len(count) > 9:
        raise InvalidArgument(f"invalid --restart {text!r}: the maximum retry count is a number (on-failure:3)")
    return Policy(name, int(count))


def should_restart(policy: Policy, code: int | None, restarts: int, user_stopped: bool,
                   daemon_start: bool = False) -> bool:
    """Whether an exit with `code` (None: unknown) after `restarts` restarts is
    followed by another. `daemon_start`: decided when the daemon starts again
    (it or the host restarted), not when the process ended."""
    if policy.name == NO:
        return False
    if user_stopped and not (daemon_start and policy.name == ALWAYS):
        return False
    if policy.name == ON_FAILURE:
        failed = code is None or code != 0
        return failed and (policy.max_retries == 0 or restarts < policy.max_retries)
    return True


def next_streak(streak: int, up_seconds: float) -> int:
    """Restarts in the current crash loop after a run of `up_seconds`: a run that
    lasted RESET_AFTER ends the loop."""
    return 0 if up_seconds >= RESET_AFTER else streak


def delay(streak: int) -> float:
    """Seconds before the next restart, `streak` restarts into a crash loop."""
    return backoff(FIRST_DELAY, LONGEST_DELAY, streak)
