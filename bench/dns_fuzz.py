#!/usr/bin/env python3
"""bench/dns_fuzz: hostile packets through portlink's resolver, in-process, for
longer runs than the unit test's million (tests/unit/test_dns_fuzz.py).

The packets and the driver are portlink.lab.dns_fuzz: seeded malformed and
adversarial datagrams (random bytes up to 4.3 KB, truncations, bit flips and
byte edits of valid queries, compression-pointer loops and chains, labels over
63, names over 255, lying header counts, responses, odd opcodes, classes and
OPT records) through the listener's real receive loop (packed-answer table,
then the slow path and forwarding to a canned upstream), from containers on
the snapshot's networks and from a stranger. Every 16th packet also goes
through the TCP handler, every 97th opens a hostile TCP stream, and every
997th is followed by a good query (`web` A) that must answer 10.1.0.2.

Prints one JSON line: packets, seconds, packets_per_s, crashes (exceptions out
of the server), bad_replies (a reply dnspython cannot read, with another id,
to a response, or over the asker's UDP size), wrong_answers (good queries
answered wrongly or not at all), max_ms (the slowest packet) and the first
offending packet of each kind, hex, to replay. No root, no sockets.

Run:  .venv/bin/python -P bench/dns_fuzz.py [--packets 1000000] [--seed 6]"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

import dns.flags
import dns.message

from portlink.lab import dns_fuzz as fuzz


def reply_problem(query: bytes, reply: bytes, udp: bool) -> str | None:
    if len(query) < 12 or query[2] & 0x80:
        return "a reply to a packet without a header, or to a response"
    if reply[:2] != query[:2]:
        return "another id"
    if udp and len(reply) > 512 and len(reply) > fuzz.udp_limit(query):
        return "over the asker's UDP size"
    if (reply[2] >> 3) & 0xF == 5:   # dnspython wants an UPDATE's zone section to be SOA
        reply = reply[:2] + bytes([reply[2] & 0x87]) + reply[3:]
    try:
        msg = dns.message.from_wire(reply)
    except Exception as e:
        return f"unreadable: {e}"
    return None if msg.flags & dns.flags.QR else "QR not set"


async def run(packets: int, seed: int, progress) -> dict:
    d = fuzz.in_process()
    rng = random.Random(seed + 1)
    seen: set[bytes] = set()
    counts = {"crashes": 0, "bad_replies": 0, "wrong_answers": 0, "replies": 0, "good_queries": 0}
    first: dict[str, str] = {}
    worst = 0.0
    perf = time.perf_counter

    def bad(kind: str, pkt: bytes, why: str = "") -> None:
        counts[kind] += 1
        first.setdefault(kind, f"{pkt.hex()} {why}".strip())

    def check(pkt: bytes, replies, udp: bool) -> None:
        for reply in replies:
            reply = bytes(reply)
            counts["replies"] += 1
            key = reply[2:] + (pkt if udp and len(reply) > 512 else b"")
            if key in seen:
                if reply[:2] != pkt[:2]:
                    bad("bad_replies", pkt, "another id")
                continue
            why = reply_problem(pkt, reply, udp)
            if why:
                bad("bad_replies", pkt, why)
            if len(seen) > 200_000:
                seen.clear()
            seen.add(key)

    start = perf()
    for i, pkt in enumerate(fuzz.packets(seed, packets)):
        client = fuzz.CLIENTS[i % len(fuzz.CLIENTS)]
        t = perf()
        try:
            replies = await d.udp(pkt, client)
        except Exception as e:
            bad("crashes", pkt, repr(e))
            continue
        worst = max(worst, perf() - t)
        if len(replies) > 1:
            bad("bad_replies", pkt, f"{len(replies)} replies")
        check(pkt, replies, udp=True)
        try:
            if i % 16 == 0:
                out = await d.tcp(pkt, client)
                check(pkt, [] if out is None else [out], udp=False)
            if i % 97 == 0:
                await d.tcp_stream(fuzz.tcp_stream(rng), client)
        except Exception as e:
            bad("crashes", pkt, f"TCP: {e!r}")
        if i % 997 == 0:
            counts["good_queries"] += 1
            q = fuzz.query("web", qid=rng.randrange(65536))
            try:
                [reply] = await d.udp(q, fuzz.CLIENT)
                ok = reply[:2] == q[:2] and [rr.address for rrset in dns.message.from_wire(reply).answer
                                             for rr in rrset] == ["10.1.0.2"]
            except Exception:
                ok = False
            if not ok:
                bad("wrong_answers", q)
        if progress and i % 50_000 == 0 and i:
            progress(f"{i} packets, {i / (perf() - start):.0f}/s, {counts}")
    seconds = perf() - start
    return {"bench": "dns_fuzz", "packets": packets, "seed": seed, "seconds": round(seconds, 1),
            "packets_per_s": round(packets / seconds), **counts, "max_ms": round(worst * 1000, 2),
            "malformed": d.server.stats["malformed"], "first": first}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="hostile packets through portlink's resolver, in-process")
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=6)
    a = ap.parse_args(argv)
    if not 1 <= a.packets <= 1_000_000_000:
        raise SystemExit("bench/dns_fuzz: --packets 1..1000000000")
    progress = (lambda msg: print(f"bench/dns_fuzz: {msg}", file=sys.stderr, flush=True)) \
        if sys.stderr.isatty() else None
    loop = asyncio.new_event_loop()
    try:
        print(json.dumps(loop.run_until_complete(run(a.packets, a.seed, progress))))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
