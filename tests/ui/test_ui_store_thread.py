"""The history store is never called on the UI thread from the UI (issue 15): a trace callback on the
app's real SQLite connection records every statement run on the app's thread while a module of glmtui/ui
is on the stack (the test's own reads are not). The history pane, the completion view, the agent view and
the conversation actions (open, rename, export, delete) are driven through Pilot; what they saved is read
back and what they read is on screen. Opening the store (its damage check grows with the history) is watched
from its first statement: it runs on a thread of its own, after the first frame. Closing it (after the last
frame) is not watched."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
from textual.widgets import Input

import glmtui.store.opening
import glmtui.ui
import glmtui.ui.history
from agent_helpers import ScriptedModel, call
from glmtui.config import default_paths
from glmtui.engine.prompts import ChatGLM3Format
from glmtui.store import HistoryStore, recovery
from glmtui.ui.app import GlmApp
from glmtui.ui.completion import CompletionScreen
from glmtui.ui.modals import ConfirmModal, TextModal
from glmtui.ui.store_calls import store_calls
from helpers import notifications, screen_text, type_text, wait_for

GREEDY = {"temperature": 0.0, "max_new_tokens": 8}
UI_ROOM = Path(glmtui.ui.__file__).resolve().parent  # every module of the UI is watched


pytestmark = pytest.mark.usefixtures("in_process_engine")  # the model in a thread (conftest)


class UiThreadGuard:
    """Records each SQL statement the app's thread runs with a watched module on the stack."""

    def __init__(self, app: GlmApp | None = None) -> None:
        self.ui_thread = threading.get_ident()  # Pilot runs the app on the test's event loop thread
        self.calls: list[str] = []
        self.off_thread = 0  # statements on other threads (the store's worker): the panes' calls go there
        if app is not None:
            self.watch(app.store._conn)  # private: the real connection

    def watch(self, conn) -> None:
        conn.set_trace_callback(self._trace)

    @classmethod
    def from_the_open(cls, monkeypatch) -> "UiThreadGuard":
        """A guard on every history file connection opened from now on, from its first statement."""
        guard, connect = cls(), glmtui.store.opening.connect

        def watched(*args, **kwargs):
            conn = connect(*args, **kwargs)
            guard.watch(conn)
            return conn

        monkeypatch.setattr(glmtui.store.opening, "connect", watched)
        return guard

    def _trace(self, sql: str) -> None:
        if threading.get_ident() != self.ui_thread:
            self.off_thread += 1
            return
        frame, where = sys._getframe(1), []
        while frame is not None:
            path = Path(frame.f_code.co_filename).resolve()
            if path.is_relative_to(UI_ROOM):  # the UI's frames, innermost first: who made the call
                where.append(f"{path.name}:{frame.f_lineno} {frame.f_code.co_name}")
            frame = frame.f_back
        if where:
            self.calls.append(f"{' < '.join(where[:3])}: {sql.split()[0]}")


def _seed() -> int:
    store = HistoryStore.open(default_paths().history_db)
    for n in range(3):
        cid = store.create_conversation(f"weather talk {n}", None)
        store.add_message(cid, "user", f"is it raining {n}?")
        store.add_message(cid, "assistant", "no")
    completion = store.create_conversation("Once upon", None, kind="completion")
    store.add_message(completion, "user", "Once upon")
    store.add_message(completion, "assistant", " a time")
    store.close()
    return completion


