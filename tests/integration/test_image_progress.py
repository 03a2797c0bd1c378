"""Image import shows progress on a terminal and stays quiet when piped; the
API streams it as JSON lines when asked (`POST /images?progress=1`)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile

import pytest

from portlink.runtime.images import find_busybox
from portlink.lab.sandbox import VENV_BIN

pytestmark = pytest.mark.root


def make_tar(path, mb: int = 24):
    with tarfile.open(path, "w") as tf:
        for name, data, mode in [("bin/busybox", find_busybox().read_bytes(), 0o755),
                                 ("data/blob", os.urandom(mb << 20), 0o644)]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tf.addfile(info, io.BytesIO(data))
    return path


def test_api_streams_progress_then_the_image(nft_host, tmp_path):
    h = nft_host
    tar = make_tar(tmp_path / "big.tar")
    resp = h.client.request("POST", "/images", {"path": str(tar), "name": "big"}, query={"progress": "1"},
                            stream=True)
    items = [json.loads(l) for l in resp]
    progress = [i["progress"] for i in items if "progress" in i]
    assert progress, "no progress line"
    assert all(total == os.path.getsize(tar) for _, total in progress)
    dones = [d for d, _ in progress]
    assert dones == sorted(dones)
    assert items[-1]["image"]["name"] == "big"
    assert "big" in h.cli("image", "ls").stdout

    resp = h.client.request("POST", "/images", {"path": str(tar), "name": "big"}, query={"progress": "1"},
                            stream=True)
    last = [json.loads(l) for l in resp][-1]
    assert last == {"error": "image 'big' already exists; remove it first"}


def test_cli_draws_progress_on_a_terminal_only(nft_host, tmp_path):
    h = nft_host
    tar = make_tar(tmp_path / "big.tar")
    env = {**os.environ, "PORTLINK_HOST": h.socket}
    piped = subprocess.run([str(VENV_BIN / "portlink"), "image", "import", str(tar), "quiet"],
                           capture_output=True, text=True, env=env, timeout=120)
    assert piped.returncode == 0 and piped.stdout == "quiet\n" and piped.stderr == ""
    # `script` gives the CLI a pseudo-terminal, as an interactive shell would
    tty = subprocess.run(["script", "-qec", f"{VENV_BIN / 'portlink'} image import {tar} loud", "/dev/null"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert tty.returncode == 0, tty.stdout
    assert "[image] importing loud: [" in tty.stdout and "100.0%" in tty.stdout
    assert tty.stdout.rstrip().endswith("loud")
    bad = subprocess.run(["script", "-qec", f"{VENV_BIN / 'portlink'} image import {tar} loud", "/dev/null"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 125 and "already exists" in bad.stdout
