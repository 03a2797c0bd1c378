"""The API's streamed answers: image import progress, the event stream and a
container's log (JSON lines or raw records, written as they come)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

from aiohttp import web

from portlink.errors import InvalidArgument, PortlinkError
from portlink.runtime import events, logfmt
from portlink.runtime.api_json import img_json

# A followed log polls for new output every 50 ms, but starts at 5 ms and doubles
# (the first lines of a short-lived container come early). Its end is not polled
# for: the container's exit notice (runtime.exit_notices) wakes the stream.
FOLLOW_FIRST_POLL = 0.005
FOLLOW_POLL = 0.05


async def import_with_progress(api, r: web.Request, path, name) -> web.StreamResponse:
    """JSON lines: {"progress": [bytes read, total]} as the import goes, then
    {"image": ...} or {"error": ...} (the status is sent before the outcome is known)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    report = lambda done, total: loop.call_soon_threadsafe(queue.put_nowait, {"progress": [done, total]})
    job = asyncio.ensure_future(api.call(api.host.images.import_tar, path, name, progress=report))
    job.add_done_callback(lambda _: queue.put_nowait(None))
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(r)
    while (item := await queue.get()) is not None:
        await resp.write((json.dumps(item) + "\n").encode())
    try:
        img = job.result()
        last = {"image": {**img_json(img), "warnings": list(img.warnings)}}
    except PortlinkError as e:
        last = {"error": str(e)}
    await resp.write((json.dumps(last) + "\n").encode())
    await resp.write_eof()
    return resp

async def events_stream(api, r: web.Request) -> web.StreamResponse:
    """JSON lines: the recorded events from --since to --until; with follow=1
    (and no until) then the new ones as they happen, until the client leaves."""
    log_ = api.host.events
    filters = events.parse_filters(r.query.getall("filter", []))
    since = events.parse_time(r.query.get("since"))
    until = events.parse_time(r.query.get("until"))
    follow = r.query.get("follow") in ("1", "true") and until is None
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(r)
    seen = log_.seq      # read first: an event emitted meanwhile is followed, not lost
    past = await api.call(lambda: list(log_.read(since, until, filters)))
    for e in past:
        await resp.write((json.dumps(e.to_json()) + "\n").encode())
    while follow:
        await asyncio.sleep(0.1)
        seen, new = log_.after(seen)
        for e in new:
            if events.matches(e, filters):
                await resp.write((json.dumps(e.to_json()) + "\n").encode())
    await resp.write_eof()
    return resp

async def logs_stream(api, r: web.Request, info: dict) -> web.StreamResponse:
    """The container's log (runtime/logfmt.py). Query: tail=N|all, since=(Unix
    time | duration like 10m | RFC 3339), follow=1 (until the container stops),
    timestamps=1, format=text|cri.

    format=text (the default): the lines' text, stdout and stderr merged, as a
    foreground `run` prints them. format=cri: one record per line,
    `<RFC3339Nano> <stdout|stderr> <F|P> <text>`, fragments joined back (P:
    the line has no newline yet; when following, its rest comes as more
    records of that stream): byte-exact, so the CLI can split the streams."""
    tail = logfmt.parse_tail(r.query.get("tail"))
    since = logfmt.parse_since(r.query.get("since"))
    follow = r.query.get("follow") in ("1", "true")
    stamps = r.query.get("timestamps") in ("1", "true")
    fmt = r.query.get("format", "text")
    if fmt not in ("text", "cri"):
        raise InvalidArgument(f"invalid log format {fmt!r}: expected text or cri")
    open_line: dict[str, bool] = {}   # stream -> a fragment was sent, the line goes on (text)

    def render(recs) -> bytes:
        if fmt == "cri":
            return b"".join(map(logfmt.format_record, recs))
        out = []
        for rec in recs:
            out.append(logfmt.render_text(rec, stamps, not open_line.get(rec.stream)))
            open_line[rec.stream] = rec.partial
        return b"".join(out)

    reader = logfmt.Reader(Path(info["paths"]["log"]))
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await resp.prepare(r)
    try:
        data = await api.call(lambda: render(reader.read_existing(tail, since)))   # off the event loop
        for i in range(0, len(data), 1 << 20):
            await resp.write(data[i:i + (1 << 20)])
        pause = FOLLOW_FIRST_POLL
        ended = asyncio.Event()
        stop_listening = None
        if follow:
            # Before the status check: an end between the two is not missed.
            loop = asyncio.get_running_loop()
            stop_listening = api.host.lifecycle.exits.listen(
                info["id"], lambda pid: loop.call_soon_threadsafe(ended.set))
        while follow:
            now = api.host.records.get(info["id"])
            # Its process ended (the notice comes once its monitor has written the last
            # output, with the code recorded first: a code while "running" is this run's,
            # as a start clears it, and says the notice came before we listened), or it
            # is recorded as stopped: what is new is the rest of its log.
            running = (now is not None and now.status == "running" and now.exit_code is None
                       and not ended.is_set())
            # Read after the status check: a stopped container's shim has written all
            # (Runc.delete waits for it before the status changes), so nothing is lost.
            new = await api.call(reader.read_new)
            if new:
                await resp.write(render(new))
            if not running:
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ended.wait(), pause)
            pause = min(pause * 2, FOLLOW_POLL)
    finally:
        if stop_listening is not None:
            stop_listening()
        reader.close()
    await resp.write_eof()
    return resp
