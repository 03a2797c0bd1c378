"""No shell is ever involved in running anything: portlink's packages start every
process from an argument list. This scans their sources (the AST, so comments and
docstrings do not count) for the ways a shell gets in: shell=True, os.system,
os.popen, subprocess.getoutput, asyncio's *_shell, and `sh -c` argument lists.

There are no exceptions; add one to ALLOWED only with a comment saying why the
text it runs can never come from a user."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("portlink", "runtime", "netns", "dns", "catalog", "ambassador")
SHELLS = {"sh", "bash", "dash", "ash", "zsh", "ksh", "busybox"}
SHELL_CALLS = {
    ("os", "system"), ("os", "popen"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput"),
    ("asyncio", "create_subprocess_shell"), ("os", "spawnl"), ("os", "spawnlp"), ("os", "spawnv"),
    ("os", "spawnvp"), ("os", "spawnle"), ("os", "spawnlpe"), ("os", "spawnve"), ("os", "spawnvpe"),
}
SHELL_METHODS = {"subprocess_shell", "create_subprocess_shell"}   # loop.subprocess_shell(...)
ALLOWED: set[tuple[str, int]] = {   # (path relative to the repo, line)
    # Docker's --health-cmd / HEALTHCHECK CMD-SHELL: the user's text, but run by the shell
    # inside the user's own container (runc exec, confined as the container), never on the host.
    ("runtime/health.py", 26),
}


def sources() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]
    assert len(files) > 40, f"found only {len(files)} source files under {REPO}: wrong root?"
    return files


def _dotted(node: ast.AST) -> tuple[str, ...]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return tuple(reversed(parts))


def _is_shell_word(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and \
        Path(node.value).name in SHELLS


def _is_dash_c(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("-") \
        and "c" in node.value[1:] and node.value[1:].isalpha()


def findings(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for every way a shell could be started."""
    out = []
    from_imports = {}   # `from os import system` -> system: ("os", "system")
    docstrings = set()  # bare string statements run nothing
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                from_imports[a.asname or a.name] = (node.module, a.name)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            docstrings.add(id(node.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    out.append((node.lineno, "shell= other than False"))
            name = _dotted(node.func)
            if len(name) >= 2 and name[-2:] in SHELL_CALLS:
                out.append((node.lineno, ".".join(name)))
            elif len(name) == 1 and from_imports.get(name[0]) in SHELL_CALLS:
                out.append((node.lineno, ".".join(from_imports[name[0]])))
            elif name and name[-1] in SHELL_METHODS:
                out.append((node.lineno, ".".join(name)))
            seq = node.args
        elif isinstance(node, (ast.List, ast.Tuple)):
            seq = node.elts
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                and any(f"{s} -c" in node.value for s in SHELLS):
            out.append((node.lineno, f"string {node.value!r}"))
            continue
        else:
            continue
        for a, b in zip(seq, seq[1:]):
            if _is_shell_word(a) and _is_dash_c(b):
                out.append((a.lineno, f"argument list {a.value!r}, {b.value!r}"))
    return out


def test_no_package_source_starts_a_shell():
    found = []
    for path in sources():
        rel = str(path.relative_to(REPO))
        for line, what in findings(ast.parse(path.read_text(), rel)):
            if (rel, line) not in ALLOWED:
                found.append(f"{rel}:{line}: {what}")
    assert not found, "a shell would run user-influenced text:\n" + "\n".join(found)


@pytest.mark.parametrize("code", [
    "import subprocess\nsubprocess.run('ls', shell=True)",
    "import subprocess\nsubprocess.Popen(cmd, shell=flag)",
    "import os\nos.system('ls')",
    "import os\nos.popen('ls').read()",
    "from os import system\nsystem('ls')",
    "from subprocess import getoutput as g\ng('ls')",
    "import asyncio\nasyncio.create_subprocess_shell('ls')",
    "loop.subprocess_shell(proto, 'ls')",
    "subprocess.run(['sh', '-c', cmd])",
    "subprocess.run(['/bin/bash', '-ec', cmd])",
    "argv = ('busybox', '-c', x)",
    "subprocess.run(['nsenter', '--net=x', 'sh', '-c', cmd])",
    "subprocess.run('sh -c ' + cmd)",
])
def test_the_scan_catches_each_way_in(code):
    assert findings(ast.parse(code)), code


@pytest.mark.parametrize("code", [
    "subprocess.run(['ip', 'link'], shell=False)",
    "subprocess.run(['runc', '--root', r, 'run', cid])",
    "cmd = ['sh']",                                  # an image's default command, run by runc
    "p.add_argument('-c', '--count')",
    "def f():\n    '''Unlike `sh -c`, an argument list is data.'''",   # a docstring runs nothing
])
def test_the_scan_passes_argument_lists(code):
    assert findings(ast.parse(code)) == [], code
