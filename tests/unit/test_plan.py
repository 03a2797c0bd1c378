"""The start plan (runtime.plan): spec + image + lease + peers -> what to create, without root."""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from portlink.netns.model import NetworkSpec, PortMapping
from portlink.runtime.discovery import Seen
from portlink.runtime.images import ImageConfig
from portlink.runtime.links import LinkRequest
from portlink.runtime.plan import PATH_ENV, Layout, PortRow, plan_start, seen_of
from portlink.runtime.records import CREATING, Container
from portlink.runtime.spec import ContainerSpec

CID = "ab" * 32
NET = NetworkSpec(id="n1" * 32, name="front", subnet=ip_network("10.90.0.0/24"),
                  gateway=ip_address("10.90.0.1"), bridge="plb-n1n1n1n1n1n")
IMAGE = ImageConfig(cmd=["sh"], env=["IMG=1", "MODE=image"], workdir="/srv", exposed=["80/tcp"])
LAYOUT = Layout(Path("/var/lib/pl"))
DB = Seen(id="cd" * 32, name="db", hostname="dbhost", network="front", ip="10.90.0.7",
          exposed=("5432/tcp",), env=("POSTGRES_DB=app",))


def container(**spec) -> Container:
    s = ContainerSpec(**{"image": "busybox", "name": "web", "hostname": "webhost", "cmd": ["httpd", "-f"],
                         "network": "front", **spec})
    return Container(id=CID, name=s.name, spec=s, exposed=("80/tcp",), status=CREATING)


