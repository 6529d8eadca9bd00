"""AppBase: what GlmApp's parts share: the panes, the state they read, and the hooks GlmApp implements.

GlmApp is put together from parts of one job each (bridge.EngineBridge, pane_focus.PaneFocus,
model_actions.ModelActions, conversation_actions.ConversationActions), all subclasses of this.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable, Optional

from textual.app import App
from textual.reactive import reactive
from textual.widget import Widget

from glmtui.config import Paths, ensure_private_dir
from glmtui.store import HistoryStore

from . import prefs as prefs_file
from .chat import ChatPane
from .history import HistoryPane
from .model_controller import ModelController
from .models import ModelsPane
from .monitor import MonitorPane

# The completion view's module: imported when the first one opens (the first frame does not need it)
_COMPLETION = f"{__package__}.completion"


class AppBase(App):
    current_pane: reactive[str] = reactive("chat", init=False)

    paths: Paths
    store: HistoryStore
    engine: Any
    model: ModelController
    endpoint: Optional[str]
    prefs: dict
    _focus_next: Optional[Widget]
    sampler: Any
    monitor_interval: Optional[float]
    _monitor_stop: threading.Event
    mouse_released: bool

    @property
    def chat_pane(self) -> ChatPane:
        return self.query_one("#chat", ChatPane)

    @property
    def history_pane(self) -> HistoryPane:
        return self.query_one("#history", HistoryPane)

    @property
    def models_pane(self) -> ModelsPane:
        return self.query_one("#models", ModelsPane)

    @property
    def monitor_pane(self) -> MonitorPane:
        return self.query_one("#monitor", MonitorPane)

    def completion_screens(self) -> list[Any]:
        """The completion views in the screen stack (none before its module is first imported)."""
        module = sys.modules.get(_COMPLETION)
        return [] if module is None else [s for s in self.screen_stack if isinstance(s, module.CompletionScreen)]

    def completion_shown(self) -> Any:
        """The completion view when it is the screen shown, else None."""
        shown = self.completion_screens()
        return shown[-1] if shown and shown[-1] is self.screen else None

    def _pane_widget(self, pane: str) -> Any:
        return self.query_one(f"#{pane}")

    def _in_pane(self, widget: Any, pane: str) -> bool:
        container = self._pane_widget(pane)
        node = widget
        while node is not None:
            if node is container:
                return True
            node = node.parent
        return False

    def _remember_theme(self, theme: Any) -> None:
        self._save_prefs(theme=theme.name)

    def _save_prefs(self, **values: Any) -> None:
        """Remember ``values`` in config.toml's [ui] (a failure is a warning: the session keeps them)."""
        self.prefs.update(values)
        try:
            ensure_private_dir(self.paths.config_dir)
            prefs_file.save_prefs(self.paths.config_file, values)
        except OSError as exc:
            self.notify(f"Could not save settings to {self.paths.config_file}: {exc}", severity="warning")

    # hooks GlmApp implements
    def refresh_status(self) -> None:
        raise NotImplementedError

    def history_changed(self) -> None:
        raise NotImplementedError

    def action_completion_mode(self, conversation_id: Optional[int] = None) -> None:
        raise NotImplementedError

    def db(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError
