"""Copying out of the chat (y, c, the block picker, F12's released mouse) and the live reply meter
with the per-message stats, driven by Textual's Pilot on the real app, history file and tiny models."""

from __future__ import annotations

import shutil
import time
import uuid

import pytest

from glmtui.config import default_paths
from glmtui.store import HistoryStore
from glmtui.ui.app import GlmApp
from glmtui.ui.copying import CodePickerModal
from glmtui.ui.messages import AssistantMessage, MessageList, UserMessage
from helpers import notifications, screen_text, wait_for

PROMPT = "Show me two ways to add numbers"
REPLY = """Two ways:

```python
def add(a, b):
    return a + b
print(add(1, 2))
```

and in the shell:

```bash
echo $((1 + 2))
```

Both print 3."""
ONE_BLOCK = "Like this:\n\n```\nx = 1\n```\n"


pytestmark = pytest.mark.usefixtures("in_process_engine")  # the model in a thread (conftest)


def _conversation(app, *exchanges: tuple[str, str]) -> int:
    store = app.store
    cid = store.create_conversation("copying", "tiny", "", {})
    for prompt, reply in exchanges:
        store.add_message(cid, "user", prompt)
        store.add_message(cid, "assistant", reply)
    return cid


async def _open(pilot, app, cid: int) -> MessageList:
    assert await app.chat_pane.show_conversation(cid)
    await pilot.pause()
    return app.chat_pane.messages_view


@pytest.mark.slow  # over ~2 s on an idle machine: the fast loop keeps the room's other tests
async def test_y_copies_the_selected_message_and_c_its_code_blocks(quiet_sampler):
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(120, 40)) as pilot:
        view = await _open(pilot, app, _conversation(app, (PROMPT, REPLY), ("one block", ONE_BLOCK)))
        chat = app.chat_pane
        assert chat.input.has_focus
        await pilot.press("ctrl+up")  # from the prompt into the conversation: its last message
        assert view.has_focus
        assert isinstance(view.selected, AssistantMessage) and view.selected.text == ONE_BLOCK
        assert view.selected.has_class("-selected")

        await pilot.press("y")
        assert app.clipboard == ONE_BLOCK
        assert f"copied reply, {len(ONE_BLOCK):,} characters" in notifications(app)
        await pilot.press("c")  # one block: copied at once, no picker
        assert not isinstance(app.screen, CodePickerModal)
        assert app.clipboard == "x = 1\n"
        assert "copied code block, 1 line" in notifications(app)

        await pilot.press("up", "up")  # the first reply (two blocks)
        assert view.selected.text == REPLY and view.selected.has_class("-selected")
        assert len([m for m in view.messages() if m.has_class("-selected")]) == 1
        await pilot.press("c")
        assert isinstance(app.screen, CodePickerModal)
        rows = screen_text(app)
        assert "python" in rows and "def add(a, b):" in rows and "bash" in rows and "echo $((1 + 2))" in rows
        await pilot.press("2")  # its number copies it
        await pilot.pause()
        assert not isinstance(app.screen, CodePickerModal)
        assert app.clipboard == "echo $((1 + 2))\n"
        assert "copied bash block, 1 line" in notifications(app)
        await pilot.press("c", "enter")  # Enter copies the highlighted (first) block
        await pilot.pause()
        assert app.clipboard == "def add(a, b):\n    return a + b\nprint(add(1, 2))\n"
        assert "copied python block, 3 lines" in notifications(app)
        clipboard = app.clipboard
        await pilot.press("c", "escape")  # Esc: nothing copied
        await pilot.pause()
        assert not isinstance(app.screen, CodePickerModal) and app.clipboard == clipboard

        await pilot.press("up")  # the prompt above it
        assert isinstance(view.selected, UserMessage)
        await pilot.press("y")
        assert app.clipboard == PROMPT
        assert f"copied prompt, {len(PROMPT)} characters" in notifications(app)
        await pilot.press("c")
        assert any("No code block in this prompt" in n for n in notifications(app))
        await pilot.press("home")
        assert view.selected is view.messages()[0]
        await pilot.press("end")
        assert view.selected is view.messages()[-1]

        await pilot.press("escape")  # back to the prompt; the selection is remembered
        assert chat.input.has_focus and not view.selected.has_class("-selected")
        await pilot.press("y")  # typed into the prompt, not a copy
        assert chat.input.text == "y" and app.clipboard == PROMPT
        await pilot.press("shift+tab")  # Shift+Tab reaches the list too
        assert view.has_focus and view.selected.has_class("-selected")


async def test_a_click_selects_the_message_under_it(quiet_sampler):
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(120, 40)) as pilot:
        view = await _open(pilot, app, _conversation(app, (PROMPT, REPLY)))
        first = view.messages()[0]
        await pilot.click(first, offset=(2, 1))
        await pilot.pause()
        assert view.has_focus and view.selected is first and first.has_class("-selected")
        await pilot.press("y")
        assert app.clipboard == PROMPT


