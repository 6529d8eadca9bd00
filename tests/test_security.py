"""Security defaults: loopback only, private files, keys (see also test_api_fuzz, test_loading)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from glmtui.cli import build_parser
from glmtui.config import default_paths
from glmtui.ui.app import GlmApp


def test_network_modes_default_to_loopback():
    parser = build_parser()
    assert parser.parse_args(["serve"]).host == "127.0.0.1"
    assert parser.parse_args(["web"]).host == "127.0.0.1"


def test_serve_listens_on_loopback_only(chatglm3_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "glmtui.cli", "serve", "--model", str(chatglm3_dir),
                             "--mode", "fp32", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        listening = [c.laddr for c in psutil.Process(proc.pid).net_connections("inet")
                     if c.status == psutil.CONN_LISTEN]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
    finally:
        proc.terminate()
        proc.wait(15)


async def test_history_and_config_files_are_private(isolated_home):
    from test_ui import FrozenSampler, host_only_snapshot

    app = GlmApp(mode="fp32", sampler=FrozenSampler(host_only_snapshot()))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        app.theme = "glm-paper"  # writes config.toml
        await pilot.pause()
    paths = default_paths()
    assert paths.history_db.exists() and paths.config_file.exists()
    for folder, dirs, files in os.walk(isolated_home):
        for name in dirs + files:
            path = os.path.join(folder, name)
            mode = stat.S_IMODE(os.stat(path).st_mode)
            assert mode & 0o077 == 0, f"{path} is {oct(mode)}: readable by others"
