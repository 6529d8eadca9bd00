"""Tool and Code mode over the default engine, an EngineProcess, on the tiny chatty ChatGLM3: the engine
process dying or hanging under a model turn ends the turn as it ends a chat reply (what was written is
kept and saved, marked interrupted; the notice names the cause and the reload key) and F7 releases a
turn waiting on a hung engine."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from glmtui.engine.process import EngineProcess
from glmtui.ui.app import GlmApp
from helpers import notifications, screen_text, type_text, wait_for

LOAD_TIMEOUT = 240.0  # a fresh process imports torch on a loaded 2-core machine
LONG = {"temperature": 0.0, "max_new_tokens": 1500}  # the chatty model writes until the limit


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def start_turn(pilot, app, text: str):
    """Send ``text`` in the chat's mode; the model turn's widget once it shows some text."""
    chat = app.chat_pane
    before = len(chat.turns)
    chat.input.focus()
    await type_text(pilot, text)
    await pilot.press("enter")
    await wait_for(pilot, lambda: app.agent.busy and len(chat.turns) == before + 2 and chat.turns[-1].widget.text,
                   timeout=120, what="the model turn's first text")
    return chat.turns[-1]


def last_saved(app):
    return app.store.messages(app.chat_pane.conversation_id)[-1]


async def reload(pilot, app) -> None:
    await pilot.press("f6")  # the key the notice names
    await wait_for(pilot, lambda: app.loaded is not None, timeout=LOAD_TIMEOUT, what="the reload")


@pytest.mark.slow
async def test_engine_death_or_hang_under_a_tool_or_code_turn_ends_it_saved_as_interrupted(chatty_chatglm3, tmp_path):
    engine = EngineProcess(keep_spare=False, ping_interval=0.3, hang_after=2.0, log_dir=tmp_path / "logs")
    app = GlmApp(model=str(chatty_chatglm3), mode="fp32", default_params=LONG, sampler=None, monitor_interval=5.0,
                 engine=engine)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, timeout=LOAD_TIMEOUT, what="model load")
        await pilot.press("f10")
        assert app.agent.mode == "tool"

        # kill -9 mid-turn: the turn ends, what was written is kept and saved as interrupted
        turn = await start_turn(pilot, app, "tell me a story")
        pid = engine.pid
        assert pid is not None and pid != os.getpid()
        os.kill(pid, signal.SIGKILL)
        await wait_for(pilot, lambda: not app.agent.busy and app.engine_notice.kind == "exited", timeout=60,
                       what="the turn to end")
        await pilot.pause()
        assert gone(pid)
        widget = turn.widget
        assert widget.status == "interrupted" and widget.text
        assert "killed by SIGKILL" in widget.stats["error"]
        saved = last_saved(app)
        assert (saved.role, saved.status, saved.content) == ("assistant", "interrupted", widget.text)
        assert "killed by SIGKILL" in saved.stats["error"]
        assert [m.role for m in app.store.messages(app.chat_pane.conversation_id)] == ["user", "assistant"]
        assert "interrupted (the engine process ended)" in screen_text(app)
        assert f"F6 loads {chatty_chatglm3.name} (fp32) again" in str(app.engine_notice.message)
        assert not any("Generation failed" in str(n) for n in notifications(app))  # the notice says it once

        await reload(pilot, app)
        await pilot.press("f10")
        assert app.agent.mode == "code"

        # a hung engine (stopped: no token, no answer to pings) is reported; F7 kills it and ends the turn
        turn = await start_turn(pilot, app, "write some code")
        pid = engine.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            await wait_for(pilot, lambda: app.engine_notice.kind == "unresponsive", timeout=60, what="the hang")
            assert app.agent.busy and "F7 kills it" in screen_text(app)
            await pilot.press("f7")
            await wait_for(pilot, lambda: not app.agent.busy and app.engine_notice.kind == "exited", timeout=30,
                           what="F7 to end the turn")
        finally:
            if not gone(pid):
                os.kill(pid, signal.SIGCONT)
        await pilot.pause()
        assert gone(pid)
        saved = last_saved(app)
        assert (saved.status, saved.content) == ("interrupted", turn.widget.text) and saved.content
        assert "stopped from glmtui (F7)" in saved.stats["error"]

        statuses = [m.status for m in app.store.messages(app.chat_pane.conversation_id) if m.role == "assistant"]
        assert statuses == ["interrupted", "interrupted"]
        assert app.model.can_reload  # F6 loads it again (as after the kill -9 above)
