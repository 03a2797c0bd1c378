"""Volumes: directories under the host's state dir (<state>/volumes/plvol-<name>/_data,
Docker's shape under portlink's prefix), one row each in the store.

A volume is its own object, not a step of a container's journal: it outlives
the containers that use it. Its row is written before its directory is made
and deleted only after the directory is out of the way (renamed to a .trash-
name in the same transaction), so a crash leaves a row whose directory
`reconcile` makes again, or a trash directory it removes; never a directory
holding data that no row accounts for. Which containers use a volume is read
from their records (each records its resolved mounts), in the same transaction
as a removal, so `volume rm` and a `run` naming the volume never cross."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

from portlink.errors import Conflict, InvalidArgument, NotFound, RuntimeFailure
from portlink.netns.names import VOLUME_PREFIX
from portlink.runtime import mount_paths, validate, volspec
from portlink.runtime.events import EventLog
from portlink.runtime.plan import Layout
from portlink.runtime.state import Store, dumps
from portlink.runtime.volspec import VOLUME, Mount

log = logging.getLogger("portlink.volumes")
TRASH_PREFIX = ".trash-"


def _mounts_of(doc: str) -> list[dict]:
    try:
        return json.loads(doc).get("mounts") or []
    except (ValueError, AttributeError):
        return []


class Volumes:
    def __init__(self, store: Store, layout: Layout, events: EventLog | None = None) -> None:
        self.store, self.layout, self.events = store, layout, events
        layout.volumes.mkdir(mode=0o700, parents=True, exist_ok=True)

    # reading ------------------------------------------------------------------------------
    def users(self, db: sqlite3.Connection | None = None) -> dict[str, list[str]]:
        """Volume name -> the containers (names) whose mounts use it, running or not."""
        rows = (db.execute("SELECT name, spec FROM containers ORDER BY created").fetchall() if db is not None
                else self.store.query("SELECT name, spec FROM containers ORDER BY created"))
        out: dict[str, list[str]] = {}
        for r in rows:
            for m in _mounts_of(r["spec"]):
                if m.get("type") == VOLUME and m.get("source"):
                    out.setdefault(m["source"], []).append(r["name"])
        return out

    def _view(self, row, users: list[str]) -> dict:
        """Docker's `volume inspect` keys, and who uses it."""
        return {"Name": row["name"], "Driver": "local", "Mountpoint": str(self.layout.volume_data(row["name"])),
                "CreatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row["created"])),
                "Labels": json.loads(row["labels"]), "Scope": "local", "Options": {},
                "Anonymous": bool(row["anonymous"]), "UsedBy": sorted(set(users))}

    def get(self, name: str) -> dict:
        volspec.check_volume_name(name)
        row = self.store.one("SELECT * FROM volumes WHERE name=?", name)
        if row is None:
            raise NotFound(f"volume {name!r} not found (see `portlink volume ls`)")
        return self._view(row, self.users().get(name, []))

    def list(self, dangling: bool | None = None) -> list[dict]:
        users = self.users()
        out = [self._view(r, users.get(r["name"], []))
               for r in self.store.query("SELECT * FROM volumes ORDER BY created, name")]
        return [v for v in out if dangling is None or (not v["UsedBy"]) == dangling]

    # writing ------------------------------------------------------------------------------
    def create(self, name: str = "", labels: dict[str, str] | None = None) -> dict:
        """`volume create`: a named volume, or an anonymous one without a name. An
        existing name is returned as it is (as Docker does)."""
        labels = {} if labels is None else labels
        if not isinstance(labels, dict):
            raise InvalidArgument("volume labels must map strings to strings")
        for k, v in labels.items():
            validate.label(k, v)
        if name:
            volspec.check_volume_name(name)
        else:
            name = secrets.token_hex(32)
        self._make([(name, False, None, labels)])
        return self.get(name)

    def ensure(self, mounts: tuple[Mount, ...], creator: str) -> list[str]:
        """The volumes `mounts` name, made if missing (as `run -v NAME:/path` does);
        returns those made now (recorded with `creator`: a failed run takes them back)."""
        want = [(m.source, m.anonymous, creator, {}) for m in mounts if m.type == VOLUME]
        return self._make(want)

    def _make(self, want: list[tuple[str, bool, str | None, dict]]) -> list[str]:
        made = []
        with self.store.tx() as db:
            for name, anonymous, creator, labels in want:
                if db.execute("SELECT 1 FROM volumes WHERE name=?", (name,)).fetchone() is None:
                    db.execute("INSERT INTO volumes VALUES (?,?,?,?,?)",
                               (name, time.time(), int(anonymous), creator, dumps(labels)))
                    made.append(name)
        for name, *_ in want:
            self._make_dir(name)
        for name in made:
            self._emit("create", name)
        return made

    def _emit(self, action: str, name: str) -> None:
        if self.events is not None:
            self.events.emit("volume", action, name)

    def _make_dir(self, name: str) -> None:
        d = self.layout.volume_dir(name)
        if not d.is_dir():
            d.mkdir(mode=0o700)
        data = d / "_data"
        if not data.is_dir():
            data.mkdir(mode=0o755)

    def seed(self, name: str, rootfs: Path, target: str) -> bool:
        """A volume still empty gets the image's content at `target` (Docker copies
        it on first use), owner and mode of the directory too. The image's own
        symlinks are followed inside its rootfs; the copy keeps links as links."""
        data = self.layout.volume_data(name)
        with os.scandir(data) as it:
            if next(it, None) is not None:
                return False
        src = os.path.join(rootfs, *mount_paths.resolve_in_image(str(rootfs), target))
        try:
            st = os.lstat(src)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if not stat.S_ISDIR(st.st_mode):
            return False
        p = subprocess.run(["cp", "-a", "--", src + "/.", str(data) + "/"], capture_output=True, text=True,
                           timeout=600)
        if p.returncode != 0:
            raise RuntimeFailure(f"cannot seed volume {name!r} from the image's {target}: {p.stderr.strip()}")
        os.chown(data, st.st_uid, st.st_gid)
        os.chmod(data, stat.S_IMODE(st.st_mode))
        return True

    def remove(self, name: str, force: bool = False) -> bool:
        """`volume rm`: refused while any container (running or not) uses it. `force`:
        a missing volume is no error (as Docker's -f). Returns whether it was removed."""
        volspec.check_volume_name(name)
        trash = self.layout.volumes / f"{TRASH_PREFIX}{name}-{secrets.token_hex(4)}"
        with self.store.tx() as db:
            if db.execute("SELECT 1 FROM volumes WHERE name=?", (name,)).fetchone() is None:
                if force:
                    return False
                raise NotFound(f"volume {name!r} not found (see `portlink volume ls`)")
            users = self.users(db).get(name)
            if users:
                raise Conflict(f"volume {name!r} is in use by container(s) {', '.join(sorted(set(users)))}: "
                               "remove them first (`portlink rm`)")
            try:
                os.rename(self.layout.volume_dir(name), trash)   # gone at once; deleted below
            except FileNotFoundError:
                trash = None
            db.execute("DELETE FROM volumes WHERE name=?", (name,))
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)   # never follows a link a container left in it
        self._emit("destroy", name)
        return True

    def prune(self, all: bool = False) -> list[str]:
        """Unused volumes: anonymous ones, or with `all` named ones too (Docker >= 23)."""
        removed = []
        for v in self.list(dangling=True):
            if all or v["Anonymous"]:
                try:
                    if self.remove(v["Name"], force=True):
                        removed.append(v["Name"])
                except Conflict:
                    pass   # taken into use meanwhile
        return removed

    def remove_unused(self, names: list[str]) -> list[str]:
        """Remove these volumes where nothing uses them any more (`rm -v`, a failed
        run's own); errors are returned, a volume in use is kept silently."""
        errors = []
        for name in names:
            try:
                self.remove(name, force=True)
            except Conflict:
                pass
            except Exception as e:
                errors.append(f"volume {name}: {e}")
        return errors

    def made_by(self, creator: str) -> list[str]:
        return [r["name"] for r in self.store.query("SELECT name FROM volumes WHERE creator=?", creator)]

    # recovery -------------------------------------------------------------------------------
    def reconcile(self) -> list[str]:
        """After a restart: a recorded volume without its directory gets it (empty:
        the crash came between the row and the directory); trash goes. A directory
        no row accounts for is kept and logged: it may hold someone's data."""
        repaired = []
        known = {r["name"] for r in self.store.query("SELECT name FROM volumes")}
        for name in sorted(known):
            if not self.layout.volume_data(name).is_dir():
                self._make_dir(name)
                repaired.append(f"volume {name}: directory made again")
        for d in sorted(self.layout.volumes.iterdir()):
            if d.name.startswith(TRASH_PREFIX):
                shutil.rmtree(d, ignore_errors=True)
                repaired.append(f"volume trash {d.name} removed")
            elif d.name.startswith(VOLUME_PREFIX) and d.name[len(VOLUME_PREFIX):] not in known:
                log.warning("kept %s: a volume directory no record accounts for (not deleted: it may hold "
                            "data; move it away, or `portlink volume create %s` to adopt it)",
                            d, d.name[len(VOLUME_PREFIX):])
        return repaired
