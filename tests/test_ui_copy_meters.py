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
from glmtui.ui.chat import AssistantMessage, MessageList, UserMessage
from glmtui.ui.copying import CodePickerModal

from test_ui import notifications, quiet_sampler, screen_text, wait_for  # noqa: F401 - quiet_sampler is a fixture

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


@pytest.fixture(autouse=True)
def in_process_engine(monkeypatch):
    monkeypatch.setattr(GlmApp, "LOCAL_ENGINE", "thread")


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
def test_in_a_real_terminal_y_and_c_reach_the_clipboard_and_f12_turns_mouse_reporting_off(tmp_path, isolated_home):
    """The installed glmtui in tmux: y and c go out as OSC 52 (tmux keeps them as its paste buffer with
    set-clipboard on), F12 makes the terminal stop and restart reporting the mouse (tmux's pane flags)."""
    from test_tmux import Tmux, _glmtui

    glmtui = _glmtui()
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
