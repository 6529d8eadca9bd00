"""The TUI over its default engine, an EngineProcess, on tiny real models: the model runs in a
process of its own, the TUI survives that process's death, hang and log.

Each app spawns engine processes (each imports torch: seconds), so the tests here are few and
each covers a whole story.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from glmtui.engine.process import EngineProcess
from glmtui.ui.app import GlmApp
from test_ui import FrozenSampler, host_only_snapshot, screen_text, send, type_text, wait_for

ROOT = Path(__file__).resolve().parents[1]
LOAD_TIMEOUT = 240.0  # a fresh process imports torch on a loaded 2-core machine


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ------------------------------------------------------------------ the TUI's own process keeps no torch

FRONT_END = textwrap.dedent(
    """
    import asyncio, json, os, sys
    import httpx
    from glmtui.ui.app import GlmApp

    async def main(model):
        app = GlmApp(model=model, mode="fp32", default_params={"temperature": 0.0, "max_new_tokens": 8},
                     api=True, api_port=0)
        async with app.run_test(size=(120, 40)) as pilot:
            async def until(condition, what, timeout=240.0):
                for _ in range(int(timeout / 0.1)):
                    if condition():
                        return
                    await pilot.pause(0.1)
                raise SystemExit(f"timed out waiting for {what}")

            await until(lambda: app.loaded is not None and app._api_server is not None, "the load and the API")
            chat = app.chat_pane
            chat.input.focus()
            for ch in "hi":
                await pilot.press(ch)
            await pilot.press("enter")
            await until(lambda: chat.turns and chat.turns[-1].role == "assistant" and chat.active is None, "a reply")
            reply = chat.turns[-1]
            async with httpx.AsyncClient(timeout=120) as client:  # --api serves the same engine process
                answer = await client.post(f"{app._api_server.url}/v1/chat/completions", json={
                    "model": "glmtui", "max_tokens": 4, "temperature": 0,
                    "messages": [{"role": "user", "content": "hello"}]})
            print("RESULT " + json.dumps({
                "engine": type(app.engine).__name__, "engine_pid": app.engine.pid, "pid": os.getpid(),
                "reply": [reply.status, reply.content], "api": answer.status_code,
                "api_text": answer.json()["choices"][0]["message"]["content"] if answer.status_code == 200 else "",
                "modules": [m for m in ("torch", "transformers") if m in sys.modules]}), flush=True)

    asyncio.run(main(sys.argv[1]))
    """
)


def test_the_tui_runs_its_model_in_an_engine_process_and_never_imports_torch(chatglm3_dir, tmp_path):
    env = dict(os.environ, GLMTUI_HOME=str(tmp_path / "home"))
    run = subprocess.run([sys.executable, "-c", FRONT_END, str(chatglm3_dir)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=400)
    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, run.stdout[-2000:] + run.stderr[-3000:]
    seen = json.loads(line.removeprefix("RESULT "))
    assert seen["engine"] == "EngineProcess"
    assert seen["engine_pid"] not in (None, seen["pid"])
    assert seen["reply"][0] == "complete" and seen["reply"][1].strip()
    assert seen["api"] == 200 and seen["api_text"].strip()
    assert seen["modules"] == []  # after a load, a reply and an API request
