"""The chat pane: the conversation, the streaming reply and the prompt input.

Streaming follows the shape measured in docs/ARCHITECTURE.md: the app
coalesces the worker's tokens (GlmApp.on_tokens_ready) and hands them here in
batches; the handler awaits ``MarkdownStream.write`` (writes coalesce while a render is in flight, the
worker never waits) and, when the reply ends, :func:`complete_stream` makes the
document exactly what a full ``Markdown.update`` would show (code fences and
tables complete) while re-mounting only the blocks that differ - usually just
the last one, instead of the whole reply (a 5 s freeze at 10,000 tokens).

Every message is written to the history store as it happens: the user's
prompt at once, the reply as an empty ``streaming`` row that is flushed every
:data:`FLUSH_INTERVAL` seconds and finished with its status and stats.
"""

from __future__ import annotations

import asyncio
import gc
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Optional

from markdown_it import MarkdownIt
from rich.text import Text
from textual import events
from textual.await_complete import AwaitComplete
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.geometry import Size
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Markdown, Static, TextArea
from textual.widgets.markdown import MarkdownBlock

from glmtui.engine.events import ChatMessage, Failed, Finished, GenerationParams, Started, Token, reached_context

from .compat import MarkdownTable, WrapsDefaultKeys, block_builder, propagation_stopped, run_focused_bindings
from .copying import CodeBlock, CodePickerModal, code_blocks, copied_block_note, copied_text_note
from .meters import DEFAULT_CHARS_PER_TOKEN, ReplyMeter, ReplyMeterState
from .reasoning import ReasoningBlock

if TYPE_CHECKING:  # pragma: no cover
    from .app import GlmApp

FLUSH_INTERVAL = 2.0
PARAM_KEYS = ("temperature", "top_p", "max_new_tokens", "repetition_penalty")

# Control characters (a random or broken model emits them) would drive the
# terminal: C0 controls are shown as Unicode control pictures (tabs and
# newlines stay), C1 controls as U+FFFD; invisible format characters (bidi
# overrides, zero-width marks) that make the terminal and the layout disagree
# about widths are dropped; line/paragraph separators become newlines.
_CONTROL_PICTURES: dict[int, object] = {c: 0x2400 + c for c in range(32) if c not in (9, 10)}
_CONTROL_PICTURES[0x7F] = 0x2421
_CONTROL_PICTURES.update({c: 0xFFFD for c in range(0x80, 0xA0)})
_CONTROL_PICTURES.update({c: None for c in (0xAD, 0x061C, 0x180E, 0xFEFF, *range(0x200B, 0x2010),
                                             *range(0x202A, 0x202F), *range(0x2060, 0x2070))})
_CONTROL_PICTURES.update({0x2028: 0x0A, 0x2029: 0x0A})


_LINKISH = re.compile(r"\]\(|\]\[|://|<[^>\s]+>|www\.")


def visible(text: str) -> str:
    return text.translate(_CONTROL_PICTURES)


def make_title(prompt: str, limit: int = 40) -> str:
    line = re.sub(r"\s+", " ", prompt).strip()
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def params_from_dict(values: Optional[dict], base: GenerationParams = GenerationParams()) -> GenerationParams:
    values = values or {}

    def pick(key: str, cast):
        try:
            return cast(values[key])
        except (KeyError, TypeError, ValueError):
            return getattr(base, key)

    return GenerationParams(
        max_new_tokens=pick("max_new_tokens", int),
        temperature=pick("temperature", float),
        top_p=pick("top_p", float),
        top_k=base.top_k,
        repetition_penalty=pick("repetition_penalty", float),
        stop=base.stop,
        seed=base.seed,
        # a reasoning model's thinking switch (the settings dialog): True/False, else the template's default
        thinking=values["thinking"] if isinstance(values.get("thinking"), bool) else base.thinking,
    )


def params_to_dict(params: GenerationParams) -> dict:
    return {k: getattr(params, k) for k in PARAM_KEYS}


def format_stats(stats: Optional[dict]) -> str:
    if not stats:
        return ""
    parts = []
    if stats.get("completion_tokens") is not None:
        parts.append(f"{stats['completion_tokens']} tokens")
    if isinstance(stats.get("ttft"), (int, float)):
        parts.append(f"TTFT {stats['ttft']:.2f} s")
    if isinstance(stats.get("tokens_per_s"), (int, float)):
        parts.append(f"{stats['tokens_per_s']:.1f} tok/s")
    if stats.get("prompt_tokens") is not None:
        cached = stats.get("cached_tokens")
        parts.append(f"prompt {stats['prompt_tokens']}" + (f" ({cached} reused)" if cached else ""))
    if stats.get("finish_reason") == "length":
        if stats.get("context_limit"):
            parts.append(f"reached the model's context ({stats['context_limit']:,} tokens)")
        else:
            parts.append("hit max new tokens")
    where = " ".join(str(stats[k]) for k in ("model", "mode", "device") if stats.get(k))
    if where:
        parts.append(where)
    return " · ".join(parts)


EMPTY_TEXT = {
    "stopped": "*(stopped before any text)*",
    "interrupted": "*(interrupted before any text)*",
    "complete": "*(empty reply)*",
}


def shown_text(text: str, status: str) -> str:
    """What a reply's body shows: its text made safe, or a note when it has none."""
    shown = visible(text)
    if not shown.strip():
        return EMPTY_TEXT.get(status, shown)
    return shown


