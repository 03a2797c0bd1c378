"""How the `portlink` command prints what the daemon sends: tables, container
status, events, log records. Pure text; nothing here talks to a daemon."""

from __future__ import annotations

import json
import sys
import time

from portlink.runtime import logrecord


def ports_text(c: dict) -> str:
    return ", ".join(f"{p['host_ip']}:{p['host_port']}->{p['container_port']}/{p['proto']}"
                     for p in c["network"]["ports"])


def status_text(c: dict) -> str:
    if c["status"] == "running":
        return f"Up {ago(c['started'])}"
    if c["status"] == "exited" and c.get("restarting"):   # as Docker: a policy restart pending
        return f"Restarting ({'?' if c['exit_code'] is None else c['exit_code']}) {ago(c['finished'])} ago"
    if c["status"] == "exited":
        code = c["exit_code"]
        return f"Exited ({'?' if code is None else code}) {ago(c['finished'])} ago" if c["finished"] else "Created"
    return c["status"].capitalize()


def ago(t: float | None) -> str:
    if not t:
        return ""
    s = int(time.time() - t)
    for unit, n in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if s >= n:
            return f"{s // n} {unit}"
    return f"{s} seconds"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def ps_table(cs: list[dict]) -> str:
    rows = [["CONTAINER ID", "IMAGE", "COMMAND", "STATUS", "IP", "PORTS", "NAMES"]]
    for c in cs:
        cmd = " ".join([*(c["config"].get("entrypoint") or []), *c["config"]["cmd"]])
        rows.append([c["id"][:12], c["image"], json.dumps(cmd[:20] + ("…" if len(cmd) > 20 else ""), ensure_ascii=False),
                     status_text(c), c["network"]["ip"] or "", ports_text(c), c["name"]])
    return table(rows)


def network_table(ns: list[dict]) -> str:
    rows = [["NETWORK ID", "NAME", "SUBNET", "GATEWAY", "BRIDGE", "INTERNAL", "ICC"]]
    rows += [[n["id"][:12], n["name"], n["subnet"], n["gateway"], n["bridge"],
              str(n["internal"]).lower(), "on" if n["icc"] else "off"] for n in ns]
    return table(rows)


def event_line(e: dict) -> str:
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(e["time"])) + f".{int(e['time'] % 1 * 1e6):06d}Z"
    attrs = ", ".join(f"{k}={v}" for k, v in sorted(e["attrs"].items()))
    ident = f" {e['id'][:12]}" if e["id"] else ""
    return f"{when} {e['type']} {e['action']}{ident} ({'name=' + e['name']}{', ' + attrs if attrs else ''})"


def print_records(resp, timestamps: bool, flush: bool) -> None:
    """CRI records from the daemon: stdout lines to our stdout, stderr lines to our stderr."""
    outs = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    open_line: dict[str, bool] = {}   # a fragment of this stream was printed: its line goes on
    for raw in resp:
        rec = logrecord.parse_record(raw.rstrip(b"\n"))
        if rec is None:
            continue
        out = outs[rec.stream]
        out.write(logrecord.render_text(rec, timestamps, not open_line.get(rec.stream)))
        open_line[rec.stream] = rec.partial
        if flush:
            out.flush()
    for out in outs.values():
        out.flush()


def volume_table(vs: list[dict]) -> str:
    rows = [["DRIVER", "VOLUME NAME", "USED BY"]]
    rows += [[v["Driver"], v["Name"], ", ".join(v["UsedBy"])] for v in vs]
    return table(rows)
