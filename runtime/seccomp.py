"""Seccomp profiles: a Docker/containers-format profile resolved into the OCI
`linux.seccomp` form runc wants, for one architecture, one capability set and
one kernel.

The default is Docker's own profile (moby profiles/seccomp/default.json, from
Debian's golang-github-docker-docker-dev, extracted by scripts/setup), not
Podman's (/usr/share/containers/seccomp.json): Podman's allows unshare, clone
of namespaces and keyctl to every container, so `unshare -Ur` gives a
container root in a new user namespace and the kernel surface behind it;
Docker's allows them only with CAP_SYS_ADMIN (keyctl never).

`convert` is pure: the caller reads the file (`load`, cached per file version)
and passes the machine's facts in. The rules follow containers/common's
pkg/seccomp: a rule applies when all its `includes.caps` are held, the machine's
arch is among `includes.arches` (when any), the kernel is at least
`includes.minKernel`, and none of `excludes.caps`/`excludes.arches` match.

An architecture the kernel cannot run (x32 on a kernel built without
CONFIG_X86_X32_ABI, as here) is left out of the filter: libseccomp's rules for
it cost runc about 5 ms per container start (a third of the filter's cost), and
no process can use that ABI there anyway. An x32 system call then ends the
process (SIGSYS, libseccomp's action for an architecture not in the filter)
instead of failing with ENOSYS."""

from __future__ import annotations

import errno as errnos
import functools
import gzip
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from portlink.errors import InvalidArgument

DEFAULT_PROFILE = "/usr/local/share/portlink/seccomp-default.json"

# uname machine -> (the Go arch name the profile's includes/excludes use, the libseccomp arch).
_ARCHES = {
    "x86_64": ("amd64", "SCMP_ARCH_X86_64"),
    "aarch64": ("arm64", "SCMP_ARCH_AARCH64"),
    "s390x": ("s390x", "SCMP_ARCH_S390X"),
    "ppc64le": ("ppc64le", "SCMP_ARCH_PPC64LE"),
    "riscv64": ("riscv64", "SCMP_ARCH_RISCV64"),
}


@dataclass(frozen=True)
class Machine:
    """What a profile is resolved for, besides the capabilities."""

    arch: str                  # Go name, as in the profile's includes.arches: "amd64"
    scmp_arch: str             # libseccomp name, as in archMap: "SCMP_ARCH_X86_64"
    kernel: tuple[int, ...]    # (6, 1, 0)
    # libseccomp arches this kernel cannot run (kernel_lacks): left out of the filter
    lacks: frozenset[str] = frozenset()


def kernel_version(release: str) -> tuple[int, ...]:
    """'6.18.44-fc-v1045' -> (6, 18, 44); '4.8' -> (4, 8)."""
    m = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", release)
    if not m:
        raise InvalidArgument(f"kernel version {release!r} is not N.N[.N]: fix minKernel in the seccomp profile")
    return tuple(int(x) for x in m.groups() if x is not None)


# A sub-architecture the kernel may be built without: the config option, and its
# name before Linux 5.18 (a kernel config says "# CONFIG_X is not set" when it is off).
_OPTIONAL_ABIS = {"SCMP_ARCH_X32": ("CONFIG_X86_X32_ABI", "CONFIG_X86_X32")}


def kernel_lacks(config: str | None) -> frozenset[str]:
    """The optional ABIs a kernel config (the text of /proc/config.gz) says are
    built out. Unknown (no config, or the option not mentioned): none."""
    if config is None:
        return frozenset()
    lines = set(config.splitlines())
    return frozenset(arch for arch, options in _OPTIONAL_ABIS.items()
                     if any(f"# {o} is not set" in lines for o in options)
                     and not any(f"{o}=y" in lines for o in options))


def _kernel_config(release: str) -> str | None:
    """The running kernel's build config, if it says it."""
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return f.read()
    except OSError:
        pass
    try:
        return Path(f"/boot/config-{release}").read_text()
    except OSError:
        return None


@functools.cache
def this_machine() -> Machine:
    """This machine, found once per process: each start's plan asks (the kernel
    config alone is ~0.4 ms to read and parse)."""
    u = os.uname()
    if u.machine not in _ARCHES:
        raise InvalidArgument(f"no seccomp architecture known for machine {u.machine!r}: "
                              "run with --security-opt seccomp=unconfined")
    return Machine(*_ARCHES[u.machine], kernel_version(u.release), kernel_lacks(_kernel_config(u.release)))


_cache: dict[str, tuple[tuple[int, int], dict]] = {}