async def test_f12_releases_the_mouse_and_says_so(quiet_sampler):
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(120, 40)) as pilot:
        status = app.query_one("#status")
        assert not app.mouse_released
        await pilot.press("f12")
        await pilot.pause()
        assert app.mouse_released
        assert "mouse released" in str(status.render())
        assert any("Mouse released" in n for n in notifications(app))
        await pilot.press("f12")
        await pilot.pause()
        assert not app.mouse_released and "mouse released" not in str(status.render())
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert "Release the mouse" in titles


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.slow  # glmtui in tmux
def test_in_a_real_terminal_y_and_c_reach_the_clipboard_and_f12_turns_mouse_reporting_off(tmp_path, isolated_home):
    """The installed glmtui in tmux: y and c go out as OSC 52 (tmux keeps them as its paste buffer with
    set-clipboard on), F12 makes the terminal stop and restart reporting the mouse (tmux's pane flags)."""
    from terminals import Tmux, glmtui_command

    glmtui = glmtui_command()
    home = isolated_home  # GLMTUI_HOME of this test: the app in tmux gets the same
    store = HistoryStore.open(default_paths().history_db)
    cid = store.create_conversation("copy me", "tiny", "", {})
    store.add_message(cid, "user", "hi")
    store.add_message(cid, "assistant", ONE_BLOCK)
    store.close()
    tmux = Tmux(tmp_path / "tmux.sock", f"glmtui-{uuid.uuid4().hex[:8]}")
    tmux.run("-f", "/dev/null", "new-session", "-d", "-s", tmux.name, "-x", "120", "-y", "30",
             f"env -u COLUMNS -u LINES GLMTUI_HOME={home} TERM=xterm-256color {glmtui}")
    try:
        tmux.run("set", "-g", "set-clipboard", "on")
        tmux.wait_for(lambda s: "New chat" in s and "^p palette" in s, 60, "the app")

        def mouse_flags() -> str:
            return tmux.run("display", "-p", "-t", tmux.name, "#{mouse_any_flag}#{mouse_sgr_flag}").strip()

        assert mouse_flags() == "11"  # Textual asks for every mouse event, SGR-encoded
        for key in ("C-f", "Down", "Enter"):  # open the conversation from the history list
            tmux.run("send-keys", "-t", tmux.name, key)
            time.sleep(0.4)
        tmux.wait_for(lambda s: "Like this:" in s, 20, "the conversation")
        tmux.run("send-keys", "-t", tmux.name, "C-Up")
        time.sleep(0.4)
        tmux.run("send-keys", "-t", tmux.name, "y")
        tmux.wait_for(lambda s: "copied reply" in s, 20, "the copy toast")
        assert tmux.run("show-buffer") == ONE_BLOCK
        tmux.run("send-keys", "-t", tmux.name, "c")
        tmux.wait_for(lambda s: "copied code block, 1 line" in s, 20, "the code copy toast")
        assert tmux.run("show-buffer") == "x = 1\n"

        tmux.run("send-keys", "-t", tmux.name, "F12")
        tmux.wait_for(lambda s: "mouse released" in s, 20, "the released mouse in the status line")
        assert mouse_flags() == "00"
        tmux.run("send-keys", "-t", tmux.name, "F12")
        tmux.wait_for(lambda s: "Mouse captured again" in s, 20, "the mouse back")
        assert mouse_flags() == "11"
    finally:
        tmux.run("kill-server", check=False)


# ---------------------------------------------------------------- the live meter and per-message stats


def test_meter_state_prefill_rate_floor_and_context_bar():
    from glmtui.ui.meters import MIN_RATE_SPAN, ReplyMeterState

    state = ReplyMeterState(sent_at=100.0, context_length=8192, chars_per_token=2.0)
    assert "waiting for the model 0.5 s" in state.describe(now=100.5).plain
    state.started(1234, 1000, now=101.0)
    line = state.describe(now=103.5).plain
    assert "prefill 2.5 s · 1,234 prompt tokens (1,000 reused)" in line
    assert "1,234 / 8,192" in line  # the prompt already fills part of the context

    state.text("abcd", now=104.0)  # the first text: 2 tokens, no rate from one arrival
    state.text("efgh", now=104.0 + MIN_RATE_SPAN / 2)
    assert state.tokens == 4 and state.rate is None
    line = state.describe(now=104.1).plain
    assert "≈4 tokens · … tok/s" in line and "1,238 / 8,192" in line
    state.text("ijklmnop" * 10, now=105.0)  # 84 characters after the first batch in 1 s: 42 tok/s
    assert state.rate == pytest.approx(42.0)
    assert "≈42.0 tok/s" in state.describe(now=105.0).plain


def test_context_bar_fills_by_eighths():
    from glmtui.ui.meters import context_bar

    assert context_bar(0, 100, cells=4).plain == "▕    ▏"
    assert context_bar(50, 100, cells=4).plain == "▕██  ▏"
    assert context_bar(100, 100, cells=4).plain == "▕████▏"
    assert context_bar(1, 32, cells=4).plain == "▕▏   ▏"  # 1/8 of a cell
    assert context_bar(500, 100, cells=4).plain == "▕████▏"  # never past the end


