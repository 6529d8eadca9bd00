"""PaneBar: the one line naming the panes in narrow terminals (click one to switch)."""

from __future__ import annotations

from typing import Any, Protocol, cast

from rich.text import Text
from textual.widgets import Static

PANES = ("chat", "history", "models", "monitor")
PANE_LABELS = {"chat": "Chat", "history": "History", "models": "Models", "monitor": "Monitor"}


class PaneBarHost(Protocol):
    """What the bar sets on its app (never imported from app.py: no import circle)."""

    current_pane: str  # the pane shown; the app reacts to it


class PaneBar(Static):
    """One line naming the panes (narrow terminals); click one to switch."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.current = "chat"
        self._spans: list[tuple[int, int, str]] = []

    def show(self, current: str) -> None:
        self.current = current
        text = Text()
        self._spans = []
        for i, pane in enumerate(PANES):
            if i:
                text.append(" │ ", style="dim")
            label = f" {PANE_LABELS[pane]} "
            start = len(text)
            text.append(label, style="reverse bold" if pane == current else "")
            self._spans.append((start, len(text), pane))
        text.append("   F2 switches", style="dim")
        self.update(text)

    def on_click(self, event: Any) -> None:
        for start, end, pane in self._spans:
            if start <= event.x < end:
                cast(PaneBarHost, self.app).current_pane = pane
                return