async def test_the_store_opens_off_the_ui_thread_after_the_first_frame_and_a_save_asked_meanwhile_lands(
        quiet_sampler, monkeypatch):
    """Its damage check held until the first frame is up: the frame comes anyway, the open's statements all run
    off the UI thread, and a save asked for before the open is done waits for it and is in the file."""
    _seed()
    guard = UiThreadGuard.from_the_open(monkeypatch)
    held = threading.Event()
    checks: list[dict] = []
    check = recovery.quick_check

    def held_check(*args, **kwargs):  # the real check, once the test lets it run (a big history, say)
        seen = {"thread": threading.get_ident(), "done": False}
        checks.append(seen)
        held.wait(timeout=30)
        try:
            return check(*args, **kwargs)
        finally:
            seen["done"] = True

    monkeypatch.setattr(recovery, "quick_check", held_check)
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: "no model" in screen_text(app), what="the first frame")
        # held (or not begun yet, on a loaded machine): not done
        assert not any(seen["done"] for seen in checks), "the first frame waited for the history's damage check"
        early = store_calls(app).call(app.store.create_conversation, "asked before the open")
        held.set()
        cid = await early
        assert cid is not None
        await wait_for(pilot, lambda: app.history_pane.option_list.option_count == 5, what="the list, read once open")
        assert not [n for n in notifications(app) if "rror" in n]
        assert checks and all(seen["thread"] != guard.ui_thread for seen in checks)
        assert guard.off_thread > 0
        assert guard.calls == [], "the store opened on the UI thread:\n  " + "\n  ".join(guard.calls)
    store = HistoryStore.open(default_paths().history_db)
    try:
        assert store.get_conversation(cid).title == "asked before the open"
    finally:
        store.close()


async def test_the_guard_sees_a_store_call_made_on_the_ui_thread_from_a_watched_module(quiet_sampler):
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        guard = UiThreadGuard(app)
        await store_calls(app).settled()
        assert guard.calls == []
        # the same call, made on this (the app's) thread from code of history.py: recorded
        exec(compile("store.list_conversations(5)", glmtui.ui.history.__file__, "exec"), {"store": app.store})
        await pilot.pause()
        assert guard.calls and guard.calls[0].startswith("history.py")


@pytest.mark.slow  # a model load and a reply in three views
async def test_history_completion_and_agent_views_call_the_store_off_the_ui_thread(chatty_chatglm3, quiet_sampler):
    completion_id = _seed()
    fmt = ChatGLM3Format(chatty_chatglm3 / "tokenizer.model")
    app = GlmApp(model=str(chatty_chatglm3), mode="fp32", default_params=GREEDY, sampler=quiet_sampler)
    async with app.run_test(size=(120, 40)) as pilot:
        guard = UiThreadGuard(app)
        await wait_for(pilot, lambda: app.loaded is not None, what="model load")
        history = app.history_pane
        history.reload()
        await wait_for(pilot, lambda: history.option_list.option_count == 4, what="the list read off the UI thread")

        # search: typed, Enter moves into the results once they are read, Enter opens the best match
        await pilot.press("ctrl+f")
        await type_text(pilot, "raining 2")
        await pilot.press("enter")
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.chat_pane.title == "weather talk 2", what="the match opened")

        # the conversation shown: renamed (F3), exported (F5), deleted (F4)
        chat = app.chat_pane
        cid = chat.conversation_id
        chat.input.focus()
        await pilot.press("f3")
        await wait_for(pilot, lambda: isinstance(app.screen, TextModal), what="the rename dialog")
        app.screen.query_one("#value", Input).value = "sunny talk"
        await pilot.press("enter")
        await wait_for(pilot, lambda: chat.title == "sunny talk", what="the rename")
        await store_calls(app).settled()
        assert app.store.get_conversation(cid).title == "sunny talk"
        await pilot.press("f5")
        md = default_paths().data_dir / "exports" / f"sunny-talk-{cid}.md"
        await wait_for(pilot, lambda: any(str(md) in n for n in notifications(app)), what="the export")
        assert md.read_text(encoding="utf-8").startswith("# sunny talk")
        await pilot.press("f4")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmModal), what="the delete dialog")
        await pilot.press("y")
        await wait_for(pilot, lambda: chat.conversation_id is None, what="the delete")
        await store_calls(app).settled()
        assert app.store.get_conversation(cid) is None

        # the completion view: opened from the history, continued, its settings saved
        history.post_message(history.Open(completion_id))
        await wait_for(pilot, lambda: isinstance(app.screen, CompletionScreen)
                       and app.screen.query("#completion-doc")  # composed (a loaded machine may not have yet)
                       and app.screen.document.text == "Once upon a time", what="the completion opened")
        screen = app.screen
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: screen.finished == 1, what="the continuation")
        screen.params["top_p"] = 0.5
        screen.action_settings()
        await wait_for(pilot, lambda: app.screen is not screen, what="the settings dialog")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen, what="the settings saved")
        await store_calls(app).settled()
        assert app.store.get_conversation(completion_id).params["top_p"] == 0.5
        saved = app.store.messages(completion_id)
        assert [m.role for m in saved] == ["user", "assistant", "assistant"] and saved[-1].status == "complete"
        assert [s.message_id for s in screen.segments] == [m.id for m in saved]  # nothing saved is lost
        assert screen.saved_text == "".join(m.content for m in saved) and saved[-1].content
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, CompletionScreen), what="back to the chat")

        # the agent view: Tool mode with a scripted model (history read, new conversation and turns saved)
        await app.run_action("new_chat")
        await pilot.press("f10")
        app.agent.controller.auto_run_builtins = True
        app.agent.controller.source = ScriptedModel(fmt, [call("calculate", expression="2+2"), "Four."])
        chat = app.chat_pane
        chat.input.focus()
        await type_text(pilot, "2+2?")
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.agent.busy or chat.turns, what="the send")
        await wait_for(pilot, lambda: not app.agent.busy, what="the turns")
        cid = chat.conversation_id
        assert [(m.role, m.metadata) for m in app.store.messages(cid)] == [
            ("user", ""), ("assistant", "calculate"), ("observation", ""), ("assistant", "")]
        assert [t.message_id for t in chat.turns] == [m.id for m in app.store.messages(cid)]
        history.search_input.value = ""  # back from the search to the list
        await wait_for(pilot, lambda: any("2+2?" in str(history.option_list.get_option_at_index(i).prompt)
                                          for i in range(history.option_list.option_count)), what="listed")

        assert not [n for n in notifications(app) if "rror" in n]
        assert guard.off_thread > 0
        assert guard.calls == [], "store calls on the UI thread:\n  " + "\n  ".join(guard.calls)


