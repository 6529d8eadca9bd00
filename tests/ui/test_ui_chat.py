"""The chat pane over its session controller, driven by Textual's Pilot on the real app, history file
and tiny models: what "no active reply" promises, and the history written off the UI thread."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from glmtui.ui import bridge
from glmtui.ui.app import GlmApp
from helpers import GREEDY, stored, wait_for


@pytest.mark.slow  # over ~2 s on an idle machine: the fast loop keeps the room's other tests
async def test_no_active_reply_means_the_reply_is_rendered_and_stored(chatty_chatglm3, quiet_sampler):
    """The moment ``chat.active`` clears, the reply's status, stats, footer and history row are final
    (tests and the status bar rely on it; it used to clear before the final render and the save)."""
    app = GlmApp(model=str(chatty_chatglm3), mode="fp32", default_params=GREEDY, sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, what="model load")
        chat = app.chat_pane
        seen: list[tuple] = []
        for round_ in range(2):
            assert await chat.send(f"hello {round_}")
            # the reply streaming, or (a short reply on an idle engine) already over between two checks
            await wait_for(pilot, lambda r=round_: (chat.active is not None and chat.active.text)
                           or (len(chat.turns) == 2 * (r + 1) and chat.active is None), what="first tokens")
            # checked on every turn of the event loop, not every 50 ms: the window was a few awaits wide
            while chat.active is not None:
                await pilot.pause(0)
            turn = chat.turns[-1]
            widget = turn.widget
            seen.append((turn.status, bool(turn.stats), widget.status, "tokens" in str(widget.query_one(".msg-meta")
                                                                                        .render())))
            _, rows = stored(chat.conversation_id, app)
            assert rows[-1].status == "complete" and rows[-1].stats["completion_tokens"] == GREEDY["max_new_tokens"]
            assert rows[-1].content == turn.content == widget.text
            assert not chat.meter.has_class("-shown")
        assert seen == [("complete", True, "complete", True)] * 2


@pytest.mark.slow  # an engine process (test_no_active_reply_... runs one in the fast loop)
async def test_the_prompt_cursor_stops_blinking_while_a_reply_streams(chatty_chatglm3, quiet_sampler):
    """Each blink repaints the prompt and the chat between it and the reply: no blinking while tokens arrive."""
    app = GlmApp(model=str(chatty_chatglm3), mode="fp32", default_params=GREEDY, sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, what="model load")
        chat = app.chat_pane
        assert chat.input.cursor_blink
        assert await chat.send("hello")
        await wait_for(pilot, lambda: chat.active is not None and chat.active.text, what="first tokens")
        assert not chat.input.cursor_blink
        await wait_for(pilot, lambda: chat.active is None, what="reply end")
        assert chat.input.cursor_blink


def test_warming_the_reply_imports_brings_in_what_the_first_reply_mounts():
    code = ("import sys, glmtui.ui.app; from glmtui.ui import bridge; bridge.warm_reply_imports(); "
            "print(' '.join(sorted(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert [m for m in ("textual.widgets._markdown", "markdown_it", "glmtui.ui.reply_markdown", "glmtui.ui.copying")
            if m not in loaded] == []


@pytest.mark.slow  # over ~2 s on an idle machine: the fast loop keeps the room's other tests
@pytest.mark.usefixtures("in_process_engine")
async def test_the_first_replys_imports_are_warmed_once_a_model_is_loaded(chatty_chatglm3, quiet_sampler, monkeypatch):
    """Not in the first frame (startup), not in the first reply's mount (time to first token): in between."""
    warmed: list[str] = []
    monkeypatch.setattr(bridge, "warm_reply_imports", lambda: warmed.append(threading.current_thread().name))
    app = GlmApp(model=str(chatty_chatglm3), mode="fp32", default_params=GREEDY, sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None and warmed, what="model load and the warm-up")
        assert warmed == ["glmtui-warm-imports"]  # on a thread of its own, once
        assert await app.chat_pane.send("hello")
        await wait_for(pilot, lambda: app.chat_pane.active is None, what="reply end")
        assert warmed == ["glmtui-warm-imports"]