STATUS_LABELS = {
    "streaming": "streaming…",
    "stopped": "■ stopped",
    "interrupted": "⚠ interrupted (glmtui closed while writing)",
    "error": "✗ error",
}
ENGINE_INTERRUPTED_LABEL = "⚠ interrupted (the engine process ended)"


# ------------------------------------------------------------------ garbage collection while streaming

_deferrals = 0
_saved_thresholds = (700, 10, 10)


def defer_full_collections() -> None:
    """No full (oldest-generation) garbage collection until the matching :func:`resume_full_collections`.

    A full collection walks every tracked object of the process (~630,000 after a 10,000-token reply,
    plus the cyclic garbage Textual leaves per frame) and stops the UI thread for 0.25-0.6 s; a streamed
    reply allocates enough to start one every ~2 s (29 in a paced 10k reply, 12 s of the UI thread and
    every keystroke maximum). Young generations are still collected; what survived them is collected
    in one pass after the reply (Textual pauses collection the same way while it animates a scroll,
    ``App.PAUSE_GC_ON_SCROLL``); ChatPane resumes them once the user stops typing after the reply."""
    global _deferrals, _saved_thresholds
    _deferrals += 1
    if _deferrals == 1:
        _saved_thresholds = gc.get_threshold()
        young, middle, _ = _saved_thresholds
        gc.set_threshold(young, middle, 2**31 - 1)


def resume_full_collections() -> None:
    global _deferrals
    if _deferrals > 0:
        _deferrals -= 1
        if _deferrals == 0:
            gc.set_threshold(*_saved_thresholds)


# ------------------------------------------------------------------ the end of a streamed reply


async def complete_stream(markdown: Markdown, text: str) -> str:
    """Make a streamed ``markdown`` render ``text`` exactly as ``Markdown.update(text)`` would, without
    re-mounting what the stream already rendered right; returns how, for benchmarks ("full", or how
    many blocks were kept and rebuilt).

    A whole-document ``update`` at the end of a reply re-parses and re-mounts every block (seconds
    for a 10,000-token reply, the UI frozen). The stream's top-level blocks are final once a later
    block has started (CommonMark never reopens a closed block), so the full text is parsed once
    (cheap, off the UI thread) and the rendered top-level blocks are kept as long as their line
    ranges match the full parse; the rest - at least the last block, whatever the stream's
    incremental update left there (e.g. a paragraph that turned into an HTML block) - is rebuilt
    from the full parse. Falls back to ``update`` where a streamed render cannot be trusted: the text
    does not extend what was streamed, or it defines link references (they change earlier links).
    """
    async with markdown.lock:  # MarkdownStream.stop() can return while a shielded append still runs
        pass
    streamed = markdown.source
    if not streamed or not text.startswith(streamed):
        await markdown.update(text)
        return "full"
    if len(text) > len(streamed):
        await markdown.append(text[len(streamed):])
    env: dict = {}
    tokens = await asyncio.get_running_loop().run_in_executor(None, MarkdownIt("gfm-like").parse, text, env)
    if env.get("references"):
        await markdown.update(text)
        return "full"
    starts = [i for i, t in enumerate(tokens) if t.level == 0 and t.nesting >= 0 and t.map is not None]
    async with markdown.lock:
        blocks = [child for child in markdown.children if isinstance(child, MarkdownBlock)]
        keep = 0
        while (keep < len(blocks) - 1 and keep < len(starts)
               and tuple(blocks[keep].source_range) == tuple(tokens[starts[keep]].map)):
            keep += 1
        build = block_builder(markdown)  # the same builder Markdown.update uses
        rebuilt = list(build(tokens[starts[keep]:])) if keep < len(starts) else []
        lines = text.splitlines()
        # Rows a table gained while it streamed are plain Statics, whose links do not respond:
        # a kept table with links is rebuilt in place.
        relinked = [i for i in range(keep) if isinstance(blocks[i], MarkdownTable)
                    and _LINKISH.search("\n".join(lines[slice(*blocks[i].source_range)]))
                    and any(type(cell) is Static for cell in blocks[i].query(Static))]
        with markdown.app.batch_update():
            for i in relinked:
                group = tokens[starts[i]:starts[i + 1] if i + 1 < len(starts) else len(tokens)]
                await markdown.mount_all(list(build(group)), before=blocks[i])
            await markdown.remove_children([*(blocks[i] for i in relinked), *blocks[keep:]])
            if rebuilt:
                await markdown.mount_all(rebuilt)
    return f"kept {keep} of {len(blocks)} blocks, rebuilt {len(rebuilt)} + {len(relinked)} tables"


# ------------------------------------------------------------------ widgets