def test_plan_on_a_network_with_a_link_and_a_published_port():
    c = container(links=["db:sql"], env=["MODE=user"], dns=["192.0.2.53"])
    plan = plan_start(c, IMAGE, (1000, 1000), LAYOUT, NET, ip_address("10.90.0.5"),
                      [PortRow("tcp", 8080, 80, "")], {"db": DB}, ["198.51.100.1"])

    ep = plan.endpoint
    assert (ep.host_ifname, ep.netns_path, str(ep.address), ep.network) == \
        ("plv-" + CID[:11], "/var/lib/pl/netns/plc-" + CID[:12], "10.90.0.5", NET)
    assert plan.mappings == [PortMapping("tcp", 8080, ip_address("10.90.0.5"), 80, None)]
    assert plan.files == {
        "/etc/hosts": ("hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                                "10.90.0.5\twebhost web\n10.90.0.7\tsql dbhost db\n"),
        "/etc/resolv.conf": ("resolv.conf", "nameserver 10.90.0.1\noptions ndots:0\n"),
        "/etc/hostname": ("hostname", "webhost\n"),
    }
    proc = plan.config["process"]
    assert proc["args"] == ["httpd", "-f"]
    assert (proc["user"], proc["cwd"]) == ({"uid": 1000, "gid": 1000}, "/srv")
    # Docker's order: PATH, HOSTNAME, link variables, then the image's and the user's entries.
    assert proc["env"][:3] == [PATH_ENV, "HOSTNAME=webhost", "SQL_PORT=tcp://10.90.0.7:5432"]
    assert "SQL_ENV_POSTGRES_DB=app" in proc["env"] and "SQL_NAME=/web/sql" in proc["env"]
    assert proc["env"][-3:] == ["IMG=1", "MODE=image", "MODE=user"]
    assert plan.config["root"]["path"] == f"/var/lib/pl/containers/{CID}/rootfs"
    assert plan.config["linux"]["cgroupsPath"] == f"/portlink/{CID}"
    assert {"type": "network", "path": "/var/lib/pl/netns/plc-" + CID[:12]} in plan.config["linux"]["namespaces"]
    binds = {m["destination"]: m["source"] for m in plan.config["mounts"] if m["type"] == "bind"}
    assert binds == {f"/etc/{f}": f"/var/lib/pl/containers/{CID}/{f}" for f in ("hosts", "resolv.conf", "hostname")}
    assert plan.seen == seen_of(c, IMAGE.env, "10.90.0.5")


def test_plan_with_no_network_is_loopback_only_and_asks_the_given_resolvers():
    c = container(network="none", dns=["192.0.2.53"])
    plan = plan_start(c, IMAGE, (0, 0), LAYOUT, None, None, [], {}, ["198.51.100.1"])
    assert plan.endpoint is None and plan.mappings == []
    assert plan.files["/etc/resolv.conf"] == ("resolv.conf", "nameserver 192.0.2.53\n")
    assert plan.files["/etc/hosts"][1].count("\n") == 2   # localhost lines only
    assert plan.link_env == []


def test_daemon_upstreams_when_the_container_names_none():
    plan = plan_start(container(network="none"), IMAGE, (0, 0), LAYOUT, None, None, [], {}, ["198.51.100.1"])
    assert plan.files["/etc/resolv.conf"][1] == "nameserver 198.51.100.1\n"


def test_a_link_to_a_peer_that_is_gone_or_elsewhere_gives_nothing():
    elsewhere = Seen(**{**DB.__dict__, "network": "back"})
    for peers in ({}, {"db": elsewhere}):
        plan = plan_start(container(links=["db:sql"]), IMAGE, (0, 0), LAYOUT, NET, ip_address("10.90.0.5"),
                          [], peers, [])
        assert plan.link_env == []
        assert "sql" not in plan.files["/etc/hosts"][1]


def test_ports_are_ordered_and_bound_to_their_host_address():
    rows = [PortRow("udp", 5353, 53, ""), PortRow("tcp", 9000, 90, "127.0.0.1"), PortRow("tcp", 8080, 80)]
    plan = plan_start(container(), IMAGE, (0, 0), LAYOUT, NET, ip_address("10.90.0.5"), rows, {}, [])
    assert [str(m) for m in plan.mappings] == [
        "8080->10.90.0.5:80/tcp", "127.0.0.1:9000->10.90.0.5:90/tcp", "5353->10.90.0.5:53/udp"]


def test_an_ambassador_gets_the_forwarder_runtime_read_only():
    c = container(ambassador={"service": "db", "ports": [5432], "policy": "drain", "drain_deadline": 10.0})
    plan = plan_start(c, IMAGE, (0, 0), LAYOUT, NET, ip_address("10.90.0.5"), [], {}, [])
    ro = {m["destination"]: m["options"] for m in plan.config["mounts"]
          if m["type"] == "bind" and "ro" in m["options"]}
    assert "/usr" in ro
    assert all("rro" in opts for opts in ro.values())             # submounts too
    plain = plan_start(container(), IMAGE, (0, 0), LAYOUT, NET, ip_address("10.90.0.5"), [], {}, [])
    assert not [m for m in plain.config["mounts"] if m["type"] == "bind" and "ro" in m["options"]]
    assert plan.config["process"]["env"][-1] == "PYTHONDONTWRITEBYTECODE=1"


def test_an_ambassador_runs_unprivileged_whatever_the_request_says():
    from portlink.runtime.seccomp import Machine
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["bind"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_NET_BIND_SERVICE"]}}]}
    c = container(ambassador={"service": "db", "ports": [80]}, cap_add=["NET_ADMIN"], user="root")
    cfg = plan_start(c, IMAGE, (0, 0), LAYOUT, NET, ip_address("10.90.0.5"), [], {}, [], profile=profile,
                     machine=Machine("amd64", "SCMP_ARCH_X86_64", (6, 1))).config
    assert cfg["process"]["user"] == {"uid": 65536, "gid": 65536}
    assert cfg["process"]["capabilities"] == {"bounding": [], "effective": [], "permitted": []}
    assert cfg["process"]["noNewPrivileges"] is True
    # The profile resolved for no capabilities: the CAP_NET_BIND_SERVICE rule is left out.
    assert cfg["linux"]["seccomp"]["syscalls"] == [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]
    # Low ports in its own namespace without a capability; no ping sockets.
    assert cfg["linux"]["sysctl"] == {"net.ipv4.ip_unprivileged_port_start": "0"}
    assert cfg["root"]["readonly"] is True
    plain = plan_start(container(), IMAGE, (1000, 1000), LAYOUT, NET, ip_address("10.90.0.5"), [], {}, []).config
    assert plain["root"]["readonly"] is False and plain["process"]["user"] == {"uid": 1000, "gid": 1000}


def test_a_hosted_ambassador_runs_portlink_pause_bound_read_only():
    from portlink.runtime.ambassadors import HOSTED_CMD, LEGACY_HOSTED_CMDS, PAUSE_PATH, is_hosted
    c = container(ambassador={"service": "db", "ports": [80]}, cmd=list(HOSTED_CMD))
    plan = plan_start(c, IMAGE, (0, 0), LAYOUT, NET, ip_address("10.90.0.5"), [], {}, [],
                      pause_binary="/opt/pl/bin/portlink-pause")
    assert plan.config["process"]["args"] == ["/sbin/portlink-pause"] == [PAUSE_PATH]
    binds = {m["destination"]: (m["source"], m["options"]) for m in plan.config["mounts"] if m["type"] == "bind"}
    assert binds[PAUSE_PATH][0] == "/opt/pl/bin/portlink-pause" and "ro" in binds[PAUSE_PATH][1]
    with pytest.raises(ValueError, match="portlink-pause"):
        plan_start(c, IMAGE, (0, 0), LAYOUT, NET, ip_address("10.90.0.5"), [], {}, [])
    # One made before portlink-pause (busybox sleep) is still hosted and runs as recorded.
    old = container(ambassador={"service": "db", "ports": [80]}, cmd=list(LEGACY_HOSTED_CMDS[0]))
    assert is_hosted(c.spec) and is_hosted(old.spec)
    old_plan = plan_start(old, IMAGE, (0, 0), LAYOUT, NET, ip_address("10.90.0.5"), [], {}, [])
    assert old_plan.config["process"]["args"] == ["sleep", "2147483647"]
    assert PAUSE_PATH not in {m["destination"] for m in old_plan.config["mounts"]}
    # Its pause reads no /sys and no message queue: neither is mounted (each mount walks
    # every superblock of its kind, one per namespace); every other container has both.
    fs = lambda cfg: {m["destination"]: m["type"] for m in cfg["mounts"] if m["type"] in ("sysfs", "mqueue")}
    assert fs(plan.config) == {}
    assert fs(old_plan.config) == {"/sys": "sysfs", "/dev/mqueue": "mqueue"}
    sidecar = container(ambassador={"service": "db", "ports": [80]})
    assert fs(plan_start(sidecar, IMAGE, (0, 0), LAYOUT, NET, ip_address("10.90.0.5"), [], {}, []).config) == \
        {"/sys": "sysfs", "/dev/mqueue": "mqueue"}
    # The same command outside an ambassador is an ordinary container's, with nothing bound.
    assert not is_hosted(container(cmd=list(HOSTED_CMD)).spec)


@pytest.mark.parametrize("links", [["db"], ["db:DB"]])
def test_seen_carries_the_parsed_links(links):
    s = seen_of(container(links=links), [], None)
    assert s.links == (LinkRequest("db", links[0].partition(":")[2] or "db"),)


# confinement ---------------------------------------------------------------------------------
def test_plan_confines_with_the_capabilities_and_the_resolved_profile():
    from portlink.runtime.seccomp import Machine
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_NET_RAW"]}}]}
    machine = Machine("amd64", "SCMP_ARCH_X86_64", (6, 1))
    plain = plan_start(container(), IMAGE, (0, 0), LAYOUT, NET, ip_address("10.90.0.5"), [], {}, [],
                       profile=profile, machine=machine).config
    assert "CAP_NET_RAW" not in plain["process"]["capabilities"]["bounding"]
    assert plain["linux"]["seccomp"] == {"defaultAction": "SCMP_ACT_ERRNO",
                                         "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}
    assert plain["linux"]["sysctl"] == {"net.ipv4.ping_group_range": "0 2147483647"}
    raw = plan_start(container(cap_add=["net_raw"], cap_drop=["ALL"]), IMAGE, (0, 0), LAYOUT, NET,
                     ip_address("10.90.0.5"), [], {}, [], profile=profile, machine=machine).config
    assert raw["process"]["capabilities"]["effective"] == ["CAP_NET_RAW"]
    assert [r["names"] for r in raw["linux"]["seccomp"]["syscalls"]] == [["read"], ["socket"]]
    unconfined = plan_start(container(), IMAGE, (0, 0), LAYOUT, NET, ip_address("10.90.0.5"), [], {}, [],
                            profile=None).config
    assert "seccomp" not in unconfined["linux"]


def test_links_open_the_linked_ports_only_on_a_network_with_icc_off():
    from dataclasses import replace
    from portlink.netns.model import LinkFlow
    db = replace(DB, exposed=("5432/tcp", "5433/udp"))
    c = container(links=["db:sql"])
    on = plan_start(c, IMAGE, (0, 0), LAYOUT, NET, ip_address("10.90.0.5"), [], {"db": db}, [])
    assert on.link_flows == []            # icc on: the bridge lets everything through already
    closed = replace(NET, icc=False)
    off = plan_start(c, IMAGE, (0, 0), LAYOUT, closed, ip_address("10.90.0.5"), [], {"db": db}, [])
    me, other = ip_address("10.90.0.5"), ip_address("10.90.0.7")
    assert off.link_flows == [LinkFlow(me, other, "tcp", 5432), LinkFlow(me, other, "udp", 5433)]
    # a peer of that name on another network is no link target
    elsewhere = plan_start(c, IMAGE, (0, 0), LAYOUT, closed, me, [], {"db": replace(db, network="back")}, [])
    assert elsewhere.link_flows == []


def test_plan_mounts_volumes_binds_and_tmpfs_before_the_files_portlink_writes():
    from portlink.runtime.volspec import BIND, TMPFS, VOLUME, Mount
    c = container().with_(mounts=(Mount(VOLUME, "/etc", "conf", readonly=True), Mount(BIND, "/srv", "/host/www"),
                                  Mount(TMPFS, "/var/run/t", tmpfs_size=1 << 20)))
    plan = plan_start(c, IMAGE, (0, 0), LAYOUT, NET, ip_address("10.90.0.5"), [], {}, [],
                      mount_targets={"/var/run/t": "/run/t"})
    got = [(m["destination"], m["type"], m["source"]) for m in plan.config["mounts"]][6:]
    assert got == [("/etc", "bind", "/var/lib/pl/volumes/plvol-conf/_data"), ("/srv", "bind", "/host/www"),
                   ("/run/t", "tmpfs", "tmpfs"),   # where mount_paths resolved it
                   *[(f"/etc/{f}", "bind", f"/var/lib/pl/containers/{CID}/{f}") for f in ("hostname", "hosts", "resolv.conf")]]
    opts = {m["destination"]: m.get("options", []) for m in plan.config["mounts"]}
    assert {"nosuid", "nodev", "ro", "rro"} <= set(opts["/etc"]) and "ro" not in opts["/srv"]
    assert {"nosuid", "nodev", "noexec", "size=1048576"} <= set(opts["/run/t"])
