"""The host forwarder, portlinkd's side: one process per host serving every
plaintext client-side ambassador (ambassador/hostfwd.py), started, recorded,
fed and watched here.

An ambassador served this way is still a container (namespace, address, lease,
DNS name, events) whose process is a busybox `sleep`. When it starts, portlinkd
makes its listening sockets and its metrics socket inside its namespace (setns
in the calling thread, restored at once: a socket keeps the namespace it was
made in) and hands them to the forwarder over the control socket
(SCM_RIGHTS), then feeds it the service's instances from the catalog cache:
no ambassador holds a Consul connection, the daemon's watch is the only one.

Recorded: the forwarder's pid and start time in `hostfwd.json`, its control
socket `hostfwd.sock`, its log `hostfwd.log` (the state directory); each
ambassador it serves is a journal step (`hosted`, undone by a `remove`). After
a daemon restart the recorded forwarder is found and told the running
ambassadors it lacks (those it holds keep their connections), or started
afresh; a forwarder that dies is restarted and re-given every listener. It
exits when it serves no ambassador any more."""

from __future__ import annotations

import array
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from portlink import threads
from portlink.ambassador import hostfwd_proto as proto
from portlink.errors import RuntimeFailure
from portlink.netns import kernel_ns
from portlink.runtime import ambassadors
from portlink.runtime.procstart import is_same, process_start
from portlink.runtime.records import Container, Records
from portlink.runtime.runc import pid_alive

log = logging.getLogger("portlink.hostfwd")

REPLY_TIMEOUT = 10.0
RESTART_DELAY = 0.2         # before a forwarder that died is started again
BACKLOG = 512


@dataclass(frozen=True)
class ForwarderConfig:
    state_dir: Path
    consul_url: str
    uid: int
    gid: int
    python: str = str(Path(sys.prefix) / "bin" / "python")

    @property
    def socket_path(self) -> Path:
        return self.state_dir / "hostfwd.sock"

    @property
    def record_path(self) -> Path:
        return self.state_dir / "hostfwd.json"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "hostfwd.log"


def netns_key(nspath: str) -> str:
    """Which namespace a socket was made in: the namespace's own inode (a restarted
    ambassador has a new one, so its old listeners are known dead)."""
    st = os.stat(nspath)
    return f"{st.st_dev}:{st.st_ino}"


def make_listeners(nspath: str, ports: list[int]) -> list[socket.socket]:
    """A listening TCP socket per port, then the metrics one, inside the namespace at `nspath`."""
    socks: list[socket.socket] = []
    try:
        with kernel_ns.entered(nspath):
            for port in [*ports, ambassadors.METRICS_PORT]:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("0.0.0.0", port))
                s.listen(BACKLOG)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


