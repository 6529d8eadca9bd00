"""Completion mode in the TUI on the tiny ChatGLM3 (in-process worker, real history file): the prompt
is `[gMASK] sop` + the text, continued in place; stop, continue, regenerate, edit; saved as a
completion, listed with a mark and opened again from the history; a base model opens in it."""

from __future__ import annotations

import json
import shutil

import pytest

from glmtui.catalog import COMPLETE_MARKER
from glmtui.engine.prompts import ChatGLM3Format
from glmtui.ui.app import GlmApp
from glmtui.ui.chat_text import visible
from glmtui.ui.completion import CompletionScreen
from glmtui.ui.history import COMPLETION_MARK
from glmtui.ui.modals import SettingsModal
from glmtui.ui.store_calls import store_calls
from helpers import notifications, type_text, wait_for

GREEDY = {"temperature": 0.0, "max_new_tokens": 12}


@pytest.fixture(autouse=True)
def in_process_engine(monkeypatch):
    monkeypatch.setattr(GlmApp, "LOCAL_ENGINE", "thread")


@pytest.fixture(scope="module")
def fmt(chatty_chatglm3):
    return ChatGLM3Format(chatty_chatglm3 / "tokenizer.model")


def messages(app, screen):
    return [(m.role, m.content, m.status) for m in app.store.messages(screen.conversation_id)]


async def generate(pilot, screen, key="ctrl+g"):
    done = screen.finished
    await pilot.press(key)
    await wait_for(pilot, lambda: screen.finished > done, what=f"generation end ({notifications(screen.app)})")


@pytest.mark.slow
async def test_completion_view_continues_stops_regenerates_and_is_saved(chatty_chatglm3, fmt, tmp_path):
    app = GlmApp(model=str(chatty_chatglm3), mode="fp32", default_params=GREEDY, sampler=None,
                 monitor_interval=5.0)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, what="model load")
        assert not isinstance(app.screen, CompletionScreen)  # a chat model opens in the chat
        assert "Completion mode" in [c.title for c in app.get_system_commands(app.screen)]
        await app.run_action("completion_mode")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, CompletionScreen)
        await type_text(pilot, "Once upon")
        await generate(pilot, screen)

        # the prompt was [gMASK] sop + the text: no roles (the chat prompt of the same text is longer)
        ids = fmt.encode_completion("Once upon")
        assert ids[:2] == [fmt.special_ids["[gMASK]"], fmt.special_ids["sop"]]
        assert screen.last_stats["prompt_tokens"] == len(ids)
        from glmtui.engine.events import ChatMessage
        assert len(fmt.encode_conversation([ChatMessage("user", "Once upon")])) != len(ids)
        conv = app.store.get_conversation(screen.conversation_id)
        assert conv.kind == "completion" and conv.title == "Once upon"
        [(_, prompt, _), (_, first, status)] = messages(app, screen)
        assert (prompt, status) == ("Once upon", "complete") and first
        assert screen.document.text == visible("Once upon" + first)  # continued in place

        # continue: the whole text is the next prompt, the new continuation is appended
        await generate(pilot, screen)
        saved = messages(app, screen)
        assert [m[0] for m in saved] == ["user", "assistant", "assistant"]
        second = saved[2][1]
        assert screen.last_stats["prompt_tokens"] == len(fmt.encode_completion("Once upon" + first))
        assert screen.document.text == visible("Once upon" + first + second)

        # regenerate: the same prompt again (greedy: the same text), in place of the last continuation
        old_id = app.store.messages(screen.conversation_id)[-1].id
        await generate(pilot, screen, "ctrl+r")
        after = app.store.messages(screen.conversation_id)
        assert [m.content for m in after] == ["Once upon", first, second] and after[-1].id != old_id
        assert screen.last_stats["prompt_tokens"] == len(fmt.encode_completion("Once upon" + first))

        # edit the prompt: the last continuation is taken out, typed text is saved as the user's
        await pilot.press("ctrl+e")
        assert screen.document.text == visible("Once upon" + first)
        await type_text(pilot, "ZZ")
        await generate(pilot, screen)
        assert [(m[0], m[1]) for m in messages(app, screen)][:3] == [("user", "Once upon"), ("assistant", first),
                                                                     ("user", "ZZ")]
        assert len(messages(app, screen)) == 4

        # stop: a long continuation, Esc while it is written; what was written is kept, marked stopped
        screen.params["max_new_tokens"] = 5000
        ended = screen.finished
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: screen.active is not None and len(screen.active.segment.text) > 5,
                       what="some text")
        await pilot.press("escape")
        await wait_for(pilot, lambda: screen.finished > ended, what="stop")
        last = messages(app, screen)[-1]
        assert last[2] == "stopped" and last[1] and screen.document.text.endswith(visible(last[1]))
        assert screen.last_stats["finish_reason"] == "cancelled"

        # Esc back to the chat; the history lists it with its mark, and opens it in the completion view
        text = screen.document.text
        cid = screen.conversation_id
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, CompletionScreen)
        history = app.history_pane
        history.reload()
        await store_calls(app).settled()  # the list is read off the UI thread
        rows = [str(history.option_list.get_option_at_index(i).prompt)
                for i in range(history.option_list.option_count)]
        assert any(COMPLETION_MARK + "Once upon" in row for row in rows)
        history.post_message(history.Open(cid))
        await wait_for(pilot, lambda: isinstance(app.screen, CompletionScreen), what="reopened")
        await pilot.pause()
        assert app.screen.document.text == text and app.screen.conversation_id == cid
        assert not [n for n in notifications(app) if "rror" in n]