async def test_saves_still_queued_at_exit_land_before_the_store_closes(quiet_sampler):
    cid = _seed()
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()

        def slow_save() -> None:  # a save on a slow disk, still running when the user quits
            time.sleep(0.5)
            app.store.rename(cid, "saved at exit")

        store_calls(app).call(slow_save)
        app.exit()
    store = HistoryStore.open(default_paths().history_db)
    try:
        assert store.get_conversation(cid).title == "saved at exit"
    finally:
        store.close()


async def test_store_errors_of_the_conversation_actions_are_shown_as_before(quiet_sampler):
    """Run off the UI thread, a rename that cannot be written still shows the unsaved banner, and one of a
    conversation deleted meanwhile says so; the app keeps running and nothing else changes."""
    _seed()
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        history = app.history_pane
        await wait_for(pilot, lambda: history.option_list.option_count == 4, what="the list")
        await store_calls(app).settled()
        history.option_list.focus()
        history.option_list.highlighted = 1  # a chat (the completion, newest, is first)
        target = history.highlighted_id()
        title = app.store.get_conversation(target).title

        app.store._conn.execute("PRAGMA query_only = 1")  # private: every write now fails
        await pilot.press("f3")
        assert isinstance(app.screen, TextModal)  # at once, with the title listed
        field = app.screen.query_one("#value", Input)
        assert field.value == title
        field.value = "not saved"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.query_one("#unsaved").display, what="the unsaved banner")
        await store_calls(app).settled()
        assert app.store.get_conversation(target).title == title

        app.store._conn.execute("PRAGMA query_only = 0")  # private: writes allowed again
        app.store.delete_conversation(target)  # behind the app's back: the list still shows it
        history.option_list.focus()
        await pilot.press("f3")
        app.screen.query_one("#value", Input).value = "gone"
        await pilot.press("enter")
        await wait_for(pilot, lambda: "that conversation no longer exists" in notifications(app), what="the error")
        assert app.is_running and app.store.get_conversation(target) is None
