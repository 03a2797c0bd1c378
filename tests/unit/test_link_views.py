"""`portlink link ls` and inspect's link entries, without Consul or root: the
rows from containers (local links, links through a client-side ambassador,
server sides left out) and how an intention is shown (this host's, another
host's, a person's, none, Consul away)."""

from __future__ import annotations

from portlink.catalog.intentions import MARK, Link
from portlink.runtime.cli_links import link_table
from portlink.runtime.link_views import LinkRow, LinkViews, intention_view, link_rows
from portlink.runtime.records import RUNNING, Container
from portlink.runtime.spec import ContainerSpec

HOST = "0123456789ab"
OTHER = "ba9876543210"


def ctr(name: str, links=(), ambassador=None, status=RUNNING, labels=None) -> Container:
    spec = ContainerSpec(image="busybox", name=name, hostname=name, network="bridge", links=list(links),
                         labels=labels or {},
                         ambassador=ambassador)
    return Container(id=name.ljust(64, "0"), name=name, spec=spec, exposed=("80/tcp",), status=status)


AMB = ctr("amb-frontdb-bridge", ambassador={"service": "frontdb", "identity": f"amb-frontdb-bridge-{HOST}"})
PLAIN_AMB = ctr("dbamb", ambassador={"service": "plaindb"})        # no identity: no secure links
SRV = ctr("srv-cache", links=["cache:cache"], ambassador={"service": "cache", "backends": {"6379": "10.0.0.3:6379"}})
CACHE = ctr("cache")
WEB = ctr("web", links=["amb-frontdb-bridge:sql", "cache:c", "dbamb:pg"])
OLD = ctr("old", links=["cache"], status="exited")
SECURE = Link("web", "frontdb")     # the linker's own service, not the ambassador's identity


def test_one_row_per_link_of_each_container_that_is_no_ambassador():
    rows = link_rows([AMB, PLAIN_AMB, SRV, CACHE, WEB, OLD])
    assert rows == [
        LinkRow("web", "sql", "frontdb", "ambassador", "amb-frontdb-bridge", RUNNING, SECURE),
        LinkRow("web", "c", "cache", "local", None, RUNNING),
        LinkRow("web", "pg", "plaindb", "ambassador", "dbamb", RUNNING, None),
        LinkRow("old", "cache", "cache", "local", None, "exited"),
    ]


def test_a_link_to_a_server_side_by_name_is_a_local_link():
    rows = link_rows([SRV, ctr("peek", links=["srv-cache:s"])])
    assert rows == [LinkRow("peek", "s", "srv-cache", "local", None, RUNNING)]


def test_who_made_an_intention():
    mine = {"Action": "allow", "Description": "portlink: --link frontdb ... " + MARK.format(HOST)}
    theirs = {"Action": "allow", "Description": "portlink: ... " + MARK.format(OTHER)}
    denied = {"Action": "deny", "Description": "portlink: ... " + MARK.format(HOST)}   # a person's PUT over ours
    by_hand = {"Action": "allow", "Description": "ops ticket 42"}
    view = lambda existing: intention_view(SECURE, existing, HOST)
    assert (view(mine)["action"], view(mine)["by"]) == ("allow", "this host")
    assert (view(theirs)["action"], view(theirs)["by"]) == ("allow", f"portlink host {OTHER}")
    assert (view(denied)["action"], view(denied)["by"]) == ("deny", "person")
    assert (view(by_hand)["action"], view(by_hand)["by"]) == ("allow", "person")
    assert view(None) == {"source": SECURE.source, "destination": "frontdb", "action": None, "by": None}
    failed = intention_view(SECURE, None, HOST, "cannot reach Consul")
    assert (failed["action"], failed["error"]) == ("unknown", "cannot reach Consul")


class FakeRecords:
    def __init__(self, containers):
        self.containers = containers

    def all(self):
        return self.containers


def test_the_listing_asks_consul_once_per_intention_and_survives_it_failing():
    asked = []

    def lookup(link):
        asked.append(link)
        return {"Action": "allow", "Description": MARK.format(HOST)}
    web2 = ctr("web2", links=["amb-frontdb-bridge:db"], labels={"portlink.service": "web"})   # web too
    api = ctr("API_1", links=["amb-frontdb-bridge:db"])
    views = LinkViews(FakeRecords([AMB, CACHE, WEB, web2, OLD]), HOST, lookup)
    rows = views.list()
    assert asked == [SECURE]
    # the source is each linker's service: its label, else its name as the registrar makes it
    assert [r.intention for r in link_rows([AMB, web2, api])] == [SECURE, Link("api-1", "frontdb")]
    assert [(r["container"], r["alias"]) for r in rows] == [("web", "sql"), ("web", "c"), ("web", "pg"), ("web2", "db")]
    assert rows[0]["intention"]["by"] == "this host" and rows[1]["intention"] is None
    assert [r["container"] for r in views.list(all=True)][-1] == "old"
    assert set(views.of("web")) == {"sql", "c", "pg"}

    def down(link):
        raise OSError("connection refused")
    rows = LinkViews(FakeRecords([AMB, WEB]), HOST, down).list()
    assert rows[0]["intention"]["action"] == "unknown" and "refused" in rows[0]["intention"]["error"]
    assert rows[1]["intention"] is None


def test_the_table():
    rows = LinkViews(FakeRecords([AMB, CACHE, WEB]), HOST, lambda link: None).list()
    text = link_table(rows).splitlines()
    assert text[0].split() == ["CONTAINER", "ALIAS", "TARGET", "RESOLVES", "INTENTION", "ACTION"]
    assert text[1].split() == ["web", "sql", "frontdb", "ambassador", "amb-frontdb-bridge",
                               SECURE.source, "->", "frontdb", "none", "(Consul's", "default)"]
    assert text[2].split() == ["web", "c", "cache", "local", "-", "-"]