@pytest.mark.slow
async def test_the_meter_follows_a_reply_and_agrees_with_its_stored_stats(chatty_chatglm3, quiet_sampler):
    """Mid-reply the meter line shows tokens, tok/s and the context bar; it repaints a few times a second
    (never per token, never with a layout); the reply's stored stats (model, mode, device, TTFT, tok/s,
    tokens, reused tokens) match the engine's Finished and agree with what the meter showed; the JSON
    Lines history export carries them."""
    import io
    import json

    from textual.widget import Widget

    from glmtui.engine.events import Finished
    from glmtui.ui.meters import ReplyMeter

    app = GlmApp(model=str(chatty_chatglm3), mode="fp32",
                 default_params={"temperature": 0.0, "max_new_tokens": 40}, sampler=quiet_sampler)
    finished: list[Finished] = []
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, what="model load")
        app.engine.add_listener(lambda e: finished.append(e) if isinstance(e, Finished) else None)
        chat = app.chat_pane
        meter = chat.meter
        assert not meter.display  # nothing streams: no meter line
        assert await chat.send("first, to learn this model's characters per token")
        await wait_for(pilot, lambda: chat.active is None and chat.turns[-1].stats, what="the first reply")
        assert not meter.display

        chat.params["max_new_tokens"] = 600
        counts = {"renders": 0, "layouts": 0}
        render, refresh = ReplyMeter.render, Widget.refresh

        def counting_render(self):
            counts["renders"] += 1
            return render(self)

        def counting_refresh(self, *args, **kwargs):
            if isinstance(self, ReplyMeter) and kwargs.get("layout"):
                counts["layouts"] += 1
            return refresh(self, *args, **kwargs)

        ReplyMeter.render, Widget.refresh = counting_render, counting_refresh
        try:
            assert await chat.send("now a long one")
            start = time.monotonic()
            await wait_for(pilot, lambda: chat.active is not None and chat.active.meter.rate is not None
                           and chat.active.meter.tokens > 30, what="the meter's rate")
            await pilot.pause(0.3)
            state = chat.active.meter
            assert meter.display
            line = screen_text(app)
            assert "tokens ·" in line and "tok/s" in line and "context ▕" in line
            assert f"/ {app.loaded.context_length:,}" in line
            # the turn's stats are set once the final render is done (after chat.active is cleared)
            await wait_for(pilot, lambda: chat.active is None and chat.turns[-1].stats, what="the long reply",
                           timeout=120)
            seconds = time.monotonic() - start
        finally:
            ReplyMeter.render, Widget.refresh = render, refresh
        assert not meter.display
        assert counts["renders"] <= seconds * 4 + 4, (counts, seconds)  # a few times a second, not per token
        assert counts["layouts"] <= 2, counts  # shown and hidden once; its figures repaint without a layout

        final = finished[-1]
        stats = chat.turns[-1].stats
        assert stats["completion_tokens"] == final.completion_tokens == 600
        assert stats["prompt_tokens"] == final.prompt_tokens == state.prompt_tokens
        assert stats["cached_tokens"] == final.cached_tokens == state.cached_tokens
        assert stats["ttft"] == final.time_to_first_token and stats["tokens_per_s"] == final.tokens_per_second
        assert (stats["model"], stats["mode"], stats["device"]) == (app.loaded.model_name, "fp32", app.loaded.device)
        # the meter's estimate, counted with the first reply's characters per token, and its rate
        assert abs(state.tokens - final.completion_tokens) <= 0.35 * final.completion_tokens, state.tokens
        assert 0.4 < state.rate / final.tokens_per_second < 2.5, (state.rate, final.tokens_per_second)
        assert state.context_length == app.loaded.context_length
        footer = str(chat.turns[-1].widget.query_one(".msg-meta").render())
        assert f"{app.loaded.model_name} fp32 {app.loaded.device}" in footer
        if final.cached_tokens:
            assert f"({final.cached_tokens} reused)" in footer

        messages = app.store.messages(chat.conversation_id)
        assert messages[-1].stats == {k: v for k, v in stats.items() if v is not None}
        out = io.StringIO()
        app.store.export_history(out)
        exported = [json.loads(line) for line in out.getvalue().splitlines()]
        replies = [m for conv in exported for m in conv["messages"] if m["role"] == "assistant"]
        assert replies[-1]["stats"]["model"] == app.loaded.model_name
        assert replies[-1]["stats"]["mode"] == "fp32" and replies[-1]["stats"]["device"] == app.loaded.device
        assert replies[-1]["stats"]["completion_tokens"] == 600 and "cached_tokens" in replies[-1]["stats"]
        assert json.loads(app.store.export_json(chat.conversation_id))["messages"][-1]["stats"]["model"]
