"""The plaintext data path: a paired connection's bytes move socket -> pipe ->
socket inside the kernel (splice(2)), never through Python buffers.

Once a plaintext pair proves to be a stream (ambassador/forward.py,
Connection._hand_to_kernel), both
asyncio transports are paused for good and their sockets are duplicated here;
a Poller (one epoll set, itself watched by the event loop) drives one Flow per
direction:

- reading: splice(src -> pipe) while the pipe is empty; EOF (0) ends the flow;
- writing: splice(pipe -> dst) until the pipe is empty; while it is not, src is
  not read (backpressure: at most one pipe's worth, `capacity`, is held);
- half-close: a flow whose src ended and whose pipe is empty shuts dst for
  writing; both flows ended, the pair closes;
- close (drain deadline, reroute, stop): nothing more is read, what the pipes
  hold is still written, then the duplicates go and the transports close
  (their connection_lost does the pair's usual bookkeeping); an error on
  either socket aborts both.

Bytes are counted as they are read, like the transport path does."""

from __future__ import annotations

import asyncio
import fcntl
import os
import select
import socket
from collections.abc import Callable

FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
PIPE_SIZE = 256 * 1024          # per direction; F_SETPIPE_SZ, the kernel's default (64 KiB) if refused
SPLICE_MIN = 32 * 1024          # one read this big: a stream, worth the pipes (smaller: uvloop's copy is cheaper)
BURST = 8                       # pipe-fulls moved per wakeup at most (fewer wakeups under load)


def available() -> bool:
    return hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")


def make_pipe(size: int) -> tuple[int, int, int]:
    """A nonblocking pipe of about `size` bytes: (read fd, write fd, capacity)."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        capacity = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size)
    except OSError:               # over /proc/sys/fs/pipe-max-size or the user's pipe pages
        capacity = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
    return r, w, capacity


class Poller:
    """One level-triggered epoll set for the spliced sockets of a listener, watched by
    the event loop as a single fd. Not the loop's add_reader per socket: uvloop
    (libuv) stops a poll handle for good when its fd reports EPOLLERR, so a pair
    whose peer sent a reset would never hear of it and hang."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ep = select.epoll()
        self.watched: dict[int, tuple[Callable | None, Callable | None]] = {}   # fd -> (on readable, on writable)
        loop.add_reader(self.ep.fileno(), self._ready)

    def watch(self, fd: int, reader: Callable | None, writer: Callable | None) -> None:
        """Call reader() / writer() while fd is readable / writable (None: not wanted);
        an error or hang-up on fd calls both."""
        mask = (select.EPOLLIN if reader else 0) | (select.EPOLLOUT if writer else 0)
        if not mask:
            if self.watched.pop(fd, None) is not None:
                self.ep.unregister(fd)        # a registered fd would report errors with no one to hear
            return
        if fd in self.watched:
            self.ep.modify(fd, mask)
        else:
            self.ep.register(fd, mask)
        self.watched[fd] = (reader, writer)

    def _ready(self) -> None:
        for fd, ev in self.ep.poll(0):
            # Looked up afresh: an earlier callback of this batch may have changed or dropped fd.
            if ev & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                h = self.watched.get(fd)
                if h is not None and h[0] is not None:
                    h[0]()
            if ev & (select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP):
                h = self.watched.get(fd)
                if h is not None and h[1] is not None:
                    h[1]()

    def close(self) -> None:
        if self.ep.closed:
            return
        self.loop.remove_reader(self.ep.fileno())
        self.ep.close()
        self.watched.clear()


class Flow:
    """One direction of a spliced pair."""

    __slots__ = ("src", "dst", "count", "blocked", "rpipe", "wpipe", "capacity",
                 "held", "eof", "shut", "reading", "writing")

    def __init__(self, src: socket.socket, dst: socket.socket, count: Callable[[int], None],
                 blocked: set[str]) -> None:
        self.src, self.dst = src, dst
        self.count = count             # bytes read from src
        self.blocked = blocked         # the src Side's reasons (mirrors "peer" for inspection)
        self.rpipe = self.wpipe = -1
        self.capacity = 0
        self.held = 0                  # bytes in the pipe
        self.eof = False               # src has ended
        self.shut = False              # dst has been shut for writing
        self.reading = self.writing = False

    @property
    def done(self) -> bool:
        return self.eof and self.held == 0


