"""--cap-add/--cap-drop and --security-opt (runtime.security, pure) and their spec fields."""

import pytest

from portlink.errors import InvalidArgument
from portlink.runtime import security
from portlink.runtime.seccomp import DEFAULT_PROFILE
from portlink.runtime.security import SecurityOpts, capabilities, parse_security_opts
from portlink.runtime.spec import ContainerSpec

DEFAULT = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
           "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_MKNOD",
           "CAP_AUDIT_WRITE", "CAP_SETFCAP"]


def test_default_set_is_dockers_without_net_raw():
    assert capabilities([], []) == DEFAULT
    assert len(security.ALL_CAPS) == 41 and security.ALL_CAPS[13] == "CAP_NET_RAW"


@pytest.mark.parametrize("add, drop, want", [
    (["net_raw"], [], DEFAULT[:9] + ["CAP_NET_RAW"] + DEFAULT[9:]),
    (["CAP_SYS_ADMIN"], ["Mknod", "chown"],
     ["CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP",
      "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_SYS_ADMIN", "CAP_AUDIT_WRITE", "CAP_SETFCAP"]),
    ([], ["ALL"], []),
    (["kill"], ["all"], ["CAP_KILL"]),
    (["ALL"], [], list(security.ALL_CAPS)),
    (["ALL"], ["SYS_ADMIN"], [c for c in security.ALL_CAPS if c != "CAP_SYS_ADMIN"]),
])
def test_capabilities(add, drop, want):
    assert capabilities(add, drop) == want


@pytest.mark.parametrize("flag, value", [("--cap-add", "FOO"), ("--cap-drop", "CAP_NOPE"), ("--cap-add", "")])
def test_unknown_capability_named(flag, value):
    add, drop = ([value], []) if flag == "--cap-add" else ([], [value])
    with pytest.raises(InvalidArgument) as e:
        security.check_caps(add, drop)
    assert str(e.value) == (f"{flag} {value!r}: unknown capability; give a name such as NET_RAW "
                            "or CAP_SYS_ADMIN, or ALL")


def test_same_cap_added_and_dropped():
    with pytest.raises(InvalidArgument) as e:
        security.check_caps(["net_raw"], ["CAP_NET_RAW"])
    assert str(e.value) == "CAP_NET_RAW in both --cap-add and --cap-drop: keep one"


@pytest.mark.parametrize("opts, want", [
    ([], SecurityOpts(DEFAULT_PROFILE)),
    (["no-new-privileges"], SecurityOpts(DEFAULT_PROFILE)),
    (["no-new-privileges:true", "seccomp=unconfined"], SecurityOpts("unconfined")),
    (["seccomp=/etc/p.json"], SecurityOpts("/etc/p.json")),
    (["seccomp:/etc/p.json"], SecurityOpts("/etc/p.json")),
])
def test_security_opts(opts, want):
    assert parse_security_opts(opts) == want


@pytest.mark.parametrize("opt, msg", [
    ("apparmor=unconfined", "--security-opt 'apparmor=unconfined' is not supported: use seccomp=unconfined, "
                            "seccomp=PATH (a profile file on the daemon's host) or no-new-privileges"),
    ("label=disable", "--security-opt 'label=disable' is not supported: use seccomp=unconfined, "
                      "seccomp=PATH (a profile file on the daemon's host) or no-new-privileges"),
    ("no-new-privileges=false", "--security-opt 'no-new-privileges=false': no-new-privileges is always on "
                                "in portlink"),
    ("seccomp=p.json", "--security-opt 'seccomp=p.json': seccomp takes 'unconfined' or the absolute path "
                       "of a profile file on the daemon's host"),
    ("seccomp=", "--security-opt 'seccomp=': seccomp takes 'unconfined' or the absolute path "
                 "of a profile file on the daemon's host"),
])
def test_security_opt_refused(opt, msg):
    with pytest.raises(InvalidArgument) as e:
        parse_security_opts([opt])
    assert str(e.value) == msg


def test_seccomp_twice():
    with pytest.raises(InvalidArgument) as e:
        parse_security_opts(["seccomp=unconfined", "seccomp=/p.json"])
    assert str(e.value) == "--security-opt 'seccomp=/p.json': seccomp is given twice; keep one"


@pytest.mark.parametrize("data, msg", [
    ({"cap_add": "NET_RAW"}, "field 'cap_add' must be a list of strings"),
    ({"cap_drop": [1]}, "field 'cap_drop' must be a list of strings"),
    ({"security_opt": "seccomp=unconfined"}, "field 'security_opt' must be a list of strings"),
    ({"cap_add": ["FOO"]}, "--cap-add 'FOO': unknown capability; give a name such as NET_RAW or "
                           "CAP_SYS_ADMIN, or ALL"),
    ({"security_opt": ["privileged"]}, "--security-opt 'privileged' is not supported: use "
                                       "seccomp=unconfined, seccomp=PATH (a profile file on the daemon's "
                                       "host) or no-new-privileges"),
])
def test_spec_fields_checked(data, msg):
    with pytest.raises(InvalidArgument) as e:
        ContainerSpec.from_json({"image": "busybox", **data})
    assert str(e.value) == msg


def test_effective_for_inspect():
    assert security.effective(["seccomp=unconfined"], ["NET_RAW"], ["ALL"]) == {
        "seccomp": "unconfined", "capabilities": ["CAP_NET_RAW"], "no_new_privileges": True,
        "sysctl": {"net.ipv4.ping_group_range": "0 2147483647"}}
    assert security.effective([], [], [])["seccomp"] == DEFAULT_PROFILE
    amb = security.effective(["seccomp=unconfined"], ["NET_ADMIN"], [], ambassador=True)
    assert amb == {"seccomp": DEFAULT_PROFILE, "capabilities": [], "no_new_privileges": True,
                   "sysctl": {"net.ipv4.ip_unprivileged_port_start": "0"}, "user": "65536:65536",
                   "readonly_rootfs": True}
