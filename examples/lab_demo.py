"""The portlink demo: the ambassador pattern across three hosts.

  host1  frontdb, a database-like server, publishes its port; registered in Consul
  host2  web, started with `--link frontdb:sql`: frontdb is not here, so portlink
         starts an ambassador ("I pretend I'm frontdb!") that forwards to it
         ("I actually talk to frontdb!")
  host3  where frontdb moves: the ambassador reroutes; web is not touched

Everything lives in namespaces this script creates (a lab switch and three
hosts, each with its own portlinkd and Consul server) and is removed at the end.
Run it with `make demo`."""

from __future__ import annotations

import subprocess
import sys
import time

from portlink.lab import lab

BOLD = "\033[1m" if sys.stdout.isatty() else ""
RESET = "\033[0m" if sys.stdout.isatty() else ""
NAME = "demo"
SERVE = "echo \"frontdb answering from $0\" > /tmp/index.html; exec httpd -f -p 80 -h /tmp"


def step(text: str) -> None:
    print(f"\n{BOLD}==> {text}{RESET}", flush=True)


def on(host: str, *argv: str, may_fail: bool = False) -> str:
    print(f"[{host}]$ {' '.join(argv)}")
    cmd, env = lab.exec_argv(NAME, host, list(argv))
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    out = (p.stdout + p.stderr).rstrip()
    if out:
        print("  " + out.replace("\n", "\n  "))
    if p.returncode != 0 and not may_fail:
        raise SystemExit(f"demo failed at [{host}] {' '.join(argv)}")
    return p.stdout.strip()


def request(host: str) -> str:
    return on(host, "portlink", "exec", "web", "sh", "-c", "timeout 5 wget -qO- http://sql/; exit $?", may_fail=True)


def main() -> int:
    t0 = time.monotonic()
    step("A 3-host lab: a switch, three hosts with portlinkd and a Consul server each")
    try:
        made = lab.up(3, NAME, progress=lambda text: print(f"  {text}", flush=True))
    except Exception as e:
        print(f"demo: lab up failed: {e}")
        return 1
    errors: list[str] = []
    try:
        for h in made.hosts:
            print(f"  {h.name}: {h.ip} (namespace {h.ns})")

        step("host1: frontdb publishes port 5432 -> 80 and is registered in Consul")
        on("host1", "portlink", "run", "-d", "--name", "frontdb", "-p", "5432:80",
           "busybox", "sh", "-c", SERVE, "host1")
        time.sleep(0.5)
        on("host2", "sh", "-c", "curl -s http://$CONSUL_HTTP_ADDR/v1/catalog/service/frontdb | "
           "python3 -c 'import json,sys; [print(\"consul: frontdb at\", s[\"ServiceAddress\"], s[\"ServicePort\"], "
           "\"meta port\", s[\"ServiceMeta\"][\"portlink-port\"]) for s in json.load(sys.stdin)]'")

        step("host2: web links to frontdb, which is not on this host: an ambassador stands in for it")
        on("host2", "portlink", "run", "-d", "--name", "web", "--link", "frontdb:sql", "busybox", "sleep", "3600")
        on("host2", "portlink", "ps")
        print("  web's link variables, /etc/hosts line and DNS answer are a local link's, pointing at the ambassador:")
        on("host2", "portlink", "exec", "web", "sh", "-c", "env | grep ^SQL_ | sort; grep sql /etc/hosts")
        on("host2", "portlink", "exec", "web", "nslookup", "sql")

        step("A request through the link: web -> ambassador (host2) -> frontdb (host1)")
        first = request("host2")

        step("frontdb moves: stopped and removed on host1, started on host3")
        on("host1", "portlink", "rm", "-f", "frontdb")
        on("host3", "portlink", "run", "-d", "--name", "frontdb", "-p", "5432:80",
           "busybox", "sh", "-c", SERVE, "host3")
        t_move = time.monotonic()
        moved = ""
        while time.monotonic() - t_move < 10:
            moved = request("host2")
            if "host3" in moved:
                break
            time.sleep(0.1)

        step("The ambassador rerouted; web was not restarted, its link is unchanged")
        on("host2", "portlink", "logs", "amb-frontdb-bridge")
        on("host2", "portlink", "exec", "amb-frontdb-bridge", "wget", "-qO-", "http://127.0.0.1:9102/stats")

        step("What happened")
        ok = "host1" in first and "host3" in moved
        print(f"  1. web asked sql -> {first!r}")
        print(f"  2. frontdb moved from host1 to host3")
        print(f"  3. web asked sql again -> {moved!r} (within {time.monotonic() - t_move:.2f}s of the move)")
        print("  " + ("the link followed frontdb across hosts" if ok else "UNEXPECTED: the link did not follow"))
        if not ok:
            errors.append("the request after the move did not reach host3")
    finally:
        step("Teardown: every container, daemon, Consul agent and namespace the lab made")
        errors += lab.down(NAME, progress=lambda text: print(f"  {text}"))
    if errors:
        print(f"demo errors: {errors}")
        return 1
    step(f"Done in {time.monotonic() - t0:.1f}s; nothing left behind")
    return 0


if __name__ == "__main__":
    sys.exit(main())
