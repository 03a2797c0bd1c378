"""Real applications across hosts in the 3-host lab (every daemon --secure-links:
a cross-host link is a client-side ambassador on the linker's host and a
server-side one next to the served container, mutual TLS between them).

  host1  db: PostgreSQL (portlink/postgres:15) with its data in the named volume
         pgdata, also published on 5432; cache: Redis; kv: Redis with a slow check
  host2  the clients: pgbench and pg_dump through `--link db:db`, a backup data
         container and a restored copy of db; app linked to cache
  host3  cache: the second Redis instance of the service

pgbench runs through the link and straight to host1's published port (bench/apps.py
reports the two rates side by side); the seed's backup pattern dumps db from host2
into a volume there and restores it; one of two Redis instances made unhealthy
leaves Consul, host2's DNS and the ambassador, and comes back; a daemon restart
keeps a healthy service served."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

import test_secure_links
from helpers import dig, wait_for
from portlink.lab import lab as labmod

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]
PG, REDIS = "portlink/postgres:15", "portlink/redis:7"
PSQL = ("psql", "-h", "db", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-Atc")
# Sick when the test says so (a file it creates and removes), else Redis's own ping.
REDIS_CHECK = "test ! -f /tmp/sick && redis-cli ping | grep -qx PONG"
WHOAMI = "printf 'GET whoami\\r\\nQUIT\\r\\n' | timeout 5 nc cache 6379; exit $?"


def built(name: str) -> Path:
    """The archive scripts/build-images made (cached: instant once setup ran)."""
    out = subprocess.run([str(ROOT / "scripts/build-images"), name], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.split("\t")[1].strip())


class Lab(test_secure_links.Lab):
    def until(self, host: str, *args: str, timeout: float = 60) -> str:
        """`portlink ARGS` on `host` until it succeeds (a server still starting)."""
        last = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cmd, env = labmod.exec_argv(self.made.name, host, ["portlink", *args])
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
            if p.returncode == 0:
                return p.stdout.strip()
            last = p.stderr.strip()
            time.sleep(0.5)
        raise AssertionError(f"{host}: portlink {' '.join(args)} did not succeed within {timeout}s: {last}")

    def health(self, host: str, name: str) -> str | None:
        h = self.get(host, f"/containers/{name}")["State"]["Health"]
        return h and h["Status"]

    def passing(self, service: str) -> list[str]:
        """The addresses of `service`'s instances Consul says are passing."""
        code, out = self.consul("GET", f"/v1/health/service/{service}?passing=1")
        return sorted({e["Service"]["Address"] for e in out}) if code == 200 else []

    def dns(self, host: str, ctr: str, qname: str) -> set[str]:
        class H:   # what helpers.dig needs of a host
            client = self.client(host)
        return set(dig(H, ctr, qname))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root, labmod.LAB_ROOT = labmod.LAB_ROOT, tmp_path_factory.mktemp("labs")
    try:
        made = labmod.up(3, f"a{os.getpid() % 10000}", progress=lambda *_: None)
        try:
            L = Lab(made)
            for host, image in (("host1", "postgres"), ("host2", "postgres"), ("host1", "redis"),
                                ("host3", "redis")):
                L.cli(host, "load", "-q", "-i", str(built(image)))
            # kv: a check every 6 s, started now so it is healthy by the restart test
            L.cli("host1", "run", "-d", "--name", "kv", "-p", "6380:6379", "--health-cmd", REDIS_CHECK,
                  "--health-interval", "6s", "--health-retries", "1", REDIS)
            yield L
        finally:
            errors = labmod.down(made.name, progress=lambda *_: None)
            assert not errors, errors
    finally:
        labmod.LAB_ROOT = root


@pytest.fixture(scope="module")
def db(lab):
    """db on host1 (its data in the volume pgdata, also on host1's port 5432),
    served over the link once its image's check (pg_isready) passes; pgbench's
    tables made from host2 through `--link db:db`."""
    L = lab
    L.cli("host1", "run", "-d", "--name", "db", "-v", "pgdata:/var/lib/postgresql/data", "-p", "5432:5432",
          "--health-interval", "1s", PG)
    assert wait_for(lambda: len(L.connect_instances("db")) == 1, 60), L.get("host1", "/containers/db")["State"]
    L.cli("host2", "run", "--rm", "--link", "db:db", PG, "pgbench", "-h", "db", "-U", "postgres", "-i", "-q",
          "postgres")
    return L


