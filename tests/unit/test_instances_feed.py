"""The instances the daemon feeds a client-side ambassador: the file's format
(portlink.instances_feed), the ambassador's source that applies it
(ambassador.sources.FedInstances, with a fake ambassador), and the daemon's
writer (runtime.ambassador_policy, with fake records)."""

import json
import logging
from types import SimpleNamespace

import pytest

from portlink import instances_feed
from portlink.ambassador.backends import Backend
from portlink.ambassador.sources import FedInstances
from portlink.catalog.services import Instance
from portlink.catalog.watch import Reachability
from portlink.instances_feed import Feed, FeedError
from portlink.runtime import ambassadors
from portlink.runtime.ambassador_policy import AmbassadorPolicy
from portlink.runtime.records import RUNNING, Container
from portlink.runtime.refresh import Catalog
from portlink.runtime.spec import ContainerSpec

PLAIN = Instance("db-a", "db", "10.0.0.1", 31000, node="n1", tags=("x",),
                 meta=(("owner", "me"), ("portlink-port", "5432/tcp")))
OTHER = Instance("db-b", "db", "10.0.0.2", 5432)                 # registered by someone else: every port
NATIVE = Instance("db-srv", "db", "10.0.0.1", 21000, meta=(("portlink-port", "5432/tcp"),), native=True)


# -- the format -----------------------------------------------------------------------

def test_round_trip_keeps_what_the_source_needs():
    feed = instances_feed.loads(instances_feed.dumps(Feed("db", (PLAIN, OTHER, NATIVE), True)))
    assert feed.service == "db" and feed.reachable is True
    assert feed.instances == (
        Instance("db-a", "db", "10.0.0.1", 31000, meta=(("portlink-port", "5432/tcp"),)),
        Instance("db-b", "db", "10.0.0.2", 5432),
        Instance("db-srv", "db", "10.0.0.1", 21000, meta=(("portlink-port", "5432/tcp"),), native=True))
    assert instances_feed.loads(instances_feed.dumps(Feed("db", (), None))) == Feed("db", (), None)


def doc(**over):
    d = {"version": 1, "service": "db", "reachable": True,
         "instances": [{"id": "a", "address": "10.0.0.1", "port": 80, "portlink_port": None, "native": False}]}
    d.update(over)
    return json.dumps(d)


def inst(**over):
    i = {"id": "a", "address": "10.0.0.1", "port": 80, "portlink_port": None, "native": False}
    i.update(over)
    return doc(instances=[i])


@pytest.mark.parametrize("text, names", [
    ("{", "not JSON"),
    (doc(version=2), '"version": 1'),
    (doc(reachable="yes"), "reachable"),
    (doc(instances={}), "instances"),
    (doc(instances=[3]), "instance 3"),
    (inst(address=""), "address ''"),
    (inst(port=0), "port 0"),
    (inst(port=True), "port True"),
    (inst(port="80"), "port '80'"),
    (inst(portlink_port=80), "portlink_port 80"),
    (inst(native="no"), "boolean native"),
])
def test_a_bad_file_is_refused_naming_the_problem(text, names):
    with pytest.raises(FeedError) as e:
        instances_feed.loads(text)
    assert names in str(e.value)


# -- the ambassador's source ----------------------------------------------------------

class FakeAmbassador:
    def __init__(self, ports):
        self.pools = {p: () for p in ports}
        self.applied = []

    def apply(self, port, backends):
        self.pools[port] = backends
        self.applied.append((port, backends))


def text(*instances, reachable=True, service="db"):
    return instances_feed.dumps(Feed(service, instances, reachable))


def test_plaintext_takes_the_plain_instances_split_by_port():
    amb, reach = FakeAmbassador([5432, 80]), Reachability("x")
    fed = FedInstances(amb, "db", reach)
    fed.on_text(text(PLAIN, OTHER, NATIVE))
    assert amb.pools == {5432: (Backend("10.0.0.1", 31000, "db-a"), Backend("10.0.0.2", 5432, "db-b")),
                         80: (Backend("10.0.0.2", 5432, "db-b"),)}
    assert reach.up is True and fed.loads == 1


