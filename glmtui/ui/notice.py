"""EngineNotice: the line that stays while the engine needs the user (it ended, or it does not answer)."""

from __future__ import annotations

from typing import Any, Optional

from rich.text import Text
from textual.widgets import Static


class EngineNotice(Static):
    """A line that stays while the engine needs the user: it ended (the cause, and the key that
    reloads) or it does not answer (the key that kills it). Hidden, taking no space, otherwise."""

    DEFAULT_CSS = """
    EngineNotice {
        display: none;
        height: auto;
        max-height: 4;
        padding: 0 1;
        background: $warning-muted;
        color: $text;
    }
    EngineNotice.-shown { display: block; }
    EngineNotice.-exited { background: $error-muted; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("", **kwargs)
        self.kind: Optional[str] = None  # None, "exited" or "unresponsive"
        self.message: Any = ""

    def show_notice(self, kind: Optional[str], message: Any = "") -> None:
        self.kind, self.message = kind, message
        self.update(message)
        self.set_class(kind is not None, "-shown")
        self.set_class(kind == "exited", "-exited")

    def show_exited(self, message: str, again: str, log_path: Optional[str]) -> None:
        """The engine process ended unasked: why, the key that loads again, and its log."""
        text = Text("✗ ", style="bold")
        text.append(message.rstrip("."), style="bold")
        text.append(f". {again}", style="bold")
        if log_path:
            text.append(f" · log {log_path}", style="dim")
        self.show_notice("exited", text)

    def show_unresponsive(self, message: str, seconds: float) -> None:
        """No answer for ``seconds`` (0: it answers again, and a shown warning goes)."""
        if seconds > 0:
            self.show_notice("unresponsive",
                             Text(f"⚠ {message.rstrip('.')}. F7 kills it (the reply so far is kept).", style="bold"))
        elif self.kind == "unresponsive":
            self.show_notice(None)
