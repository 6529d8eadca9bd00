"""The chat pane: renders a :class:`~glmtui.ui.chat_session.ChatSession` and forwards keys to it.
Kept whole past 400 lines: one pane.

Streaming follows the shape measured in docs/ARCHITECTURE.md: the app coalesces the engine's tokens
and hands them here in batches; :class:`~glmtui.ui.messages.AssistantMessage` awaits
``MarkdownStream.write`` (writes coalesce while a render is in flight, the engine never waits) and,
when the reply ends, :func:`~glmtui.ui.reply_markdown.complete_stream` makes the document exactly
what a full ``Markdown.update`` would show, re-mounting only the blocks that differ.

Every history call of the chat runs on the store's Textual thread worker (ui/store_calls.py), in the
order asked, never on the UI thread; what the pane needs of the app comes in a :class:`ChatHost`
(no import of app.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from rich.text import Text
from textual.containers import Vertical
from textual.widgets import Static

from glmtui.engine.events import Finished, GenerationParams, Loaded, Started, Token

from .chat_input import ChatInput
from .chat_session import ActiveReply, ChatSession, EditState, Turn
from .gc_defer import defer_full_collections, resume_full_collections
from .messages import AssistantMessage, MessageList, UserMessage
from .meters import DEFAULT_CHARS_PER_TOKEN, ReplyMeter, ReplyMeterState
from .store_calls import store_calls


def _nothing() -> None:
    return None


@dataclass
class ChatHost:
    """What the chat pane uses of the app, handed over at construction."""

    store: Any  # the HistoryStore
    engine: Any  # the Engine replies are asked of
    loaded: Callable[[], Optional[Loaded]]  # the model loaded now, if any
    default_params: dict
    default_system_prompt: str = ""
    agent: Any = None  # Tool / Code modes (ui/agent_view.py), or None
    generation_state_changed: Callable[[], None] = _nothing  # the status bar and the keys that apply
    history_changed: Callable[[], None] = _nothing  # the conversation list


class ChatPane(Vertical):
    """Shows one conversation (its :class:`ChatSession`) and forwards the chat's keys to it."""

    DEFAULT_CSS = """
    ChatPane .message.-editing { text-opacity: 50%; }
    ChatPane .message.-selected { background: $primary 12%; }
    """

    RESUME_IDLE = 1.5
    """After a reply, the deferred full collection (~1.5 s after a 10k-token reply on a slow machine)
    waits for this many seconds without a key in the prompt (a new reply keeps deferring it)."""

    def __init__(self, host: ChatHost, **kwargs) -> None:
        super().__init__(**kwargs)
        self.host = host
        self.session = ChatSession(host.store, host.engine, host.loaded, self._run_store, self,
                                   host.default_params)
        self._collections_deferred = False
        self._blink = True  # the prompt cursor's blinking, off while a reply streams
        self._chars_per_token: dict[str, float] = {}  # per model, from its last finished reply (the meter)

    def compose(self) -> Iterable:
        yield Static(id="chat-title")
        with MessageList(esc_taken=lambda: self.streaming or self.editing is not None,
                         back=self._focus_prompt, id="messages"):
            yield Static(id="chat-empty")
        yield ReplyMeter(id="reply-meter")
        yield ChatInput(to_messages=self._focus_messages, id="prompt")

    def _focus_prompt(self) -> None:
        self.input.focus()

    def _focus_messages(self) -> None:
        self.messages_view.focus()

    def on_mount(self) -> None:
        self.messages_view.anchor()
        self.refresh_header()

    def on_unmount(self) -> None:
        self._resume_collections()
        try:
            self.session.run_left_over()  # the event loop ends: writes still queued are done now
        except Exception:  # noqa: BLE001 - closing: the next start marks a streaming reply interrupted
            pass

    # -------------------------------------------------------------- the session's state

    @property
    def conversation_id(self) -> Optional[int]:
        return self.session.conversation_id

    @conversation_id.setter
    def conversation_id(self, value: Optional[int]) -> None:
        self.session.conversation_id = value

    @property
    def title(self) -> str:
        return self.session.title

    @title.setter
    def title(self, value: str) -> None:
        self.session.title = value

    @property
    def system_prompt(self) -> str:
        return self.session.system_prompt

    @property
    def params(self) -> dict:
        return self.session.params

    @property
    def turns(self) -> list[Turn]:
        return self.session.turns

    @property
    def active(self) -> Optional[ActiveReply]:
        """The reply being written; None only once it is completely finished (rendered and stored)."""
        return self.session.active

    @property
    def editing(self) -> Optional[EditState]:
        return self.session.editing

    @property
    def streaming(self) -> bool:
        agent = self.host.agent  # Tool/Code mode's turns (ui/agent_view.py)
        return self.session.busy or (agent is not None and agent.busy)

    def generation_params(self) -> GenerationParams:
        return self.session.generation_params()

    def _conversation_messages(self):
        return self.session.conversation_messages()

    # -------------------------------------------------------------- history calls, off the UI thread

    async def _run_store(self, call: Callable[[], Any]) -> Any:
        """One history call on the store's Textual thread worker, after every store call the UI asked for
        before it (ui/store_calls.py; a store error is shown there, with the unsaved banner, and gives None)."""
        try:
            return await store_calls(self.app).call(call)
        except Exception as exc:  # noqa: BLE001 - any other failure: said, never raised into the chat
            self.notify(f"{type(exc).__name__}: {exc}", severity="error", title="History", timeout=15)
            return None

    # -------------------------------------------------------------- views

    @property
    def input(self) -> ChatInput:
        return self.query_one("#prompt", ChatInput)

    @property
    def messages_view(self) -> MessageList:
        return self.query_one("#messages", MessageList)

    @property
    def meter(self) -> ReplyMeter:
        return self.query_one("#reply-meter", ReplyMeter)

    def refresh_header(self) -> None:
        p = self.generation_params()
        head = Text(self.title, style="bold")
        head.append(f"   T {p.temperature:g} · top-p {p.top_p:g} · max {p.max_new_tokens}"
                    f" · rep {p.repetition_penalty:g}", style="dim")
        if self.system_prompt:
            head.append(" · system prompt", style="dim italic")
        agent = self.host.agent
        if agent is not None and agent.header_label() is not None:
            head.append_text(agent.header_label())
        if self.editing is not None:
            head.append("  editing the last prompt: Enter resends, Esc cancels", style="bold yellow")
        self.query_one("#chat-title", Static).update(head)
        empty = self.query_one("#chat-empty", Static)
        empty.display = not self.turns
        loaded = self.host.loaded()
        if loaded is None:
            hint = Text("No model loaded.\n", style="bold")
            hint.append("Ctrl+L loads one (a model folder or a catalogue key), or pick one under Models "
                        "(F2 switches panes). Ctrl+P lists every command.")
        else:
            hint = Text(f"{loaded.model_name} is ready.\n", style="bold")
            hint.append("Type below: Enter sends, Ctrl+J adds a line, Esc stops a reply, "
                        "Ctrl+O sets the system prompt and parameters.")
        empty.update(hint)

    def _model_label(self) -> str:
        loaded = self.host.loaded()
        return loaded.model_name if loaded is not None else "GLM"

    async def _mount_turn(self, turn: Turn) -> None:
        """Add a turn at the end of the conversation (the session's list and the screen)."""
        await self.session.add_turn(turn)

    # -------------------------------------------------------------- what the session shows (ChatView)

    async def show_turn(self, turn: Turn) -> None:
        if turn.role == "user":
            widget: Any = UserMessage(turn.content, classes="message user")
        else:
            widget = AssistantMessage(turn.content, turn.status, turn.stats, self._model_label(),
                                      reasoning=turn.reasoning, classes="message assistant")
        turn.widget = widget
        self.query_one("#chat-empty", Static).display = False
        await self.messages_view.mount(widget)

    async def remove_turn(self, turn: Turn) -> None:
        if isinstance(turn.widget, AssistantMessage):
            await turn.widget.drop_stream()
        if turn.widget is not None:
            await turn.widget.remove()

    def show_turns(self, turns: list[Turn], shown: bool) -> None:
        for turn in turns:
            turn.widget.display = shown

    def mark_editing(self, turns: list[Turn], editing: bool) -> None:
        for turn in turns:
            turn.widget.set_class(editing, "-editing")

    def edit_cancelled(self, edit: EditState) -> None:
        prompt = self.input
        prompt.load_text(edit.saved_text)
        prompt.move_cursor(edit.saved_cursor)
        prompt.focus()

    async def clear_turns(self) -> None:
        await self.messages_view.remove_children(".message")

    def reply_started(self, active: ActiveReply) -> None:
        active.widget.start_stream()
        if not self._collections_deferred:
            self._collections_deferred = True
            defer_full_collections()
        self._start_meter(active)
        # a blinking cursor repaints the prompt twice a second, and with it the chat between it and the reply
        self._blink, self.input.cursor_blink = self.input.cursor_blink, False
        self.host.generation_state_changed()

    async def reply_event(self, active: ActiveReply, event: Any) -> None:
        if isinstance(event, Started):
            if active.meter is not None:
                active.meter.started(event.prompt_tokens, event.cached_tokens)
        elif isinstance(event, Token):
            if active.meter is not None:
                active.meter.text(event.text)
            if event.reasoning:
                active.widget.write_reasoning(event.text)
            else:
                await active.widget.write(event.text)

    async def reply_ended(self, active: ActiveReply, turn: Turn, final: Optional[Finished]) -> None:
        if final is not None:
            self._calibrate_meter(active, final)
        await active.widget.finish(turn.content, turn.status, turn.stats)
        self.meter.stop()  # after the final render: hiding it is a layout of its own

    def reply_closed(self, active: ActiveReply) -> None:
        self.meter.stop()
        self.input.cursor_blink = self._blink
        if active.request_id is None:  # never started
            self._resume_collections()
        else:
            self._resume_collections_when_idle()
        self.host.generation_state_changed()

    def put_back(self, text: str) -> None:
        """A send that did not happen: its text goes back into the prompt, in front of keys typed since."""
        prompt = self.input
        typed_since = prompt.text
        prompt.load_text(text + typed_since)
        prompt.move_cursor(prompt.document.end)

    _put_back = put_back

    def tell(self, message: str, *, title: str = "", severity: str = "information",
             timeout: Optional[float] = None) -> None:
        self.notify(message, title=title, severity=severity, timeout=timeout)  # type: ignore[arg-type]  # severity: one of Textual's levels

    def header_changed(self) -> None:
        self.refresh_header()

    def history_changed(self) -> None:
        self.host.history_changed()

    # -------------------------------------------------------------- the reply meter and collections

    def _start_meter(self, active: ActiveReply) -> None:
        loaded = self.host.loaded()
        model = loaded.model_name if loaded is not None else ""
        active.meter = ReplyMeterState(
            sent_at=time.monotonic(),
            context_length=loaded.context_length if loaded is not None else None,
            chars_per_token=self._chars_per_token.get(model, DEFAULT_CHARS_PER_TOKEN),
        )
        self.meter.start(active.meter)

    def _calibrate_meter(self, active: ActiveReply, event: Finished) -> None:
        """Characters per token of this model's reply: the next reply's meter counts with it."""
        model = active.written_by.get("model", "")
        if event.completion_tokens >= 8 and len(event.text) >= 8:
            self._chars_per_token[model] = len(event.text) / event.completion_tokens

    def _resume_collections_when_idle(self) -> None:
        def check() -> None:
            if not self._collections_deferred or self.active is not None:
                timer.stop()
            elif time.monotonic() - self.input.last_key >= self.RESUME_IDLE:
                timer.stop()
                self._resume_collections()

        timer = self.set_interval(0.25, check)

    def _resume_collections(self) -> None:
        if self._collections_deferred:
            self._collections_deferred = False
            resume_full_collections()

    # -------------------------------------------------------------- conversations

    async def show_conversation(self, conversation_id: Optional[int]) -> bool:
        """Open a stored conversation (None: a new, empty chat)."""
        if self.streaming:  # a reply, or Tool/Code mode's turns
            self.notify("A reply is still streaming: press Esc to stop it first.", severity="warning")
            return False
        stored = await self.session.open(conversation_id)
        if stored is None:
            return False
        agent = self.host.agent
        for m in stored:
            if agent is not None and (m.metadata or m.role == "observation"):  # Tool/Code turns
                await agent.mount_stored(self, m)
            elif m.role in ("user", "assistant"):
                await self._mount_turn(Turn(m.role, m.content, m.status, m.id, stats=m.stats, reasoning=m.reasoning))
        self.refresh_header()
        self.messages_view.scroll_end(animate=False)
        return True

    def apply_settings(self, system_prompt: str, params: dict) -> None:
        self.session.apply_settings(system_prompt, params)

    # -------------------------------------------------------------- actions

    async def on_chat_input_submitted(self, message: ChatInput.Submitted) -> None:
        message.stop()
        if not await self.send(message.text):
            self.put_back(message.text)

    async def send(self, text: str) -> bool:
        text = text.strip("\n").rstrip()
        if not text.strip():
            return False
        agent = self.host.agent
        if agent is not None and (agent.mode != "chat" or agent.busy):  # Tool/Code mode: agent_view.py
            return await agent.send(self, text)
        return await self.session.send(text)

    def stop(self) -> bool:
        agent = self.host.agent
        if agent is not None and agent.stop():
            return True
        return self.session.stop()

    async def regenerate(self) -> None:
        await self.session.regenerate()

    async def edit_last(self) -> None:
        """Ctrl+E: put the last prompt in the prompt box. Nothing is deleted here: the exchange goes
        only when the edited prompt is sent and its reply starts; Esc (:meth:`cancel_edit`) keeps it."""
        text = self.session.edit_last(self.input.text, self.input.cursor_location)
        if text is None:
            return
        self.input.load_text(text)
        self.input.move_cursor(self.input.document.end)
        self.input.focus()
        self.notify("Enter sends the edited prompt in place of the last exchange (kept until then); "
                    "Esc cancels.", timeout=4)

    def cancel_edit(self) -> bool:
        """Esc while editing: the prompt box gets back what it held before Ctrl+E; False if not editing."""
        return self.session.cancel_edit() is not None

    # -------------------------------------------------------------- engine events and the end

    async def on_generation_event(self, event) -> None:
        await self.session.on_generation_event(event)

    def save_on_exit(self, status: str, final: Optional[Finished] = None) -> None:
        """glmtui closes mid-reply: keep what was written (see ChatSession.save_on_exit)."""
        self.session.save_on_exit(status, final)
