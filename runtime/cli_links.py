"""`portlink link ls`: this host's links, one row each (runtime.link_views)."""

from __future__ import annotations

import json


def intention_text(i: dict | None) -> tuple[str, str]:
    """(SOURCE -> DESTINATION, ACTION [BY]) of a row's intention; "-" for a local link."""
    if i is None:
        return "-", "-"
    action = i["action"] or "none (Consul's default)"
    if i.get("error"):
        action += f" ({i['error']})"
    elif i.get("by"):
        action += f" by {i['by']}"
    return f"{i['source']} -> {i['destination']}", action


def link_table(rows: list[dict]) -> str:
    head = ("CONTAINER", "ALIAS", "TARGET", "RESOLVES", "INTENTION", "ACTION")
    lines = [head]
    for r in rows:
        where = f"ambassador {r['via']}" if r["resolves"] == "ambassador" else "local"
        lines.append((r["container"], r["alias"], r["target"], where, *intention_text(r["intention"])))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(line[:-1], widths)) + "   " + line[-1]
                     for line in lines)


def cmd_link(cl, a) -> int:
    rows = cl.get("/links", all="1" if a.all else None)
    print(json.dumps(rows, indent=2) if a.format == "json" else link_table(rows))
    return 0


def add_link(sub) -> None:
    x = sub.add_parser("link", help="this host's links and their Consul intentions")
    lsub = x.add_subparsers(dest="lkcmd", required=True)
    ls = lsub.add_parser("ls", help="one row per link: linker, alias, target, where it resolves, intention")
    ls.add_argument("-a", "--all", action="store_true", help="links of stopped containers too")
    ls.add_argument("--format", choices=["table", "json"], default="table")
    ls.set_defaults(fn=cmd_link)
