"""ChatSession: one conversation's state and what happens to it (no Textual; ChatPane renders it).
Kept whole past 400 lines: one class.

It sends (the request built from the turns and the conversation's parameters), takes the engine's
Started/Token/Finished/Failed into the reply being written, regenerates, edits the last prompt, and
writes everything to the history store as it happens: the prompt at once, the reply as a
``streaming`` row flushed every :data:`FLUSH_INTERVAL` seconds and finished with its status and
stats. Store calls go through ``run_store`` (the pane runs them on Textual thread workers), one at a
time in the order they were asked for; the flush never holds up the tokens. A view (:class:`ChatView`)
is told what to show. ``active`` is None only once a reply is completely finished: rendered and stored.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Optional

from glmtui.engine.events import ChatMessage, Failed, Finished, Loaded, Started, Token, reached_context

from .chat_state import ActiveReply, ChatView, EditState, Replacement, Turn, save_reply_on_exit
from .chat_store import OrderedCalls, RunStore
from .chat_text import make_title, params_from_dict

FLUSH_INTERVAL = 2.0
STREAMING_NOTE = "A reply is still streaming: Esc stops it."

class ChatSession:
    """One conversation on screen and the reply being written for it."""

    def __init__(self, store: Any, engine: Any, loaded: Callable[[], Optional[Loaded]], run_store: RunStore,
                 view: ChatView, default_params: dict, default_system_prompt: str = "") -> None:
        self.store = store
        self.engine = engine
        self.loaded = loaded
        self.view = view
        self.default_params = default_params
        self.default_system_prompt = default_system_prompt
        self.conversation_id: Optional[int] = None
        self.title = "New chat"
        self.system_prompt = ""
        self.params: dict = dict(default_params)
        self.turns: list[Turn] = []
        self.active: Optional[ActiveReply] = None
        self.editing: Optional[EditState] = None
        self.opening = False  # a stored conversation is being read
        # The active reply's events that arrive while its turns are still being stored and shown
        # (the engine is asked first, so that it prefills meanwhile); None once the reply is on screen.
        self._early: Optional[list] = None
        self._draining: Optional[asyncio.Future] = None  # kept: a task nobody holds may be collected
        self.calls = OrderedCalls(run_store)  # the history calls: in order, off the UI thread

    async def _store(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        return await self.calls.call(fn, *args, **kwargs)

    def _in_background(self, fn: Callable, *args: Any, must_run: bool = False, **kwargs: Any) -> None:
        self.calls.background(fn, *args, must_run=must_run, **kwargs)

    def run_left_over(self) -> None:
        """The pane goes: history calls that must not be lost and have not run, run now."""
        self.calls.run_left_over()

    async def settled(self) -> None:
        await self.calls.settled()

    # -------------------------------------------------------------- state

    @property
    def busy(self) -> bool:
        return self.active is not None or self.opening

    def generation_params(self):
        return params_from_dict(self.params)

    def conversation_messages(self) -> list[ChatMessage]:
        """What the model is sent: the system prompt and the turns (failed or empty replies left out)."""
        out = []
        if self.system_prompt.strip():
            out.append(ChatMessage("system", self.system_prompt))
        for t in self.turns:
            if t.role == "assistant" and (t.status == "error" or not t.content):
                continue
            out.append(ChatMessage(t.role, t.content))  # type: ignore[arg-type]  # a stored role is a Role
        return out

    async def add_turn(self, turn: Turn) -> None:
        self.turns.append(turn)
        await self.view.show_turn(turn)

    # -------------------------------------------------------------- conversations

    async def open(self, conversation_id: Optional[int]) -> Optional[list]:
        """Show a stored conversation (None: a new, empty chat); returns its stored messages for the view
        to show ([] for a new chat), None when refused (a reply is being written)."""
        if self.busy:
            self.view.tell("A reply is still streaming: press Esc to stop it first.", severity="warning")
            return None
        self.opening = True
        try:
            self.editing = None  # an edit left for another conversation: the exchange stays as it was
            await self.view.clear_turns()
            self.turns = []
            self.conversation_id = None
            self.title = "New chat"
            self.system_prompt = self.default_system_prompt
            self.params = dict(self.default_params)
            if conversation_id is None:
                return []
            conv = await self._store(self.store.get_conversation, conversation_id)
            if conv is None:
                self.view.tell("That conversation no longer exists.", severity="warning")
                return []
            self.conversation_id = conv.id
            self.title = conv.title
            self.system_prompt = conv.system_prompt
            self.params = {**self.default_params, **(conv.params or {})}
            return await self._store(self.store.messages, conv.id) or []
        finally:
            self.opening = False

    def apply_settings(self, system_prompt: str, params: dict) -> None:
        self.system_prompt = system_prompt
        self.params = {**self.params, **params}
        if self.conversation_id is not None:
            self._in_background(self.store.update_settings, self.conversation_id,
                                system_prompt=system_prompt, params=dict(self.params), must_run=True)
        self.view.header_changed()

    def rename(self, title: str) -> None:
        """The app renamed the conversation shown (it wrote the store)."""
        self.title = title
        self.view.header_changed()

    # -------------------------------------------------------------- sending

    async def send(self, text: str) -> bool:
        """Send a prompt (the edited one while editing); False, with the reason shown, if it was not sent."""
        text = text.strip("\n").rstrip()
        if not text.strip():
            return False
        if self.busy:
            self.view.tell(STREAMING_NOTE, severity="warning")
            return False
        loaded = self.loaded()
        if loaded is None:
            self.view.tell("No model loaded: press Ctrl+L to load one.", severity="error", title="Cannot send")
            return False
        self.active = active = ActiveReply()  # busy from here: a second send waits for this one
        edit = self.editing
        replacing = self._set_aside(edit.index if edit is not None else len(self.turns), edit, text)
        active.replacing = replacing
        turn = Turn("user", text, "complete", None)
        self.turns.append(turn)
        refused = self._request_reply(active)  # before any store call or mount: the engine starts at once
        if refused is not None:
            self.turns = [t for t in self.turns if t is not turn]
            await self._refused(active, refused)
            return False
        if self.conversation_id is None:
            self.title = make_title(text)
            cid = await self._store(self.store.create_conversation, self.title, loaded.model_name,
                                    self.system_prompt, dict(self.params))
            self.conversation_id = cid
            replacing.created_conversation = cid is not None
        if self.conversation_id is not None:
            turn.message_id = await self._store(self.store.add_message, self.conversation_id, "user", text)
        await self.view.show_turn(turn)
        replacing.new.append(turn)
        self.view.header_changed()
        await self._show_reply(active)
        self.view.history_changed()
        return True

    async def regenerate(self) -> None:
        if self.busy:
            self.view.tell(STREAMING_NOTE, severity="warning")
            return
        if self.loaded() is None:
            self.view.tell("No model loaded: press Ctrl+L to load one.", severity="error")
            return
        if not self.turns:
            self.view.tell("Nothing to regenerate yet.", severity="warning")
            return
        end = len(self.turns) - 1 if self.turns[-1].role == "assistant" else len(self.turns)
        if end == 0 or self.turns[end - 1].role != "user":
            self.view.tell("The last message is not a prompt: nothing to regenerate.", severity="warning")
            return
        self.cancel_edit()
        self.active = active = ActiveReply()
        active.replacing = self._set_aside(end)  # the old reply stays until the new one has started
        if await self._start_reply(active):
            self.view.history_changed()

    def edit_last(self, prompt_text: str, cursor: tuple[int, int]) -> Optional[str]:
        """Ctrl+E: the last prompt's text for the prompt box (None, with the reason shown, if none).

        Nothing is deleted here: the exchange goes only when the edited prompt is sent and its reply
        starts; :meth:`cancel_edit` keeps it. ``prompt_text``/``cursor``: what the box holds now."""
        if self.busy:
            self.view.tell(STREAMING_NOTE, severity="warning")
            return None
        index = next((i for i in range(len(self.turns) - 1, -1, -1) if self.turns[i].role == "user"), None)
        if index is None:
            self.view.tell("No prompt to edit yet.", severity="warning")
            return None
        if self.editing is None:
            self.editing = EditState(index, prompt_text, cursor)
        self.view.mark_editing(self.turns[index:], True)
        self.view.header_changed()
        return self.turns[index].content

    def cancel_edit(self) -> Optional[EditState]:
        """Stop editing; returns the edit (what the prompt box held before Ctrl+E), None if not editing."""
        edit, self.editing = self.editing, None
        if edit is None:
            return None
        self.view.mark_editing(self.turns[edit.index:], False)
        self.view.edit_cancelled(edit)
        self.view.header_changed()
        return edit

    def stop(self) -> bool:
        """Esc: ask the engine to stop the reply (what was written is kept); False if none is active."""
        active = self.active
        if active is None:
            return False
        active.stop_requested = True
        if active.request_id is not None and not active.ending:
            self.engine.cancel(active.request_id)
        return True

    def _set_aside(self, index: int, edit: Optional[EditState] = None, text: str = "") -> Replacement:
        """Hide the turns from ``index`` on and take them out of the conversation the model sees.

        They stay in the history file until the new reply starts (:meth:`_commit`) and come back
        if it does not (:meth:`_roll_back`)."""
        old = self.turns[index:]
        del self.turns[index:]
        self.view.mark_editing(old, False)
        self.view.show_turns(old, False)
        self.editing = None
        return Replacement(old, [], edit, text)

    async def _start_reply(self, active: ActiveReply) -> bool:
        """Start the reply to the turns shown; False (and everything as before) when the engine refuses."""
        refused = self._request_reply(active)
        if refused is not None:
            await self._refused(active, refused)
            return False
        await self._show_reply(active)
        return True

    def _request_reply(self, active: ActiveReply) -> Optional[Exception]:
        """Ask the engine for the reply to ``self.turns`` (None), or the exception it refused with.

        Called before the reply's turns are stored and shown (tens of milliseconds of the UI thread),
        so the model prefills meanwhile; its events wait in ``_early`` until :meth:`_show_reply`."""
        loaded = self.loaded()
        if loaded is not None:
            active.written_by = {"model": loaded.model_name, "mode": loaded.mode, "device": loaded.device}
        try:
            active.request_id = self.engine.generate(self.conversation_messages(), self.generation_params())
        except Exception as exc:  # noqa: BLE001 - an engine that refuses at once (a remote one)
            return exc
        self._early = []
        return None

    async def _refused(self, active: ActiveReply, exc: Exception) -> None:
        """The engine refused the request: everything as before the send (nothing was stored or shown for it)."""
        assert active.replacing is not None
        await self._roll_back(active.replacing)
        self.active = None
        self.view.tell(f"{type(exc).__name__}: {exc}", severity="error", title="Cannot send")
        self.view.reply_closed(active)

    async def _show_reply(self, active: ActiveReply) -> None:
        """Store and show the reply's turn, then take the events that came meanwhile, in order."""
        assert active.replacing is not None
        if self.conversation_id is not None:
            active.message_id = await self._store(self.store.add_message, self.conversation_id, "assistant", "",
                                                  "streaming")
        turn = Turn("assistant", "", "streaming", active.message_id)
        active.turn = turn
        await self.add_turn(turn)
        active.replacing.new.append(turn)
        self.view.reply_started(active)
        # the events that came meanwhile are taken in a task of their own, not in this handler: ending
        # the reply there (an empty one ends at once) waits on the reply widget's own messages, which
        # the view could not process while this handler held it
        self._draining = asyncio.ensure_future(self._drain_early())

    async def _drain_early(self) -> None:
        early = self._early
        try:
            while early:  # events arriving while these are handled join the list: order is kept
                await self._take_event(early.pop(0))
        finally:
            self._early = None

    async def _commit(self, active: ActiveReply) -> None:
        """The new reply started: what it replaces goes, from the screen and the history file."""
        replacing, active.replacing = active.replacing, None
        if replacing is None or not replacing.old:
            return
        for turn in replacing.old:
            if turn.message_id is not None:
                self._in_background(self.store.delete_message, turn.message_id, must_run=True)
            await self.view.remove_turn(turn)
        self.view.history_changed()

    async def _roll_back(self, replacing: Replacement) -> None:
        """A send that did not start: its turns go, the turns it was to replace come back (an edit too)."""
        for turn in replacing.new:  # awaited: the history list reloaded below must not show them
            if turn.message_id is not None:
                await self._store(self.store.delete_message, turn.message_id)
            await self.view.remove_turn(turn)
        self.turns = [t for t in self.turns if all(t is not n for n in replacing.new)]
        self.view.show_turns(replacing.old, True)
        self.turns.extend(replacing.old)
        if replacing.created_conversation and not self.turns and self.conversation_id is not None:
            await self._store(self.store.delete_conversation, self.conversation_id)
            self.conversation_id = None
            self.title = "New chat"
        if replacing.edit is not None:
            self.editing = replacing.edit
            self.view.mark_editing(self.turns[replacing.edit.index:], True)
        self.view.header_changed()
        self.view.history_changed()

    # -------------------------------------------------------------- engine events

    async def on_generation_event(self, event: Any) -> None:
        active = self.active
        if self._early is not None and active is not None and event.request_id == active.request_id:
            self._early.append(event)  # the reply is not on screen yet: taken by _show_reply
            return
        await self._take_event(event)

    async def _take_event(self, event: Any) -> None:
        active = self.active
        if active is None or event.request_id != active.request_id or active.ending:
            return
        if active.replacing is not None:
            if isinstance(event, Failed) and active.replacing.old:
                await self._replacement_failed(active, event)
                return
            if isinstance(event, (Started, Token, Finished)):
                await self._commit(active)
        if isinstance(event, Started):
            active.prompt_tokens = event.prompt_tokens
            await self.view.reply_event(active, event)
        elif isinstance(event, Token):
            if event.reasoning:
                active.reasoning += event.text
            else:
                active.text += event.text
            await self.view.reply_event(active, event)
            now = time.monotonic()
            if active.message_id is not None and now - active.last_flush >= FLUSH_INTERVAL:
                active.last_flush = now  # in the background: the tokens never wait for the file
                self._in_background(self.store.update_message, active.message_id, active.text, "streaming",
                                    reasoning=active.reasoning or None)
        elif isinstance(event, Finished):
            status = "stopped" if event.finish_reason == "cancelled" else "complete"
            text = event.text if event.text or not active.text else active.text
            await self._end_reply(active, text, status, self._finished_stats(active, event), event)
        elif isinstance(event, Failed) and event.interrupted:
            # the engine process ended under the reply: what was written is kept, marked interrupted
            # (as a reply cut by glmtui's own end is); the app says why and how to reload
            stats = {"error": event.message, "prompt_tokens": active.prompt_tokens, **active.written_by}
            await self._end_reply(active, active.text, "interrupted", stats)
        elif isinstance(event, Failed):
            stats = {"error": event.message, "prompt_tokens": active.prompt_tokens, **active.written_by}
            await self._end_reply(active, active.text, "error", stats)
            self.view.tell(event.message, severity="error", title="Generation failed")

    def _finished_stats(self, active: ActiveReply, event: Finished) -> dict:
        stats = {
            "prompt_tokens": event.prompt_tokens,
            "completion_tokens": event.completion_tokens,
            "ttft": event.time_to_first_token,
            "tokens_per_s": event.tokens_per_second,
            "total_s": event.total_seconds,
            "finish_reason": event.finish_reason,
            "cached_tokens": event.cached_tokens,
            **active.written_by,
        }
        loaded = self.loaded()
        context = loaded.context_length if loaded is not None else None
        if event.finish_reason == "length" and reached_context(event.prompt_tokens, event.completion_tokens, context):
            stats["context_limit"] = context
        return stats

    async def _replacement_failed(self, active: ActiveReply, event: Failed) -> None:
        """The resent prompt (or regenerated reply) failed before it started: put everything back."""
        replacing = active.replacing
        assert replacing is not None
        active.ending = True
        await self._roll_back(replacing)
        self.active = None
        if replacing.edit is not None:
            self.view.put_back(replacing.text)
        what = "the last exchange is unchanged" if replacing.edit is not None else "the last reply is unchanged"
        self.view.tell(f"{event.message} ({what})", severity="error", title="Generation failed")
        self.view.reply_closed(active)

    async def _end_reply(self, active: ActiveReply, text: str, status: str, stats: dict,
                         final: Optional[Finished] = None) -> None:
        """Render the reply's end, store it, and only then let it stop being active."""
        active.ending = True
        turn = active.turn
        assert turn is not None
        turn.content, turn.status, turn.stats, turn.reasoning = text, status, stats, active.reasoning
        await self.view.reply_ended(active, turn, final)
        if active.message_id is not None:
            await self._store(self.store.update_message, active.message_id, text, status,
                              {k: v for k, v in stats.items() if v is not None}, reasoning=active.reasoning or None)
        self.active = None
        self.view.reply_closed(active)
        self.view.history_changed()

    # -------------------------------------------------------------- leaving

    def save_on_exit(self, status: str, final: Optional[Finished] = None) -> None:
        """glmtui closes mid-reply: keep what was written, marked ``status`` ("stopped", or
        "interrupted" when a signal closed it), with the token count of ``final`` (the engine's
        Finished for the cancelled reply, when it came in time). Runs on the closing app's thread,
        the event loop done: writes the store directly; store calls still queued are dropped."""
        active = self.active
        self.calls.close(lambda: save_reply_on_exit(self.store, active, status, final) if active else None)
