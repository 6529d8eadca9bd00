"""The TUI killed with SIGKILL (no cleanup of its own runs) mid-reply: its engine processes end with it within
2 s, holding no memory as orphans (issue 13). The TUI runs headless in a process of its own, as a user's would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from helpers import SCRIPT_UNTIL, wait_until

ROOT = Path(__file__).resolve().parents[2]

TUI = SCRIPT_UNTIL + textwrap.dedent(
    """
    import asyncio, json, sys
    from glmtui.ui.app import GlmApp

    async def main(model):
        app = GlmApp(model=model, mode="fp32", default_params={"temperature": 0.0, "max_new_tokens": 5000},
                     sampler=None, monitor_interval=5.0)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.loaded is not None, "the load")
            chat = app.chat_pane
            chat.input.focus()
            await pilot.press("h", "i", "enter")
            await until(pilot, lambda: chat.active is not None and chat.active.text, "the reply's first tokens")
            print(json.dumps({"pids": list(app.engine.memory_report().pids)}), flush=True)
            await asyncio.sleep(600)  # writing until killed

    asyncio.run(main(sys.argv[1]))
    """
)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
def test_the_engine_processes_end_within_2_s_of_the_tui_being_killed(chatty_chatglm3, tmp_path):
    env = dict(os.environ, GLMTUI_HOME=str(tmp_path / "home"))
    tui = subprocess.Popen([sys.executable, "-c", TUI, str(chatty_chatglm3)], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        line = tui.stdout.readline()
        assert line, tui.stderr.read()[-3000:]
        pids = [p for p in json.loads(line)["pids"] if p != tui.pid]
        assert pids and not any(gone(p) for p in pids)  # the model's process, writing a reply
        tui.kill()  # SIGKILL
        tui.wait(10)
        killed = time.monotonic()
        wait_until(lambda: all(gone(p) for p in pids), 2.0, "the engine processes to end with the TUI",
                   interval=0.02)
        print(f"engine processes gone {time.monotonic() - killed:.3f} s after the TUI was killed")
    finally:
        if tui.poll() is None:
            tui.kill()
        for pid in pids:
            if not gone(pid):
                os.kill(pid, 9)