@pytest.mark.slow
async def test_a_base_model_opens_in_completion_mode(chatglm3_dir, tmp_path):
    # the tiny ChatGLM3 downloaded as ChatGLM3-6B-Base (the completion marker names its repo)
    base = tmp_path / "chatglm3-6b-base"
    shutil.copytree(chatglm3_dir, base)
    (base / COMPLETE_MARKER).write_text(json.dumps({"repo": "THUDM/chatglm3-6b-base"}))
    app = GlmApp(model=str(base), mode="fp32", default_params=GREEDY, sampler=None, monitor_interval=5.0)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, CompletionScreen), what="completion view")
        await wait_for(pilot, lambda: app.focused is app.screen.document, what="the text has focus")
        await pilot.pause()
        await type_text(pilot, "Hello")
        assert app.screen.document.text == "Hello"
        await generate(pilot, app.screen)
        assert app.store.get_conversation(app.screen.conversation_id).kind == "completion"
        assert app.screen.last_stats["prompt_tokens"] == 2 + len(
            ChatGLM3Format(chatglm3_dir / "tokenizer.model").encode_text("Hello"))


async def test_opening_a_completion_from_the_completion_view_shows_it(quiet_sampler):
    """action_completion_mode(id) while the completion view is up opens that conversation there
    (its open() is a coroutine: it used to be called and never awaited)."""
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(120, 36)) as pilot:
        first = app.store.create_conversation("first story", kind="completion")
        second = app.store.create_conversation("second story", kind="completion")
        app.action_completion_mode(first)
        await wait_for(pilot, lambda: isinstance(app.screen, CompletionScreen), what="the completion view")
        screen = app.screen
        await wait_for(pilot, lambda: screen.conversation_id == first, what="the first completion")
        app.action_completion_mode(second)
        await wait_for(pilot, lambda: screen.conversation_id == second, timeout=10, what="the second completion")
        assert app.screen is screen


@pytest.mark.slow
async def test_completion_parameters_are_the_chats_and_a_completion_is_found_by_search(chatty_chatglm3):
    """Ctrl+O sets the parameters as in chat (kept with the completion, used by the model); the history
    search finds a completion's text and opens it in the completion view."""
    app = GlmApp(model=str(chatty_chatglm3), mode="fp32", default_params=GREEDY, sampler=None,
                 monitor_interval=5.0)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, what="model load")
        await app.run_action("completion_mode")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, CompletionScreen)
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsModal), what="the settings dialog")
        assert not app.screen.query("#system-prompt")  # raw text has no system turn: no field that does nothing
        app.screen.query_one("#param-max_new_tokens").value = "3"
        app.screen.query_one("#param-top_p").value = "0.5"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen, what="the dialog to close")
        assert "max 3" in str(screen.query_one("#completion-title").render())
        await type_text(pilot, "The zebra crossed")
        await generate(pilot, screen)
        assert screen.last_stats["completion_tokens"] == 3  # the tiny chatty model never stops by itself
        cid = screen.conversation_id
        params = app.store.get_conversation(cid).params
        assert params["max_new_tokens"] == 3 and params["top_p"] == 0.5

        # the typed text is indexed with every other conversation's messages
        hits = app.store.search("zebra")
        assert any(h.conversation_id == cid and h.message_id is not None for h in hits)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, CompletionScreen), what="back to the chat")
        await pilot.press("ctrl+f")
        await type_text(pilot, "zebra")
        await pilot.press("enter")
        history = app.history_pane
        await wait_for(pilot, lambda: app.focused is history.option_list, what="the search results")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, CompletionScreen), what="opened from the search")
        await wait_for(pilot, lambda: app.screen.conversation_id == cid, what="the completion")
        assert app.screen.document.text.startswith("The zebra crossed")
        assert app.screen.params["max_new_tokens"] == 3  # reopened with its own parameters
