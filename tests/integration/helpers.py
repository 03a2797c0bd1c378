"""Helpers shared by the integration tests."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import time

from portlink.lab.sandbox import VENV_BIN, Namespace, SimHost, link_namespaces


class Outside:
    """A second namespace routed to the host over an underlay veth: 'the internet'."""

    HOST_IP = "198.51.100.1"
    IP = "198.51.100.2"

    def __init__(self, host: SimHost):
        self.ns = Namespace.create("out")
        self.procs: list[subprocess.Popen] = []   # servers started here: ended by delete()
        link_namespaces(host.ns, self.HOST_IP, self.ns, self.IP)
        # The outside knows no route to the containers' subnets: only published
        # ports (DNAT to the host address) and masqueraded replies can work.

    def serve_peer_address(self, port: int = 9000):
        """A TCP server that answers each connection with the peer's address."""
        code = ("import socket\n"
                "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                f"s.bind(('0.0.0.0',{port})); s.listen(8)\n"
                "for _ in range(50):\n"
                "  c,a=s.accept()\n"
                "  try:\n"
                "    c.recv(4096)\n"
                "    c.sendall(('HTTP/1.0 200 OK\\r\\n\\r\\n'+a[0]+'\\n').encode())\n"
                "    c.shutdown(socket.SHUT_WR); c.recv(4096)\n"
                "  except OSError: pass\n"       # a client that went (reset): serve the next
                "  c.close()\n")
        p = self.ns.popen(sys.executable, "-c", code)
        self.procs.append(p)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if str(port) in self.ns.run("ss", "-ltn").stdout:
                return p
            time.sleep(0.05)
        p.kill()
        raise RuntimeError("peer-address server did not start")

    def delete(self) -> None:
        """End the servers started here (by their pid) and remove the namespace."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        self.ns.delete()


def wait_for(fn, timeout: float = 10, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    return last


def container_env(h: SimHost, name: str) -> list[str]:
    """The environment of the container's init process, in order (not exec's)."""
    out = h.cli("exec", name, "cat", "/proc/1/environ").stdout
    return [e for e in out.split("\0") if e]


def in_container_ns(h: SimHost, name: str, *argv: str, timeout: float = 30):
    """Run a program of the test machine (dig, dnspython) inside a container's
    network namespace: queries leave from the container's own address."""
    netns = h.client.get(f"/containers/{name}")["network"]["netns"]
    return subprocess.run(["nsenter", f"--net={netns}", *argv], capture_output=True, text=True, timeout=timeout)


def dig(h: SimHost, name: str, qname: str, qtype: str = "A", *extra: str, status: bool = False):
    """dig from container `name` at its resolver: the answers' data in order,
    or with status=True the response code."""
    server = h.client.get(f"/containers/{name}")["dns"]["server"]
    r = in_container_ns(h, name, "dig", f"@{server}", qname, qtype, "+time=3", "+tries=1",
                        "+noall", "+answer", "+comments", *extra)
    m = re.search(r"status: (\w+)", r.stdout)
    code = m.group(1) if m else f"no answer: {(r.stdout + r.stderr).strip()}"
    if status:
        return code
    answers = [l.split(None, 4)[4] for l in r.stdout.splitlines() if l and not l.startswith(";")]
    return answers if code == "NOERROR" else [code]


def refused_start(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """portlinkd with bad `args`, in a throwaway namespace: it must exit at once
    and create nothing (asserted here); returns the run for its message."""
    ns = Namespace.create("refused")
    try:
        r = ns.run(str(VENV_BIN / "portlinkd"), *args, "--state-dir", str(tmp_path / "s"),
                   "--socket", str(tmp_path / "s.sock"), check=False, timeout=30)
    finally:
        ns.delete()
    assert r.returncode != 0, "portlinkd started with bad arguments"
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.sock").exists(), "a refused start created state"
    return r


def is_static(path: str) -> bool:
    """An ELF executable with no program interpreter (PT_INTERP): it needs no ld.so
    and no shared libc (scripts/build-logshim links portlink's shims so)."""
    with open(path, "rb") as f:
        head = f.read(64)
        assert head[:4] == b"\x7fELF" and head[4] == 2, f"{path}: not a 64-bit ELF file"
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))   # 3: PT_INTERP


def parent_pid(pid: int) -> int:
    """The parent's pid, from /proc/PID/stat (after the command's closing parenthesis)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])