def test_a_secure_client_side_takes_only_the_connect_native_instances():
    amb = FakeAmbassador([5432])
    FedInstances(amb, "db", Reachability("x"), connect=True).on_text(text(PLAIN, OTHER, NATIVE))
    assert amb.pools == {5432: (Backend("10.0.0.1", 21000, "db-srv"),)}


def test_the_daemons_word_on_consul_is_reported_once_per_outage_and_the_set_is_what_it_wrote(caplog):
    amb, reach = FakeAmbassador([5432]), Reachability("http://agent:8500", settle=0)
    fed = FedInstances(amb, "db", reach)
    fed.on_text(text(PLAIN))
    with caplog.at_level(logging.WARNING, logger="portlink.consul"):
        fed.on_text(text(PLAIN, reachable=False))
        fed.on_text(text(PLAIN, reachable=False))
    assert reach.up is False and amb.pools[5432] == (Backend("10.0.0.1", 31000, "db-a"),)
    assert [r.getMessage() for r in caplog.records].count(
        "consul at http://agent:8500 is unreachable (ConnectionError: portlinkd's catalog does not reach it): "
        "serving the last known state until it returns") == 1


def test_no_file_or_a_bad_one_keeps_the_last_set():
    amb, reach = FakeAmbassador([5432]), Reachability("x")
    fed = FedInstances(amb, "db", reach)
    fed.on_text(text(PLAIN))
    applied = list(amb.applied)
    fed.on_text(None)
    fed.on_text("{")
    fed.on_text(text(OTHER, service="web"))     # another service's file
    assert amb.applied == applied and fed.errors == 2 and reach.up is True
    fed.on_text(text(service="DB"))             # Consul names are matched as DNS matches them
    assert amb.pools[5432] == ()


# -- the daemon's writer --------------------------------------------------------------

def container(cid, service, cmd, backends=None):
    amb = {"service": service, "ports": [5432]}
    if backends:
        amb["backends"] = backends
    spec = ContainerSpec(image="busybox", name=f"amb-{cid}", network="front", ambassador=amb, cmd=cmd,
                         labels={ambassadors.LABEL: service})
    return Container(id=cid * 32, name=f"amb-{cid}", spec=spec, exposed=("5432/tcp",), status=RUNNING,
                     ip="10.88.0.9")


def fed_cmd(service):
    return ambassadors.command(ambassadors.AmbassadorSpec(service), [5432], "http://agent:8500", fed=True)


class FakeRecords:
    def __init__(self, *cs):
        self.cs = list(cs)

    def all(self):
        return self.cs

    def get(self, cid):
        return None          # no process to signal here


def policy(tmp_path, records, catalog):
    events = SimpleNamespace(seen=[], emit=lambda *a, **k: events.seen.append((a, k)))
    p = AmbassadorPolicy(records, None, catalog, "http://agent:8500", events, lambda: None,
                         feed_dir=lambda cid: tmp_path / cid[:2])
    return p, events


def read(tmp_path, cid):
    return instances_feed.loads((tmp_path / cid / instances_feed.FILE).read_text())


def test_a_change_is_written_for_the_fed_client_sides_of_that_service_only(tmp_path):
    db, web = container("ab", "db", fed_cmd("db")), container("cd", "web", fed_cmd("web"))
    old = container("ef", "db", ambassadors.command(ambassadors.AmbassadorSpec("db"), [5432], "http://agent:8500"))
    server = container("aa", "db", fed_cmd("db"), backends={"5432": "10.88.0.3:5432"})
    for c in (db, web, old, server):
        (tmp_path / c.id[:2]).mkdir()
    catalog = Catalog(enabled=True)
    p, events = policy(tmp_path, FakeRecords(db, web, old, server), catalog)
    p.reachable = lambda: True
    catalog.services = {"db": (PLAIN,), "web": (OTHER,)}
    p.reroutes({}, catalog.services)
    assert read(tmp_path, "ab") == Feed("db", instances_feed.loads(text(PLAIN)).instances, True)
    assert read(tmp_path, "cd").instances[0].address == "10.0.0.2"
    assert not (tmp_path / "ef" / instances_feed.FILE).exists()      # follows Consul itself
    assert not (tmp_path / "aa" / instances_feed.FILE).exists()      # a server side: fixed backends
    assert [e[0][1] for e in events.seen].count("reroute") == 4

    stamp = (tmp_path / "cd" / instances_feed.FILE).stat().st_ino
    now = {"db": (PLAIN, NATIVE), "web": (OTHER,)}
    catalog.services = now
    p.reroutes({"db": (PLAIN,), "web": (OTHER,)}, now)
    assert [i.id for i in read(tmp_path, "ab").instances] == ["db-a", "db-srv"]
    assert (tmp_path / "cd" / instances_feed.FILE).stat().st_ino == stamp   # web did not change

    p.reachable = lambda: False          # Consul lost: no catalog change says so
    p.feed_all()
    assert read(tmp_path, "cd").reachable is False and read(tmp_path, "ab").reachable is False
    assert [i.id for i in read(tmp_path, "ab").instances] == ["db-a", "db-srv"]    # the last known


