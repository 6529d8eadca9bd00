"""A reasoning model's <think> text above its answer: dimmed, collapsible.

While the reasoning streams the block is open and shows its last lines (rendering only a tail keeps
each frame's cost flat however long the model thinks); once the answer starts it folds to a one-line
header. ``toggle()`` (a key on the focused message) opens it in full or folds it again.
"""

from __future__ import annotations

from rich.text import Text
from textual.containers import Vertical
from textual.widgets import Static

TAIL_LINES = 8  # lines shown while the reasoning streams
TAIL_CHARS = 4000  # at most this much text is laid out per streamed frame


class ReasoningBlock(Vertical):
    DEFAULT_CSS = """
    ReasoningBlock { height: auto; margin: 0 0 1 0; }
    ReasoningBlock.-empty { display: none; }
    ReasoningBlock > .reasoning-head { color: $text-muted; text-style: italic; }
    ReasoningBlock > .reasoning-body { color: $text-muted; text-style: dim; padding: 0 0 0 2;
                                       border-left: vkey $foreground 20%; }
    ReasoningBlock.-folded > .reasoning-body { display: none; }
    """

    def __init__(self, text: str = "", streaming: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.text = text
        self.streaming = streaming
        self.folded = not streaming  # a stored reply's reasoning starts folded
        self._head = Static(classes="reasoning-head")
        self._body = Static(classes="reasoning-body")

    def compose(self):
        yield self._head
        yield self._body

    def on_mount(self) -> None:
        self._render_all()

    def append(self, fragment: str) -> None:
        """More reasoning while the reply streams."""
        if not fragment:
            return
        self.text += fragment
        if not self.streaming:  # the first of it: shown open while it streams
            self.streaming, self.folded = True, False
        self._render_all()

    def answer_started(self) -> None:
        """The answer begins: the reasoning is done and folds away."""
        if self.streaming:
            self.streaming = False
            self.folded = True
            self._render_all()

    def finish(self) -> None:
        """The reply ended (a reply cut off while thinking keeps its reasoning open, it is all there is)."""
        if self.streaming:
            self.streaming = False
            self._render_all()

    def toggle(self) -> bool:
        """Open or fold the block; False when there is no reasoning to show."""
        if not self.text:
            return False
        self.folded = not self.folded
        self._render_all()
        return True

    def _render_all(self) -> None:
        self.set_class(not self.text, "-empty")
        self.set_class(self.folded, "-folded")
        words = len(self.text.split())
        if self.streaming:
            head = f"Thinking… ({words} words)"
        elif self.folded:
            head = f"▸ Reasoning ({words} words) — t shows it"
        else:
            head = f"▾ Reasoning ({words} words) — t folds it"
        self._head.update(Text(head))
        if self.folded:
            return
        if self.streaming:  # the tail only: a frame's cost does not grow with the reasoning
            tail = self.text[-TAIL_CHARS:].strip("\n").split("\n")[-TAIL_LINES:]
            shown = ("…\n" if len(tail) < self.text.count("\n") + 1 else "") + "\n".join(tail)
        else:
            shown = self.text
        from .chat_text import visible  # control characters as pictures, as in the answer

        self._body.update(Text(visible(shown)))
