"""Refresher.seen over a real Store: a container whose record did not change
since the last call keeps its Seen (issue 18: every change rebuilt one per
running container, and then looked at each one), and any change to the record
or its lease is seen; its image's env is taken when its record changes, as
Docker fixes a container's env when it is made."""

from __future__ import annotations

from types import SimpleNamespace

from portlink.errors import NotFound
from portlink.runtime.records import Container, Records
from portlink.runtime.refresh import Refresher
from portlink.runtime.spec import ContainerSpec
from portlink.runtime.state import Store


class Images:
    """Image configs by name (a fake: only `get(name).config.env` is read)."""

    def __init__(self) -> None:
        self.env: dict[str, list[str]] = {"busybox": ["PATH=/bin"]}

    def get(self, name: str):
        if name not in self.env:
            raise NotFound(name)
        return SimpleNamespace(config=SimpleNamespace(env=list(self.env[name])))


def test_seen_is_kept_for_unchanged_records_and_rebuilt_for_changed_ones(tmp_path):
    store = Store(tmp_path / "state.db")
    records, images = Records(store), Images()
    r = Refresher.__new__(Refresher)    # seen() alone: records, images and its memory
    r.records, r.images, r._seen, r._seen_mark = records, images, {}, -1
    for i, (name, image) in enumerate((("a", "busybox"), ("b", "gone"))):
        cid = f"{i}" * 64
        records.insert(Container(id=cid, name=name, spec=ContainerSpec(image=image, name=name, links=["x:y"]),
                                 exposed=("80/tcp",), status="creating", created=float(i)), [])
        store.execute("INSERT INTO leases VALUES ('n', ?, ?)", f"10.0.0.{i + 2}", cid)
        records.set_running(records.get(cid), 100 + i)
    a, b = r.seen()
    assert (a.name, a.ip, a.env, a.exposed) == ("a", "10.0.0.2", ("PATH=/bin",), ("80/tcp",))
    assert (b.name, b.env, [l.name for l in b.links]) == ("b", (), ["x"])
    store.record("port", "p", "0" * 64)          # a write that changes no container
    a2, b2 = r.seen()
    assert a2 is a and b2 is b
    store.execute("UPDATE leases SET ip='10.0.0.9' WHERE container_id=?", "1" * 64)   # b moved
    a3, b3 = r.seen()
    assert a3 is a and b3 is not b and b3.ip == "10.0.0.9"
    images.env["busybox"] = ["PATH=/bin", "X=1"]     # the image's env changed under a running a
    a4, b4 = r.seen()
    assert a4 is a and a4.env == ("PATH=/bin",) and b4 is b3
    records.set_restart_state("0" * 64, restart_count=1)   # a's record changed: made again, with it
    a5, b5 = r.seen()
    assert a5 is not a and a5.env == ("PATH=/bin", "X=1") and b5 is b3
    records.set_exited("0" * 64, 0)
    assert [s.name for s in r.seen()] == ["b"] and set(r._seen) == {"1" * 64}
    r._seen_mark = 10 ** 6   # a mark the records never gave: everything made again
    assert [s.name for s in r.seen()] == ["b"] and r.seen()[0] is not b3
    store.close()


def test_seen_named_is_seen_for_those_names(tmp_path):
    # A start reads only its links' targets: the same Seen values as seen() has for them.
    store = Store(tmp_path / "state.db")
    records, images = Records(store), Images()
    r = Refresher.__new__(Refresher)
    r.records, r.images, r._seen, r._seen_mark = records, images, {}, -1
    for i, name in enumerate(("a", "b", "c", "d")):
        cid = f"{i}" * 64
        records.insert(Container(id=cid, name=name, spec=ContainerSpec(image="busybox", name=name, env=["K=v"]),
                                 exposed=("80/tcp",), status="creating", created=float(i)), [])
        if name != "d":                                   # d never started
            store.execute("INSERT INTO leases VALUES ('n', ?, ?)", f"10.0.0.{i + 2}", cid)
            records.set_running(records.get(cid), 100 + i)
    records.set_exited("2" * 64, 0)                          # c stopped
    every = {s.name: s for s in r.seen()}
    got = r.seen_named(["a", "c", "d", "nope", "a"])
    assert got == {"a": every["a"]} and got["a"].env == ("PATH=/bin", "K=v")
    assert r.seen_named([]) == {}
    store.close()
