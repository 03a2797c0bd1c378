"""Docker's hijacked streams with stdin and TTYs: `docker run -it`, `docker
attach` (through the container's monitor, shim/logshim.c, on its attach
socket: runtime/cli_attach.py has its framing) and `docker exec -it` (the
exec's own pty), and the resize endpoints.

After the 101 answer, the client's bytes are its stdin (`Stdin` below takes
them from aiohttp); our bytes are its output: Docker's multiplexed frames
without a TTY (the monitor's frames are the same ones), the raw terminal
stream with one."""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import termios

from portlink.errors import InvalidArgument
from portlink.runtime import cli_attach
from portlink.runtime.cli_attach import EXIT, STDERR, STDOUT, DetachKeys, FrameReader, frame
from portlink.runtime.docker_request import DockerUnsupported
from portlink.runtime.records import RUNNING

CHUNK = 32 * 1024
POLL = 0.05                        # seconds between looks at a container not running yet
DEFAULT_DETACH = "ctrl-p,ctrl-q"


class Stdin:
    """The client's bytes after the hijack, as aiohttp's protocol feeds a parser
    (set_parser). read(): b"" at the end of its input (it closed its sending
    half: the container's stdin is closed too), None when the connection is gone
    (a client that left or detached: the container's stdin stays open, as with
    dockerd)."""

    def __init__(self) -> None:
        self.q: asyncio.Queue[bytes | None] = asyncio.Queue()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if data:
            self.q.put_nowait(bytes(data))
        return False, b""

    def end_of_input(self) -> None:
        self.q.put_nowait(b"")

    def feed_eof(self) -> None:       # aiohttp: the connection is lost
        self.q.put_nowait(None)

    async def read(self) -> bytes | None:
        return await self.q.get()


def take_stdin(r) -> Stdin:
    s = Stdin()
    r.protocol.set_parser(s)
    return s


def detach_keys(text: str | None) -> bytes:
    """Only Docker's default sequence (ctrl-p ctrl-q) detaches."""
    if text not in (None, "", DEFAULT_DETACH):
        raise DockerUnsupported(f"detach keys {text!r} are not supported by portlink (only {DEFAULT_DETACH})")
    return cli_attach.DETACH_KEYS


def size(r) -> tuple[int, int]:
    """The h and w of a resize request."""
    try:
        h, w = int(r.query.get("h") or 0), int(r.query.get("w") or 0)
    except ValueError:
        raise InvalidArgument("resize: h and w must be numbers") from None
    if not (0 < h < 1 << 16 and 0 < w < 1 << 16):
        raise InvalidArgument("resize: h and w must be between 1 and 65535")
    return h, w


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Monitors:
    """The attach relays to containers' monitors this API holds, so a resize goes
    through one of them; a size given while none is attached is sent by the next."""

    def __init__(self) -> None:
        self.writers: dict[str, set] = {}
        self.sizes: dict[str, tuple[int, int]] = {}

    def resize(self, cid: str, rows: int, cols: int) -> None:
        self.sizes[cid] = (rows, cols)
        for w in self.writers.get(cid, ()):
            w.write(cli_attach.resize_frame(rows, cols))

    async def relay(self, d, r, v: dict, resp, stdin: Stdin | None, tty: bool, keys: bytes) -> bool:
        """Wait for the container to run (a foreground run attaches before its
        start), then relay both ways until its monitor ends the output; the
        monitor replays what came before its first client. False: its monitor
        was never reached (the run ended first, or the client left)."""
        cid, finished = v["id"], v["finished"]
        sock = None
        while sock is None:
            c = await d.call(d.host.records.get, cid)
            if c is None or (c.status != RUNNING and c.finished != finished):
                return False          # removed, or ran and ended: nothing live to attach to
            if c.status == RUNNING:
                try:
                    sock = await d.call(cli_attach.connect, v["paths"]["attach"])
                    break
                except cli_attach.AttachError:
                    pass              # its monitor is not listening yet (or just ended)
            if r.transport is None or r.transport.is_closing():
                return False
            await asyncio.sleep(POLL)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        self.writers.setdefault(cid, set()).add(writer)
        if tty and cid in self.sizes:
            writer.write(cli_attach.resize_frame(*self.sizes[cid]))
        up = asyncio.ensure_future(self._up(stdin, writer, tty, keys)) if stdin else None
        down = asyncio.ensure_future(self._down(reader, resp, tty))
        try:
            waits = [down] + ([up] if up else [])
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if up in done and up.result():
                return True           # detached: the container runs on
            await down
            return True
        finally:
            for t in (up, down):
                if t is not None and not t.done():
                    t.cancel()
            self.writers[cid].discard(writer)
            if not self.writers[cid]:
                del self.writers[cid]
            writer.close()

    @staticmethod
    async def _up(stdin: Stdin, writer, tty: bool, keys: bytes) -> bool:
        """The client's stdin to the monitor; True: the detach keys were typed."""
        watch = DetachKeys(keys)
        while True:
            data = await stdin.read()
            if data is None:
                return True           # the client is gone: as a detach
            if not data:
                break
            data, detached = watch.feed(data) if tty else (data, False)
            if data:
                writer.write(cli_attach.stdin_frames(data))
                await writer.drain()
            if detached:
                return True
        writer.write(frame(cli_attach.STDIN_END))
        await writer.drain()
        # the output goes on until the container ends
        await asyncio.Event().wait()
        return False

    @staticmethod
    async def _down(reader, resp, tty: bool) -> None:
        frames = FrameReader()
        while data := await reader.read(65536):
            for kind, payload in frames.feed(data):
                if kind == EXIT:
                    return
                if kind in (STDOUT, STDERR):
                    try:
                        await resp.write(payload if tty else frame(kind, payload))
                    except ConnectionError:
                        return


async def pty_exec(argv: list[str], stdin: Stdin | None, resp, on_master) -> int:
    """Run `argv` (runc exec -t) on a pty of ours; its output raw to the client,
    the client's stdin to it. `on_master(fd)`: the master, for resizes."""
    import pty
    master, slave = pty.openpty()
    os.set_blocking(master, False)

    def own_tty():
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=slave, stdout=slave, stderr=slave,
                                                    start_new_session=True, preexec_fn=own_tty)
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    on_master(master)
    loop = asyncio.get_running_loop()
    out: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            data = os.read(master, CHUNK)
        except BlockingIOError:
            return
        except OSError:          # EIO: the last holder of the slave is gone
            data = b""
        if not data:
            loop.remove_reader(master)
        out.put_nowait(data)

    loop.add_reader(master, readable)

    async def up() -> None:
        while data := await stdin.read():     # b"" or None: no more input (a terminal has no end to pass on)
            while data:
                try:
                    n = os.write(master, data)
                except BlockingIOError:
                    await asyncio.sleep(POLL)
                    continue
                data = data[n:]
        await asyncio.Event().wait()

    feeding = asyncio.ensure_future(up()) if stdin else None
    try:
        while data := await out.get():
            try:
                await resp.write(data)
            except ConnectionError:
                break
        return await proc.wait()
    finally:
        if feeding is not None:
            feeding.cancel()
        loop.remove_reader(master)
        on_master(None)
        os.close(master)
