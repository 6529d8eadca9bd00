"""ChatSession without Textual: a real tiny model on the in-process worker, the real history file.

The view records what the session asks it to show; store calls run on threads as the pane's workers
run them (asyncio.to_thread here), and the engine's events reach the session through the event loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Optional

import pytest

from engine_helpers import EventLog
from glmtui.engine.events import Finished, Loaded, Started, Token
from glmtui.engine.worker import InferenceWorker
from glmtui.store import HistoryStore
from glmtui.ui import chat_session
from glmtui.ui.chat_session import ChatSession, Turn

PARAMS = {"temperature": 0.0, "max_new_tokens": 24}


@pytest.fixture(scope="module")
def engine(chatty_chatglm3):
    """The worker with the tiny model that never stops early (every reply is max_new_tokens long)."""
    log = EventLog()
    worker = InferenceWorker(log).start()
    loaded = log.wait(worker.load(str(chatty_chatglm3), "fp32"))
    assert isinstance(loaded, Loaded), loaded
    yield worker, loaded
    worker.shutdown()


class View:
    """Records what the session shows; for each moment that matters, what the history file held."""

    def __init__(self) -> None:
        self.shown: list[Turn] = []
        self.removed: list[Turn] = []
        self.notes: list[str] = []
        self.closed: list[Any] = []  # (active, the stored reply row at that moment)
        self.ended: list[Turn] = []
        self.events: list[Any] = []
        self.session: Optional[ChatSession] = None
        self.store: Any = None
        self.on_token: Any = None

    async def show_turn(self, turn: Turn) -> None:
        turn.widget = object()
        self.shown.append(turn)

    async def remove_turn(self, turn: Turn) -> None:
        self.removed.append(turn)

    def show_turns(self, turns, shown) -> None:
        pass

    def mark_editing(self, turns, editing) -> None:
        pass

    def edit_cancelled(self, edit) -> None:
        pass

    async def clear_turns(self) -> None:
        self.shown.clear()

    def reply_started(self, active) -> None:
        pass

    async def reply_event(self, active, event) -> None:
        self.events.append(event)
        if self.on_token is not None and isinstance(event, Token):
            await self.on_token(active, event)

    async def reply_ended(self, active, turn, final) -> None:
        self.ended.append(turn)

    def reply_closed(self, active) -> None:
        row = None
        if active.message_id is not None:
            row = next(m for m in self.store.messages(self.session.conversation_id) if m.id == active.message_id)
        self.closed.append((active, row))

    def put_back(self, text) -> None:
        pass

    def tell(self, message, *, title="", severity="information", timeout=None) -> None:
        self.notes.append(message)

    def header_changed(self) -> None:
        pass

    def history_changed(self) -> None:
        pass


class Harness:
    """A session wired as the pane wires it: store calls on threads, engine events through the loop."""

    def __init__(self, engine, store: HistoryStore) -> None:
        self.worker, self.loaded = engine
        self.store = store
        self.view = View()
        self.errors: list[BaseException] = []
        self.store_threads: set[int] = set()
        self.session = ChatSession(store, self.worker, lambda: self.loaded, self.run_store, self.view, dict(PARAMS))
        self.view.session, self.view.store = self.session, store
        self.queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.listener = lambda event: loop.call_soon_threadsafe(self.queue.put_nowait, event)
        self.worker.add_listener(self.listener)
        self.pump = asyncio.ensure_future(self._pump())

    async def run_store(self, call):
        def work():
            self.store_threads.add(threading.get_ident())
            return call()

        try:
            return await asyncio.to_thread(work)
        except Exception as exc:  # noqa: BLE001 - what the pane reports
            self.errors.append(exc)
            return None

    async def _pump(self) -> None:
        while True:
            event = await self.queue.get()
            await self.session.on_generation_event(event)

    async def reply(self, timeout: float = 120.0) -> None:
        """Wait until no reply is active."""
        async def idle() -> None:
            while self.session.active is not None:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(idle(), timeout)

    def close(self) -> None:
        if not self.pump.done():
            self.worker.remove_listener(self.listener)
            self.pump.cancel()


@pytest.fixture
async def harness(engine, tmp_path):
    store = HistoryStore.open(tmp_path / "history.db")
    made = Harness(engine, store)
    yield made
    made.close()
    await made.session.settled()
    store.close()


async def test_a_send_is_stored_and_ends_only_once_rendered_and_stored(harness):
    session, store, view = harness.session, harness.store, harness.view
    assert await session.send("hello there")
    assert session.active is not None
    await harness.reply()
    (active, row), = view.closed
    assert view.ended == [session.turns[-1]]
    # when the reply stopped being active, its row already held the whole reply and its stats
    assert row.status == "complete" and row.content == active.text == session.turns[-1].content
    assert row.stats["completion_tokens"] == PARAMS["max_new_tokens"] and row.stats["model"]
    conv = store.get_conversation(session.conversation_id)
    assert conv.title == "hello there" and conv.params["max_new_tokens"] == PARAMS["max_new_tokens"]
    assert [(m.role, m.content) for m in store.messages(conv.id)] == [("user", "hello there"),
                                                                       ("assistant", active.text)]
    assert threading.get_ident() not in harness.store_threads  # never on the event loop's thread
    assert harness.errors == []
    # the next send carries the conversation so far
    assert await session.send("and again")
    await harness.reply()
    assert [m.role for m in session.conversation_messages()] == ["user", "assistant", "user", "assistant"]
    assert len(store.messages(conv.id)) == 4


async def test_the_streaming_reply_is_flushed_without_holding_up_the_tokens(harness, monkeypatch):
    monkeypatch.setattr(chat_session, "FLUSH_INTERVAL", 0.0)  # every token asks for a flush
    session, store = harness.session, harness.store
    seen: list[tuple[str, str]] = []
    release = asyncio.Event()
    original = harness.run_store

    async def slow_store(call):  # the file is slow: flushes pile up behind the first one
        await release.wait()
        return await original(call)

    async def on_token(active, event) -> None:
        if len(harness.view.events) == 3:
            harness.session.calls.run_store = slow_store  # the pane's runner, slowed down
        if len(harness.view.events) == 8:
            release.set()
        rows = store.messages(session.conversation_id)
        seen.append((rows[-1].status, rows[-1].content))

    harness.view.on_token = on_token
    assert await session.send("tell me a story")
    await harness.reply()
    final = session.turns[-1].content
    tokens = [e for e in harness.view.events if isinstance(e, Token)]
    assert len(tokens) > 8  # the reply kept streaming while the file did not answer
    flushed = [content for status, content in seen if status == "streaming" and content]
    assert flushed and all(final.startswith(content) for content in flushed)
    assert store.messages(session.conversation_id)[-1].status == "complete"
    assert store.messages(session.conversation_id)[-1].content == final


async def test_regenerate_and_edit_replace_the_exchange_once_the_new_reply_started(harness):
    session, store = harness.session, harness.store
    assert await session.send("first prompt")
    await harness.reply()
    cid = session.conversation_id
    old_reply = store.messages(cid)[-1]
    await session.regenerate()
    await harness.reply()
    rows = store.messages(cid)
    assert [m.role for m in rows] == ["user", "assistant"] and rows[1].id != old_reply.id
    assert rows[1].status == "complete" and old_reply.id in [t.message_id for t in harness.view.removed]

    assert session.edit_last("a draft", (0, 7)) == "first prompt"
    assert session.editing is not None and session.editing.saved_text == "a draft"
    assert await session.send("second prompt")
    await harness.reply()
    rows = store.messages(cid)
    assert [(m.role, m.status) for m in rows] == [("user", "complete"), ("assistant", "complete")]
    assert rows[0].content == "second prompt" and session.editing is None
    assert [t.content for t in session.turns] == [rows[0].content, rows[1].content]


async def test_a_stopped_reply_keeps_its_text_marked_stopped(harness):
    session, store = harness.session, harness.store
    session.params["max_new_tokens"] = 100_000

    async def on_token(active, event) -> None:
        if len(active.text) > 10:
            session.stop()

    harness.view.on_token = on_token
    assert await session.send("a long story")
    await harness.reply()
    row = store.messages(session.conversation_id)[-1]
    assert row.status == "stopped" and row.content and row.content == session.turns[-1].content
    assert row.stats["finish_reason"] == "cancelled"


async def test_a_failing_history_file_loses_no_reply_and_says_so(harness):
    session = harness.session
    harness.store.close()  # every call fails from here on
    assert await session.send("hello")
    await harness.reply()
    turn = session.turns[-1]
    assert turn.status == "complete" and turn.content  # written and shown anyway
    assert harness.errors  # each failure handed to the pane, which shows it (banner + toast)


async def test_save_on_exit_is_not_overwritten_by_a_flush_still_queued(harness, monkeypatch):
    """glmtui closes mid-reply: what save_on_exit wrote stays, whatever store call was still waiting."""
    monkeypatch.setattr(chat_session, "FLUSH_INTERVAL", 0.0)
    session, store = harness.session, harness.store
    session.params["max_new_tokens"] = 100_000
    gate = threading.Event()
    held = asyncio.Event()
    original = harness.run_store

    async def held_store(call):  # a flush that reaches its thread only after the app closed
        def later():
            gate.wait(30)
            return call()

        held.set()
        return await original(later)

    async def on_token(active, event) -> None:
        if len(active.text) > 10:
            session.calls.run_store = held_store

    harness.view.on_token = on_token
    assert await session.send("a long story")
    await asyncio.wait_for(held.wait(), 60)  # a flush is on its thread, waiting
    active = session.active
    assert active is not None
    harness.worker.cancel(active.request_id)
    text = active.text
    final = Finished(request_id=active.request_id, text=text + " and the rest", prompt_tokens=5,
                     completion_tokens=30, time_to_first_token=0.1, tokens_per_second=10.0, total_seconds=3.0,
                     finish_reason="cancelled")
    session.save_on_exit("interrupted", final)
    gate.set()
    harness.close()
    await session.settled()
    row = store.messages(session.conversation_id)[-1]
    assert row.status == "interrupted" and row.content == text + " and the rest"
    assert row.stats["completion_tokens"] == 30


async def test_the_engine_starts_before_the_turns_are_stored_and_shown_and_nothing_is_lost(harness):
    """The model prefills while the UI stores and mounts the turns (time to first token); events that come
    before the reply is on screen are taken once it is, in order: here the whole reply ends meanwhile."""
    session, store, view = harness.session, harness.store, harness.view
    ended: list[Finished] = []
    harness.worker.add_listener(lambda e: ended.append(e) if isinstance(e, Finished) else None)
    asked_when_shown: list[Any] = []
    show = view.show_turn

    async def show_turn(turn: Turn) -> None:
        active = session.active
        asked_when_shown.append(active.request_id if active is not None else None)
        if turn.role == "assistant" and asked_when_shown[-1] is not None:
            rid = asked_when_shown[-1]
            deadline = asyncio.get_running_loop().time() + 60
            while not any(e.request_id == rid for e in ended):  # the reply ends before it is on screen
                assert asyncio.get_running_loop().time() < deadline, "the reply did not end"
                await asyncio.sleep(0.01)
        await show(turn)

    view.show_turn = show_turn  # type: ignore[method-assign]  # the test's View, wrapped for this test
    assert await session.send("hello there")
    await harness.reply()
    # the engine had the request before either turn was shown (and so before either was stored)
    assert len(asked_when_shown) == 2 and None not in asked_when_shown
    final = next(e for e in ended if e.request_id == asked_when_shown[0])
    tokens = [e for e in view.events if isinstance(e, Token)]
    assert isinstance(view.events[0], Started)
    assert "".join(t.text for t in tokens) == final.text == session.turns[-1].content
    row = store.messages(session.conversation_id)[-1]
    assert (row.status, row.content) == ("complete", final.text)
    assert row.stats["completion_tokens"] == PARAMS["max_new_tokens"]
    assert [(m.role, m.content) for m in store.messages(session.conversation_id)][0] == ("user", "hello there")