def test_the_file_is_there_before_the_process_starts_and_a_removed_ambassador_is_skipped(tmp_path):
    db = container("ab", "db", fed_cmd("db"))
    catalog = Catalog(enabled=True)
    catalog.services = {"db": (PLAIN,)}
    p, _ = policy(tmp_path, FakeRecords(db), catalog)
    (tmp_path / "ab").mkdir()
    p.prepare_feed(db)
    assert read(tmp_path, "ab").instances[0].id == "db-a" and read(tmp_path, "ab").reachable is None
    (tmp_path / "ab" / instances_feed.FILE).unlink()
    (tmp_path / "ab").rmdir()                 # removed meanwhile: nothing raised
    p.reroutes({}, {"db": (OTHER,)})


def test_the_command_of_a_fed_client_side_names_the_file_in_its_bound_directory():
    cmd = fed_cmd("db")
    assert cmd[cmd.index("--instances-file") + 1] == "/run/secrets/linkers/instances.json"
    assert "--service" in cmd and "--consul" in cmd
    server = ambassadors.AmbassadorSpec("db", backends=((5432, "10.88.0.3:5432"),))
    assert "--instances-file" not in ambassadors.command(server, [5432], "http://agent:8500", fed=True)
    assert "--instances-file" not in ambassadors.command(ambassadors.AmbassadorSpec("db"), [5432], "x")


def test_every_client_side_gets_its_directory_bound_read_only_not_only_with_tokens():
    from portlink.runtime.images import ImageConfig
    from portlink.runtime.plan import process
    c = container("ab", "db", fed_cmd("db"))
    proc = process(c, ImageConfig(cmd=[], env=[]), (0, 0), feed_dir="/state/containers/ab/linkers")
    assert proc.ro_binds["/run/secrets/linkers"] == "/state/containers/ab/linkers"
    server = container("aa", "db", fed_cmd("db"), backends={"5432": "10.88.0.3:5432"})
    assert "/run/secrets/linkers" not in process(server, ImageConfig(cmd=[], env=[]), (0, 0),
                                                 feed_dir="/state/containers/aa/linkers").ro_binds


def test_a_change_while_an_ambassador_starts_reaches_its_file_and_one_being_removed_is_left(tmp_path):
    """Its file was written before its process ran: a change until it counts as
    running must be written too, or it would start on the older set."""
    import dataclasses
    from portlink.runtime.records import CREATING, REMOVING
    starting = dataclasses.replace(container("ab", "db", fed_cmd("db")), status=CREATING)
    going = dataclasses.replace(container("cd", "db", fed_cmd("db")), status=REMOVING)
    for c in (starting, going):
        (tmp_path / c.id[:2]).mkdir()
    catalog = Catalog(enabled=True)
    p, events = policy(tmp_path, FakeRecords(starting, going), catalog)
    catalog.services = {"db": (PLAIN,)}
    p.prepare_feed(starting)
    catalog.services = {"db": (PLAIN, OTHER)}
    p.reroutes({"db": (PLAIN,)}, catalog.services)
    assert [i.id for i in read(tmp_path, "ab").instances] == ["db-a", "db-b"]
    assert not (tmp_path / "cd" / instances_feed.FILE).exists()
    assert events.seen == []            # a reroute event is for a running one
