"""The ambassador's command line: every bad argument named (exit 2, nothing
started), run() serving /metrics and /stats and stopping cleanly, and the real
`python -m portlink.ambassador` stopping on SIGTERM."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import uvloop

from portlink.ambassador.backends import Backend
from portlink.ambassador.main import Options, UsageError, main, parse_args, run

T = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- parsing -------------------------------------------------------------------------------

def test_static_options():
    o = parse_args(["--listen", "5432", "--listen", "80", "--backend", "5432=10.0.0.1:31000",
                    "--backend", "80=10.0.0.2:8080", "--backend", "80=[fd00::2]:8080", "--bind", "127.0.0.1",
                    "--policy", "drain", "--drain-deadline", "2.5", "--metrics", "127.0.0.1:9100",
                    "--connect-timeout", "0.5", "--cooldown", "0"], env={})
    assert o == Options(listen=(5432, 80), bind="127.0.0.1",
                        backends={5432: (Backend("10.0.0.1", 31000),),
                                  80: (Backend("10.0.0.2", 8080), Backend("fd00::2", 8080))},
                        policy="drain", drain_deadline=2.5, metrics=("127.0.0.1", 9100),
                        connect_timeout=0.5, cooldown=0.0)


def test_defaults_and_consul_options():
    o = parse_args(["--listen", "5432", "--service", "db", "--consul", "10.0.0.5"], env={})
    assert (o.bind, o.policy, o.drain_deadline, o.metrics, o.connect_timeout, o.cooldown) == \
        ("0.0.0.0", "keep", 10.0, None, 2.0, 5.0)
    assert o.service == "db" and o.consul.url == "http://10.0.0.5:8500" and o.backends == {}
    o = parse_args(["--listen", "5432", "--service", "db"], env={"CONSUL_HTTP_ADDR": "https://c.example:8501"})
    assert o.consul.url == "https://c.example:8501"


@pytest.mark.parametrize("argv, names", [
    ([], "--listen PORT is required"),
    (["--listen", "http", "--backend", "80=10.0.0.1:80"], "'http'"),
    (["--listen", "0", "--backend", "0=10.0.0.1:80"], "'0'"),
    (["--listen", "80", "--listen", "80", "--backend", "80=10.0.0.1:80"], "--listen 80 is given more than once"),
    (["--listen", "80"], "no backends"),
    (["--listen", "80", "--backend", "80=10.0.0.1"], "'10.0.0.1'"),
    (["--listen", "80", "--backend", "81=10.0.0.1:80"], "port 81, which is not a --listen port"),
    (["--listen", "80", "--listen", "81", "--backend", "80=10.0.0.1:80"], "--listen 81 has no --backend"),
    (["--listen", "80", "--backend", "80=10.0.0.1:80", "--service", "db", "--consul", "c"], "not both"),
    (["--listen", "80", "--service", "db"], "--service db needs --consul"),
    (["--listen", "80", "--service", "d b", "--consul", "c"], "invalid --service 'd b'"),
    (["--listen", "80", "--service", "db", "--consul", "ftp://c"], "'ftp://c'"),
    (["--listen", "80", "--backend", "80=10.0.0.1:80", "--consul", "c"], "--consul c is only used with --service"),
    (["--listen", "80", "--backend", "80=10.0.0.1:80", "--bind", "localhost"], "--bind 'localhost'"),
    (["--listen", "80", "--backend", "80=10.0.0.1:80", "--policy", "sometimes"], "--policy 'sometimes'"),
    (["--listen", "80", "--backend", "80=10.0.0.1:80", "--drain-deadline", "-1"], "--drain-deadline '-1'"),
    (["--listen", "80", "--backend", "80=10.0.0.1:80", "--drain-deadline", "nan"], "--drain-deadline 'nan'"),
    (["--listen", "80", "--backend", "80=10.0.0.1:80", "--connect-timeout", "0"], "--connect-timeout '0'"),
    (["--listen", "80", "--backend", "80=10.0.0.1:80", "--connect-timeout", "soon"], "--connect-timeout 'soon'"),
    (["--listen", "80", "--backend", "80=10.0.0.1:80", "--cooldown", "inf"], "--cooldown 'inf'"),
    (["--listen", "80", "--backend", "80=10.0.0.1:80", "--metrics", "9100"], "--metrics '9100'"),
    (["--listen", "80", "--backend", "80=10.0.0.1:80", "--metrics", "0.0.0.0:80"], "uses listener port 80"),
    (["--listen", "80", "--backend", "80=10.0.0.1:80", "--frobnicate"], "--frobnicate"),
    (["--listen", "80", "--backend"], "--backend"),
])
def test_errors_name_the_bad_value(argv, names):
    with pytest.raises(UsageError) as e:
        parse_args(argv, env={})
    assert names in str(e.value)


def test_main_exits_2_with_the_message_and_starts_nothing(capsys, monkeypatch):
    started = []
    monkeypatch.setattr("portlink.ambassador.main.run", lambda *a: started.append(a))
    assert main(["--listen", "80", "--backend", "80=10.0.0.1:80", "--policy", "maybe"]) == 2
    err = capsys.readouterr().err
    assert "portlink-ambassador: error: invalid --policy 'maybe'" in err
    assert started == []


# -- running ----------------------------------------------------------------------------------

async def http_get(port, path):
    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), T)
    w.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    raw = await asyncio.wait_for(r.read(), T)
    w.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.decode(), body


def test_run_serves_metrics_and_stats_and_stops():
    async def echo(r, w):
        while data := await r.read(65536):
            w.write(data)
        w.close()

    async def main_():
        backend = await asyncio.start_server(echo, "127.0.0.1", 0)
        bport = backend.sockets[0].getsockname()[1]
        listen, mport = free_port(), free_port()
        opts = parse_args(["--listen", str(listen), "--backend", f"{listen}=127.0.0.1:{bport}",
                           "--bind", "127.0.0.1", "--metrics", f"127.0.0.1:{mport}"], env={})
        stop = asyncio.Event()
        task = asyncio.ensure_future(run(opts, stop))
        try:
            deadline = time.monotonic() + T
            while True:
                try:
                    r, w = await asyncio.open_connection("127.0.0.1", listen)
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the ambassador never listened"
                    await asyncio.sleep(0.02)
            w.write(b"hello")
            assert await asyncio.wait_for(r.readexactly(5), T) == b"hello"
            w.close()

            head, body = await http_get(mport, "/metrics")
            assert " 200 " in head.splitlines()[0]
            assert "text/plain; version=0.0.4" in head
            assert b"portlink_ambassador_bytes_to_client_total 5\n" in body
            head, body = await http_get(mport, "/stats")
            stats = json.loads(body)
            assert stats["listeners"][str(listen)]["backends"] == [f"127.0.0.1:{bport}"]
            assert stats["metrics"]["connections_total"]["total"] == 1
            head, _ = await http_get(mport, "/nope")
            assert " 404 " in head.splitlines()[0]
        finally:
            stop.set()
            assert await asyncio.wait_for(task, T) == 0
            backend.close()
        with pytest.raises(OSError):           # everything is closed
            await asyncio.open_connection("127.0.0.1", listen)
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", mport)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(main_(), 30))


def test_run_with_unreachable_consul_still_listens_and_reports_it():
    async def main_():
        listen, mport, dead = free_port(), free_port(), free_port()
        opts = parse_args(["--listen", str(listen), "--service", "db", "--consul", f"127.0.0.1:{dead}",
                           "--bind", "127.0.0.1", "--metrics", f"127.0.0.1:{mport}"], env={})
        stop = asyncio.Event()
        task = asyncio.ensure_future(run(opts, stop))
        try:
            deadline = time.monotonic() + T
            while True:
                try:
                    _, body = await http_get(mport, "/stats")
                    stats = json.loads(body)
                    if stats["consul"]["reachable"] is False:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "consul never reported unreachable"
                await asyncio.sleep(0.05)
            assert stats["consul"]["service"] == "db"
            assert stats["listeners"][str(listen)]["backends"] == []
            r, w = await asyncio.open_connection("127.0.0.1", listen)   # listening, but nowhere to go
            assert await asyncio.wait_for(r.read(), T) == b""
            w.close()
        finally:
            stop.set()
            assert await asyncio.wait_for(task, T) == 0

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(main_(), 30))


def test_run_returns_1_when_the_port_is_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        opts = parse_args(["--listen", str(port), "--backend", f"{port}=127.0.0.1:1", "--bind", "127.0.0.1"], env={})
        assert asyncio.run(asyncio.wait_for(run(opts, asyncio.Event()), T)) == 1


def test_module_stops_on_sigterm():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-P", "-m", "portlink.ambassador", "--listen", str(port),
                             "--backend", f"{port}=127.0.0.1:1", "--bind", "127.0.0.1"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "the ambassador never listened"
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=T) == 0
        err = proc.stderr.read()
        assert "listening on 127.0.0.1 ports" in err and "stopping" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=T)
        proc.stderr.close()
