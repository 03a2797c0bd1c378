"""The client side of portlinkd's HTTP API over its UNIX socket: what the CLI,
the test sandboxes and the benchmarks use to talk to a daemon.

Light on purpose: nothing of the daemon, and not even http.client (which pulls
in the email package and ssl, half of a short command's import time): the
daemon speaks plain HTTP/1.1 on a local socket, and a request here is one
connection that writes the request and reads one response (Content-Length,
chunked, or until the daemon closes). The daemon takes its default socket path
from here."""

from __future__ import annotations

import json
import socket
import time

DEFAULT_SOCKET = "/run/portlink/portlink.sock"
_MAX_LINE = 65536        # a status or header line, or a chunk-size line
_MAX_HEADERS = 100


class CliError(Exception):
    pass


def _plain(text: str) -> bool:
    """Does urlencode leave `text` as it is?"""
    return text.isascii() and text.replace("-", "a").replace("_", "a").replace(".", "a").isalnum()


def _query_string(query: dict) -> str:
    """urlencode(query, doseq=True); plain words (force=1, follow=1) without
    importing urllib.parse: with ipaddress, a few ms of a short command's start."""
    if all(_plain(str(k)) and isinstance(v, (str, int)) and not isinstance(v, bool) and _plain(str(v))
           for k, v in query.items()):
        return "&".join(f"{k}={v}" for k, v in query.items())
    import urllib.parse
    return urllib.parse.urlencode(query, doseq=True)


def _connect(path: str, timeout: float | None) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    deadline = time.monotonic() + (timeout or 30)
    try:
        while True:
            try:
                s.connect(path)
                return s
            except BlockingIOError:
                # The daemon's accept queue is full (a burst of clients): a UNIX socket
                # says so at once rather than waiting. Wait our turn, as TCP would.
                if time.monotonic() > deadline:
                    raise CliError(f"portlinkd at {path} is not accepting connections "
                                   "(its queue stayed full)") from None
                time.sleep(0.01)
    except (FileNotFoundError, ConnectionRefusedError):
        s.close()
        raise CliError(f"cannot reach portlinkd at {path}: is it running? "
                       "(start it with `portlinkd`, or pick a host with --host / PORTLINK_HOST)") from None
    except PermissionError:
        s.close()
        raise CliError(f"permission denied on {path}: the portlink socket is root-only") from None
    except BaseException:
        s.close()
        raise


class Response:
    """One HTTP/1.1 response: `status`, `headers` (lower-case names), and the
    body by `read()` (all of it) or by iterating (lines, each as it arrives)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._f = sock.makefile("rb")
        line = self._line()
        if not line:
            raise ConnectionResetError("portlinkd closed the connection without a response")
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ConnectionError(f"not an HTTP response from portlinkd: {line[:100]!r}")
        self.status = int(parts[1])
        self.headers = self._headers()
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        length = self.headers.get("content-length")
        self._left = int(length) if length is not None and not self._chunked else None   # None: chunked or to EOF
        self._done = False
        self._buf = b""

    def _line(self) -> bytes:
        line = self._f.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise ConnectionError("portlinkd sent an overlong line")
        return line

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS + 1):
            line = self._line()
            if line in (b"\r\n", b"\n", b""):
                return headers
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        raise ConnectionError("portlinkd sent too many headers")

    def _piece(self) -> bytes:
        """The next piece of the body as soon as it is here; b"" at its end."""
        if self._done:
            return b""
        if self._chunked:
            size = self._line().split(b";", 1)[0].strip()
            try:
                n = int(size, 16)
            except ValueError:
                raise ConnectionError(f"bad chunk size from portlinkd: {size[:20]!r}") from None
            if n == 0:
                self._headers()           # trailers, up to the blank line
                return self._end()
            data = self._f.read(n)
            self._f.read(2)               # the chunk's CRLF
            if len(data) < n:
                raise ConnectionResetError("portlinkd closed the connection in the middle of a response")
            return data
        if self._left == 0:
            return self._end()
        data = self._f.read1(65536 if self._left is None else min(self._left, 65536))
        if not data:
            if self._left is not None:
                raise ConnectionResetError("portlinkd closed the connection in the middle of a response")
            return self._end()
        if self._left is not None:
            self._left -= len(data)
        return data

    def _end(self) -> bytes:
        self._done = True
        self.close()
        return b""

    def read(self) -> bytes:
        out = [self._buf]
        self._buf = b""
        while piece := self._piece():
            out.append(piece)
        return b"".join(out)

    def chunks(self):
        """The body in pieces as they arrive (binary: no line splitting)."""
        if self._buf:
            yield self._buf
            self._buf = b""
        while piece := self._piece():
            yield piece

    def __iter__(self):
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line, self._buf = self._buf[:nl + 1], self._buf[nl + 1:]
                yield line
                continue
            piece = self._piece()
            if not piece:
                break
            self._buf += piece
        if self._buf:
            line, self._buf = self._buf, b""
            yield line

    def close(self) -> None:
        self._f.close()
        self._sock.close()


class Client:
    def __init__(self, socket_path: str, timeout: float | None = 120) -> None:
        self.path = socket_path.removeprefix("unix://")
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict | None = None, query: dict | None = None,
                stream: bool = False):
        if query:
            query = {k: v for k, v in query.items() if v is not None}
            path += "?" + _query_string(query)
        if any(c <= " " or c == "\x7f" for c in method + path):
            raise ValueError(f"can't request {method} {path!r}: a control character or space")
        data = json.dumps(body).encode() if body is not None else None
        head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept-Encoding: identity\r\n"
        if data is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        elif method in ("POST", "PUT", "PATCH"):
            head += "Content-Length: 0\r\n"
        sock = _connect(self.path, None if stream else self.timeout)
        try:
            sock.sendall(head.encode("latin-1") + b"\r\n" + (data or b""))
            resp = Response(sock)
        except BaseException:
            sock.close()
            raise
        if resp.status >= 400:
            raw = resp.read()
            try:
                msg = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                msg = raw.decode(errors="replace").strip() or f"HTTP {resp.status}"
            raise CliError(msg)
        if stream:
            return resp
        raw = resp.read()
        return json.loads(raw) if raw else None

    def upload(self, path: str, f, query: dict | None = None):
        """POST the bytes of the binary file `f` as the body (chunked, as read: stdin
        need not fit in memory); the JSON answer."""
        if query:
            import urllib.parse
            path += "?" + urllib.parse.urlencode(query, doseq=True)
        head = (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nAccept-Encoding: identity\r\n"
                "Content-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock = _connect(self.path, None)
        try:
            try:
                sock.sendall(head.encode("latin-1"))
                while chunk := f.read(1 << 20):
                    sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sock.sendall(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass     # the daemon answered early (an error): read what it says
            resp = Response(sock)
        except BaseException:
            sock.close()
            raise
        raw = resp.read()
        if resp.status >= 400:
            try:
                msg = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                msg = raw.decode(errors="replace").strip() or f"HTTP {resp.status}"
            raise CliError(msg)
        return json.loads(raw) if raw else None

    def get(self, path, **q):
        return self.request("GET", path, query=q or None)

    def post(self, path, body=None, **q):
        return self.request("POST", path, body, q or None)

    def delete(self, path, **q):
        return self.request("DELETE", path, query=q or None)
