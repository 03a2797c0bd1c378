"""The client side of portlinkd's HTTP API over its UNIX socket: what the CLI,
the test sandboxes and the benchmarks use to talk to a daemon.

Light on purpose: the standard library's HTTP client and nothing of the daemon,
so a short-lived `portlink` command starts fast. The daemon takes its default
socket path from here."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.parse

DEFAULT_SOCKET = "/run/portlink/portlink.sock"


class CliError(Exception):
    pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        deadline = time.monotonic() + (self.timeout or 30)
        try:
            while True:
                try:
                    s.connect(self._path)
                    break
                except BlockingIOError:
                    # The daemon's accept queue is full (a burst of clients): a UNIX socket
                    # says so at once rather than waiting. Wait our turn, as TCP would.
                    if time.monotonic() > deadline:
                        raise CliError(f"portlinkd at {self._path} is not accepting connections "
                                       "(its queue stayed full)") from None
                    time.sleep(0.01)
        except (FileNotFoundError, ConnectionRefusedError):
            raise CliError(f"cannot reach portlinkd at {self._path}: is it running? "
                           "(start it with `portlinkd`, or pick a host with --host / PORTLINK_HOST)") from None
        except PermissionError:
            raise CliError(f"permission denied on {self._path}: the portlink socket is root-only") from None
        self.sock = s


class Client:
    def __init__(self, socket_path: str, timeout: float | None = 120) -> None:
        self.path = socket_path.removeprefix("unix://")
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict | None = None, query: dict | None = None,
                stream: bool = False):
        if query:
            path += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None}, doseq=True)
        conn = _UnixConnection(self.path, None if stream else self.timeout)
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
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

    def get(self, path, **q):
        return self.request("GET", path, query=q or None)

    def post(self, path, body=None, **q):
        return self.request("POST", path, body, q or None)

    def delete(self, path, **q):
        return self.request("DELETE", path, query=q or None)
