"""The chat's state as plain data (no Textual): turns, the reply being written, an edit, the turns a send
replaces, and :class:`ChatView`, what a :class:`~glmtui.ui.chat_session.ChatSession` tells its view."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from glmtui.engine.events import Finished


@dataclass
class Turn:
    role: str
    content: str
    status: str
    message_id: Optional[int]
    widget: Any = None  # the view's widget for it (opaque here)
    stats: Optional[dict] = None
    reasoning: str = ""


@dataclass
class EditState:
    """Ctrl+E: the exchange from ``index`` on is being edited. It stays (shown dimmed, and in the
    history file) until the edited prompt is sent and its reply has started; Esc puts the prompt box
    back to ``saved_text`` (what it held before Ctrl+E)."""

    index: int
    saved_text: str
    saved_cursor: tuple[int, int]


@dataclass
class Replacement:
    """Turns a send replaces (the edited exchange, or the reply Ctrl+R writes again). They are hidden,
    and deleted only once the new reply has started: a send that fails to start brings them back."""

    old: list[Turn]
    new: list[Turn]
    edit: Optional[EditState] = None  # an edit: its text goes back into the prompt box on failure
    text: str = ""
    created_conversation: bool = False  # the send started the conversation: a failed start removes it


@dataclass
class ActiveReply:
    """The reply being written, from the moment a send is accepted until it is rendered and stored."""

    request_id: Optional[int] = None  # None until the engine took the request
    message_id: Optional[int] = None
    turn: Optional[Turn] = None
    text: str = ""
    reasoning: str = ""
    prompt_tokens: Optional[int] = None
    last_flush: float = field(default_factory=time.monotonic)
    stop_requested: bool = False
    ending: bool = False  # its end is being rendered and stored; later events are ignored
    replacing: Optional[Replacement] = None
    meter: Any = None  # the view's live meter for it
    #: model, mode and device the reply is written with (the loaded model when it was sent),
    #: kept in its stats whatever becomes of the model meanwhile
    written_by: dict = field(default_factory=dict)

    @property
    def widget(self) -> Any:
        return self.turn.widget if self.turn is not None else None


class ChatView(Protocol):
    """What a session tells its view (ChatPane) to show."""

    async def show_turn(self, turn: Turn) -> None: ...  # a new turn at the end (sets turn.widget)
    async def remove_turn(self, turn: Turn) -> None: ...
    def show_turns(self, turns: list[Turn], shown: bool) -> None: ...  # set aside / brought back
    def mark_editing(self, turns: list[Turn], editing: bool) -> None: ...
    def edit_cancelled(self, edit: EditState) -> None: ...  # the prompt box gets back what it held
    async def clear_turns(self) -> None: ...
    def reply_started(self, active: ActiveReply) -> None: ...  # the engine took it: stream, meter
    async def reply_event(self, active: ActiveReply, event: Any) -> None: ...  # Started / Token
    async def reply_ended(self, active: ActiveReply, turn: Turn, final: Optional[Finished]) -> None: ...
    def reply_closed(self, active: ActiveReply) -> None: ...  # no reply active any more
    def put_back(self, text: str) -> None: ...  # a send that did not happen: its text into the prompt
    def tell(self, message: str, *, title: str = "", severity: str = "information",
             timeout: Optional[float] = None) -> None: ...  # a toast
    def header_changed(self) -> None: ...  # title, settings or editing changed
    def history_changed(self) -> None: ...  # the conversation list may show something else


def save_reply_on_exit(store: Any, active: ActiveReply, status: str, final: Optional[Finished]) -> None:
    """What glmtui closing mid-reply keeps of it (ChatSession.save_on_exit): the text so far, or the
    engine's final text when it came in time, marked ``status``; a send that never started leaves
    the exchange it was to replace."""
    replacing = active.replacing
    started = active.prompt_tokens is not None or bool(active.text) or (
        isinstance(final, Finished) and bool(final.prompt_tokens or final.text))
    if replacing is not None and replacing.old and not started:
        for turn in replacing.new:  # never started: the exchange it was to replace stays
            if turn.message_id is not None:
                store.delete_message(turn.message_id)
        return
    if replacing is not None:
        for turn in replacing.old:
            if turn.message_id is not None:
                store.delete_message(turn.message_id)
    if active.message_id is None:
        return
    text = active.text
    stats: dict = {"finish_reason": "cancelled", "prompt_tokens": active.prompt_tokens, **active.written_by}
    if isinstance(final, Finished):
        if len(final.text) > len(text):  # tokens still waiting to be shown
            text = final.text
        stats.update(prompt_tokens=final.prompt_tokens or active.prompt_tokens,
                     completion_tokens=final.completion_tokens, ttft=final.time_to_first_token,
                     tokens_per_s=final.tokens_per_second, total_s=final.total_seconds,
                     cached_tokens=final.cached_tokens)
    reasoning = active.reasoning
    if isinstance(final, Finished) and len(final.reasoning) > len(reasoning):
        reasoning = final.reasoning
    store.update_message(active.message_id, text, status, {k: v for k, v in stats.items() if v is not None},
                         reasoning=reasoning or None)