def pgbench(L: Lab, *target: str) -> dict:
    """pgbench -c 4 for 5 s from a container on host2: its summary."""
    out = L.cli("host2", "run", "--rm", *target[:-1], PG, "pgbench", "-h", target[-1], "-p", "5432",
                "-U", "postgres", "-c", "4", "-j", "2", "-T", "5", "postgres")
    got = {"tps": re.search(r"^tps = ([\d.]+) \(without initial connection time\)", out, re.M),
           "processed": re.search(r"^number of transactions actually processed: (\d+)", out, re.M),
           "failed": re.search(r"^number of failed transactions: (\d+)", out, re.M)}
    assert all(got.values()), out
    return {k: float(m.group(1)) for k, m in got.items()}


def count(L: Lab, host: str, *link: str, sql: str = "select count(*) from pgbench_accounts") -> str:
    return L.cli(host, "run", "--rm", *link, PG, *PSQL, sql)


def test_pgbench_through_the_link_and_the_published_port_and_the_volume_keeps_every_row(db):
    L = db
    assert count(L, "host2", "--link", "db:db") == "100000"
    for target in (("--link", "db:db", "db"), ("10.99.0.1",)):
        r = pgbench(L, *target)
        assert r["failed"] == 0 and r["processed"] > 0 and r["tps"] > 0, (target, r)
    # The data is in pgdata: rm -f and a new run with the same volume keep every row,
    # and the link follows the new instance.
    L.cli("host2", "run", "--rm", "--link", "db:db", PG, *PSQL, "create table marker(v text); "
          "insert into marker values ('kept')")
    before = count(L, "host2", "--link", "db:db", sql="select sum(delta), count(*) from pgbench_history")
    L.cli("host1", "rm", "-f", "db")
    assert wait_for(lambda: L.connect_instances("db") == [], 20)
    L.cli("host1", "run", "-d", "--name", "db", "-v", "pgdata:/var/lib/postgresql/data", "-p", "5432:5432",
          "--health-interval", "1s", PG)
    assert wait_for(lambda: len(L.connect_instances("db")) == 1, 60)
    assert L.until("host2", "run", "--rm", "--link", "db:db", PG, *PSQL,
                   "select sum(delta), count(*) from pgbench_history", timeout=30) == before
    assert count(L, "host2", "--link", "db:db", sql="select v from marker") == "kept"
    assert count(L, "host2", "--link", "db:db") == "100000"


def test_backup_across_hosts_into_a_volume_and_restore(db):
    L = db
    # The seed's pattern: a data container owns the backup volume; the job borrows it
    # with --volumes-from and reaches db on host1 through its link.
    L.cli("host2", "run", "--name", "backups", "-v", "backups:/backup", "busybox", "chown", "999:999", "/backup")
    L.cli("host2", "run", "--rm", "--link", "db:db", "--volumes-from", "backups", PG,
          "pg_dump", "-h", "db", "-U", "postgres", "-Fc", "-f", "/backup/db.dump", "postgres")
    listing = L.cli("host2", "run", "--rm", "--volumes-from", "backups:ro", "busybox", "ls", "-l", "/backup")
    assert re.search(r"\sdb\.dump$", listing, re.M), listing
    # Restored into a fresh db on host2 with a volume of its own.
    L.cli("host2", "run", "-d", "--name", "restored", "-v", "pgrestored:/var/lib/postgresql/data",
          "--health-interval", "1s", PG)
    assert wait_for(lambda: L.health("host2", "restored") == "healthy", 60)
    L.cli("host2", "run", "--rm", "--link", "restored:db", "-v", "backups:/backup:ro", PG,
          "pg_restore", "-h", "db", "-U", "postgres", "-d", "postgres", "/backup/db.dump")
    sql = "select count(*), sum(abalance) from pgbench_accounts"
    original = count(L, "host2", "--link", "db:db", sql=sql)
    assert original.startswith("100000|")
    assert count(L, "host2", "--link", "restored:db", sql=sql) == original
    assert count(L, "host2", "--link", "restored:db", sql="select v from marker") == "kept"
    assert {"backups", "pgrestored"} <= set(L.cli("host2", "volume", "ls", "-q").split())


