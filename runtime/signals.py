"""Signal names as Docker reads them (moby pkg/signal.ParseSignal), pure and
stdlib only: the CLI checks `kill -s` before it asks, the daemon again."""

from __future__ import annotations

import signal

from portlink.errors import InvalidArgument

MAX_SIGNAL = int(signal.SIGRTMAX)


def _names() -> dict[str, int]:
    # __members__ has the aliases too (CLD, POLL, IOT), as Docker's SignalMap
    out = {name[3:]: int(s) for name, s in signal.Signals.__members__.items() if not name.startswith("SIG_")}
    lo, hi = int(signal.SIGRTMIN), int(signal.SIGRTMAX)
    for i in range(1, hi - lo):            # Docker's RTMIN+1 .. RTMIN+15 and RTMAX-14 .. RTMAX-1
        out[f"RTMIN+{i}"] = lo + i
        out[f"RTMAX-{i}"] = hi - i
    return out


NAMES = _names()


def parse_signal(text: str) -> int:
    """'KILL', 'SIGKILL', 'sigkill', '9', 'RTMIN+3' -> the number; InvalidArgument names the text."""
    raw = text.strip() if isinstance(text, str) else ""
    if raw.isascii() and raw.isdigit():
        if 1 <= int(raw) <= MAX_SIGNAL:
            return int(raw)
    else:
        name = raw.upper()
        n = NAMES.get(name[3:] if name.startswith("SIG") else name)
        if n is not None:
            return n
    raise InvalidArgument(f"invalid signal {text!r}: use a name like SIGHUP or HUP, or a number from 1 "
                          f"to {MAX_SIGNAL}")


def name_of(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return str(n)
