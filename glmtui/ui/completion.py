"""Completion mode: the text typed is the prompt and the model continues it in place.

For base (pre-trained) models such as ChatGLM3-6B-Base, which were never taught
the chat roles, and for any model from the palette ("Completion mode"). The
document is one editable text; Ctrl+G continues it as it stands (the first
generation, or more after one), Ctrl+R writes the last continuation again
from the same prompt, Ctrl+E takes the last continuation out to edit the
prompt, Esc stops (and, when nothing is being written, goes back to the chat).
The engine builds the prompt (``generate(prompt_text=...)``: ChatGLM3's
``[gMASK] sop`` + text); tokens arrive through the app's coalescing buffer,
like the chat's.

Saved as a conversation of kind "completion": its messages, in order, add up to
the document (user: text typed, assistant: a continuation). Before a generation
the document is compared with them: the messages it still starts with stay,
the rest (edited away, or the continuation being regenerated) are deleted once
the new continuation has started, and new typed text becomes a user message.
Every store call runs on the store's worker thread (ui/store_calls.py), in the order asked; a generation
starts once its messages are saved, and the saves during and after it are queued behind them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Protocol, cast

from rich.text import Text
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Static, TextArea

from glmtui.engine.events import Failed, Finished, Loaded, Started, Token
from glmtui.store import HistoryStore

from .chat_session import FLUSH_INTERVAL
from .chat_text import format_stats, make_title, params_from_dict, visible
from .store_calls import store_calls

KIND = "completion"


class CompletionHost(Protocol):
    """What the view asks of its app besides Textual's App (never imported from app.py: no import circle)."""

    store: HistoryStore
    engine: Any  # the Engine continuations are asked of
    default_params: dict

    @property
    def loaded(self) -> Optional[Loaded]: ...

    def history_changed(self) -> None: ...


@dataclass
class Segment:
    role: str  # "user" (typed) or "assistant" (a continuation)
    text: str
    message_id: Optional[int] = None


@dataclass
class ActiveCompletion:
    request_id: int
    segment: Segment  # the continuation being written
    stale: list  # segments to delete once it has started
    before: str  # the document before it (put back if it never starts)
    started: bool = False
    prompt_tokens: Optional[int] = None
    last_flush: float = field(default_factory=time.monotonic)


class CompletionDocument(TextArea):
    """The prompt and its continuations, as one text (read-only while the model writes).
    Enter adds a line (the text is raw); Ctrl+E is the view's, not the end of the line (End is)."""

    BINDINGS = [Binding("ctrl+e", "screen.edit_prompt", "Edit prompt", show=False)]


