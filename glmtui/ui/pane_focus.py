"""Which pane is shown and focused: F2 cycles them, focus moving by Tab or a click selects its pane."""

from __future__ import annotations

from typing import Any

from textual.app import ScreenStackError
from textual.dom import NoScreen
from textual.screen import ModalScreen

from .app_base import AppBase
from .panebar import PANES, PaneBar


class PaneFocus(AppBase):
    def watch_current_pane(self, pane: str) -> None:
        main = self.query_one("#main")
        for name in PANES:
            main.set_class(name == pane, f"-pane-{name}")
        if pane != "chat":  # the medium layout's side column shows the pane chosen last
            for name in PANES[1:]:
                main.set_class(name == pane, f"-aside-{name}")
        self.query_one(PaneBar).show(pane)
        target = self._focus_next or self._pane_focus_target(pane)
        self._focus_next = None
        focused = self.focused
        if target is not None and (focused is None or not self._in_pane(focused, pane)):
            # Focus now, not after the queued messages (Widget.focus): keys that arrived with this
            # one (F2 F2, Ctrl+F Down) go to the new pane, and a focus event of an earlier pane
            # key, delivered late, no longer matches the focused widget (on_descendant_focus).
            target.screen.set_focus(target)
            # in the narrow layout the pane is displayed only after the next layout, and Textual
            # may move focus off the widget it just hid: settle it once that is done
            self.set_timer(0.05, lambda: self._settle_pane_focus(pane, target))

    def _settle_pane_focus(self, pane: str, target: Any) -> None:
        if self.current_pane != pane or isinstance(self.screen, ModalScreen):
            return
        if self.focused is not target:
            target.focus()

    def _pane_focus_target(self, pane: str) -> Any:
        if pane == "chat":
            return self.chat_pane.input
        if pane == "history":
            return self.history_pane.option_list
        if pane == "models":
            return self.models_pane.option_list
        return self.monitor_pane

    def on_descendant_focus(self, event: Any) -> None:
        """Focus moved by the user (Tab, a click) or by code selects the pane it landed in."""
        widget = getattr(event, "widget", None)
        try:
            if widget is None or widget.screen is not self.screen or widget is not self.focused:
                return  # late: focus has moved on since (keys that arrived together)
        except (NoScreen, ScreenStackError):  # the app is closing
            return
        for pane in PANES:
            if self._in_pane(widget, pane):
                if self.current_pane != pane:
                    self.current_pane = pane
                return

    def action_next_pane(self) -> None:
        self.current_pane = PANES[(PANES.index(self.current_pane) + 1) % len(PANES)]

    def action_search(self) -> None:
        search = self.history_pane.search_input
        if self.current_pane != "history":
            self._focus_next = search
            self.current_pane = "history"
        search.screen.set_focus(search)  # at once: Down typed right after reaches the search box