class ChatInput(WrapsDefaultKeys, TextArea):
    """The prompt: Enter sends, Ctrl+J (or Shift+Enter where the terminal reports it) adds a line."""

    BINDINGS = [
        Binding("enter", "submit", "Send", priority=False),
        Binding("ctrl+j", "newline", "Newline"),
        Binding("shift+enter", "newline", "Newline", show=False),
        Binding("ctrl+e", "app.edit_last", "Edit last"),  # instead of TextArea's end-of-line (End still works)
        Binding("ctrl+up", "messages", "Messages", show=False),
    ]

    class Submitted(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, **kwargs) -> None:
        super().__init__(
            soft_wrap=True,
            show_line_numbers=False,
            tab_behavior="focus",
            placeholder="Ask anything — Enter sends, Ctrl+J adds a line",
            **kwargs,
        )

    last_key = 0.0
    """time.monotonic() of the last key (ChatPane collects garbage once the user stops typing)."""

    async def process_key(self, event: events.Key) -> None:
        self.last_key = time.monotonic()
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.action_submit()
            return
        if event.key in ("ctrl+j", "shift+enter", "newline"):
            event.stop()
            event.prevent_default()
            self.action_newline()
            return
        await self.default_key(event)
        if propagation_stopped(event) or event.is_printable:
            return
        # A key no handler took (backspace, ctrl+u, arrows, app keys like Esc): left alone, it would
        # reach its binding only after bubbling through the chat pane (busy with a streaming reply)
        # back to the App's queue, i.e. behind keys typed after it. Run the bindings of the focused
        # chain now, as the App would on the bubbled key, so every key applies in the order typed.
        if await run_focused_bindings(self.app, event.key):
            event.stop()
            event.prevent_default()

    def action_submit(self) -> None:
        # Cleared now, not when the send is done: keys typed meanwhile (the next
        # question) go into an empty prompt and are kept. A refused send puts the
        # text back in front of them.
        text = self.text
        self.clear()
        self.post_message(self.Submitted(text))

    def action_newline(self) -> None:
        start, end = self.selection
        if not self.read_only:
            self.replace("\n", start, end, maintain_selection_offset=False)  # as TextArea's typing does

    def action_messages(self) -> None:
        """Ctrl+Up: into the conversation, on its last message (y / c copy it)."""
        for ancestor in self.ancestors:
            if isinstance(ancestor, ChatPane):
                ancestor.messages_view.focus()
                return


class ReplyMarkdown(Markdown):
    """The Markdown of a reply, arranged against the screen's height instead of its own.

    Every block is ``height: auto``, so the height offered to the blocks changes nothing in the
    result; but Textual arranges a container whose children are all auto-height against that height
    and caches each container's arrangement by it, and a streaming reply grows on every append: each
    frame then re-arranged every table and list of the reply (half the UI's time in a long reply).
    A fixed height keeps those caches valid."""

    FREEZE_SCREENS = 2
    """While a reply streams, blocks ending more than this many screens above its end are hidden."""
    FREEZE_BATCH = 8
    """Hide at least this many blocks at once (each hiding is one extra layout)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._follow: Optional[Widget] = None
        self._watched: list[Widget] = []
        self._frozen: list[Widget] = []
        self._frozen_at: Optional[tuple[Size, int]] = None
        self._frozen_height = 0

    def arrange(self, size: Size, optimal: bool = False):
        return super().arrange(Size(size.width, self.screen.size.height), optimal)

    # -------------------------------------------------------------- off-screen blocks while streaming
    #
    # Every layout (one per streamed frame: the last block grows or a new one is mounted) walks every
    # displayed widget of the screen, and every paint sorts and filters them (Textual's compositor),
    # so with all ~1,150 widgets of a 10k-token reply displayed (~155 top-level blocks and their
    # items, rows, cells) a frame's cost grows with the reply. Blocks far above the end of a reply that the view follows are final
    # (the stream only ever touches the last block) and off-screen: they are hidden (display: none)
    # and the Markdown's top padding grows by exactly the height they took, so everything below stays
    # where it was. Scrolling up, a resize or the end of the reply shows them again (thaw).

    def follow(self, view: Optional[Widget]) -> None:
        """Hide off-screen blocks after each append while ``view`` (the scrolling container) is at its end;
        ``None``: stop, and show them all."""
        if view is not None and view not in self._watched:
            self._watched.append(view)
            self.watch(view, "scroll_y", self._view_scrolled, init=False)
        self._follow = view
        if view is None:
            self.thaw()

    def _view_scrolled(self, scroll_y: float) -> None:
        """Scrolled up (hidden blocks are at least 1.5 screens above what is then shown): show them."""
        view = self._follow
        if self._frozen and view is not None and view.max_scroll_y - scroll_y > max(1, view.size.height // 2):
            self.thaw()

    def append(self, markdown: str) -> AwaitComplete:
        appended = super().append(markdown)
        if self._follow is None:
            return appended

        async def append_then_freeze() -> None:
            await appended
            self.freeze_offscreen()

        return AwaitComplete(append_then_freeze())

    def freeze_offscreen(self) -> int:
        """Hide the blocks that end :attr:`FREEZE_SCREENS` screens above the reply's end; returns how many."""
        view = self._follow
        if view is None or not self.is_mounted:
            return 0
        screen_size = self.screen.size
        width = self.size.width - self.styles.gutter.width
        if self._frozen and self._frozen_at != (screen_size, width):
            self.thaw()
            return 0
        if width <= 0 or view.max_scroll_y - view.scroll_y > 1:
            return 0
        placements = self.arrange(Size(width, 0)).placements
        if len(placements) <= self.FREEZE_BATCH:
            return 0
        last = placements[-1]
        limit = last.region.bottom + last.margin.bottom - self.FREEZE_SCREENS * screen_size.height
        count = 0
        while (count < len(placements) - 1
               and placements[count].region.bottom + placements[count].margin.bottom <= limit):
            count += 1
        if count < self.FREEZE_BATCH:
            return 0
        hidden = [placement.widget for placement in placements[:count]]
        if not all(isinstance(widget, MarkdownBlock) for widget in hidden):
            return 0
        first_shown = placements[count]
        height = self._frozen_height + first_shown.region.y - first_shown.margin.top
        top, right, bottom, left = self.styles.padding
        with self.app.batch_update():
            for widget in hidden:
                widget.display = False
            self.styles.padding = (top - self._frozen_height + height, right, bottom, left)
        self._frozen.extend(hidden)
        self._frozen_height = height
        self._frozen_at = (screen_size, width)
        return count

    def thaw(self) -> None:
        """Show every hidden block again."""
        if not self._frozen:
            return
        with self.app.batch_update():
            for widget in self._frozen:
                widget.display = True
            self.styles.clear_rule("padding")
        self._frozen.clear()
        self._frozen_height = 0
        self._frozen_at = None