class CompletionScreen(Screen):
    """The completion view over the app's engine and history file."""

    AUTO_FOCUS = "#completion-doc"

    BINDINGS = [
        Binding("ctrl+g", "generate", "Continue"),
        Binding("ctrl+r", "regenerate", "Regenerate"),
        Binding("ctrl+e", "edit_prompt", "Edit prompt"),
        Binding("escape", "stop_or_leave", "Stop / back"),
        Binding("ctrl+n", "new", "New completion"),
        Binding("ctrl+o", "settings", "Settings"),
    ]

    DEFAULT_CSS = """
    CompletionScreen { layout: vertical; }
    CompletionScreen #completion-title { height: 1; padding: 0 1; }
    CompletionScreen #completion-doc { height: 1fr; }
    CompletionScreen #completion-meta { height: auto; max-height: 3; padding: 0 1; color: $text-muted; }
    """

    def __init__(self, conversation_id: Optional[int] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.initial_id = conversation_id
        self.conversation_id: Optional[int] = None
        self.title_text = "New completion"
        self.params: dict = {}
        self.segments: list[Segment] = []
        self.active: Optional[ActiveCompletion] = None
        self.last_stats: dict = {}
        self.finished = 0  # generations ended, their continuation saved (tests wait on it)
        self.starting = False  # a generation's messages are being saved; it starts next

    def compose(self) -> Iterable:
        yield Static(id="completion-title")
        yield CompletionDocument(id="completion-doc", soft_wrap=True, show_line_numbers=False,
                                 tab_behavior="focus",
                                 placeholder="Type the beginning of a text; Ctrl+G has the model continue it")
        yield Static(id="completion-meta")

    async def on_mount(self) -> None:
        self.params = dict(self.host.default_params)
        self.refresh_header()
        self.document.focus()
        if self.initial_id is not None:
            await self.open(self.initial_id)
            self.refresh_header()

    # -------------------------------------------------------------- views

    @property
    def host(self) -> CompletionHost:
        return cast(CompletionHost, self.app)

    @property
    def document(self) -> CompletionDocument:
        return self.query_one("#completion-doc", CompletionDocument)

    @property
    def streaming(self) -> bool:
        return self.active is not None

    @property
    def saved_text(self) -> str:
        return "".join(s.text for s in self.segments)

    def refresh_header(self) -> None:
        p = params_from_dict(self.params)
        head = Text("Completion", style="bold reverse")
        head.append(f" {self.title_text}", style="bold")
        model = self.host.loaded.model_name if self.host.loaded is not None else "no model"
        head.append(f"   {model} · T {p.temperature:g} · top-p {p.top_p:g} · max {p.max_new_tokens}", style="dim")
        self.query_one("#completion-title", Static).update(head)
        meta = Text()
        if self.active is not None:
            meta.append("writing… (Esc stops)", style="bold yellow")
        else:
            meta.append("Ctrl+G continue · Ctrl+R regenerate · Ctrl+E edit prompt · Ctrl+O settings · "
                        "Esc back to the chat", style="dim")
            if self.last_stats:
                meta.append("\n" + format_stats(self.last_stats), style="dim")
        self.query_one("#completion-meta", Static).update(meta)

    async def open(self, conversation_id: int) -> None:
        store, calls = self.host.store, store_calls(self.app)
        conv = await calls.call(store.get_conversation, conversation_id)
        if conv is None:
            self.app.notify("That conversation no longer exists.", severity="warning")
            return
        messages = await calls.call(store.messages, conv.id) or []
        self.conversation_id = conv.id
        self.title_text = conv.title
        self.params = {**self.host.default_params, **(conv.params or {})}
        self.segments = [Segment(m.role, m.content, m.id) for m in messages if m.role in ("user", "assistant")]
        last = next((m for m in reversed(messages) if m.role == "assistant"), None)
        self.last_stats = dict(last.stats or {}) if last is not None else {}
        self._show(self.saved_text)

    def _show(self, text: str) -> None:
        doc = self.document
        doc.load_text(visible(text))
        doc.move_cursor(doc.document.end)

    # -------------------------------------------------------------- actions

    def action_stop_or_leave(self) -> None:
        if self.active is not None:
            self.host.engine.cancel(self.active.request_id)
        else:
            self.app.pop_screen()

    def action_new(self) -> None:
        if self.active is not None:
            self.app.notify("The model is still writing: Esc stops it.", severity="warning")
            return
        self.conversation_id = None
        self.title_text = "New completion"
        self.segments = []
        self.last_stats = {}
        self.params = dict(self.host.default_params)
        self._show("")
        self.refresh_header()

    def action_settings(self) -> None:
        from .modals import SettingsModal

        def done(result) -> None:
            if result is None:
                return
            _system, values = result  # a completion has no system prompt: only the parameters count
            self.params = {**self.params, **values}
            if self.conversation_id is not None:
                store_calls(self.app).call(self.host.store.update_settings, self.conversation_id, params=self.params)
            self.refresh_header()

        self.app.push_screen(SettingsModal(None, params_from_dict(self.params)), done)

    def action_edit_prompt(self) -> None:
        """Take the last continuation out of the document (it stays saved until the next generation)."""
        if self.active is not None:
            self.app.notify("The model is still writing: Esc stops it.", severity="warning")
            return
        if self.segments and self.segments[-1].role == "assistant":
            self._show("".join(s.text for s in self.segments[:-1]))
        self.document.focus()

    async def action_regenerate(self) -> None:
        if self.active is not None:
            self.app.notify("The model is still writing: Esc stops it.", severity="warning")
            return
        if not self.segments or self.segments[-1].role != "assistant":
            self.app.notify("No continuation to write again yet: Ctrl+G writes one.", severity="warning")
            return
        self._show("".join(s.text for s in self.segments[:-1]))
        await self.action_generate()

    async def action_generate(self) -> None:
        """Continue the document as it stands."""
        if self.active is not None or self.starting:
            self.app.notify("The model is still writing: Esc stops it.", severity="warning")
            return
        if self.host.loaded is None:
            self.app.notify("No model loaded: press Ctrl+L to load one.", severity="error", title="Cannot continue")
            return
        text = self.document.text
        if not text.strip():
            self.app.notify("Type the beginning of a text first.", severity="warning")
            return
        # The saved messages the document still starts with (it shows them through visible(): control
        # characters as pictures); the prompt is their real text plus what was typed after them.
        kept, offset = 0, 0
        for segment in self.segments:
            shown = visible(segment.text)
            if not text.startswith(shown, offset):
                break
            kept, offset = kept + 1, offset + len(shown)
        stale = self.segments[kept:]
        self.starting = True
        self.document.read_only = True  # what is being saved is what the model continues
        try:
            segment = await self._save_prompt(text, kept, offset)
        finally:
            self.starting = False
            self.document.read_only = False
        store = self.host.store
        mid = segment.message_id
        prompt = "".join(s.text for s in self.segments)
        try:
            request_id = self.host.engine.generate([], params_from_dict(self.params), prompt_text=prompt)
        except Exception as exc:  # noqa: BLE001 - an engine that refuses at once
            if mid is not None:
                store_calls(self.app).call(store.delete_message, mid)
            self.segments = self.segments[:kept] + stale
            self.app.notify(f"{type(exc).__name__}: {exc}", severity="error", title="Cannot continue")
            return
        self.segments.append(segment)
        self.active = ActiveCompletion(request_id, segment, stale, text)
        doc = self.document
        doc.read_only = True
        doc.move_cursor(doc.document.end)
        self.refresh_header()
        self.host.history_changed()

    async def _save_prompt(self, text: str, kept: int, offset: int) -> Segment:
        """Save a new conversation (if this is one), the typed text after the kept messages and an empty
        continuation; the continuation's segment (its message id None where saving failed)."""
        store, calls = self.host.store, store_calls(self.app)
        if self.conversation_id is None:
            self.title_text = make_title(text)
            model = self.host.loaded.model_name if self.host.loaded is not None else None
            self.conversation_id = await calls.call(store.create_conversation, self.title_text, model, "",
                                                    self.params, kind=KIND)
        cid = self.conversation_id
        self.segments = self.segments[:kept]
        if offset < len(text):
            typed = text[offset:]
            mid = await calls.call(store.add_message, cid, "user", typed) if cid is not None else None
            self.segments.append(Segment("user", typed, mid))
        mid = await calls.call(store.add_message, cid, "assistant", "", "streaming") if cid is not None else None
        return Segment("assistant", "", mid)

    def _count_end(self, _saved: object) -> None:
        self.finished += 1

    # -------------------------------------------------------------- engine events

    async def on_generation_event(self, event) -> None:
        active = self.active
        if active is None or getattr(event, "request_id", None) != active.request_id:
            return
        if isinstance(event, (Started, Token)) and not active.started:
            active.started = True
            for segment in active.stale:  # replaced by the continuation that has now started
                if segment.message_id is not None:
                    store_calls(self.app).call(self.host.store.delete_message, segment.message_id)
            active.stale = []
        if isinstance(event, Started):
            active.prompt_tokens = event.prompt_tokens
        elif isinstance(event, Token):
            if getattr(event, "reasoning", False):
                return
            self._append(event.text)
            now = time.monotonic()
            if active.segment.message_id is not None and now - active.last_flush >= FLUSH_INTERVAL:
                active.last_flush = now
                store_calls(self.app).call(self.host.store.update_message, active.segment.message_id,
                                           active.segment.text, "streaming")
        elif isinstance(event, Finished):
            if event.text.startswith(active.segment.text) and len(event.text) > len(active.segment.text):
                self._append(event.text[len(active.segment.text):])  # tokens not shown yet
            stats = {"prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens,
                     "ttft": event.time_to_first_token, "tokens_per_s": event.tokens_per_second,
                     "total_s": event.total_seconds, "finish_reason": event.finish_reason}
            self._end("stopped" if event.finish_reason == "cancelled" else "complete", stats)
        elif isinstance(event, Failed):
            if not active.started and active.stale:  # nothing written: everything as it was
                if active.segment.message_id is not None:
                    store_calls(self.app).call(self.host.store.delete_message, active.segment.message_id)
                self.segments = [s for s in self.segments if s is not active.segment] + active.stale
                self.active = None
                self.document.read_only = False
                self._show(active.before)
                self.refresh_header()
            else:
                self._end("error", {"error": event.message, "prompt_tokens": active.prompt_tokens})
            self.app.notify(event.message, severity="error", title="Generation failed")

    def _append(self, text: str) -> None:
        assert self.active is not None
        self.active.segment.text += text
        doc = self.document
        doc.insert(visible(text), doc.document.end, maintain_selection_offset=False)
        doc.scroll_end(animate=False)

    def _end(self, status: str, stats: dict) -> None:
        active = self.active
        assert active is not None
        self.active = None
        self.last_stats = {k: v for k, v in stats.items() if v is not None}
        if active.segment.message_id is not None:
            saved = store_calls(self.app).call(self.host.store.update_message, active.segment.message_id,
                                               active.segment.text, status, self.last_stats)
            saved.add_done_callback(self._count_end)
        else:
            self._count_end(None)
        if not active.segment.text and status != "complete":
            self.segments = [s for s in self.segments if s is not active.segment or s.message_id is not None]
        doc = self.document
        doc.read_only = False
        doc.move_cursor(doc.document.end)
        self.refresh_header()
        self.host.history_changed()
