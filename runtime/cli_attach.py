"""`portlink attach` and `run -i/-t` in the foreground: the CLI talks to the
container's monitor (shim/logshim.c) on its attach socket, as `exec` runs runc
itself: the CLI is on the daemon's host, as root.

Frames both ways are Docker's stream header (type byte, three zero bytes,
32-bit big-endian length) then the payload. To us: 1 stdout, 2 stderr, 3 the
exit code (last). From us: 0 stdin, 4 window size, 5 end of stdin.

Detach: ctrl-p ctrl-q (as Docker's default) leaves the container running."""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import sys
from dataclasses import dataclass, field

STDOUT, STDERR, EXIT, STDIN, RESIZE, STDIN_END = 1, 2, 3, 0, 4, 5
FRAME_MAX = 4096                       # the monitor's limit for a frame it reads
DETACH_KEYS = b"\x10\x11"              # ctrl-p ctrl-q


class AttachError(Exception):
    pass


def frame(kind: int, data: bytes = b"") -> bytes:
    return struct.pack(">BxxxI", kind, len(data)) + data


def stdin_frames(data: bytes) -> bytes:
    """`data` as stdin frames, each within the monitor's limit."""
    return b"".join(frame(STDIN, data[i:i + FRAME_MAX]) for i in range(0, len(data), FRAME_MAX))


def resize_frame(rows: int, cols: int) -> bytes:
    return frame(RESIZE, struct.pack(">HH", rows & 0xFFFF, cols & 0xFFFF))


@dataclass
class FrameReader:
    """Frames out of a byte stream read in pieces of any size."""
    _buf: bytes = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        out = []
        while len(self._buf) >= 8:
            kind, size = struct.unpack(">BxxxI", self._buf[:8])
            if len(self._buf) < 8 + size:
                break
            out.append((kind, self._buf[8:8 + size]))
            self._buf = self._buf[8 + size:]
        return out


@dataclass
class DetachKeys:
    """Watches typed input for the detach sequence: feed() returns what to send
    on, and whether the sequence was typed. A prefix of it is held back until
    the next key says whether it was one."""
    keys: bytes = DETACH_KEYS
    _held: bytes = field(default=b"")

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        out = bytearray()
        for b in data:
            self._held += bytes([b])
            if self._held == self.keys:
                return bytes(out), True
            if not self.keys.startswith(self._held):
                out += self._held
                self._held = b""
        return bytes(out), False


def parse_exit(payload: bytes) -> int | None:
    text = payload.decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def connect(path: str) -> socket.socket:
    """The monitor's attach socket, reached through /proc/self/fd (a UNIX socket's
    path is limited to 108 bytes; a container's dir may be deeper)."""
    d, name = os.path.split(path)
    try:
        dfd = os.open(d, os.O_PATH | os.O_DIRECTORY)
    except FileNotFoundError:
        raise AttachError(f"no container dir {d}: was the container removed?") from None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(f"/proc/self/fd/{dfd}/{name}")
    except (FileNotFoundError, ConnectionRefusedError):
        s.close()
        raise AttachError("the container's monitor is not listening: is the container running?") from None
    finally:
        os.close(dfd)
    return s


def _winsize(fd: int) -> tuple[int, int] | None:
    try:
        import fcntl
        import termios
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
        return rows, cols
    except OSError:
        return None


def relay(path: str, tty: bool, stdin: bool) -> int | None:
    """Relay our stdio to the container through its monitor until its output ends.
    Returns its exit code; None: detached (or the code did not come)."""
    sock = connect(path)
    in_fd, out_fd, err_fd = sys.stdin.fileno(), sys.stdout.fileno(), sys.stderr.fileno()
    raw = tty and stdin and os.isatty(in_fd)
    saved = None
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_winch = None
    if raw:
        import termios
        import tty as ttymod
        saved = termios.tcgetattr(in_fd)
        ttymod.setraw(in_fd, termios.TCSANOW)   # not TCSAFLUSH: what was typed ahead goes to the container
    if tty and os.isatty(in_fd):
        old_winch = signal.signal(signal.SIGWINCH, lambda *_: os.write(wake_w, b"w"))
        size = _winsize(in_fd)
        if size:
            sock.sendall(resize_frame(*size))
    reader, detach = FrameReader(), DetachKeys()
    code = None
    reading_stdin = stdin
    try:
        while True:
            fds = [sock, wake_r] + ([in_fd] if reading_stdin else [])
            ready, _, _ = select.select(fds, [], [])
            if wake_r in ready:
                os.read(wake_r, 64)
                size = _winsize(in_fd)
                if size:
                    sock.sendall(resize_frame(*size))
            if reading_stdin and in_fd in ready:
                data = os.read(in_fd, FRAME_MAX)
                if not data:
                    reading_stdin = False
                    sock.sendall(frame(STDIN_END))
                else:
                    data, detached = detach.feed(data) if raw else (data, False)
                    if data:
                        sock.sendall(stdin_frames(data))
                    if detached:
                        return None
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    return code
                for kind, payload in reader.feed(data):
                    if kind == EXIT:
                        code = parse_exit(payload)
                    else:
                        _write_all(err_fd if kind == STDERR else out_fd, payload)
    finally:
        if saved is not None:
            import termios
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
        if old_winch is not None:
            signal.signal(signal.SIGWINCH, old_winch)
        os.close(wake_r)
        os.close(wake_w)
        sock.close()


def _write_all(fd: int, data: bytes) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def cmd_attach(cl, a) -> int:
    """`portlink attach NAME`: the container's output live, our stdin to it (if
    it was started with -i); its exit code when it ends, 0 when detached."""
    info = cl.get(f"/containers/{_q(a.container)}")
    if info["status"] != "running":
        raise AttachError(f"container {a.container!r} is not running (start it first)")
    cfg = info["config"]
    try:
        code = relay(info["paths"]["attach"], tty=cfg.get("tty", False),
                     stdin=cfg.get("interactive", False) and not a.no_stdin)
    except KeyboardInterrupt:
        return 130
    return code if code is not None else 0


def run_attached(cl, c: dict, tty: bool, stdin: bool) -> int | None:
    """A foreground `run -i/-t`: relay until the container ends; its exit code
    (the monitor's, else the daemon's), None when detached."""
    code = relay(c["paths"]["attach"], tty=tty, stdin=stdin)
    return code


def _q(ref: str) -> str:
    from urllib.parse import quote
    return quote(ref, safe="")
