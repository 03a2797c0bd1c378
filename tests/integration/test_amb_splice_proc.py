"""The ambassador process (python -m portlink.ambassador, as the daemon runs it) on
its kernel data path, in a sandbox namespace: a stream goes through splice(2)
both ways, the client's half-close reaches the backend while the reply still
comes back, and /metrics counts every byte; --no-splice carries the same
traffic through Python with the same counts."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from portlink.lab.sandbox import Namespace

pytestmark = pytest.mark.root

PY = sys.executable
LISTEN, BACKEND, METRICS = 15301, 7301, 9301
SIZE = 3 * 2**20 + 17      # well over the handover threshold, not a multiple of a pipe

# In the namespace: a backend that reads to EOF, then answers the reversed bytes and
# closes; a client that sends SIZE bytes, half-closes, asks /stats while the reply
# is pending, and reads the reply to EOF.
CLIENT = r"""
import hashlib, json, os, socket, sys, threading, urllib.request
SIZE, LISTEN, BACKEND, METRICS = map(int, sys.argv[1:5])
srv = socket.create_server(("127.0.0.1", BACKEND))
got = {}
release = threading.Event()
def backend():
    c, _ = srv.accept()
    buf = bytearray()
    while d := c.recv(1 << 20):
        buf += d
    got["backend"] = bytes(buf)              # EOF seen: the half-close arrived
    release.wait(10)
    c.sendall(bytes(reversed(buf)))
    c.close()
t = threading.Thread(target=backend); t.start()
payload = os.urandom(SIZE)
s = socket.create_connection(("127.0.0.1", LISTEN), timeout=10)
s.sendall(payload)
s.shutdown(socket.SHUT_WR)
for _ in range(500):
    if "backend" in got:
        break
    threading.Event().wait(0.02)
stats = json.load(urllib.request.urlopen(f"http://127.0.0.1:{METRICS}/stats", timeout=5))
release.set()
reply = bytearray()
while d := s.recv(1 << 20):
    reply += d
t.join(10)
print(json.dumps({"backend_ok": got.get("backend") == payload, "reply_ok": bytes(reply) == payload[::-1],
                  "spliced": stats["listeners"][str(LISTEN)]["spliced"],
                  "open": stats["listeners"][str(LISTEN)]["connections"]}))
"""


def scrape(ns: Namespace) -> str:
    r = ns.run(PY, "-P", "-c", "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen("
               f"'http://127.0.0.1:{METRICS}/metrics', timeout=5).read().decode())", timeout=30)
    return r.stdout


def value(text: str, sample: str) -> int:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return int(float(line.split()[-1]))
    raise AssertionError(f"no sample {sample} in:\n{text[:2000]}")


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "no-splice"])
def test_stream_both_ways_with_half_close_and_counted(tmp_path, splice):
    ns = Namespace.create("splice")
    amb = None
    try:
        log = open(tmp_path / "ambassador.log", "wb")
        amb = ns.popen(PY, "-P", "-m", "portlink.ambassador", "--bind", "127.0.0.1", "--listen", str(LISTEN),
                       "--backend", f"{LISTEN}=127.0.0.1:{BACKEND}", "--metrics", f"127.0.0.1:{METRICS}",
                       *([] if splice else ["--no-splice"]), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 20
        while ns.run(PY, "-c", f"import socket; socket.create_connection(('127.0.0.1', {METRICS}), 1)",
                     check=False).returncode != 0:
            assert amb.poll() is None, (tmp_path / "ambassador.log").read_text()
            assert time.monotonic() < deadline, "the ambassador never served /metrics"
            time.sleep(0.1)
        r = ns.run(PY, "-P", "-c", CLIENT, str(SIZE), str(LISTEN), str(BACKEND), str(METRICS), timeout=60)
        out = json.loads(r.stdout)
        assert out["backend_ok"], "the backend did not get the stream and its EOF"
        assert out["reply_ok"], "the reply after the half-close did not come back whole"
        assert out["open"] == 1                        # half-closed, still open for the reply
        assert out["spliced"] == (1 if splice else 0)
        deadline = time.monotonic() + 10
        while value(text := scrape(ns), "portlink_ambassador_connections_open") != 0:
            assert time.monotonic() < deadline, "the pair did not close after both EOFs"
            time.sleep(0.1)
        assert value(text, "portlink_ambassador_bytes_to_backend_total") == SIZE
        assert value(text, "portlink_ambassador_bytes_to_client_total") == SIZE
        assert value(text, "portlink_ambassador_connections_total") == 1
    finally:
        if amb is not None:
            amb.terminate()                # our own child, by its pid
            try:
                assert amb.wait(10) == 0, (tmp_path / "ambassador.log").read_text()[-2000:]
            finally:
                if amb.poll() is None:
                    amb.kill()
                    amb.wait(5)
        ns.delete()