def whoami(L: Lab) -> str:
    """Which Redis instance a new connection from host2's app lands on."""
    out = L.cli("host2", "exec", "app", "sh", "-c", WHOAMI, check=False)
    m = re.search(r"^(host\d)\r?$", out, re.M)
    return m.group(1) if m else out


def test_one_of_two_redis_made_unhealthy_is_dropped_and_taken_back(lab):
    L = lab
    for host in ("host1", "host3"):
        L.cli(host, "run", "-d", "--name", "cache", "-p", "6379:6379", "--health-cmd", REDIS_CHECK,
              "--health-interval", "1s", "--health-retries", "1", REDIS)
        assert L.until(host, "exec", "cache", "redis-cli", "set", "whoami", host) == "OK"
    assert wait_for(lambda: L.passing("cache") == ["10.99.0.1", "10.99.0.3"], 30), L.passing("cache")
    assert wait_for(lambda: len(L.connect_instances("cache")) == 2, 20)
    L.cli("host2", "run", "-d", "--name", "app", "--link", "cache:cache", "busybox", "sleep", "600")
    both = {"host1", "host3"}
    seen: set[str] = set()
    assert wait_for(lambda: seen.add(whoami(L)) or seen == both, 20), seen
    assert wait_for(lambda: L.dns("host2", "app", "cache.service.consul") == {"10.99.0.1", "10.99.0.3"}, 15)

    L.cli("host1", "exec", "cache", "touch", "/tmp/sick")
    assert wait_for(lambda: L.health("host1", "cache") == "unhealthy", 10)
    assert wait_for(lambda: L.passing("cache") == ["10.99.0.3"], 10), L.passing("cache")
    assert wait_for(lambda: L.dns("host2", "app", "cache.service.consul") == {"10.99.0.3"}, 10)
    assert wait_for(lambda: [i["Service"]["Address"] for i in L.connect_instances("cache")] == ["10.99.0.3"], 10)
    # Once the ambassador has heard: every new connection lands on host3.
    assert wait_for(lambda: all(whoami(L) == "host3" for _ in range(3)), 10)
    assert [whoami(L) for _ in range(8)] == ["host3"] * 8

    L.cli("host1", "exec", "cache", "rm", "/tmp/sick")
    assert wait_for(lambda: L.health("host1", "cache") == "healthy", 10)
    assert wait_for(lambda: L.passing("cache") == ["10.99.0.1", "10.99.0.3"], 10)
    assert wait_for(lambda: L.dns("host2", "app", "cache.service.consul") == {"10.99.0.1", "10.99.0.3"}, 10)
    seen.clear()
    assert wait_for(lambda: seen.add(whoami(L)) or seen == both, 20), seen


def test_a_daemon_restart_keeps_a_healthy_service_served(lab):
    """kv checks every 6 s: a restarted daemon that started it over at `starting`
    would have it `warning` in Consul, out of DNS, until its next check."""
    L = lab
    assert wait_for(lambda: L.health("host1", "kv") == "healthy", 30)
    assert wait_for(lambda: L.passing("kv") == ["10.99.0.1"], 10)
    L.cli("host2", "run", "-d", "--name", "kvclient", "busybox", "sleep", "600")
    assert wait_for(lambda: L.dns("host2", "kvclient", "kv.service.consul") == {"10.99.0.1"}, 10)
    before = L.get("host1", "/containers/kv")
    restarted = time.time()
    labmod.daemon_restart(L.made.name, "host1")
    # The new daemon's first pass over Consul is done: what it registered is what counts.
    assert wait_for(lambda: L.get("host1", "/system/consul")["resync_passes"] >= 1, 15)
    assert L.passing("kv") == ["10.99.0.1"]
    assert L.dns("host2", "kvclient", "kv.service.consul") == {"10.99.0.1"}
    after = L.get("host1", "/containers/kv")
    assert [r["health"] for r in after["consul"]] == ["passing"], after["consul"]
    assert after["pid"] == before["pid"] and after["State"]["Health"]["Status"] == "healthy", after["State"]
    assert after["State"]["Health"]["Log"][0]["Start"] < restarted      # a check of before the restart
    # Its checks go on: made sick, it turns unhealthy and leaves Consul's passing list.
    L.cli("host1", "exec", "kv", "touch", "/tmp/sick")
    assert wait_for(lambda: L.health("host1", "kv") == "unhealthy", 20)
    assert wait_for(lambda: L.passing("kv") == [], 10)
