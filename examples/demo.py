"""The portlink demo: a simulated host, containers on a bridge, a published
port reached from outside, links and DNS that follow a restarted container,
isolation, Consul registration and discovery, and a clean teardown.

Everything happens inside namespaces this script creates (plt-*); the machine's
root network namespace is never touched. Run it with `make demo`."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from portlink.lab.consul_agent import AgentSpec, start_agent, wait_ready
from portlink.lab.sandbox import Namespace, SimHost, link_namespaces

HOST_IP, OUTSIDE_IP = "198.51.100.1", "198.51.100.2"
BOLD = "\033[1m" if sys.stdout.isatty() else ""
RESET = "\033[0m" if sys.stdout.isatty() else ""


def step(text: str) -> None:
    print(f"\n{BOLD}==> {text}{RESET}", flush=True)


def show(h: SimHost, *args: str, may_fail: bool = False) -> str:
    print(f"$ portlink {' '.join(args)}")
    r = h.cli(*args)
    out = (r.stdout + r.stderr).rstrip()
    if out:
        print("  " + out.replace("\n", "\n  "))
    if r.returncode != 0 and args[0] != "run" and not may_fail:
        raise SystemExit(f"demo failed at: portlink {' '.join(args)}")
    return r.stdout.strip()


def main() -> int:
    t0 = time.monotonic()
    step("Simulated host: a network namespace with its own portlinkd (state in a temp dir)")
    # Consul runs 'outside' (started below); the daemon copes with it not being there yet.
    h = SimHost.start("demo", extra_args=["--consul", f"{OUTSIDE_IP}:8500", "--advertise", HOST_IP])
    outside = agent = None
    try:
        print(f"  host namespace {h.ns.name}, socket {h.socket}")
        outside = Namespace.create("demo-out")
        link_namespaces(h.ns, HOST_IP, outside, OUTSIDE_IP)
        print(f"  'outside' namespace {outside.name} at {OUTSIDE_IP}, routed to the host at {HOST_IP}")

        agent = start_agent(AgentSpec("demo-consul", OUTSIDE_IP, Path(tempfile.mkdtemp(prefix="plt-demo-consul-"))),
                            outside.path)
        wait_ready(agent)
        print(f"  a Consul dev agent outside at {OUTSIDE_IP}:8500; portlinkd registers into it")

        step("A web server publishing port 8080 -> 80")
        show(h, "run", "-d", "--name", "web", "-p", "8080:80", "busybox", "sh", "-c",
             "echo 'hello from web' > /tmp/index.html; exec httpd -f -p 80 -h /tmp")
        show(h, "ps")
        web_ip = h.client.get("/containers/web")["network"]["ip"]

        step("Another container reaches it over the bridge")
        show(h, "run", "--rm", "busybox", "wget", "-q", "-O-", f"http://{web_ip}/index.html")

        step("The outside reaches it through the published port (DNAT)")
        r = outside.run("busybox", "wget", "-q", "-O-", f"http://{HOST_IP}:8080/index.html", check=False)
        print(f"  outside$ wget http://{HOST_IP}:8080/ -> {r.stdout.strip() or r.stderr.strip()}")

        step("Links: Docker's environment and /etc/hosts line, plus a DNS name that stays live")
        show(h, "run", "-d", "--name", "db", "--expose", "5432", "-e", "POSTGRES_DB=shop", "busybox",
             "sleep", "3600")
        show(h, "run", "-d", "--name", "app", "--link", "db:sql", "busybox", "sleep", "3600")
        env = h.cli("exec", "app", "cat", "/proc/1/environ").stdout.split("\0")
        print("  app's link variables:\n    " + "\n    ".join(e for e in env if e.startswith("SQL_")))
        show(h, "exec", "app", "grep", "sql", "/etc/hosts")
        show(h, "exec", "app", "nslookup", "sql")
        print("  db restarts and comes back with a new address; app follows without a restart:")
        show(h, "restart", "-t", "0", "db")
        show(h, "exec", "app", "grep", "sql", "/etc/hosts")
        show(h, "exec", "app", "nslookup", "sql")

        step("Consul: web's published port is registered; containers resolve it as web.service.consul")
        time.sleep(0.3)
        code, _, entries = agent.get("/v1/health/service/web?passing=1")
        for e in entries:
            svc = e["Service"]
            print(f"  consul: service {svc['Service']} at {svc['Address']}:{svc['Port']} (id {svc['ID']})")
        show(h, "exec", "app", "nslookup", "web.service.consul")
        show(h, "exec", "app", "sh", "-c", "timeout 5 wget -q -O- http://web.service.consul:8080/index.html")
        print("  web stops: it leaves Consul and the name goes at once")
        show(h, "stop", "-t", "0", "web")
        time.sleep(0.3)
        print(f"  consul: {len(agent.get('/v1/health/service/web')[2])} instance(s) of web")
        show(h, "exec", "app", "nslookup", "web.service.consul", may_fail=True)
        print("  web starts again: registered again")
        show(h, "start", "web")
        time.sleep(0.3)
        show(h, "exec", "app", "nslookup", "web.service")

        step("An isolated network with icc off: its containers cannot talk to each other")
        show(h, "network", "create", "--subnet", "10.90.0.0/24", "--icc", "off", "quiet")
        show(h, "run", "-d", "--name", "q1", "--net", "quiet", "busybox", "sh", "-c",
             "echo secret > /tmp/index.html; exec httpd -f -p 80 -h /tmp")
        q1 = h.client.get("/containers/q1")["network"]["ip"]
        show(h, "run", "--rm", "--net", "quiet", "busybox", "sh", "-c",
             f"timeout 2 wget -q -O- http://{q1}/index.html || echo 'blocked, as it should be'")

        step("DNS: each container sees the names of its own network only")
        show(h, "exec", "app", "nslookup", "web.bridge")
        print("  q1 is on network 'quiet': app cannot resolve it")
        show(h, "exec", "app", "nslookup", "q1", may_fail=True)

        step("portlink's firewall: one nftables table of its own; a published port is one map element")
        print("  " + h.client.get("/system/firewall")["rules"].strip().replace("\n", "\n  ")[:1500])

        step("Teardown: system prune removes every container, network and rule")
        show(h, "system", "prune", "-f")
    finally:
        errors = h.destroy()
        if agent:
            agent.stop()
            shutil.rmtree(agent.spec.data_dir, ignore_errors=True)
        if outside:
            outside.delete()
    if errors:
        print(f"teardown errors: {errors}")
        return 1
    step(f"Done in {time.monotonic() - t0:.1f}s; nothing left behind")
    return 0


if __name__ == "__main__":
    sys.exit(main())