class UserMessage(Vertical):
    def __init__(self, text: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.text = text

    def compose(self) -> Iterable:
        yield Static("You", classes="msg-head")
        yield Static(Text(visible(self.text)), classes="msg-body")


class AssistantMessage(Vertical):
    """One reply; streams into its Markdown and shows status and stats under it."""

    def __init__(self, text: str = "", status: str = "complete", stats: Optional[dict] = None,
                 name: str = "GLM", reasoning: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.text = text
        self.reasoning = reasoning  # a reasoning model's <think> text, in a folding block above the answer
        self.status = status
        self.stats = stats or {}
        self.speaker = name
        self._stream = None

    def compose(self) -> Iterable:
        yield Static(self._head(), classes="msg-head")
        yield ReasoningBlock(self.reasoning)
        yield ReplyMarkdown(shown_text(self.text, self.status), classes="msg-body")
        yield Static(self._meta(), classes="msg-meta")

    def _head(self) -> Text:
        head = Text(self.speaker)
        label = STATUS_LABELS.get(self.status)
        if self.status == "interrupted" and self.stats.get("error"):  # the engine died under it (the cause below)
            label = ENGINE_INTERRUPTED_LABEL
        if label:
            style = {"stopped": "yellow", "error": "red", "interrupted": "yellow"}.get(self.status, "dim")
            head.append("  " + label, style=style)
        return head

    def _meta(self) -> Text:
        meta = Text(format_stats(self.stats), style="dim")
        error = self.stats.get("error") if self.stats else None
        if error:
            if meta:
                meta.append("\n")
            meta.append(f"✗ {error}", style="red")
        return meta

    def _refresh_labels(self) -> None:
        self.query_one(".msg-head", Static).update(self._head())
        meta = self.query_one(".msg-meta", Static)
        meta.update(self._meta())
        meta.display = bool(self.stats)
        self.set_class(self.status == "streaming", "-streaming")
        self.set_class(self.status == "error", "-error")

    def on_mount(self) -> None:
        self._refresh_labels()

    @property
    def markdown(self) -> Markdown:
        return self.query_one(Markdown)

    def start_stream(self) -> None:
        self.status = "streaming"
        markdown = self.markdown
        if isinstance(markdown, ReplyMarkdown):
            markdown.follow(self.parent if isinstance(self.parent, Widget) else None)
        self._stream = Markdown.get_stream(markdown)
        self._refresh_labels()

    @property
    def reasoning_block(self) -> ReasoningBlock:
        return self.query_one(ReasoningBlock)

    def write_reasoning(self, fragment: str) -> None:
        self.reasoning += fragment
        self.reasoning_block.append(fragment)

    async def write(self, fragment: str) -> None:
        if self.reasoning and fragment.strip():
            self.reasoning_block.answer_started()  # folds it
        self.text += fragment
        if self._stream is not None:
            await self._stream.write(visible(fragment))

    async def drop_stream(self) -> None:
        """Stop streaming without a final render (the reply is being removed)."""
        await self._stop_stream()

    async def _stop_stream(self) -> bool:
        """End the Markdown stream, if one runs, and stop following the reply's end; True if one ran."""
        if self._stream is None:
            return False
        stream, self._stream = self._stream, None
        await stream.stop()
        if isinstance(self.markdown, ReplyMarkdown):
            self.markdown.follow(None)
        return True

    async def finish(self, text: str, status: str, stats: Optional[dict]) -> None:
        self.text = text
        self.status = status
        self.stats = stats or {}
        shown = shown_text(text, status)
        self.reasoning_block.finish()
        if await self._stop_stream():
            await complete_stream(self.markdown, shown)
        else:
            await self.markdown.update(shown)
        self._refresh_labels()


class MessageList(VerticalScroll):
    """The conversation. While it has focus (Ctrl+Up or Shift+Tab from the prompt, or a click)
    one message is selected: ↑/↓ (k/j) move, Home/End go to the first/last, y copies it,
    c copies one of its code blocks, Esc (Tab) goes back to the prompt."""

    BINDINGS = [
        Binding("up,k", "select(-1)", "Previous", show=False),
        Binding("down,j", "select(1)", "Next", show=False),
        Binding("home", "select_edge(0)", "First", show=False),
        Binding("end", "select_edge(-1)", "Last", show=False),
        Binding("y", "copy_message", "Copy"),
        Binding("c", "copy_code", "Copy code"),
        Binding("t", "toggle_reasoning", "Reasoning", show=False),
        Binding("escape", "back", "Prompt", show=False),
    ]

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.selected: Optional[Widget] = None
        self._showing = False  # the selection is shown while the list has focus

    def messages(self) -> list[Widget]:
        return [child for child in self.children if child.has_class("message") and child.display]

    def select(self, widget: Optional[Widget], scroll: bool = True) -> None:
        if self.selected is not None and self.selected is not widget:
            self.selected.remove_class("-selected")
        self.selected = widget
        if widget is not None and self._showing:
            widget.add_class("-selected")
            if scroll:
                self.scroll_to_widget(widget, animate=False, top=True)

    def on_focus(self) -> None:
        self._showing = True
        shown = self.messages()
        if self.selected not in shown:
            self.selected = shown[-1] if shown else None
        self.select(self.selected, scroll=False)

    def on_blur(self) -> None:
        self._showing = False
        if self.selected is not None:
            self.selected.remove_class("-selected")

    def on_click(self, event: events.Click) -> None:
        widget = event.widget
        while widget is not None and widget is not self:
            if widget.has_class("message"):
                self.select(widget, scroll=False)
                return
            widget = widget.parent if isinstance(widget.parent, Widget) else None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> Optional[bool]:
        if action == "back":  # Esc still stops a streaming reply, or cancels an edit (the app's binding)
            pane = self.parent
            return not (isinstance(pane, ChatPane) and (pane.streaming or pane.editing is not None))
        return True

    def action_select(self, step: int) -> None:
        shown = self.messages()
        if not shown:
            return
        index = shown.index(self.selected) + step if self.selected in shown else len(shown) - 1
        self.select(shown[max(0, min(len(shown) - 1, index))])

    def action_select_edge(self, index: int) -> None:
        shown = self.messages()
        if shown:
            self.select(shown[index])
            if index == -1:
                self.scroll_end(animate=False)  # the end of a long last message, and the anchor again

    def action_back(self) -> None:
        pane = self.parent
        if isinstance(pane, ChatPane):
            pane.input.focus()

    def _selected_text(self) -> Optional[tuple[str, str]]:
        """(what, text) of the selected message: ("reply", ...) or ("prompt", ...)."""
        widget = self.selected
        if widget is None or widget not in self.messages():
            self.app.notify("No message selected.", severity="warning", timeout=3)
            return None
        return ("reply" if isinstance(widget, AssistantMessage) else "prompt"), getattr(widget, "text", "")

    def action_copy_message(self) -> None:
        selected = self._selected_text()
        if selected is None:
            return
        what, text = selected
        self.app.copy_to_clipboard(text)
        self.app.notify(copied_text_note(what, text), timeout=3)

    def action_toggle_reasoning(self) -> None:
        """Open or fold the selected reply's reasoning."""
        widget = self.selected
        if not isinstance(widget, AssistantMessage) or not widget.reasoning_block.toggle():
            self.app.notify("That message has no reasoning.", severity="warning", timeout=3)

    def action_copy_code(self) -> None:
        selected = self._selected_text()
        if selected is None:
            return
        what, text = selected
        blocks = code_blocks(text)
        if not blocks:
            self.app.notify(f"No code block in this {what}: y copies all of it.", severity="warning", timeout=3)
        elif len(blocks) == 1:
            self._copy_block(blocks[0])
        else:
            def picked(index: Optional[int]) -> None:
                if index is not None:
                    self._copy_block(blocks[index])

            self.app.push_screen(CodePickerModal(blocks), picked)

    def _copy_block(self, block: CodeBlock) -> None:
        self.app.copy_to_clipboard(block.code)
        self.app.notify(copied_block_note(block), timeout=3)


# ------------------------------------------------------------------ the pane


@dataclass
class Turn:
    role: str
    content: str
    status: str
    message_id: Optional[int]
    widget: Any = None
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
    request_id: int
    message_id: Optional[int]
    widget: AssistantMessage
    prompt_tokens: Optional[int] = None
    last_flush: float = field(default_factory=time.monotonic)
    stop_requested: bool = False
    ending: bool = False  # its end is being rendered and stored; later events are ignored
    replacing: Optional[Replacement] = None
    meter: Optional[ReplyMeterState] = None
    #: model, mode and device the reply is written with (the loaded model when it was sent),
    #: kept in its stats whatever becomes of the model meanwhile
    written_by: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.widget.text


class ChatPane(Vertical):
    """Shows one conversation and drives generation for it."""

    app: "GlmApp"

    DEFAULT_CSS = """
    ChatPane .message.-editing { text-opacity: 50%; }
    ChatPane .message.-selected { background: $primary 12%; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.conversation_id: Optional[int] = None
        self.title = "New chat"
        self.system_prompt = ""
        self.params: dict = {}
        self.turns: list[Turn] = []
        self.active: Optional[ActiveReply] = None
        self.editing: Optional[EditState] = None
        self._collections_deferred = False
        self._chars_per_token: dict[str, float] = {}  # per model, from its last finished reply (the meter)

    def compose(self) -> Iterable:
        yield Static(id="chat-title")
        with MessageList(id="messages"):
            yield Static(id="chat-empty")
        yield ReplyMeter(id="reply-meter")
        yield ChatInput(id="prompt")

    def on_mount(self) -> None:
        self.params = dict(self.app.default_params)
        self.query_one("#messages", VerticalScroll).anchor()
        self.refresh_header()

    def on_unmount(self) -> None:
        self._resume_collections()

    RESUME_IDLE = 1.5
    """After a reply, the deferred full collection (~1.5 s after a 10k-token reply on a slow machine)
    waits for this many seconds without a key in the prompt (a new reply keeps deferring it)."""

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

    # -------------------------------------------------------------- views

    @property
    def input(self) -> ChatInput:
        return self.query_one("#prompt", ChatInput)

    @property
    def messages_view(self) -> MessageList:
        return self.query_one("#messages", MessageList)

    @property
    def streaming(self) -> bool:
        agent = getattr(self.app, "agent", None)  # Tool/Code mode's turns (ui/agent_view.py)
        return self.active is not None or (agent is not None and agent.busy)

    def generation_params(self) -> GenerationParams:
        return params_from_dict(self.params)

    def refresh_header(self) -> None:
        p = self.generation_params()
        head = Text(self.title, style="bold")
        head.append(f"   T {p.temperature:g} · top-p {p.top_p:g} · max {p.max_new_tokens} · rep {p.repetition_penalty:g}",
                    style="dim")
        if self.system_prompt:
            head.append(" · system prompt", style="dim italic")
        agent = getattr(self.app, "agent", None)
        if agent is not None and agent.header_label() is not None:
            head.append_text(agent.header_label())
        if self.editing is not None:
            head.append("  editing the last prompt: Enter resends, Esc cancels", style="bold yellow")
        self.query_one("#chat-title", Static).update(head)
        empty = self.query_one("#chat-empty", Static)
        empty.display = not self.turns
        if self.app.loaded is None:
            hint = Text("No model loaded.\n", style="bold")
            hint.append("Ctrl+L loads one (a model folder or a catalogue key), or pick one under Models "
                        "(F2 switches panes). Ctrl+P lists every command.")
        else:
            hint = Text(f"{self.app.loaded.model_name} is ready.\n", style="bold")
            hint.append("Type below: Enter sends, Ctrl+J adds a line, Esc stops a reply, "
                        "Ctrl+O sets the system prompt and parameters.")
        empty.update(hint)

    async def _mount_turn(self, turn: Turn) -> None:
        if turn.role == "user":
            widget: Any = UserMessage(turn.content, classes="message user")
        else:
            widget = AssistantMessage(turn.content, turn.status, turn.stats, self._model_label(),
                                      reasoning=turn.reasoning, classes="message assistant")
        turn.widget = widget
        self.turns.append(turn)
        self.query_one("#chat-empty", Static).display = False
        await self.messages_view.mount(widget)

    def _model_label(self) -> str:
        return self.app.loaded.model_name if self.app.loaded is not None else "GLM"

    # -------------------------------------------------------------- conversations

    async def show_conversation(self, conversation_id: Optional[int]) -> bool:
        """Open a stored conversation (None: a new, empty chat)."""
        if self.streaming:  # a reply, or Tool/Code mode's turns
            self.app.notify("A reply is still streaming: press Esc to stop it first.", severity="warning")
            return False
        self.editing = None  # an edit left for another conversation: the exchange stays as it was
        await self.messages_view.remove_children(".message")
        self.turns = []
        self.conversation_id = None
        self.title = "New chat"
        self.system_prompt = self.app.default_system_prompt
        self.params = dict(self.app.default_params)
        if conversation_id is not None:
            conv = self.app.db(self.app.store.get_conversation, conversation_id)
            if conv is None:
                self.app.notify("That conversation no longer exists.", severity="warning")
            else:
                self.conversation_id = conv.id
                self.title = conv.title
                self.system_prompt = conv.system_prompt
                self.params = {**self.app.default_params, **(conv.params or {})}
                agent = getattr(self.app, "agent", None)
                for m in self.app.db(self.app.store.messages, conv.id) or []:
                    if agent is not None and (m.metadata or m.role == "observation"):  # Tool/Code turns
                        await agent.mount_stored(self, m)
                    elif m.role in ("user", "assistant"):
                        await self._mount_turn(Turn(m.role, m.content, m.status, m.id, stats=m.stats,
                                                    reasoning=m.reasoning))
        self.refresh_header()
        self.messages_view.scroll_end(animate=False)
        return True

    def apply_settings(self, system_prompt: str, params: dict) -> None:
        self.system_prompt = system_prompt
        self.params = {**self.params, **params}
        if self.conversation_id is not None:
            self.app.db(self.app.store.update_settings, self.conversation_id,
                        system_prompt=system_prompt, params=self.params)
        self.refresh_header()

    # -------------------------------------------------------------- actions

    async def on_chat_input_submitted(self, message: ChatInput.Submitted) -> None:
        message.stop()
        if not await self.send(message.text):
            self._put_back(message.text)

    def _put_back(self, text: str) -> None:
        """A send that did not happen: its text goes back into the prompt, in front of keys typed since."""
        prompt = self.input
        typed_since = prompt.text
        prompt.load_text(text + typed_since)
        prompt.move_cursor(prompt.document.end)

    async def send(self, text: str) -> bool:
        text = text.strip("\n").rstrip()
        if not text.strip():
            return False
        agent = getattr(self.app, "agent", None)
        if agent is not None and (agent.mode != "chat" or agent.busy):  # Tool/Code mode: agent_view.py
            return await agent.send(self, text)
        if self.active is not None:
            self.app.notify("A reply is still streaming: Esc stops it.", severity="warning")
            return False
        if self.app.loaded is None:
            self.app.notify("No model loaded: press Ctrl+L to load one.", severity="error", title="Cannot send")
            return False
        store = self.app.store
        edit = self.editing
        replacing = self._set_aside(edit.index if edit is not None else len(self.turns), edit, text)
        if self.conversation_id is None:
            self.title = make_title(text)
            cid = self.app.db(store.create_conversation, self.title, self.app.loaded.model_name,
                              self.system_prompt, self.params)
            self.conversation_id = cid
            replacing.created_conversation = cid is not None
        mid = self.app.db(store.add_message, self.conversation_id, "user", text) if self.conversation_id else None
        await self._mount_turn(Turn("user", text, "complete", mid))
        replacing.new.append(self.turns[-1])
        self.refresh_header()
        if not await self._start_reply(replacing):
            return False
        self.app.history_changed()
        return True

    def _set_aside(self, index: int, edit: Optional[EditState] = None, text: str = "") -> Replacement:
        """Hide the turns from ``index`` on and take them out of the conversation the model sees.

        They stay in the history file until the new reply starts (:meth:`_commit`) and come back
        if it does not (:meth:`_roll_back`)."""
        old = self.turns[index:]
        del self.turns[index:]
        for turn in old:
            turn.widget.remove_class("-editing")
            turn.widget.display = False
        self.editing = None
        return Replacement(old, [], edit, text)

    def _conversation_messages(self) -> list[ChatMessage]:
        out = []
        if self.system_prompt.strip():
            out.append(ChatMessage("system", self.system_prompt))
        for t in self.turns:
            if t.role == "assistant" and (t.status == "error" or not t.content):
                continue
            out.append(ChatMessage(t.role, t.content))  # type: ignore[arg-type]
        return out

    async def _start_reply(self, replacing: Replacement) -> bool:
        """Start the reply to the turns on screen; False (and everything as before) when the engine refuses."""
        messages = self._conversation_messages()
        mid = None
        if self.conversation_id is not None:
            mid = self.app.db(self.app.store.add_message, self.conversation_id, "assistant", "", "streaming")
        turn = Turn("assistant", "", "streaming", mid)
        await self._mount_turn(turn)
        replacing.new.append(turn)
        widget: AssistantMessage = turn.widget
        widget.start_stream()
        if not self._collections_deferred:
            self._collections_deferred = True
            defer_full_collections()
        try:
            request_id = self.app.engine.generate(messages, self.generation_params())
        except Exception as exc:  # noqa: BLE001 - an engine that refuses at once (a remote one)
            self._resume_collections()
            await self._roll_back(replacing)
            self.app.notify(f"{type(exc).__name__}: {exc}", severity="error", title="Cannot send")
            return False
        self.active = ActiveReply(request_id, mid, widget, replacing=replacing)
        self._start_meter(self.active)
        self.app.generation_state_changed()
        return True

    @property
    def meter(self) -> ReplyMeter:
        return self.query_one("#reply-meter", ReplyMeter)

    def _start_meter(self, active: ActiveReply) -> None:
        loaded = self.app.loaded
        model = loaded.model_name if loaded is not None else ""
        if loaded is not None:
            active.written_by = {"model": loaded.model_name, "mode": loaded.mode, "device": loaded.device}
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

    async def _commit(self, active: ActiveReply) -> None:
        """The new reply started: what it replaces goes, from the screen and the history file."""
        replacing, active.replacing = active.replacing, None
        if replacing is None or not replacing.old:
            return
        for turn in replacing.old:
            if turn.message_id is not None:
                self.app.db(self.app.store.delete_message, turn.message_id)
            await turn.widget.remove()
        self.app.history_changed()

    async def _roll_back(self, replacing: Replacement) -> None:
        """A send that did not start: its turns go, the turns it was to replace come back (an edit too)."""
        for turn in replacing.new:
            if turn.message_id is not None:
                self.app.db(self.app.store.delete_message, turn.message_id)
            if isinstance(turn.widget, AssistantMessage):
                await turn.widget.drop_stream()
            await turn.widget.remove()
        self.turns = [t for t in self.turns if all(t is not n for n in replacing.new)]
        for turn in replacing.old:
            turn.widget.display = True
        self.turns.extend(replacing.old)
        if replacing.created_conversation and not self.turns and self.conversation_id is not None:
            self.app.db(self.app.store.delete_conversation, self.conversation_id)
            self.conversation_id = None
            self.title = "New chat"
        if replacing.edit is not None:
            self.editing = replacing.edit
            for turn in self.turns[replacing.edit.index:]:
                turn.widget.add_class("-editing")
        self.query_one("#chat-empty", Static).display = not self.turns
        self.refresh_header()
        self.app.history_changed()

    def stop(self) -> bool:
        agent = getattr(self.app, "agent", None)
        if agent is not None and agent.stop():
            return True
        if self.active is None:
            return False
        self.active.stop_requested = True
        self.app.engine.cancel(self.active.request_id)
        return True

    async def regenerate(self) -> None:
        if self.active is not None:
            self.app.notify("A reply is still streaming: Esc stops it.", severity="warning")
            return
        if self.app.loaded is None:
            self.app.notify("No model loaded: press Ctrl+L to load one.", severity="error")
            return
        if not self.turns:
            self.app.notify("Nothing to regenerate yet.", severity="warning")
            return
        end = len(self.turns) - 1 if self.turns[-1].role == "assistant" else len(self.turns)
        if end == 0 or self.turns[end - 1].role != "user":
            self.app.notify("The last message is not a prompt: nothing to regenerate.", severity="warning")
            return
        self.cancel_edit()
        # the old reply stays until the new one has started
        if await self._start_reply(self._set_aside(end)):
            self.app.history_changed()

    async def edit_last(self) -> None:
        """Ctrl+E: put the last prompt in the prompt box. Nothing is deleted here: the exchange goes
        only when the edited prompt is sent and its reply starts; Esc (:meth:`cancel_edit`) keeps it."""
        if self.active is not None:
            self.app.notify("A reply is still streaming: Esc stops it.", severity="warning")
            return
        index = next((i for i in range(len(self.turns) - 1, -1, -1) if self.turns[i].role == "user"), None)
        if index is None:
            self.app.notify("No prompt to edit yet.", severity="warning")
            return
        if self.editing is None:
            self.editing = EditState(index, self.input.text, self.input.cursor_location)
        for turn in self.turns[index:]:
            turn.widget.add_class("-editing")
        self.input.load_text(self.turns[index].content)
        self.input.move_cursor(self.input.document.end)
        self.input.focus()
        self.refresh_header()
        self.app.notify("Enter sends the edited prompt in place of the last exchange (kept until then); "
                        "Esc cancels.", timeout=4)

    def cancel_edit(self) -> bool:
        """Esc while editing: the prompt box gets back what it held before Ctrl+E; False if not editing."""
        edit, self.editing = self.editing, None
        if edit is None:
            return False
        for turn in self.turns[edit.index:]:
            turn.widget.remove_class("-editing")
        prompt = self.input
        prompt.load_text(edit.saved_text)
        prompt.move_cursor(edit.saved_cursor)
        prompt.focus()
        self.refresh_header()
        return True

    # -------------------------------------------------------------- engine events

    async def on_generation_event(self, event) -> None:
        active = self.active
        if active is None or event.request_id != active.request_id or active.ending:
            return
        if active.replacing is not None:
            if isinstance(event, Failed) and active.replacing.old:
                await self._replacement_failed(event)
                return
            if isinstance(event, (Started, Token, Finished)):
                await self._commit(active)
        if isinstance(event, Started):
            active.prompt_tokens = event.prompt_tokens
            if active.meter is not None:
                active.meter.started(event.prompt_tokens, event.cached_tokens)
        elif isinstance(event, Token):
            if active.meter is not None:
                active.meter.text(event.text)
            if event.reasoning:
                active.widget.write_reasoning(event.text)
            else:
                await active.widget.write(event.text)
            now = time.monotonic()
            if active.message_id is not None and now - active.last_flush >= FLUSH_INTERVAL:
                active.last_flush = now
                self.app.db(self.app.store.update_message, active.message_id, active.text, "streaming",
                            reasoning=active.widget.reasoning or None)
        elif isinstance(event, Finished):
            status = "stopped" if event.finish_reason == "cancelled" else "complete"
            text = event.text if event.text or not active.text else active.text
            self._calibrate_meter(active, event)
            await self._end_reply(text, status, self._finished_stats(event))
        elif isinstance(event, Failed) and event.interrupted:
            # the engine process ended under the reply: what was written is kept, marked interrupted
            # (as a reply cut by glmtui's own end is); the app says why and how to reload
            stats = {"error": event.message, "prompt_tokens": active.prompt_tokens, **active.written_by}
            await self._end_reply(active.text, "interrupted", stats)
        elif isinstance(event, Failed):
            stats = {"error": event.message, "prompt_tokens": active.prompt_tokens, **active.written_by}
            await self._end_reply(active.text, "error", stats)
            self.app.notify(event.message, severity="error", title="Generation failed")

    def _finished_stats(self, event: Finished) -> dict:
        stats = {
            "prompt_tokens": event.prompt_tokens,
            "completion_tokens": event.completion_tokens,
            "ttft": event.time_to_first_token,
            "tokens_per_s": event.tokens_per_second,
            "total_s": event.total_seconds,
            "finish_reason": event.finish_reason,
            "cached_tokens": event.cached_tokens,
            **(self.active.written_by if self.active is not None else {}),
        }
        context = self.app.loaded.context_length if self.app.loaded is not None else None
        if event.finish_reason == "length" and reached_context(event.prompt_tokens, event.completion_tokens, context):
            stats["context_limit"] = context
        return stats

    async def _replacement_failed(self, event: Failed) -> None:
        """The resent prompt (or regenerated reply) failed before it started: put everything back."""
        active = self.active
        assert active is not None and active.replacing is not None
        self.active = None
        self.meter.stop()
        replacing = active.replacing
        await self._roll_back(replacing)
        self._resume_collections_when_idle()
        if replacing.edit is not None:
            self._put_back(replacing.text)
        what = "the last exchange is unchanged" if replacing.edit is not None else "the last reply is unchanged"
        self.app.notify(f"{event.message} ({what})", severity="error", title="Generation failed")
        self.app.generation_state_changed()

    async def _end_reply(self, text: str, status: str, stats: dict) -> None:
        active = self.active
        assert active is not None
        active.ending = True  # ``active`` clears only once the reply is rendered and stored (tests wait on it)
        await active.widget.finish(text, status, stats)
        self.meter.stop()  # after the final render: hiding it is a layout of its own
        for turn in reversed(self.turns):
            if turn.widget is active.widget:
                turn.content, turn.status, turn.stats = text, status, stats
                turn.reasoning = active.widget.reasoning
                break
        if active.message_id is not None:
            self.app.db(self.app.store.update_message, active.message_id, text, status,
                        {k: v for k, v in stats.items() if v is not None}, reasoning=active.widget.reasoning or None)
        self.active = None
        self._resume_collections_when_idle()
        self.app.generation_state_changed()
        self.app.history_changed()

    def save_on_exit(self, status: str, final: Optional[Finished] = None) -> None:
        """glmtui closes mid-reply: keep what was written, marked ``status`` ("stopped", or
        "interrupted" when a signal closed it), with the token count of ``final`` (the engine's
        Finished for the cancelled reply, when it came in time). Called from App.on_unmount:
        touches the history file only, not the widgets."""
        active = self.active
        if active is None:
            return
        store = self.app.store
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
        reasoning = active.widget.reasoning
        if isinstance(final, Finished) and len(final.reasoning) > len(reasoning):
            reasoning = final.reasoning
        store.update_message(active.message_id, text, status, {k: v for k, v in stats.items() if v is not None},
                             reasoning=reasoning or None)