class Spliced:
    """Both directions of one paired plaintext connection. `on_high` reports the most
    bytes held at once, `on_eof(i)` that flow i's source ended (0: client -> backend,
    1: backend -> client), `on_done` that both ended and were passed on, `on_error`
    a socket error (the owner aborts), `on_closed` that close() finished and the
    transports may go."""

    def __init__(self, poller: Poller, client: socket.socket, backend: socket.socket,
                 count_up: Callable[[int], None], count_down: Callable[[int], None],
                 blocked: tuple[set[str], set[str]], *, pipe_size: int = PIPE_SIZE,
                 on_high: Callable[[int], None], on_eof: Callable[[int], None], on_done: Callable[[], None],
                 on_error: Callable[[OSError], None], on_closed: Callable[[], None]) -> None:
        self.poller = poller
        self.socks = (client, backend)
        self.flows = (Flow(client, backend, count_up, blocked[0]), Flow(backend, client, count_down, blocked[1]))
        up, down = self.flows
        # Each socket is the source of one flow and the destination of the other.
        self._callbacks = ((lambda: self._readable(up), lambda: self._flush(down)),
                           (lambda: self._readable(down), lambda: self._flush(up)))
        self.pipe_size = pipe_size
        self.on_high, self.on_eof, self.on_done = on_high, on_eof, on_done
        self.on_error, self.on_closed = on_error, on_closed
        self.closing = False
        self.released = False

    def start(self) -> None:
        for f in self.flows:
            self._read(f, True)

    # -- event loop callbacks ------------------------------------------------------------

    def _readable(self, f: Flow) -> None:
        if f.rpipe < 0:
            f.rpipe, f.wpipe, f.capacity = make_pipe(self.pipe_size)   # on first data: idle pairs hold none
        src, wpipe = f.src.fileno(), f.wpipe
        for _ in range(BURST):
            want = f.capacity - f.held
            try:
                n = os.splice(src, wpipe, want, flags=FLAGS)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self._fail(e)
                return
            if n == 0:
                f.eof = True
                self._read(f, False)
                self.on_eof(self.flows.index(f))
                break
            f.held += n
            f.count(n)
            self.on_high(f.held)
            if not self._write_out(f):
                return
            # A short read emptied the socket (the usual small message): no second try.
            if f.held or n < want:
                break
        self._flush(f)

    def _write_out(self, f: Flow) -> bool:
        """Splice the pipe into dst until it is empty or dst is full; False: an error (released)."""
        dst, rpipe = f.dst.fileno(), f.rpipe
        while f.held:
            try:
                f.held -= os.splice(rpipe, dst, f.held, flags=FLAGS)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self._fail(e)
                return False
        return True

    def _flush(self, f: Flow) -> None:
        if not self._write_out(f):
            return
        if f.held:
            # dst is full: stop reading src until it takes what the pipe holds.
            self._read(f, False)
            f.blocked.add("peer")
            self._write(f, True)
            return
        self._write(f, False)
        f.blocked.discard("peer")
        if self.closing:
            self._maybe_closed()
            return
        if f.eof:
            if not f.shut:
                f.shut = True
                try:
                    f.dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass                  # dst is gone: its own flow reports it
                if all(x.done for x in self.flows):
                    self.on_done()
            return
        self._read(f, True)

    def _read(self, f: Flow, on: bool) -> None:
        on = on and not f.eof and not self.released
        if on != f.reading:
            f.reading = on
            self._sync(0 if f.src is self.socks[0] else 1)

    def _write(self, f: Flow, on: bool) -> None:
        on = on and not self.released
        if on != f.writing:
            f.writing = on
            self._sync(0 if f.dst is self.socks[0] else 1)

    def _sync(self, i: int) -> None:
        """Socket i is read for the flow it feeds and written for the flow it ends."""
        feeds, ends = self.flows[i], self.flows[1 - i]
        reader, writer = self._callbacks[i]
        self.poller.watch(self.socks[i].fileno(), reader if feeds.reading else None,
                          writer if ends.writing else None)

    def _fail(self, err: OSError) -> None:
        self.release()
        self.on_error(err)

    # -- ending ----------------------------------------------------------------------------

    def close(self) -> None:
        """Read no more; write what the pipes hold, then on_closed (once)."""
        if self.closing or self.released:
            return
        self.closing = True
        for f in self.flows:
            self._read(f, False)
        self._maybe_closed()

    def _maybe_closed(self) -> None:
        if self.released or any(f.held for f in self.flows):
            return
        self.release()
        self.on_closed()

    def release(self) -> None:
        """Stop watching and close the duplicates and pipes (the transports keep their sockets)."""
        if self.released:
            return
        for f in self.flows:
            self._read(f, False)
            self._write(f, False)
        self.released = True
        for f in self.flows:
            for fd in (f.rpipe, f.wpipe):
                if fd >= 0:
                    os.close(fd)
            f.rpipe = f.wpipe = -1
        for s in self.socks:
            s.close()

    @property
    def held(self) -> int:
        return sum(f.held for f in self.flows)
