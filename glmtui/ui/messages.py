"""The conversation's widgets: UserMessage, AssistantMessage (a reply streaming into its Markdown, with
status and stats under it) and MessageList (the scrolling list; y / c / t on the selected message)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Optional

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widget import Widget
from textual.widgets import Static

from .chat_text import ENGINE_INTERRUPTED_LABEL, STATUS_LABELS, format_stats, shown_text, visible
from .reasoning import ReasoningBlock

# Markdown (and markdown-it, copying's code blocks) are imported by the first reply shown: the empty chat of
# the first frame does not need them
if TYPE_CHECKING:  # pragma: no cover
    from textual.widgets import Markdown
    from textual.widgets.markdown import MarkdownStream

    from .copying import CodeBlock


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
        self._stream: Optional[MarkdownStream] = None

    def compose(self) -> Iterable:
        from .reply_markdown import ReplyMarkdown

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
        from textual.widgets import Markdown

        return self.query_one(Markdown)

    def start_stream(self) -> None:
        from .reply_markdown import ReplyMarkdown

        self.status = "streaming"
        markdown = self.markdown
        if isinstance(markdown, ReplyMarkdown):
            markdown.follow(self.parent if isinstance(self.parent, Widget) else None)
        self._stream = type(markdown).get_stream(markdown)
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
        from .reply_markdown import ReplyMarkdown

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
            from .reply_markdown import complete_stream

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

    def __init__(self, esc_taken: Callable[[], bool] = lambda: False, back: Optional[Callable[[], None]] = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self._esc_taken = esc_taken  # Esc has another use now (the app's: stop a reply, cancel an edit)
        self._back = back  # Esc otherwise: back to the prompt
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
            return not self._esc_taken()
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
        if self._back is not None:
            self._back()

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
        from .copying import copied_text_note

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
        from .copying import CodePickerModal, code_blocks

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
        from .copying import copied_block_note

        self.app.copy_to_clipboard(block.code)
        self.app.notify(copied_block_note(block), timeout=3)
