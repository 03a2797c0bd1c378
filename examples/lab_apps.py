"""Real applications across the lab: PostgreSQL and Redis (the images
scripts/build-images makes from Debian's packages), linked across hosts over
mutual TLS, backed up through a link, and one of two Redis instances taken out
by its health check.

  host1  db (PostgreSQL, data in the volume pgdata); cache (Redis)
  host2  the clients: psql, pgbench and pg_dump through `--link db:db`, an app
         linked to cache; the backup lands in the volume backups here
  host3  cache: the service's second Redis instance

Everything lives in namespaces this script creates and is removed at the end.
Run it with `make demo-apps`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from portlink.lab import lab

BOLD = "\033[1m" if sys.stdout.isatty() else ""
RESET = "\033[0m" if sys.stdout.isatty() else ""
NAME = "apps"
ROOT = Path(__file__).resolve().parents[1]
PG, REDIS = "portlink/postgres:15", "portlink/redis:7"
SICK = "test ! -f /tmp/sick && redis-cli ping | grep -qx PONG"   # the demo makes it fail on purpose
WHOAMI = "printf 'GET whoami\\r\\nQUIT\\r\\n' | timeout 5 nc cache 6379 | grep host"


def step(text: str) -> None:
    print(f"\n{BOLD}==> {text}{RESET}", flush=True)


def on(host: str, *argv: str, may_fail: bool = False, quiet: bool = False) -> str:
    if not quiet:
        print(f"[{host}]$ {' '.join(argv)}")
    cmd, env = lab.exec_argv(NAME, host, list(argv))
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    out = (p.stdout + p.stderr).rstrip()
    if out and not quiet:
        print("  " + out.replace("\n", "\n  "))
    if p.returncode != 0 and not may_fail:
        raise SystemExit(f"demo failed at [{host}] {' '.join(argv)}")
    return p.stdout.strip() if p.returncode == 0 else ""


def until(what: str, fn, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.5)
    raise SystemExit(f"demo: {what} did not happen within {timeout}s")


def health(host: str, name: str) -> str:
    out = on(host, "portlink", "inspect", name, may_fail=True, quiet=True)
    if not out:
        return ""
    got = json.loads(out)
    c = got[0] if isinstance(got, list) else got
    h = (c.get("State") or {}).get("Health")
    return h["Status"] if h else ""


def archive(name: str) -> str:
    out = subprocess.run([str(ROOT / "scripts/build-images"), name], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"demo: scripts/build-images {name} failed: {out.stderr.strip()}")
    return out.stdout.split("\t")[1].strip()


def main() -> int:
    t0 = time.monotonic()
    images = {n: archive(n) for n in ("postgres", "redis")}
    step("A 3-host lab (portlinkd --secure-links and a Consul server on each)")
    try:
        lab.up(3, NAME, progress=lambda text: print(f"  {text}", flush=True))
    except Exception as e:
        print(f"demo: lab up failed: {e}")
        return 1
    errors: list[str] = []
    try:
        for host, image in (("host1", "postgres"), ("host2", "postgres"), ("host1", "redis"), ("host3", "redis")):
            on(host, "portlink", "load", "-q", "-i", images[image])

        step("host1: PostgreSQL with its data in a named volume")
        on("host1", "portlink", "run", "-d", "--name", "db", "-v", "pgdata:/var/lib/postgresql/data",
           "--health-interval", "1s", PG)
        until("db healthy", lambda: health("host1", "db") == "healthy")

        step("host2: pgbench through --link db:db (an ambassador here, mutual TLS to host1)")
        on("host2", "portlink", "run", "--rm", "--link", "db:db", PG, "pgbench", "-h", "db", "-U", "postgres",
           "-i", "-q", "postgres")
        out = on("host2", "portlink", "run", "--rm", "--link", "db:db", PG, "pgbench", "-h", "db", "-U",
                 "postgres", "-c", "4", "-j", "2", "-T", "5", "postgres", quiet=True)
        print("  " + "\n  ".join(l for l in out.splitlines() if re.match(r"(tps|latency|number of)", l)))

        step("The seed's backup pattern: a data container on host2, pg_dump through the link into it")
        on("host2", "portlink", "run", "--name", "backups", "-v", "backups:/backup", "busybox",
           "chown", "999:999", "/backup")
        on("host2", "portlink", "run", "--rm", "--link", "db:db", "--volumes-from", "backups", PG,
           "pg_dump", "-h", "db", "-U", "postgres", "-Fc", "-f", "/backup/db.dump", "postgres")
        on("host2", "portlink", "run", "--rm", "--volumes-from", "backups:ro", "busybox", "ls", "-l", "/backup")

        step("Two Redis instances of one service, on host1 and host3, each with a health check")
        for host in ("host1", "host3"):
            on(host, "portlink", "run", "-d", "--name", "cache", "-p", "6379:6379", "--health-cmd", SICK,
               "--health-interval", "1s", "--health-retries", "1", REDIS)
            until(f"redis on {host}", lambda: on(host, "portlink", "exec", "cache", "redis-cli", "set", "whoami",
                                                 host, may_fail=True, quiet=True))
        for host in ("host1", "host3"):
            until(f"cache on {host} healthy", lambda: health(host, "cache") == "healthy")
        on("host2", "portlink", "run", "-d", "--name", "app", "--link", "cache:cache", "busybox", "sleep", "3600")
        ask = lambda: on("host2", "portlink", "exec", "app", "sh", "-c", WHOAMI, may_fail=True, quiet=True)
        seen = {ask() for _ in range(8)}
        print(f"  8 new connections from host2's app landed on: {sorted(seen)}")

        step("host1's instance made unhealthy: Consul, host2's DNS and the ambassador drop it")
        on("host1", "portlink", "exec", "cache", "touch", "/tmp/sick")
        until("cache on host1 unhealthy", lambda: health("host1", "cache") == "unhealthy")
        on("host1", "portlink", "ps")
        time.sleep(2)     # Consul's propagation and the ambassador's watch
        after = [ask() for _ in range(8)]
        print(f"  8 new connections now landed on: {after}")
        if set(after) != {"host3"}:
            errors.append(f"after host1 turned unhealthy, connections went to {after}")

        step("Healthy again: it is used again")
        on("host1", "portlink", "exec", "cache", "rm", "/tmp/sick")
        until("cache on host1 healthy", lambda: health("host1", "cache") == "healthy")
        time.sleep(2)
        back = {ask() for _ in range(8)}
        print(f"  8 new connections landed on: {sorted(back)}")
    finally:
        step("Teardown: every container, volume, daemon, Consul agent and namespace the lab made")
        errors += lab.down(NAME, progress=lambda text: print(f"  {text}"))
    if errors:
        print(f"demo errors: {errors}")
        return 1
    step(f"Done in {time.monotonic() - t0:.1f}s; nothing left behind")
    return 0


if __name__ == "__main__":
    sys.exit(main())
