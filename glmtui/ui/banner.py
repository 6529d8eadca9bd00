"""UnsavedBanner: a line that stays on screen while chats are not being saved.

A toast goes away after a few seconds while the problem (a history kept in
memory, a read-only file, writes that keep failing) goes on; this banner is
shown for as long as :attr:`HistoryStore.unsaved` gives a reason, and hidden
(taking no space) as soon as it does not.
"""

from __future__ import annotations

from typing import Optional

from textual.widgets import Static


class UnsavedBanner(Static):
    DEFAULT_CSS = """
    UnsavedBanner {
        display: none;
        height: auto;
        max-height: 3;
        padding: 0 1;
        background: $error;
        color: $text;
        text-style: bold;
    }
    UnsavedBanner.-shown {
        display: block;
    }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.reason: Optional[str] = None

    def show_reason(self, reason: Optional[str]) -> None:
        """Show why chats are not being saved; None hides the banner."""
        if reason == self.reason:
            return
        self.reason = reason
        if reason:
            self.update(f"⚠ Chats are not being saved. {reason}")
        self.set_class(bool(reason), "-shown")
