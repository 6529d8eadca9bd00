"""The chat's prompt box: Enter sends, Ctrl+J adds a line, and every key applies in the order typed
while a reply streams."""

from __future__ import annotations

import time
from typing import Callable, Optional

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea

from .compat import WrapsDefaultKeys, propagation_stopped, run_focused_bindings


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

    def __init__(self, to_messages: Optional[Callable[[], None]] = None, **kwargs) -> None:
        super().__init__(
            soft_wrap=True,
            show_line_numbers=False,
            tab_behavior="focus",
            placeholder="Ask anything — Enter sends, Ctrl+J adds a line",
            **kwargs,
        )
        self._to_messages = to_messages  # Ctrl+Up: focus the conversation (the pane knows where it is)

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
        if self._to_messages is not None:
            self._to_messages()