class HostForwarder:
    def __init__(self, cfg: ForwarderConfig, records: Records, netns_path: Callable[[str], str],
                 instances: Callable[[str], object], reachable: Callable[[], bool | None] = lambda: None) -> None:
        """`instances`: a service's healthy instances from the catalog cache;
        `reachable`: whether that catalog reaches Consul (None: not known yet)."""
        self.cfg, self.records, self.netns_path = cfg, records, netns_path
        self.instances, self.reachable = instances, reachable
        self._lock = threading.RLock()
        self._conn: socket.socket | None = None
        self._proc: subprocess.Popen | None = None
        self._pid: int | None = None
        self._start: int | None = None
        self._closing = False
        self._watched: int | None = None
        # The ambassadors the forwarder holds, by container id: the record each was given
        # with (its name and service, for the feeds of a catalog change).
        self._served: dict[str, Container] = {}
        # Whether each forwards, as the forwarder's reply to its last feed said (absent:
        # not fed here, or a forwarder from before the reply said it).
        self._ready: dict[str, bool] = {}
        self._fed = threading.Condition(self._lock)
        self.restarts = 0              # forwarders that died and were started again

    # the ambassadors --------------------------------------------------------------------
    def attach(self, c: Container) -> None:
        """Serve a just-started ambassador (its namespace made); raises if it cannot."""
        with self._lock:
            self._ensure()
            self._add(c)

    def detach(self, cid: str) -> None:
        """Stop serving an ambassador (the journal's undo); the last one stops the forwarder."""
        with self._lock:
            self._unserve(cid)
            if not self._alive():
                return
            try:
                self._request(json.dumps({"op": "remove", "id": cid}).encode())
            except (OSError, proto.ProtocolError) as e:
                log.warning("host forwarder: removing %s: %s", cid[:12], e)
                return
            if not self._served:
                self._stop_forwarder()

    def feed(self, c: Container) -> None:
        """Its service's instances now (a catalog change, Consul lost or back). Logged, never raised."""
        with self._lock:
            if c.id not in self._served or not self._alive():
                return        # not served yet: its attach reads the catalog itself
            self._feed_logged(c)

    def feed_services(self, services: Collection[str]) -> None:
        """The instances of `services` (lower-case names) changed: each ambassador served
        for one of them is fed. From the forwarder's own list, not a read of every
        container (a catalog change cost O(containers): issue 18); one not served yet
        reads the catalog when its attach serves it, under this lock."""
        with self._lock:
            if not self._alive():
                return
            for c in list(self._served.values()):
                if c.spec.ambassador["service"].lower() in services:
                    self._feed_logged(c)

    def resume(self) -> list[str]:
        """After a daemon (re)start: find the recorded forwarder or start one, and make
        it serve exactly the running hosted ambassadors. Returns what was repaired."""
        repaired: list[str] = []
        with self._lock:
            rec = self._read_record()
            hosted = self.hosted()
            if rec and is_same(rec["pid"], rec["start"]) and pid_alive(rec["pid"]):
                self._pid, self._start = rec["pid"], rec["start"]
                try:
                    self._connect()
                except OSError as e:
                    log.error("host forwarder %d does not answer (%s): starting another", self._pid, e)
                    self._kill_recorded()
                    repaired.append("host forwarder restarted (it did not answer)")
            elif rec:
                repaired.append("host forwarder restarted (it had died)")
                self._forget_record()
            if not hosted:
                if self._alive():
                    self._stop_forwarder()
                return repaired
            self._ensure()
            held = self._request(b'{"op": "list"}')["ambassadors"]
            self._served = {c.id: c for c in hosted if c.id in held}
            want = {c.id for c in hosted}
            for cid in set(held) - want:
                self._request(json.dumps({"op": "remove", "id": cid}).encode())
                self._unserve(cid)
                repaired.append(f"host forwarder: dropped {cid[:12]} (no such running ambassador)")
            for c in hosted:
                # One it holds keeps its backends: this daemon's catalog is still empty
                # (Consul is followed after setup); its first answer feeds everyone.
                if held.get(c.id) != self._key(c):
                    self._add_logged(c)
                    repaired.append(f"host forwarder: {c.name} given its listeners")
            self._watch()
        return repaired

    def hosted(self) -> list[Container]:
        return [c for c in self.records.running_ambassadors() if ambassadors.is_hosted(c.spec)]

    def close(self) -> None:
        """The daemon stops: the forwarder keeps serving (a restarted daemon finds it)."""
        with self._lock:
            self._closing = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def snapshot(self) -> dict:
        return {"pid": self._pid, "restarts": self.restarts, "socket": str(self.cfg.socket_path)}

    # mechanics (under the lock) ---------------------------------------------------------
    def _key(self, c: Container) -> str:
        return netns_key(self.netns_path(c.id))

    def _add(self, c: Container) -> None:
        amb = ambassadors.AmbassadorSpec.from_json(c.spec.ambassador)
        nspath = self.netns_path(c.id)
        socks = make_listeners(nspath, list(amb.ports))
        try:
            msg = proto.add_message(proto.Add(c.id, c.name, self._key(c), amb.service, amb.ports, amb.policy,
                                              amb.drain_deadline, self.cfg.consul_url))
            r = self._request(msg, [s.fileno() for s in socks])
        finally:
            for s in socks:          # the forwarder holds its own copies now
                s.close()
        if not r["ok"]:
            raise RuntimeFailure(f"the host forwarder refused ambassador {c.name}: {r.get('error')}")
        self._served[c.id] = c
        self._feed(c)

    def _unserve(self, cid: str) -> None:
        self._served.pop(cid, None)
        if self._ready.pop(cid, None) is not None:
            self._fed.notify_all()

    def _add_logged(self, c: Container) -> None:
        try:
            self._add(c)
        except (OSError, proto.ProtocolError, RuntimeFailure) as e:
            log.error("host forwarder: %s not served: %s", c.name, e)

    def _feed_logged(self, c: Container) -> None:
        try:
            self._feed(c)
        except (OSError, proto.ProtocolError, RuntimeFailure) as e:
            log.error("host forwarder: feeding %s: %s", c.name, e)

    def _feed(self, c: Container) -> None:
        service = c.spec.ambassador["service"]
        r = self._request(proto.feed_message(c.id, self.instances(service), self.reachable()))
        if not r["ok"]:
            raise RuntimeFailure(f"the host forwarder refused the instances of {c.name}: {r.get('error')}")
        if isinstance(r.get("ready"), bool):
            self._ready[c.id] = r["ready"]
            self._fed.notify_all()

    def wait_ready(self, cid: str, timeout: float) -> bool | None:
        """Until the forwarder says ambassador `cid` forwards (its reply to a feed): True;
        False after `timeout` or once it is no longer served; None when no feed here
        said (the caller asks the ambassador's /stats instead)."""
        with self._fed:
            if cid not in self._ready:
                return None
            self._fed.wait_for(lambda: self._ready.get(cid) is not False, timeout)
            return self._ready.get(cid, False)

    def _request(self, data: bytes, fds: list[int] = ()) -> dict:
        if self._conn is None:
            raise proto.ProtocolError("no connection to the host forwarder")
        try:
            if fds:
                self._conn.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            else:
                self._conn.send(data)
            return proto.parse_reply(self._conn.recv(4 << 20))
        except (OSError, proto.ProtocolError):
            self._conn.close()          # a reply may still come: never read it as the next one's
            self._conn = None
            raise

    def _alive(self) -> bool:
        return self._pid is not None and pid_alive(self._pid) and is_same(self._pid, self._start)

    def _ensure(self) -> None:
        """A forwarder answering on the control socket: the one we have, or a new one
        given every running hosted ambassador."""
        if self._alive() and self._conn is not None:
            return
        if self._alive():
            try:
                self._connect()
                return
            except OSError as e:
                log.error("host forwarder %d does not answer (%s): starting another", self._pid, e)
                self._kill_recorded()
        self._spawn()
        for cid in list(self._served):
            self._unserve(cid)
        for c in self.hosted():
            self._add_logged(c)

    def _spawn(self) -> None:
        cfg = self.cfg
        try:
            cfg.socket_path.unlink()
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            listener.bind(str(cfg.socket_path))
            os.chmod(cfg.socket_path, 0o600)     # portlinkd (root) alone talks to it
            listener.listen(4)
            with open(cfg.log_path, "ab") as logf:
                # It drops to the ambassadors' user (no capabilities, no groups, no_new_privs)
                # itself once imported: the interpreter may be where that user cannot read.
                # A session of its own: it outlives a daemon restart.
                self._proc = subprocess.Popen(
                    [cfg.python, "-P", "-m", "portlink.ambassador.hostfwd", "--control-fd", str(listener.fileno()),
                     "--user", f"{cfg.uid}:{cfg.gid}"],
                    pass_fds=[listener.fileno()], stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                    cwd="/", env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"})
        finally:
            listener.close()
        self._pid, self._start = self._proc.pid, process_start(self._proc.pid)
        self._write_record()
        self._connect()
        self._request(b'{"op": "list"}')          # answers once its loop runs
        log.info("host forwarder started (pid %d)", self._pid)
        self._watch()

    def _connect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.settimeout(REPLY_TIMEOUT)
        try:
            conn.connect(str(self.cfg.socket_path))
        except OSError:
            conn.close()
            raise
        self._conn = conn

    def _stop_forwarder(self) -> None:
        pid = self._pid
        self._pid = self._start = None      # first: the watch knows this end is wanted
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._proc = None
        self._forget_record()
        log.info("host forwarder stopped (no ambassador left)")

    def _kill_recorded(self) -> None:
        if self._pid is not None and self._alive():
            try:
                os.kill(self._pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._pid = self._start = None

    # the watch: a forwarder that dies is started again ----------------------------------
    def _watch(self) -> None:
        pid, start = self._pid, self._start
        if pid is None or pid == self._watched:
            return
        self._watched = pid
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return
        threads.Thread(target=self._watch_one, args=(pidfd, pid, start), daemon=True,
                         name=f"hostfwd-watch-{pid}").start()

    def _watch_one(self, pidfd: int, pid: int, start: int | None) -> None:
        try:
            poller = select.poll()          # not select(): the daemon's fds go past 1024
            poller.register(pidfd, select.POLLIN)
            while not poller.poll():
                pass
        finally:
            os.close(pidfd)
        if self._proc is not None and self._proc.pid == pid:
            self._proc.poll()                  # reap our child
        time.sleep(RESTART_DELAY)
        with self._lock:
            if self._closing or self._pid != pid or self._start != start:
                return                         # stopped on purpose, or already replaced
            log.error("host forwarder %d died: restarting it with every ambassador's listeners", pid)
            self._pid = self._start = None
            self.restarts += 1
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if not self.hosted():
                self._forget_record()
                return
            try:
                self._ensure()
            except Exception as e:
                log.error("host forwarder could not be restarted: %s", e)

    # the record ---------------------------------------------------------------------------
    def _write_record(self) -> None:
        tmp = self.cfg.record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": self._pid, "start": self._start,
                                   "socket": str(self.cfg.socket_path)}) + "\n")
        os.replace(tmp, self.cfg.record_path)

    def _read_record(self) -> dict | None:
        try:
            rec = json.loads(self.cfg.record_path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        if not isinstance(rec, dict) or not isinstance(rec.get("pid"), int):
            return None
        return rec

    def _forget_record(self) -> None:
        for p in (self.cfg.record_path, self.cfg.socket_path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
