"""Seccomp profiles in the Docker/containers format -> OCI linux.seccomp (pure)."""

import json
import os

import pytest

from portlink.errors import InvalidArgument
from portlink.runtime import seccomp, security
from portlink.runtime.seccomp import Machine, convert, kernel_version

AMD64 = Machine("amd64", "SCMP_ARCH_X86_64", (6, 1, 0))
ARM64 = Machine("arm64", "SCMP_ARCH_AARCH64", (5, 4))

SMALL = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 38,
    "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
    ],
    "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "args": [], "includes": {}, "excludes": {}},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
        {"names": ["setns"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["setns"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "errno": "EPERM",
         "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["both"], "action": "SCMP_ACT_ALLOW",
         "includes": {"caps": ["CAP_SYS_ADMIN", "CAP_NET_ADMIN"]}},
        {"names": ["not_on_arm"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": ["arm64"]}},
        {"names": ["new_call"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "5.6"}},
        {"name": "old_style", "action": "SCMP_ACT_ERRNO", "errno": "EINVAL", "args": None},
    ],
}


def names(out: dict) -> list[list[str]]:
    return [r["names"] for r in out["syscalls"]]


def test_no_caps_on_amd64():
    assert convert(SMALL, [], AMD64) == {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["setns"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {"names": ["not_on_arm"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["new_call"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["old_style"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22},
        ],
    }


def test_includes_caps_need_every_cap_and_excludes_drop_the_rule():
    out = convert(SMALL, ["CAP_SYS_ADMIN"], AMD64)
    assert {"names": ["setns"], "action": "SCMP_ACT_ALLOW"} in out["syscalls"]
    assert ["both"] not in names(out)              # needs CAP_NET_ADMIN too
    assert [r["action"] for r in out["syscalls"] if r["names"] == ["setns"]] == ["SCMP_ACT_ALLOW"]
    assert ["both"] in names(convert(SMALL, ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"], AMD64))


def test_other_arch_and_older_kernel():
    out = convert(SMALL, [], ARM64)
    assert out["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert names(out) == [["read", "write"], ["personality"], ["setns"], ["old_style"]]


def test_errno_only_with_the_actions_that_return_one():
    prof = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["a"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1},
        {"names": ["b"], "action": "SCMP_ACT_TRACE", "errno": "EPERM"},
        {"names": ["c"], "action": "SCMP_ACT_KILL_PROCESS", "errno": "EPERM"}]}
    assert convert(prof, [], AMD64)["syscalls"] == [
        {"names": ["a"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["b"], "action": "SCMP_ACT_TRACE", "errnoRet": 1},
        {"names": ["c"], "action": "SCMP_ACT_KILL_PROCESS"}]


def test_explicit_architectures_win_over_arch_map():
    out = convert({**SMALL, "architectures": ["SCMP_ARCH_X86_64"]}, [], AMD64)
    assert out["architectures"] == ["SCMP_ARCH_X86_64"]


def test_an_abi_the_kernel_lacks_is_left_out():
    no_x32 = Machine("amd64", "SCMP_ARCH_X86_64", (6, 1, 0), frozenset({"SCMP_ARCH_X32"}))
    assert convert(SMALL, [], no_x32)["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    explicit = {**SMALL, "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_X86"]}
    assert convert(explicit, [], no_x32)["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    # the rules are the same: only the filter's architectures change
    assert convert(SMALL, [], no_x32)["syscalls"] == convert(SMALL, [], AMD64)["syscalls"]


@pytest.mark.parametrize("config, lacks", [
    ("CONFIG_IA32_EMULATION=y\n# CONFIG_X86_X32_ABI is not set\nCONFIG_COMPAT_32=y\n", {"SCMP_ARCH_X32"}),
    ("# CONFIG_X86_X32 is not set\n", {"SCMP_ARCH_X32"}),            # its name before Linux 5.18
    ("CONFIG_X86_X32_ABI=y\n", set()),
    ("CONFIG_X86_X32=y\n# CONFIG_X86_X32_ABI is not set\n", set()),  # said both ways: keep it
    ("CONFIG_IA32_EMULATION=y\n", set()),                              # not mentioned: keep it
    ("#  CONFIG_X86_X32_ABI is not set (comment)\n", set()),           # not the config's own line
    (None, set()),                                                     # no config readable: keep it
])
def test_kernel_lacks(config, lacks):
    assert seccomp.kernel_lacks(config) == frozenset(lacks)


def test_unknown_arch_in_map_gives_no_architectures():
    out = convert({"defaultAction": "SCMP_ACT_ALLOW", "archMap": SMALL["archMap"]}, [],
                  Machine("riscv64", "SCMP_ARCH_RISCV64", (6,)))
    assert out == {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}


@pytest.mark.parametrize("release, want", [("6.18.44-fc-v1045", (6, 18, 44)), ("4.8", (4, 8)),
                                           ("5.10.0-28-amd64", (5, 10, 0)), ("6", (6,))])
def test_kernel_version(release, want):
    assert kernel_version(release) == want


def test_this_machine():
    m = seccomp.this_machine()
    assert m.kernel == kernel_version(os.uname().release)
    assert m.lacks == seccomp.kernel_lacks(seccomp._kernel_config(os.uname().release))
    assert (m.arch, m.scmp_arch) == {"x86_64": ("amd64", "SCMP_ARCH_X86_64"),
                                     "aarch64": ("arm64", "SCMP_ARCH_AARCH64")}[os.uname().machine]


def test_min_kernel_compares_as_numbers():
    rule = {"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "5.10"}}]}
    assert names(convert(rule, [], Machine("amd64", "SCMP_ARCH_X86_64", (5, 9, 99)))) == []
    assert names(convert(rule, [], Machine("amd64", "SCMP_ARCH_X86_64", (5, 10)))) == [["x"]]


@pytest.mark.parametrize("profile, msg", [
    ([], "seccomp profile 'p.json': must be a JSON object"),
    ({"syscalls": []}, "seccomp profile 'p.json': 'defaultAction' must be a string such as SCMP_ACT_ERRNO"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": {}}, "seccomp profile 'p.json': 'syscalls' must be a list"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": [], "action": "SCMP_ACT_ALLOW"}]},
     "seccomp profile 'p.json': syscalls[0] needs 'names', a list of syscall names"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"]}]},
     "seccomp profile 'p.json': syscalls[0] needs 'action', a string such as SCMP_ACT_ALLOW"),
])
def test_check_names_the_field(profile, msg):
    with pytest.raises(InvalidArgument) as e:
        seccomp.check(profile, "p.json")
    assert str(e.value) == msg


def test_load_missing_and_bad_files(tmp_path):
    with pytest.raises(InvalidArgument) as e:
        seccomp.load(str(tmp_path / "nope.json"))
    assert str(e.value) == (f"seccomp profile '{tmp_path}/nope.json' cannot be read (No such file or directory): "
                            "give an existing profile file on the daemon's host")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidArgument, match=r"seccomp profile '.*/bad.json' is not JSON"):
        seccomp.load(str(bad))


def test_load_is_cached_per_file_version(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW"}))
    first = seccomp.load(str(f))
    assert seccomp.load(str(f)) is first
    f.write_text(json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []}))
    os.utime(f, ns=(1, 1))
    assert seccomp.load(str(f))["defaultAction"] == "SCMP_ACT_ERRNO"


# The real profile: Docker's default, extracted from Debian's golang-github-docker-docker-dev by scripts/setup.
def action_of(out: dict, name: str) -> list[str]:
    return [r["action"] + ("(args)" if r.get("args") else "") for r in out["syscalls"] if name in r["names"]]


def test_the_default_profile():
    profile = seccomp.load(seccomp.DEFAULT_PROFILE)
    out = convert(profile, security.capabilities([], []), AMD64)
    assert out["defaultAction"] == "SCMP_ACT_ERRNO"          # EPERM for anything not listed
    assert out["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert action_of(out, "read") == ["SCMP_ACT_ALLOW"]
    assert action_of(out, "arch_prctl") == ["SCMP_ACT_ALLOW"]              # amd64 only
    assert action_of(out, "set_tls") == []                                 # arm only
    assert action_of(out, "chroot") == ["SCMP_ACT_ALLOW"]                  # CAP_SYS_CHROOT is a default
    # Without CAP_SYS_ADMIN: no new namespaces, no mounts, no keyrings (the default action refuses).
    for name in ("unshare", "setns", "mount", "keyctl", "add_key", "bpf", "sethostname", "kexec_load",
                 "userfaultfd", "open_by_handle_at", "init_module", "perf_event_open"):
        assert action_of(out, name) == [], name
    assert action_of(out, "clone") == ["SCMP_ACT_ALLOW(args)"]   # only without namespace flags
    assert action_of(out, "clone3") == ["SCMP_ACT_ERRNO"]        # ENOSYS: libc falls back to clone
    admin = convert(profile, security.capabilities(["SYS_ADMIN"], []), AMD64)
    for name in ("unshare", "setns", "mount", "bpf", "sethostname"):
        assert action_of(admin, name) == ["SCMP_ACT_ALLOW"], name
    assert action_of(admin, "keyctl") == []                      # never, even with CAP_SYS_ADMIN
    assert action_of(convert(profile, [], AMD64), "chroot") == []
