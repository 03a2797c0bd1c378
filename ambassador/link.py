"""One `portlink-warm/2` TLS connection between a client side and a server side
(ambassador/warm.py has the protocol's description): framed streams, one at a
time, each presented to the forwarder as a transport (`Stream`), so a Side
pairs with it exactly as with a socket.

Frames: kind (1 byte) and payload length (4 bytes, big-endian), then the
payload. Only `D` carries one; a frame the link does not expect ends the link.
The server side answers a claim with `A` once its backend is connected, before
any data: until then the client side holds the client's bytes, as during a
connect, so a claim the server side never took (it was closing the link, or
its backend is gone) is a failed connect the client side tries elsewhere,
never a client's lost request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("portlink.ambassador")

HEADER = 5
CLAIM, DATA, END, ACK, NO = ord("C"), ord("D"), ord("E"), ord("A"), ord("N")
CLAIM_FRAME = b"C\0\0\0\0"
ACK_FRAME = b"A\0\0\0\0"
NO_FRAME = b"N\0\0\0\0"       # the claim is refused (not authorized): final, not a failed connect
END_FRAME = b"E\0\0\0\0"
MAX_FRAME = 16 * 1024 * 1024
COPY_UNDER = 16 * 1024     # smaller payloads go out in one TLS record with their header


class LinkError(Exception):
    """The peer broke the framing."""


class ClaimRefused(ConnectionError):
    """The server side refused this client's claim (an intention denies it): the
    client gets nothing, and no other server side is tried for it."""


class Stream(asyncio.Transport):
    """One client's bytes over a Link. Writes become frames; close() after both
    ends sent their EOF hands the link back for the next stream, any other
    close ends the link (the peer sees its stream lost, as with a socket)."""

    def __init__(self, link: Link, protocol: asyncio.Protocol | None = None) -> None:
        super().__init__()
        self.link = link
        self.protocol = protocol
        self.sent_eof = False
        self.got_eof = False
        self.closed = False
        self.paused = False
        self.ready: asyncio.Future | None = None   # client side: the server side's ack of the claim
        self.acked = False                         # server side: the ack is out

    # -- writing -------------------------------------------------------------------

    def write(self, data) -> None:
        if not self.closed and not self.sent_eof and data:
            self.link.send(data)

    def writelines(self, list_of_data) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if not self.closed and not self.sent_eof:
            self.sent_eof = True
            self.link.transport.write(END_FRAME)

    def get_write_buffer_size(self) -> int:
        return self.link.transport.get_write_buffer_size()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self.link.transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self):
        return self.link.transport.get_write_buffer_limits()

    def ack(self) -> None:
        """Server side: the backend is connected; before any of its bytes."""
        if not self.acked and not self.closed:
            self.acked = True
            self.link.transport.write(ACK_FRAME)

    def refuse(self) -> None:
        """Server side: the claim is not authorized (the link closes after)."""
        if not self.acked and not self.closed:
            self.acked = True
            self.link.transport.write(NO_FRAME)

    # -- reading -------------------------------------------------------------------

    def pause_reading(self) -> None:
        if not self.paused and not self.closed:
            self.paused = True
            self.link.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused and not self.closed:
            self.paused = False
            self.link.transport.resume_reading()

    def is_reading(self) -> bool:
        return not self.paused and not self.closed

    # -- ending --------------------------------------------------------------------

    @property
    def clean(self) -> bool:
        return self.sent_eof and self.got_eof

    def close(self) -> None:
        if not self.closed:
            self.link.end(self, abort=False)

    def abort(self) -> None:
        if not self.closed:
            self.link.end(self, abort=True)

    def is_closing(self) -> bool:
        return self.closed or self.link.transport.is_closing()

    def get_extra_info(self, name, default=None):
        return self.link.transport.get_extra_info(name, default)

    def set_protocol(self, protocol) -> None:
        self.protocol = protocol

    def get_protocol(self):
        return self.protocol


class Link(asyncio.Protocol):
    """The protocol of a warm/2 TLS transport. `on_claim(stream)` (server side)
    is called when a client's stream starts; `on_idle(link)` when a stream ended
    cleanly and the link can carry another; `on_lost(link)` once, when the TLS
    connection is gone."""

    def __init__(self, transport: asyncio.Transport, *, on_claim: Callable[[Stream], None] | None = None,
                 on_idle: Callable[[Link], None] | None = None,
                 on_lost: Callable[[Link], None] | None = None) -> None:
        self.transport = transport
        self.on_claim = on_claim
        self.on_idle = on_idle
        self.on_lost = on_lost
        self.stream: Stream | None = None
        self.lost = False
        self.write_paused = False
        self.streams = 0                  # streams carried so far
        self._head = b""                  # a header split across reads
        self._need = 0                    # payload bytes of the current DATA frame still to come
        # what the pool or server side keeps with it
        self.backend = None
        self.contexts = None
        self.timer: asyncio.TimerHandle | None = None
        self.in_use = False               # the pool's: carrying a client
        self.peer = None                  # the server side's: (identity, serial) of the client side
        self.early: asyncio.Future | None = None   # the server side's: authorization asked at the handshake
        transport.set_protocol(self)

    # -- the local side --------------------------------------------------------------

    def open(self, protocol: asyncio.Protocol) -> Stream:
        """Client side: start a stream for `protocol` (the claim goes out at once)."""
        if self.stream is not None or self.lost:
            raise ConnectionError("this link is busy or gone")
        st = self.stream = Stream(self, protocol)
        st.ready = asyncio.get_running_loop().create_future()
        self.streams += 1
        self.transport.write(CLAIM_FRAME)
        if self.write_paused:
            protocol.pause_writing()
        return st

    def send(self, data) -> None:
        n = len(data)
        head = b"D" + n.to_bytes(4, "big")
        if n < COPY_UNDER:
            self.transport.write(b"".join((head, data)))
        else:
            self.transport.writelines((head, data))

    def end(self, st: Stream, abort: bool) -> None:
        """The stream's own side is done with it (Stream.close/abort)."""
        st.closed = True
        if st.ready is not None and not st.ready.done():
            st.ready.cancel()
        if st is not self.stream:
            return
        self.stream = None
        if st.paused:
            st.paused = False
            if not self.lost:
                self.transport.resume_reading()
        if st.protocol is not None:
            asyncio.get_running_loop().call_soon(st.protocol.connection_lost, None)
        if self.lost:
            return
        if abort:
            self.transport.abort()
        elif not st.clean or self._need or self.on_idle is None:
            self.transport.close()    # mid-stream: only closing the link tells the peer
        else:
            self.on_idle(self)

    def close(self) -> None:
        if not self.lost:
            self.transport.close()

    # -- asyncio callbacks -----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        # Payloads go on as views of `data` (immutable, so nothing reads into it again):
        # no copy. A BufferedProtocol read into a reused buffer measured no cheaper at
        # full throughput and dearer per small message (two Python calls per read).
        try:
            self._parse(memoryview(data))
        except LinkError as e:
            log.warning("a warm/2 link broke its framing (%s): closing it", e)
            self.transport.abort()

    def _parse(self, view: memoryview) -> None:
        i, n = 0, len(view)
        st = self.stream
        if (not self._need and not self._head and n > HEADER and view[0] == DATA and st is not None
                and not st.got_eof and not st.closed and int.from_bytes(view[1:HEADER], "big") == n - HEADER):
            st.protocol.data_received(view[HEADER:])     # one whole frame: the usual case
            return
        while i < n and not self.lost:
            if self._need:
                take = min(self._need, n - i)
                self._need -= take
                chunk = view[i:i + take]
                i += take
                st = self.stream
                if st is not None and not st.closed:
                    st.protocol.data_received(chunk)
                continue
            if self._head or n - i < HEADER:
                k = min(HEADER - len(self._head), n - i)
                self._head += bytes(view[i:i + k])
                i += k
                if len(self._head) < HEADER:
                    return
                head, self._head = self._head, b""
            else:
                head = bytes(view[i:i + HEADER])
                i += HEADER
            kind, length = head[0], int.from_bytes(head[1:HEADER], "big")
            if kind == DATA:
                if self.stream is None or self.stream.got_eof or not 0 < length <= MAX_FRAME:
                    raise LinkError(f"data frame of {length} bytes outside a stream")
                self._need = length
            elif kind == END and length == 0:
                st = self.stream
                if st is None or st.got_eof:
                    raise LinkError("EOF frame outside a stream")
                st.got_eof = True
                if not st.closed:
                    st.protocol.eof_received()    # both ways done: the pair closes the stream
            elif kind == ACK and length == 0:
                st = self.stream
                if st is None or st.ready is None or st.ready.done():
                    raise LinkError("an ack without a claim")
                st.ready.set_result(None)
            elif kind == NO and length == 0:
                st = self.stream
                if st is None or st.ready is None or st.ready.done():
                    raise LinkError("a refusal without a claim")
                st.ready.set_exception(ClaimRefused("the server side refused the claim: not authorized"))
            elif kind == CLAIM and length == 0:
                if self.on_claim is None or self.stream is not None:
                    raise LinkError("a claim while a stream is open" if self.stream else "an unexpected claim")
                st = self.stream = Stream(self)
                self.streams += 1
                self.on_claim(st)
            else:
                raise LinkError(f"unknown frame {head[:1]!r} of {length} bytes")

    def eof_received(self) -> bool:
        return False          # close_notify: the link is over

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.stream is not None and self.stream.protocol is not None:
            self.stream.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.stream is not None and self.stream.protocol is not None:
            self.stream.protocol.resume_writing()

    def connection_lost(self, exc) -> None:
        self.lost = True
        st, self.stream = self.stream, None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if st is not None and st.ready is not None and not st.ready.done():
            st.ready.set_exception(ConnectionError("the server side closed the link before its backend answered"))
        if st is not None and not st.closed:
            st.closed = True
            if st.protocol is not None:
                st.protocol.connection_lost(exc)
        if self.on_lost is not None:
            self.on_lost(self)
