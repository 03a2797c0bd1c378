#!/usr/bin/env python3
"""bench/docker_py_suite: docker-py's own integration tests against portlink's
Docker API (portlinkd --docker-socket), a peer's test suite as a check.

docker-py's source is not in this repository: point --source (or DOCKER_PY_SRC)
at a checkout of docker/docker-py, or at a bare git dir of it; its `tests/` and
`pytest.ini` are taken at the tag of the installed `docker` package (7.2.0 in
the venv), so the tests match the client they drive.

What runs: the modules for what portlink claims (containers, networks,
volumes, images load/inspect, exec, logs, the client) — not swarm, services,
secrets, configs, plugins, build, contexts. Every case of those modules runs;
one that needs a feature portlink does not have fails on its Docker-style 501
("... is not supported by portlink") and is counted as `unsupported`, apart
from the other failures.

How: a sandbox host (plt-dpysuite-*, its own network namespace and portlinkd
with a Docker socket); docker-py's TEST_IMG (alpine:3.10) and "alpine" are portlink's busybox
image tagged with that name, so nothing is pulled (there is no registry).
pytest runs inside the host's network namespace (nsenter --net), so published
ports on 127.0.0.1 are the sandbox's, never the root namespace's, with
DOCKER_HOST=unix://<socket>, DOCKER_TEST_API_VERSION=1.41, a per-test timeout
(--timeout) and an overall bound (--overall: the run is killed past it). Then
the host is torn down (also on error or Ctrl-C).

Prints one JSON line: passed/failed/skipped/errors per module and in total,
the failures split into unsupported (501) and other. Writes, in --out, the
junit XML and failures.txt: one line per failed case, "<id>\\t<class>\\t<first
error line>".

Run as root:  .venv/bin/python -P bench/docker_py_suite.py --source PATH [-k EXPR] [--modules a,b]
(or `make docker-py-suite DOCKER_PY_SRC=PATH`)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from portlink.lab.sandbox import SimHost  # noqa: E402

MODULES = [
    "api_client_test", "client_test", "errors_test", "regression_test",
    "api_container_test", "api_exec_test", "api_healthcheck_test",
    "api_network_test", "api_volume_test", "api_image_test",
    "models_containers_test", "models_networks_test", "models_volumes_test",
    "models_images_test", "models_resources_test",
]
TEST_IMAGES = ("alpine:3.10", "alpine:latest")   # TEST_IMG of docker-py's tests/integration/base.py; "alpine"
API_VERSION = "1.41"
UNSUPPORTED = re.compile(r"501 Server Error|Not Implemented|not supported by portlink")


def installed_docker_version() -> str:
    import docker
    return docker.__version__


def extract_tests(source: Path, version: str, dest: Path) -> None:
    """docker-py's tests/ and pytest.ini at tag `version` into dest."""
    if (source / "HEAD").is_file() and (source / "objects").is_dir():      # a bare git dir
        git = ["git", f"--git-dir={source}"]
    elif (source / ".git").exists():
        git = ["git", "-C", str(source)]
    else:
        raise SystemExit(f"docker_py_suite: {source} is not a git checkout of docker/docker-py "
                         f"(clone it, tag {version}, and pass --source)")
    tags = subprocess.run([*git, "tag", "--list", version], capture_output=True, text=True, check=True).stdout
    if version not in tags.split():
        raise SystemExit(f"docker_py_suite: {source} has no tag {version} (the installed docker package's version)")
    archive = subprocess.run([*git, "archive", version, "tests", "pytest.ini"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)


def module_of(classname: str) -> str:
    # junit classname: tests.integration.api_container_test.TestX (or ...test for functions)
    parts = classname.split(".")
    for p in parts:
        if p.endswith("_test"):
            return p
    return parts[-1]


def first_line(text: str) -> str:
    for line in (text or "").splitlines():
        line = line.strip()
        if line.startswith("E "):
            return line[2:].strip()[:300]
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return (lines[-1] if lines else "")[:300]


def parse_junit(path: Path) -> tuple[dict, list[dict]]:
    per_module: dict[str, dict[str, int]] = {}
    failures = []
    for case in ET.parse(path).getroot().iter("testcase"):
        mod = module_of(case.get("classname", ""))
        counts = per_module.setdefault(mod, {"passed": 0, "failed": 0, "skipped": 0, "errors": 0})
        failure, error, skipped = case.find("failure"), case.find("error"), case.find("skipped")
        node = failure if failure is not None else error
        if node is not None:
            kind = "failed" if failure is not None else "errors"
            counts[kind] += 1
            detail = (node.get("message") or "") + "\n" + (node.text or "")
            failures.append({
                "id": f"{mod}::{case.get('classname', '').split('.')[-1]}::{case.get('name')}",
                "kind": kind,
                "class": "unsupported" if UNSUPPORTED.search(detail) else "other",
                "first": first_line(node.text or "") or (node.get("message") or "")[:300],
            })
        elif skipped is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return per_module, failures


def run_pytest(h: SimHost, src: Path, sock: str, modules: list[str], args: argparse.Namespace, junit: Path) -> int:
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_TEST_API_VERSION": API_VERSION,
           "PYTHONDONTWRITEBYTECODE": "1"}
    for k in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT", "DOCKER_CONFIG"):
        env.pop(k, None)
    env["DOCKER_CONFIG"] = str(src / "docker-config")      # no user's credentials or contexts
    argv = h.ns.argv(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(src / "pytest.ini"),
                     "--rootdir", str(src), f"--timeout={args.timeout}", f"--junitxml={junit}",
                     "-o", "junit_logging=no", *[f"tests/integration/{m}.py" for m in modules])
    if args.k:
        argv += ["-k", args.k]
    out = open(Path(args.out) / "pytest.log", "w")
    p = subprocess.Popen(argv, cwd=src, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return p.wait(timeout=args.overall)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)     # our own child's session, by its pid
        p.wait()
        print(f"docker_py_suite: pytest still running after {args.overall}s: killed", file=sys.stderr)
        return -9
    finally:
        out.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default=os.environ.get("DOCKER_PY_SRC"),
                    help="docker/docker-py git checkout or bare git dir (env DOCKER_PY_SRC)")
    ap.add_argument("--modules", default=",".join(MODULES), help="comma-separated tests/integration module names")
    ap.add_argument("-k", default="", help="pytest -k expression")
    ap.add_argument("--timeout", type=int, default=60, help="per-test timeout, seconds")
    ap.add_argument("--overall", type=int, default=1800, help="bound on the whole pytest run, seconds")
    ap.add_argument("--out", default="", help="where junit.xml, pytest.log and failures.txt go (default: a new temp dir)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("docker_py_suite: run as root (it makes a sandbox namespace and runs portlinkd)")
    if not args.source:
        raise SystemExit("docker_py_suite: --source PATH (or DOCKER_PY_SRC): a git checkout of docker/docker-py")
    version = installed_docker_version()
    args.out = args.out or tempfile.mkdtemp(prefix="docker-py-suite-")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    modules = [m.strip().removesuffix(".py") for m in args.modules.split(",") if m.strip()]
    src = Path(tempfile.mkdtemp(prefix="docker-py-tests-"))
    h = None
    teardown_errors: list[str] = []
    try:
        extract_tests(Path(args.source), version, src)
        workdir = Path(tempfile.mkdtemp(prefix="docker-py-sock-"))
        sock = str(workdir / "docker.sock")
        h = SimHost.start("dpysuite", extra_args=["--docker-socket", sock])
        for name in TEST_IMAGES:     # docker-py's base image, and "alpine" its models tests run
            h.cli("image", "tag", "busybox", name, check=True)
        junit = Path(args.out) / "junit.xml"
        rc = run_pytest(h, src, sock, modules, args, junit)
    finally:
        if h is not None:
            teardown_errors = h.destroy()
        shutil.rmtree(src, ignore_errors=True)
    if not junit.exists():
        raise SystemExit(f"docker_py_suite: pytest wrote no report (exit {rc}); see {args.out}/pytest.log")
    per_module, failures = parse_junit(junit)
    total = {k: sum(c[k] for c in per_module.values()) for k in ("passed", "failed", "skipped", "errors")}
    with open(Path(args.out) / "failures.txt", "w") as f:
        for fl in failures:
            f.write(f"{fl['id']}\t{fl['class']}\t{fl['first']}\n")
    print(json.dumps({
        "docker_py": version, "api": API_VERSION, "modules": per_module, "total": total,
        "unsupported_501": sum(1 for fl in failures if fl["class"] == "unsupported"),
        "other_failures": sum(1 for fl in failures if fl["class"] == "other"),
        "pytest_exit": rc, "teardown_errors": teardown_errors, "out": args.out,
    }))
    return 1 if teardown_errors or rc < 0 else 0


if __name__ == "__main__":
    sys.exit(main())