def load(path: str) -> dict:
    """The profile at `path`, read and checked once per version of the file (daemon side)."""
    try:
        st = os.stat(path)
        key = (st.st_mtime_ns, st.st_size)
        hit = _cache.get(path)
        if hit and hit[0] == key:
            return hit[1]
        text = Path(path).read_text()
    except OSError as e:
        fix = ("run ./scripts/setup: it extracts Docker's default profile from Debian's "
               "golang-github-docker-docker-dev" if path == DEFAULT_PROFILE
               else "give an existing profile file on the daemon's host")
        raise InvalidArgument(f"seccomp profile {path!r} cannot be read ({e.strerror}): {fix}") from None
    try:
        profile = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"seccomp profile {path!r} is not JSON ({e})") from None
    check(profile, path)
    if len(_cache) >= 64:       # profiles named by --security-opt: a bound, not an LRU
        _cache.clear()
    _cache[path] = (key, profile)
    return profile


def check(profile, where: str) -> None:
    """The shape `convert` relies on; every message names the file and the field."""
    def bad(what: str) -> InvalidArgument:
        return InvalidArgument(f"seccomp profile {where!r}: {what}")
    if not isinstance(profile, dict):
        raise bad("must be a JSON object")
    if not isinstance(profile.get("defaultAction"), str):
        raise bad("'defaultAction' must be a string such as SCMP_ACT_ERRNO")
    if not isinstance(profile.get("syscalls", []), list):
        raise bad("'syscalls' must be a list")
    for i, rule in enumerate(profile.get("syscalls", [])):
        if not isinstance(rule, dict):
            raise bad(f"syscalls[{i}] must be an object")
        names = rule.get("names", [rule["name"]] if "name" in rule else None)
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise bad(f"syscalls[{i}] needs 'names', a list of syscall names")
        if not isinstance(rule.get("action"), str):
            raise bad(f"syscalls[{i}] needs 'action', a string such as SCMP_ACT_ALLOW")
        if not isinstance(rule.get("args") or [], list):
            raise bad(f"syscalls[{i}].args must be a list")
        for k in ("includes", "excludes"):
            if not isinstance(rule.get(k) or {}, dict):
                raise bad(f"syscalls[{i}].{k} must be an object")


def _errno_ret(rule: dict) -> int | None:
    # runc takes errnoRet only with the actions that return one
    if rule["action"] not in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
        return None
    if rule.get("errnoRet") is not None:
        return int(rule["errnoRet"])
    name = rule.get("errno")
    return getattr(errnos, name, None) if name else None


def _applies(rule: dict, caps: frozenset[str], m: Machine) -> bool:
    inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
    if inc.get("arches") and m.arch not in inc["arches"]:
        return False
    if inc.get("caps") and not all(c in caps for c in inc["caps"]):
        return False
    if inc.get("minKernel") and m.kernel < kernel_version(inc["minKernel"]):
        return False
    if m.arch in (exc.get("arches") or []):
        return False
    if any(c in caps for c in exc.get("caps") or []):
        return False
    return True


def _architectures(profile: dict, m: Machine) -> list[str]:
    if profile.get("architectures"):
        return [a for a in profile["architectures"] if a not in m.lacks]
    for entry in profile.get("archMap") or []:
        if entry.get("architecture") == m.scmp_arch:
            return [m.scmp_arch, *(a for a in entry.get("subArchitectures", []) if a not in m.lacks)]
    return []


def convert(profile: dict, caps: list[str] | frozenset[str], m: Machine) -> dict:
    """The OCI linux.seccomp for a container holding `caps` (names like CAP_SYS_ADMIN) on `m`."""
    held = frozenset(caps)
    out: dict = {"defaultAction": profile["defaultAction"]}
    default_errno = profile.get("defaultErrnoRet")
    if default_errno is None and profile.get("defaultErrno"):
        default_errno = getattr(errnos, profile["defaultErrno"], None)
    if default_errno is not None:
        out["defaultErrnoRet"] = int(default_errno)
    arches = _architectures(profile, m)
    if arches:
        out["architectures"] = arches
    rules = []
    for rule in profile.get("syscalls", []):
        if not _applies(rule, held, m):
            continue
        oci: dict = {"names": list(rule.get("names") or [rule["name"]]), "action": rule["action"]}
        ret = _errno_ret(rule)
        if ret is not None:
            oci["errnoRet"] = ret
        if rule.get("args"):
            oci["args"] = [{k: a[k] for k in ("index", "value", "valueTwo", "op") if k in a}
                           for a in rule["args"]]
        rules.append(oci)
    out["syscalls"] = rules
    return out
