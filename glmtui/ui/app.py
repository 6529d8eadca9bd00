"""GlmApp: the full-screen TUI, and ``run_app`` for ``glmtui`` on the command line.
Kept whole past 400 lines: wiring and routing only; decisions live in the controllers.

The app wires and routes: it builds the store, the engine and the ModelController, composes the
panes and sends each message to the one it concerns. The engine's events come through
bridge.EngineBridge (GlmApp's engine side); the model's state lives in the ModelController
and reaches the panes as ModelChanged messages; the monitor samples on a thread of its own
(sampling.py). Nothing here imports torch or transformers: the model runs in the engine's
process (see glmtui.engine.process).

Layout by width (app.tcss): under MEDIUM columns one pane at a time with a pane bar
on top (F2 cycles); from MEDIUM the chat plus one side column (the pane F2 chose
last); from WIDE history | chat | monitor+models. The chat keeps most of the width.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Iterable, Optional

from textual import on
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import ModalScreen, Screen
from textual.widget import Widget
from textual.widgets import Static

from glmtui.config import Paths, default_paths
from glmtui.engine.api import MODES, default_mode
from glmtui.engine.events import GenerationParams
from glmtui.store import HistoryError

from . import palette, prefs
from .banner import UnsavedBanner
from .bridge import EngineBridge
from .chat import ChatHost, ChatPane
from .chat_text import params_to_dict
from .compat import notification_count
from .conversation_actions import ConversationActions
from .engine_metrics import metrics_server
from .footer import QuickFooter
from .hang_watch import silence_setting
from .history import HistoryPane
from .model_actions import ModelActions, ModelChanged
from .model_controller import (
    ModelController,
    Severity,
    make_engine,
)
from .models import ModelsPane
from .monitor import DecodeSpeed, MonitorPane
from .monitor_feed import MonitorFeed
from .mouse import MouseRelease
from .notice import EngineNotice
from .pane_focus import PaneFocus
from .panebar import PaneBar
from .signals import install_exit_on_signals, start_exit_watchdog
from .status import status_text
from .store_calls import store_calls
from .store_open import OpeningStore

# The chat is the full width below MEDIUM and never under 130 columns where side panes
# show: they fold away before they squeeze it (app.tcss has the widths).
MEDIUM = 160  # the chat + one side column (19% of the width, at least 30)
WIDE = 200  # history (13%) | chat | monitor+models (22%): the chat keeps 65% of the width


class GlmApp(ConversationActions, ModelActions, MonitorFeed, MouseRelease, PaneFocus, EngineBridge):
    """glmtui's TUI. Every collaborator can be injected (tests, web mode)."""

    CSS_PATH = "app.tcss"
    TITLE = "glmtui"
    AUTO_FOCUS = "#prompt"  # not the first focusable widget (the history search box)
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (MEDIUM, "-medium"), (WIDE, "-wide")]

    BINDINGS = [
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+r", "regenerate", "Regenerate"),
        Binding("ctrl+e", "edit_last", "Edit last"),
        Binding("ctrl+n", "new_chat", "New chat"),
        # priority: handled as the app receives them, so keys typed right after (F2 F2, Ctrl+F and a
        # search) reach the pane they open instead of the widget focused before
        Binding("f2", "next_pane", "Pane", priority=True),
        Binding("ctrl+f", "search", "Search", priority=True),
        Binding("ctrl+l", "load", "Load"),
        Binding("f9", "unload", "Unload"),
        Binding("f8", "quantization", "Quant"),
        Binding("ctrl+o", "settings", "Settings"),
        Binding("f3", "rename", "Rename"),
        Binding("f4", "delete_conversation", "Delete"),
        Binding("f5", "export", "Export"),
        Binding("ctrl+t", "change_theme", "Theme"),
        # named by the engine notice when they apply (not in the footer); priority: the prompt's own
        # F6/F7 (TextArea's select line / select all) get the key whenever these do not apply
        Binding("f6", "reload", "Reload", show=False, priority=True),
        Binding("f7", "kill_engine", "Kill engine", show=False, priority=True),
        Binding("f12", "toggle_mouse", "Mouse", show=False),
        Binding("f10", "cycle_mode", "Mode", show=False),  # Chat / Tool / Code (named in the chat header)
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    # Where a local model runs: "process" (an EngineProcess: torch never enters the TUI's process,
    # an unload gives everything back, a crash of the model leaves the TUI running) or "thread"
    # (the in-process InferenceWorker: tests that need speed set it, by class or constructor).
    LOCAL_ENGINE = "process"
    # Leave the process (os._exit) if it is still there SIGNAL_EXIT_GRACE s after a signal's exit saved
    # everything: set by run_app, the process's own entry point, never by an app hosted in another one.
    exit_watchdog = False

    def __init__(
        self,
        *,
        model: Optional[str] = None,
        mode: Optional[str] = None,
        device: str = "auto",
        endpoint: Optional[str] = None,
        engine: Any = None,
        sampler: Any = None,
        paths: Optional[Paths] = None,
        default_params: Optional[dict] = None,
        default_system_prompt: str = "",
        monitor_interval: Optional[float] = None,
        api: bool = False,
        api_port: int = 8000,
        api_key: Optional[str] = None,
        api_allow_hosts: tuple = (),
        local_engine: Optional[str] = None,
        engine_kind: str = "transformers",
    ) -> None:
        self.paths = paths or default_paths()
        self.local_engine = local_engine or self.LOCAL_ENGINE
        self.engine_kind = engine_kind  # "transformers" (glmtui's own) or "vllm" (a managed vLLM server)
        self.endpoint = endpoint
        self.initial_model = model
        self.default_params = params_to_dict(GenerationParams())
        self.default_params.update(default_params or {})
        self.default_system_prompt = default_system_prompt
        self.notes: list[tuple[Severity, str]] = []  # (severity, message) to show once mounted

        self.prefs, problem = prefs.load_prefs(self.paths.config_file)
        if problem:
            self.notes.append(("warning", problem))
        saved_mode = self.prefs.get("mode")
        mode = mode if mode in MODES else (saved_mode if saved_mode in MODES else default_mode(device or "auto"))
        super().__init__()

        themes, problems = prefs.load_themes(prefs.theme_dirs(self.paths.config_dir))
        for theme in themes:
            self.register_theme(theme)
        self.notes.extend(("warning", p) for p in problems)

        # opened on a thread (quick_check grows with the history): the first frame does not wait for it
        self.store_opening = OpeningStore(self.paths)
        self.store = self.store_opening.as_store()
        if engine is None:
            engine, self.endpoint = make_engine(self.endpoint, self.engine_kind, self.local_engine, self.notes)
        self.engine = engine
        self.model = ModelController(
            engine, paths=self.paths, mode=mode, device=device or "auto", endpoint=self.endpoint,
            emit=lambda change: self.post_message(ModelChanged(change)), tell=self.tell,
            save_mode=lambda mode: self._save_prefs(mode=mode), latest_snapshot=self._latest_snapshot,
            last_spec=model or "")
        self.model.hang.silent_after, problem = silence_setting(self.prefs)  # [ui] hang_after
        self.notes.extend([("warning", problem)] if problem else [])
        self._init_bridge()
        # the replies' measured decode speed (the offload warning's cost); before the UI's own listener,
        # so a reply's figure is in before the UI hears that it ended
        self.decode_speed = DecodeSpeed()
        self.engine.add_listener(self.decode_speed.note)
        self.engine.add_listener(self._engine_listener)
        self.sampler = sampler
        self.monitor_interval = monitor_interval
        self.api = api
        self.api_port = api_port
        # like `glmtui serve`: --api-key, else $GLMTUI_API_KEY; none means an open loopback server
        self.api_key = api_key or os.environ.get("GLMTUI_API_KEY") or None
        self.api_allow_hosts = tuple(api_allow_hosts or ())
        self._api_server: Any = None
        self._monitor_stop = threading.Event()
        self._focus_next: Optional[Widget] = None  # a widget to focus instead of the pane's usual one
        self._store_errors: set[str] = set()
        self.mouse_released = False  # F12: the terminal's own selection works (glmtui gets no mouse events)
        from .agent_view import AgentView

        self.agent = AgentView(self)  # the chat's Tool / Code modes

    # ------------------------------------------------------------------ setup

    def on_load(self) -> None:
        # the theme before any widget is styled: set later (on mount) it re-parsed all CSS and re-styled every widget
        saved_theme = self.prefs.get("theme")
        self.theme = saved_theme if isinstance(saved_theme, str) and saved_theme in self.available_themes \
            else prefs.DEFAULT_THEME

    def compose(self) -> ComposeResult:
        # the breakpoint classes arrive with the first resize; the first layout needs them already, and set
        # before the panes mount they are styled once (set on mount, every widget was styled a second time)
        width = self.size.width
        self.screen.set_class(width < MEDIUM, "-narrow")
        self.screen.set_class(MEDIUM <= width < WIDE, "-medium")
        self.screen.set_class(width >= WIDE, "-wide")
        yield PaneBar(id="pane-bar")
        with Horizontal(id="main", classes="-pane-chat -aside-history"):
            yield HistoryPane(id="history")
            self._chat = ChatPane(self._chat_host(), id="chat")  # kept: on_unmount runs after the DOM is gone
            yield self._chat
            with Vertical(id="side"):
                yield MonitorPane(self.decode_speed, metrics_server(self.endpoint, self.engine), id="monitor")
                yield ModelsPane(id="models")
        yield UnsavedBanner(id="unsaved")
        yield EngineNotice(id="engine-notice")
        yield Static(id="status")
        yield QuickFooter(compact=True)

    def on_mount(self) -> None:
        self.theme_changed_signal.subscribe(self, self._remember_theme)
        self.query_one(PaneBar).show(self.current_pane)
        self.chat_pane.input.focus()
        self._tell(self.notes)
        # the store's notes, banner and status once it is open; first in the store's queue of calls, so every
        # call asked for later runs after it (store_calls.py)
        store_calls(self).call(self.store_opening.wait).add_done_callback(lambda _done: self._store_opened())
        install_exit_on_signals(self._exit_on_signal)
        self.engine.start()
        # sampling (psutil, NVML's first calls) after the first frame: its thread would take turns with this one
        self.call_after_refresh(self._start_monitor)
        # a stored conversation opened before any load: its widgets' imports done by then, off this thread
        self.set_timer(1.0, self.warm_reply_imports)
        self._toast_count = 0
        self.set_interval(0.5, self._heal_after_toasts)
        self.app_resume_signal.subscribe(self, lambda _app: self._apply_mouse())  # Ctrl+Z/fg turns it on again
        self.refresh_status()
        self.show_unsaved()
        if self.initial_model:
            self.call_after_refresh(self.request_load, self.initial_model)
        if self.api:
            threading.Thread(target=self._start_api, name="glmtui-api-start", daemon=True).start()

    def _tell(self, notes: list[tuple[Severity, str]]) -> None:
        for severity, message in notes:
            self.notify(message, severity=severity, timeout=20 if severity != "information" else 5)

    def _store_opened(self) -> None:
        """The history store is open (or in memory): what its open found, the banner and the status line."""
        self._tell(self.store_opening.notes)
        try:
            self.refresh_status()
            self.show_unsaved()
        except NoMatches:
            pass  # the app is closing

    def _start_api(self) -> None:
        """``--api``: serve the OpenAI-compatible API over this app's engine (thread: imports FastAPI)."""
        try:
            from glmtui.server import ServerThread, create_app

            app = create_app(self.engine, "glmtui", self.api_key, allow_hosts=self.api_allow_hosts)
            server = ServerThread(app, port=self.api_port).start()
        except Exception as exc:  # noqa: BLE001 - the TUI keeps running without it
            self.call_from_thread(self.notify, f"{type(exc).__name__}: {exc}", severity="error", title="API server")
            return
        self._api_server = server
        self.call_from_thread(self.notify, f"OpenAI-compatible API on {server.url}/v1", title="API server", timeout=8)

    def _exit_on_signal(self, sig) -> None:
        self._ended_by_signal = sig
        self.exit(return_code=128 + int(sig))

    def on_unmount(self) -> None:
        self._monitor_stop.set()
        chat = getattr(self, "_chat", None)
        active = getattr(chat, "active", None)
        if chat is not None and active is not None:
            # quitting mid-reply: keep what was written, marked stopped (not left "streaming");
            # a signal (dropped SSH session, kill) marks it interrupted — the user did not stop it
            status = "interrupted" if getattr(self, "_ended_by_signal", None) else "stopped"
            final = self._cancel_and_wait(active.request_id, timeout=3.0)  # for its token count
            try:
                chat.save_on_exit(status, final)
            except Exception:  # noqa: BLE001 - the next start marks it interrupted instead
                pass
        try:
            self.agent.shutdown()  # a running send stops, the code kernel ends
        except Exception:  # noqa: BLE001 - closing: the rest still runs
            pass
        if self._api_server is not None:
            try:
                self._api_server.stop(timeout=3.0)
            except Exception:  # noqa: BLE001 - closing: the rest still runs
                pass
        try:
            self.engine.remove_listener(self._engine_listener)
        except Exception:  # noqa: BLE001 - closing: the rest still runs
            pass
        self.model.close()  # a running exact count ends, downloads are cancelled, the engine shuts down
        try:
            self.store.close()
        except Exception:  # noqa: BLE001 - closing: the rest still runs
            pass
        if getattr(self, "_ended_by_signal", None) and self.exit_watchdog:
            start_exit_watchdog(128 + int(self._ended_by_signal))

    # ------------------------------------------------------------------ accessors

    def db(self, fn: Callable, *args, **kwargs):
        """Run a history call; on failure tell the user (once per message) and return None."""
        try:
            return fn(*args, **kwargs)
        except (HistoryError, KeyError) as exc:
            message = str(exc) if isinstance(exc, HistoryError) else "that conversation no longer exists"
            if message not in self._store_errors:
                self._store_errors.add(message)
                self.notify(message, severity="error", title="History", timeout=15)
            return None
        finally:
            self.show_unsaved()

    def _chat_host(self) -> ChatHost:
        """What the chat pane may use of the app (it does not import this module)."""
        return ChatHost(store=self.store, engine=self.engine, loaded=lambda: self.loaded,
                        default_params=self.default_params, default_system_prompt=self.default_system_prompt,
                        agent=self.agent, generation_state_changed=self.generation_state_changed,
                        history_changed=self.history_changed)

    def show_unsaved(self) -> None:
        """Show or hide the banner saying chats are not being saved (a write failed, memory only, read-only file)."""
        try:
            self.query_one("#unsaved", UnsavedBanner).show_reason(self.store.unsaved)
        except NoMatches:
            pass  # not mounted yet: on_mount shows it

    def _heal_after_toasts(self) -> None:
        """Repaint the whole screen once a toast has gone.

        In a real terminal, a toast that expires in the same frame as a layout
        change elsewhere can leave its cells on screen (seen in tmux with
        Textual 8.2.8; the headless tests never show it): a full repaint after
        any toast goes away clears them.
        """
        count = notification_count(self)
        if count < self._toast_count:
            self.call_after_refresh(self.screen.refresh)
        self._toast_count = count

    def generation_state_changed(self) -> None:
        self.refresh_status()
        self.refresh_bindings()

    def history_changed(self) -> None:
        self.history_pane.set_current(self.chat_pane.conversation_id)

    def refresh_status(self) -> None:
        self.query_one("#status", Static).update(status_text(
            self.model, self.endpoint, self.chat_pane, self.store.in_memory, self.mouse_released,
            self.decode_speed.rate))

    # ------------------------------------------------------------------ chat actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("next_pane", "search") and (isinstance(self.screen, ModalScreen) or self.completion_shown()):
            return False  # priority keys: a dialog keeps them (and the panes behind it stay)
        try:
            chat = self.chat_pane
        except Exception:  # noqa: BLE001 - before compose
            return True
        if action == "stop":  # Esc also cancels an edit (Ctrl+E)
            return True if chat.streaming or chat.editing is not None else None
        if action in ("regenerate", "edit_last"):
            return None if chat.streaming or not chat.turns else True
        if action == "unload":
            return True if self.loaded is not None else None
        if action == "reload":  # nothing loaded or loading, and something to load again
            return self.model.can_reload and not isinstance(self.screen, ModalScreen)
        if action == "kill_engine":  # an engine process holds (or is loading) the model
            return getattr(self.engine, "pid", None) is not None and not isinstance(self.screen, ModalScreen)
        if action in ("rename", "delete_conversation", "export"):
            return True if self._target_conversation() is not None else None
        return True

    def action_stop(self) -> None:
        chat = self.chat_pane
        if chat.stop() or chat.cancel_edit():
            return
        if self.focused is not None and self.focused.id == "search":
            chat.input.focus()

    async def action_regenerate(self) -> None:
        await self.chat_pane.regenerate()

    async def action_edit_last(self) -> None:
        self.current_pane = "chat"
        await self.chat_pane.edit_last()

    async def action_new_chat(self) -> None:
        if await self.chat_pane.show_conversation(None):
            self.history_changed()
            self.current_pane = "chat"
            self.chat_pane.input.focus()
            self.refresh_status()
            self.refresh_bindings()

    def action_cycle_mode(self) -> None:
        self.agent.cycle_mode()
        self.chat_pane.refresh_header()

    def action_restart_kernel(self) -> None:
        self.agent.restart_kernel()

    def action_toggle_auto_tools(self) -> None:
        on = not bool(self.prefs.get("auto_run_builtin_tools"))
        self._save_prefs(auto_run_builtin_tools=on)
        self.agent.controller.auto_run_builtins = on
        self.notify("Built-in tools now run without asking." if on else "Every tool call is confirmed again.",
                    timeout=4)

    def action_completion_mode(self, conversation_id: Optional[int] = None) -> None:
        """Open the completion view (a stored completion, or a new one)."""
        shown = self.completion_shown()
        if shown is not None:
            if conversation_id is not None:
                self.call_later(shown.open, conversation_id)  # a coroutine: awaited there
            return
        from .completion import CompletionScreen  # with the first one opened: not needed for the first frame

        self.push_screen(CompletionScreen(conversation_id))

    @on(HistoryPane.Open)
    async def _open_conversation(self, message: HistoryPane.Open) -> None:
        conv = await self.store_call(self.store.get_conversation, message.conversation_id)  # off the UI thread
        if conv is not None and conv.kind == "completion":
            self.action_completion_mode(conv.id)
            return
        if await self.chat_pane.show_conversation(message.conversation_id):
            self.history_pane.set_current(self.chat_pane.conversation_id)
            self.current_pane = "chat"
            self.chat_pane.input.focus()
            self.refresh_status()
            self.refresh_bindings()

    def action_settings(self) -> None:
        chat = self.chat_pane

        def done(result) -> None:
            if result is not None:
                system_prompt, values = result
                chat.apply_settings(system_prompt, values)
                self.notify("Settings saved for this conversation.", timeout=3)

        from .dialogs.settings import SettingsModal, loaded_thinking_switch  # imported when first opened

        self.push_screen(SettingsModal(chat.system_prompt, chat.generation_params(),
                                       thinking_switch=loaded_thinking_switch(self)), done)

    # ------------------------------------------------------------------ command palette

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        return palette.system_commands(self, super().get_system_commands(screen))



def run_app(args) -> int:
    """Entry point for ``glmtui`` (args from glmtui.cli)."""
    app = GlmApp(
        model=getattr(args, "model", None),
        mode=getattr(args, "mode", None),
        device=getattr(args, "device", "auto") or "auto",
        endpoint=getattr(args, "endpoint", None),
        api=bool(getattr(args, "api", False)),
        api_key=getattr(args, "api_key", None),
        api_allow_hosts=tuple(getattr(args, "allow_host", None) or ()),
        engine_kind=getattr(args, "engine", None) or "transformers",
    )
    app.exit_watchdog = True
    app.run()
    return 0 if app.return_code in (None, 0) else int(app.return_code)
