"""GlmApp: the full-screen TUI, and ``run_app`` for ``glmtui`` on the command line.

Threads: the engine (an EngineProcess by default, a RemoteEngine with an
endpoint) calls our listener on its own thread; the listener only posts an
:class:`EngineEvent` to the app. The monitor samples in a small daemon thread
of its own and posts :class:`MonitorUpdate`. Downloads report through
:class:`DownloadUpdate`. Nothing here imports torch or transformers: the model
runs in the engine's process (see glmtui.engine.process).

Layout by width (app.tcss): under MEDIUM columns one pane at a time with a pane bar
on top (F2 cycles); from MEDIUM the chat plus one side column (the pane F2 chose
last); from WIDE history | chat | monitor+models. The chat keeps most of the width.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult, ScreenStackError, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.dom import NoScreen
from textual.message import Message
from textual.reactive import reactive
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

from glmtui import catalog
from glmtui.config import Paths, default_paths, ensure_private_dir
from glmtui.engine.api import default_mode
from glmtui.resolve import resolve_model
from glmtui.engine.events import (
    EngineExited,
    EngineUnresponsive,
    Failed,
    Finished,
    GenerationParams,
    Loaded,
    LoadProgress,
    Started,
    Token,
    Unloaded,
)
from glmtui.store import HistoryError, HistoryStore

from . import prefs
from .chat import ChatPane, params_to_dict
from .completion import CompletionScreen
from .compat import app_driver, notification_count, set_mouse_reporting
from .banner import UnsavedBanner
from .dialogs.settings import loaded_thinking_switch
from .footer import QuickFooter
from .history import HistoryPane
from .modals import ConfirmModal, LoadModal, ModeModal, SettingsModal, TextModal
from .models import MODES, ModelsPane
from .monitor import DecodeSpeed, MonitorPane, fmt_bytes, offload_warning, process_rss

PANES = ("chat", "history", "models", "monitor")
PANE_LABELS = {"chat": "Chat", "history": "History", "models": "Models", "monitor": "Monitor"}
# The chat is the full width below MEDIUM and never under 130 columns where side panes
# show: they fold away before they squeeze it (app.tcss has the widths).
MEDIUM = 160  # the chat + one side column (19% of the width, at least 30)
WIDE = 200  # history (13%) | chat | monitor+models (22%): the chat keeps 65% of the width


class EngineEvent(Message):
    def __init__(self, event: Any) -> None:
        super().__init__()
        self.event = event


STREAM_FRAME = 0.1  # seconds between re-renders of a streaming reply
SIGNAL_EXIT_GRACE = 5.0  # seconds the process may take to end after a signal, once all is saved


class TokensReady(Message):
    """Streamed text is waiting in the app's token buffer (at most one of these is queued)."""


class MonitorUpdate(Message):
    def __init__(self, snapshot: Any) -> None:
        super().__init__()
        self.snapshot = snapshot


class DownloadUpdate(Message):
    def __init__(self, job: Any) -> None:
        super().__init__()
        self.job = job


class PaneBar(Static):
    """One line naming the panes (narrow terminals); click one to switch."""

    def __init__(self, **kwargs) -> None:
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

    def on_click(self, event) -> None:
        for start, end, pane in self._spans:
            if start <= event.x < end:
                self.app.current_pane = pane  # type: ignore[attr-defined]
                return


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

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.kind: Optional[str] = None  # None, "exited" or "unresponsive"
        self.message = ""

    def show_notice(self, kind: Optional[str], message: str = "") -> None:
        self.kind, self.message = kind, message
        self.update(message)
        self.set_class(kind is not None, "-shown")
        self.set_class(kind == "exited", "-exited")


class GlmApp(App):
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

    # (action, title, help) for the command palette; keys are added from BINDINGS
    COMMAND_LIST = (
        ("stop", "Stop reply", "Stop the reply being written; the partial text is kept, marked stopped"),
        ("regenerate", "Regenerate", "Write the last reply again"),
        ("edit_last", "Edit last prompt", "Put the last prompt back in the input to edit and resend"),
        ("new_chat", "New chat", "Start an empty conversation"),
        ("completion_mode", "Completion mode", "Continue raw text with the model (base models open in it; "
         "Ctrl+G continues, Ctrl+R regenerates, Ctrl+E edits the prompt, Esc back)"),
        ("next_pane", "Switch pane", "Chat → History → Models → Monitor"),
        ("search", "Search history", "Full-text search over every conversation"),
        ("rename", "Rename conversation", "Rename the current (or highlighted) conversation"),
        ("delete_conversation", "Delete conversation", "Delete the current (or highlighted) conversation, after asking"),
        ("export", "Export conversation", "Write Markdown and JSON copies to the data folder"),
        ("settings", "Chat settings", "System prompt, temperature, top-p, max new tokens, repetition penalty"),
        ("load", "Load model", "Load a model folder or catalogue model, in a quantization mode, on a device"),
        ("unload", "Unload model", "Free the loaded model's memory"),
        ("reload", "Reload model", "Load the last model again, in the same mode (after the engine process ended)"),
        ("kill_engine", "Kill engine process", "End the model's process at once (a hung engine); the reply so far is kept"),
        ("quantization", "Change quantization", "bf16 / fp16 / fp32 / int8 / int4, with predicted memory"),
        ("download_model", "Download model", "Download the model highlighted in Models"),
        ("cancel_download", "Cancel download", "Cancel the highlighted model's download"),
        ("toggle_download_source", "Switch download source", "Download from Hugging Face or ModelScope"),
        ("toggle_engine_log", "Engine log", "Show or hide the last lines of the engine process's log under Models"),
        ("cycle_mode", "Switch mode: Chat / Tool / Code", "Tool: the model may call tools (built-ins and "
         "~/.config/glmtui/tools/*.json); Code: it may run Python in a kernel; each call after you confirm"),
        ("restart_kernel", "Restart code kernel", "A fresh Jupyter kernel for Code mode (variables are lost)"),
        ("toggle_auto_tools", "Auto-run built-in tools", "Run the built-in tools (time, arithmetic, units) "
         "without asking; on/off, saved"),
        ("toggle_mouse", "Release the mouse", "Let the terminal select and copy text itself (over SSH too); "
         "again gives the mouse back to glmtui"),
    )

    current_pane: reactive[str] = reactive("chat", init=False)

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
        self.device = device or "auto"
        self.endpoint = endpoint
        self.initial_model = model
        self.default_params = params_to_dict(GenerationParams())
        self.default_params.update(default_params or {})
        self.default_system_prompt = default_system_prompt
        self.notes: list[tuple[str, str]] = []  # (severity, message) to show once mounted

        self.prefs, problem = prefs.load_prefs(self.paths.config_file)
        if problem:
            self.notes.append(("warning", problem))
        saved_mode = self.prefs.get("mode")
        self.mode = mode if mode in MODES else (saved_mode if saved_mode in MODES else default_mode(self.device))
        super().__init__()

        themes, problems = prefs.load_themes(prefs.theme_dirs(self.paths.config_dir))
        for theme in themes:
            self.register_theme(theme)
        self.notes.extend(("warning", p) for p in problems)

        self.store = self._open_store()
        self.engine = engine if engine is not None else self._make_engine()
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
        self._api_server = None
        self._monitor_stop = threading.Event()
        self._downloads = None
        # Tokens from the worker wait here until the UI takes them all at once.
        self._token_lock = threading.Lock()
        self._token_buffer: list[tuple[tuple[int, bool], list[str]]] = []  # (request id, reasoning): texts
        self._tokens_posted = False

        self._focus_next = None  # a widget to focus instead of the pane's usual one
        self.loaded: Optional[Loaded] = None
        self.loading_label: Optional[str] = None
        self.unloaded_note: Optional[str] = None
        self._memory_before_load: tuple[str, Optional[int]] = ("", None)
        self._awaiting_import_baseline = False
        self._rss_after_imports: Optional[int] = None
        self._final_waiter: Optional[tuple[int, list, threading.Event]] = None
        self._unload_check_at: Optional[float] = None
        self.extra_model_paths: list[str] = []
        self.last_spec = model or ""
        self.last_load: Optional[tuple[str, str, str]] = None  # (folder, mode, label) of the last local load
        self._store_errors: set[str] = set()
        self.mouse_released = False  # F12: the terminal's own selection works (glmtui gets no mouse events)
        from .agent_view import AgentView

        self.agent = AgentView(self)  # the chat's Tool / Code modes

    # ------------------------------------------------------------------ setup

    def _open_store(self) -> HistoryStore:
        try:
            store = HistoryStore.open(self.paths.history_db)
        except HistoryError as exc:
            self.notes.append(("error", f"{exc} Chats are kept in memory for this session only."))
            return HistoryStore.open_memory(reason=f"They are kept in memory for this session only. {exc}")
        except Exception as exc:  # noqa: BLE001 - never refuse to start over history
            self.notes.append(("error", f"Chat history unavailable ({exc}); kept in memory for this session only."))
            return HistoryStore.open_memory(reason=f"They are kept in memory for this session only ({exc}).")
        if store.warning:
            self.notes.append(("warning", store.warning))
        if store.notice:
            self.notes.append(("information", store.notice))
        return store

    def _make_engine(self):
        if self.endpoint:
            try:
                from glmtui.engine.remote import RemoteEngine

                return RemoteEngine(self.endpoint)
            except Exception as exc:  # noqa: BLE001 - say why, run locally instead
                self.notes.append(("error", f"Cannot use the endpoint {self.endpoint} ({exc}); running models locally."))
                self.endpoint = None
        from glmtui.engine.choose import SwitchingEngine

        # glmtui's own engine or the managed vLLM server (--engine); the load dialog switches between them
        return SwitchingEngine(self.engine_kind, in_process=self.local_engine == "thread")

    def compose(self) -> ComposeResult:
        yield PaneBar(id="pane-bar")
        with Horizontal(id="main", classes="-pane-chat -aside-history"):
            yield HistoryPane(id="history")
            self._chat = ChatPane(id="chat")  # kept: on_unmount runs after the DOM is gone
            yield self._chat
            with Vertical(id="side"):
                yield MonitorPane(id="monitor")
                yield ModelsPane(id="models")
        yield UnsavedBanner(id="unsaved")
        yield EngineNotice(id="engine-notice")
        yield Static(id="status")
        yield QuickFooter(compact=True)

    def on_mount(self) -> None:
        # the breakpoint classes arrive with the first resize; the first layout needs them already
        width = self.size.width
        self.screen.set_class(width < MEDIUM, "-narrow")
        self.screen.set_class(MEDIUM <= width < WIDE, "-medium")
        self.screen.set_class(width >= WIDE, "-wide")
        self.theme = self.prefs.get("theme") if self.prefs.get("theme") in self.available_themes else prefs.DEFAULT_THEME
        self.theme_changed_signal.subscribe(self, self._remember_theme)
        self.query_one(PaneBar).show(self.current_pane)
        self.chat_pane.input.focus()
        for severity, message in self.notes:
            self.notify(message, severity=severity, timeout=20 if severity != "information" else 5)
        self._install_signal_handlers()
        self.engine.start()
        self._start_monitor()
        self._toast_count = 0
        self.set_interval(0.5, self._heal_after_toasts)
        self.app_resume_signal.subscribe(self, lambda _app: self._apply_mouse())  # Ctrl+Z/fg turns it on again
        self.refresh_status()
        self.show_unsaved()
        if self.initial_model:
            self.call_after_refresh(self.request_load, self.initial_model)
        if self.api:
            threading.Thread(target=self._start_api, name="glmtui-api-start", daemon=True).start()

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

    def _install_signal_handlers(self) -> None:
        """SIGTERM, and SIGHUP when an SSH session drops: leave as cleanly as Ctrl+Q does.

        The default action would kill the process mid-reply with the latest
        seconds of the reply unsaved and the worker never told to stop.
        """
        import asyncio
        import signal

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            try:
                loop.add_signal_handler(sig, self._exit_on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError, AttributeError):
                pass  # not the main thread (tests) or no such signal here

    def _exit_on_signal(self, sig) -> None:
        self._ended_by_signal = sig
        self.exit(return_code=128 + int(sig))

    def on_unmount(self) -> None:
        self._monitor_stop.set()
        chat = getattr(self, "_chat", None)
        active = getattr(chat, "active", None)
        if active is not None:
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
        except Exception:  # noqa: BLE001
            pass
        if self._api_server is not None:
            try:
                self._api_server.stop(timeout=3.0)
            except Exception:  # noqa: BLE001
                pass
        if self._downloads is not None:
            try:
                self._downloads.close(cancel=True, timeout=2.0)
            except Exception:  # noqa: BLE001
                pass
        try:
            self.engine.remove_listener(self._engine_listener)
        except Exception:  # noqa: BLE001
            pass
        try:
            self.engine.shutdown(timeout=5.0)
        except Exception:  # noqa: BLE001
            pass
        try:
            self.store.close()
        except Exception:  # noqa: BLE001
            pass
        if getattr(self, "_ended_by_signal", None) and self.exit_watchdog:
            self._exit_watchdog(128 + int(self._ended_by_signal))

    def _exit_watchdog(self, code: int) -> None:
        """After a signal, everything is saved by now: leave within SIGNAL_EXIT_GRACE s whatever happens next.

        With the terminal gone (a dropped SSH session), Textual's driver.close() was seen blocked
        for good on its writer thread's queue (stack: App._shutdown -> LinuxDriver.close ->
        WriterThread.stop -> Queue.put), leaving a glmtui that never exits."""
        def leave() -> None:
            time.sleep(SIGNAL_EXIT_GRACE)
            os._exit(code)

        threading.Thread(target=leave, name="glmtui-exit-watchdog", daemon=True).start()

    # ------------------------------------------------------------------ accessors

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

    def show_unsaved(self) -> None:
        """Show or hide the banner saying chats are not being saved (a write failed, memory only, read-only file)."""
        try:
            self.query_one("#unsaved", UnsavedBanner).show_reason(self.store.unsaved)
        except NoMatches:
            pass  # not mounted yet: on_mount shows it

    def free_memory(self) -> tuple[str, Optional[int]]:
        return self.monitor_pane.free_for_model(self.device)

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

    # ------------------------------------------------------------------ theme

    def _remember_theme(self, theme) -> None:
        self._save_prefs(theme=theme.name)

    def _save_prefs(self, **values) -> None:
        self.prefs.update(values)
        try:
            ensure_private_dir(self.paths.config_dir)
            prefs.save_prefs(self.paths.config_file, values)
        except OSError as exc:
            self.notify(f"Could not save settings to {self.paths.config_file}: {exc}", severity="warning")

    # ------------------------------------------------------------------ monitor

    def _start_monitor(self) -> None:
        if self.sampler is None:
            from glmtui.monitor import Sampler

            self.sampler = Sampler(self.monitor_interval or 1.0)
        track = getattr(self.sampler, "track_engine", None)
        if track is not None:  # the engine's processes are glmtui's own rows and figures
            track(self._engine_pids)
        interval = self.monitor_interval or getattr(self.sampler, "interval", 1.0) or 1.0
        sampler, stop = self.sampler, self._monitor_stop

        def poll() -> None:
            while not stop.is_set():
                try:
                    snapshot = sampler.sample()
                except Exception:  # noqa: BLE001 - sample() should never raise; keep going anyway
                    snapshot = None
                if snapshot is not None and not stop.is_set():
                    self.post_message(MonitorUpdate(snapshot))
                stop.wait(max(0.25, interval))
            close = getattr(sampler, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001
                    pass

        threading.Thread(target=poll, name="glmtui-monitor", daemon=True).start()

    def on_monitor_update(self, message: MonitorUpdate) -> None:
        try:
            if self._monitor_stop.is_set() or not self.screen.is_mounted:
                return  # a sample still queued while the app shuts down: the panes are gone
        except ScreenStackError:  # the same, once the screens are gone
            return
        try:
            first = self.monitor_pane.snapshot is None
        except NoMatches:
            return
        try:
            self.monitor_pane.show(message.snapshot)
        except NoMatches:  # its body is already gone (the app is closing)
            return
        if first:
            self.models_pane.refresh_detail()
        if self._unload_check_at is not None and time.monotonic() >= self._unload_check_at and self.loaded is None:
            self._unload_check_at = None
            kind, before = self._memory_before_load
            now_kind, after = self._own_memory()
            snap = message.snapshot
            reserved = sum(t.reserved for t in (snap.torch or ())) if snap is not None else None
            imports = self._rss_after_imports if kind == "RAM" else None
            note = unload_memory_note(kind, before, after, reserved, imports) if kind == now_kind else None
            if note:
                self.unloaded_note = note
                self.models_pane.refresh_info()
                self.notify(note, title="Memory after unload", timeout=8)

    def _engine_pids(self) -> tuple[int, ...]:
        """The engine's processes now (the monitor's thread asks; this process's own pid left out)."""
        try:
            return tuple(p for p in self.engine.memory_report().pids if p != os.getpid())
        except Exception:  # noqa: BLE001
            return ()

    def _engine_in_this_process(self) -> bool:
        try:
            return os.getpid() in self.engine.memory_report().pids
        except Exception:  # noqa: BLE001 - a report is no reason to fail a load
            return False

    def _own_memory(self) -> tuple[str, Optional[int]]:
        """glmtui's memory (this process and its engine processes) as the monitor last saw it: on the GPUs,
        else resident RAM."""
        snap = self.monitor_pane.snapshot
        if snap is None:
            return ("", None)
        if snap.has_gpu:
            used = [g.self_used_bytes for g in snap.gpus if g.self_used_bytes is not None]
            if used:
                return ("GPU", sum(used))
        return ("RAM", snap.host.process_rss)

    # ------------------------------------------------------------------ engine events

    def _cancel_and_wait(self, request_id: int, timeout: float) -> Optional[Finished]:
        """Cancel a generation and wait (at most ``timeout`` s) for its Finished: quitting mid-reply."""
        waiter: tuple[int, list, threading.Event] = (request_id, [], threading.Event())
        self._final_waiter = waiter
        try:
            self.engine.cancel(request_id)
            waiter[2].wait(timeout)
        except Exception:  # noqa: BLE001 - an engine already gone
            pass
        finally:
            self._final_waiter = None
        return next((e for e in waiter[1] if isinstance(e, Finished)), None)

    def _engine_listener(self, event) -> None:
        """Called on the worker thread: hand over, never block.

        Tokens are coalesced: they go into a buffer and at most one
        TokensReady message is queued at a time, so while the UI renders,
        later tokens pile up and are written in one go. One message and one
        Markdown write per token made the UI's share of the GIL slow the
        model itself (bench/bench_stream.py: 0.55 of plain generate).
        """
        waiter = self._final_waiter
        if waiter is not None and isinstance(event, (Finished, Failed)) and event.request_id == waiter[0]:
            waiter[1].append(event)
            waiter[2].set()
        if isinstance(event, LoadProgress) and self._awaiting_import_baseline:
            # the engine's first report of a load comes after its imports, before the model is built:
            # the unload note compares with this figure, not with one from before torch was imported
            self._awaiting_import_baseline = False
            self._rss_after_imports = process_rss()
        if isinstance(event, Token):
            with self._token_lock:
                run = (event.request_id, event.reasoning)  # a reasoning model's <think> text never joins its answer
                if self._token_buffer and self._token_buffer[-1][0] == run:
                    self._token_buffer[-1][1].append(event.text)
                else:
                    self._token_buffer.append((run, [event.text]))
                if self._tokens_posted:
                    return
                self._tokens_posted = True
            self.post_message(TokensReady())
            return
        self.post_message(EngineEvent(event))

    async def on_tokens_ready(self, message: TokensReady) -> None:
        await self._write_buffered_tokens()
        # Hold further TokensReady back for a frame: tokens pile up meanwhile and the
        # reply is re-rendered at most 1 / STREAM_FRAME times a second instead of once per token.
        self.set_timer(STREAM_FRAME, self._release_tokens)

    async def _write_buffered_tokens(self) -> None:
        with self._token_lock:
            batch, self._token_buffer = self._token_buffer, []
        for (request_id, reasoning), parts in batch:
            await self._generation_event(Token(request_id, "".join(parts), reasoning=reasoning))

    async def _generation_event(self, event) -> None:
        """A generation's event to the chat and to an open completion view (each takes its own requests)."""
        await self.chat_pane.on_generation_event(event)
        for screen in self.screen_stack:
            if isinstance(screen, CompletionScreen):
                await screen.on_generation_event(event)

    def _release_tokens(self) -> None:
        with self._token_lock:
            pending = bool(self._token_buffer)
            self._tokens_posted = pending
        if pending:
            self.post_message(TokensReady())

    async def on_engine_event(self, message: EngineEvent) -> None:
        event = message.event
        if isinstance(event, (Finished, Failed)):
            await self._write_buffered_tokens()  # the reply's last tokens come before its end
        if isinstance(event, (Started, Token, Finished)):
            await self._generation_event(event)
        elif isinstance(event, LoadProgress):
            self.models_pane.set_load_progress(event.stage, event.fraction)
            self.refresh_status()
        elif isinstance(event, Loaded):
            self._on_loaded(event)
        elif isinstance(event, Unloaded):
            self.loaded = None
            after = f"; {fmt_bytes(event.device_bytes_after)} still reserved on the device" if event.device_bytes_after else ""
            self.unloaded_note = f"unloaded {event.model_name}{after}"
            self.notify(f"Unloaded {event.model_name or 'the model'}{after}.")
            self._unload_check_at = time.monotonic() + 1.5  # compare once memory has settled
            self._model_changed()
        elif isinstance(event, EngineExited):
            self._engine_exited(event)
        elif isinstance(event, EngineUnresponsive):
            self._engine_unresponsive(event)
        elif isinstance(event, Failed):
            if event.during == "load":
                self.loaded = None if getattr(self.engine, "model_info", None) is None else self.loaded
                self.loading_label = None
                self.models_pane.last_error = event.message
                self.models_pane.set_load_progress(None, None)
                self.notify(event.message, severity="error", title="Could not load the model", timeout=15)
                self._model_changed()
            elif event.during == "unload":
                self.notify(event.message, severity="error", title="Could not unload")
            else:
                # a generation of ours; others (the --api server's clients) report to their clients
                await self._generation_event(event)

    @property
    def engine_notice(self) -> EngineNotice:
        return self.query_one("#engine-notice", EngineNotice)

    def _engine_exited(self, event: EngineExited) -> None:
        """The engine process ended unasked (its requests have ended already): say why, offer a reload."""
        self.loaded = None
        self.loading_label = None
        self.models_pane.set_load_progress(None, None)
        again = (f"F6 loads {self.last_load[2]} ({self.last_load[1]}) again"
                 if self.last_load is not None else "Ctrl+L loads a model")
        text = Text("✗ ", style="bold")
        text.append(event.message.rstrip("."), style="bold")
        text.append(f". {again}", style="bold")
        if event.log_path:
            text.append(f" · log {event.log_path}", style="dim")
        self.engine_notice.show_notice("exited", text)
        self.notify(f"{event.message}\n{again}.", severity="error", title="The engine process ended", timeout=10)
        self._model_changed()

    def _engine_unresponsive(self, event: EngineUnresponsive) -> None:
        notice = self.engine_notice
        if event.seconds > 0:
            text = Text(f"⚠ {event.message.rstrip('.')}. F7 kills it (the reply so far is kept).", style="bold")
            notice.show_notice("unresponsive", text)
        elif notice.kind == "unresponsive":  # it answers again
            notice.show_notice(None)

    def action_toggle_mouse(self) -> None:
        self.mouse_released = not self.mouse_released
        if self._apply_mouse():
            self.notify("Mouse released: select text with the terminal; F12 gives the mouse back to glmtui."
                        if self.mouse_released else "Mouse captured again.", timeout=4)
        else:
            self.mouse_released = False
            self.notify("In a browser glmtui cannot release the mouse: Shift+drag selects text.",
                        severity="warning", timeout=6)
        self.refresh_status()

    def _apply_mouse(self) -> bool:
        """Tell the terminal to stop (or start again) reporting the mouse; False where the driver cannot.

        Textual 8 has no public switch at runtime: its Linux drivers' own methods (the ones it runs
        at start and stop) write the mouse-reporting escapes. A headless app has no terminal to tell;
        the web driver has no such switch (the browser's terminal keeps the mouse)."""
        driver = app_driver(self)
        if driver is None or driver.is_web:
            return False
        set_mouse_reporting(driver, not self.mouse_released)
        return True

    def action_reload(self) -> None:
        if self.last_load is None:
            self.notify("No model was loaded yet: Ctrl+L loads one.", severity="warning")
            return
        folder, mode, label = self.last_load
        self.request_load(folder, mode, label=label)

    def action_toggle_engine_log(self) -> None:
        pane = self.models_pane
        if not pane.log_shown and self.current_pane != "models":  # from the palette: show where it is
            self._focus_next = pane.option_list
            self.current_pane = "models"
        pane.toggle_engine_log()

    def action_kill_engine(self) -> None:
        kill = getattr(self.engine, "kill", None)
        if kill is None or not kill("stopped from glmtui (F7)"):
            self.notify("No engine process to kill.", severity="warning")

    def _on_loaded(self, event: Loaded) -> None:
        self.loaded = event
        self.loading_label = None
        self.unloaded_note = None
        self.engine_notice.show_notice(None)
        self.models_pane.last_error = None
        self.models_pane.load_stage = None
        if event.mode in MODES:  # a local load (a remote engine reports mode "remote")
            if event.model_path not in self.extra_model_paths:
                self.extra_model_paths.append(event.model_path)
            self.mode = event.mode
            self._save_prefs(mode=event.mode)
            self.notify(
                f"{event.model_name} · {event.mode} · {event.device} · {fmt_bytes(event.footprint_bytes)} "
                f"in {event.load_seconds:.1f} s" + "".join(f"\n{note}" for note in event.notes),
                title="Model loaded",
                timeout=8 if event.notes else 4,
            )
        else:
            self.notify(f"{event.model_name} served by {event.model_path}", title="Connected", timeout=4)
        self._model_changed(reload_rows=True)
        if event.mode in MODES and catalog.entry_for_folder(event.model_path).kind == "base":
            self.action_completion_mode()  # a base model was never taught the chat roles

    def _model_changed(self, reload_rows: bool = False) -> None:
        if reload_rows:
            self.models_pane.reload()
        else:
            self.models_pane.refresh_info()
            self.models_pane.refresh_rows()
        self.chat_pane.refresh_header()
        self.monitor_pane.show_placement(self.loaded)  # an offload stays on top while the model is loaded
        self.refresh_status()
        self.refresh_bindings()

    def generation_state_changed(self) -> None:
        self.refresh_status()
        self.refresh_bindings()

    def history_changed(self) -> None:
        self.history_pane.set_current(self.chat_pane.conversation_id)

    def refresh_status(self) -> None:
        text = Text()
        if self.mouse_released:
            text.append("mouse released: terminal selection, F12 ends", style="bold reverse")
            text.append("  │  ", style="dim")
        if self.loaded is not None:
            text.append("● ", style="green")
            text.append(self.loaded.model_name, style="bold")
            if self.loaded.mode in MODES:
                text.append(f" {self.loaded.mode} {self.loaded.device}")
            if offload_warning(self.loaded):  # layers on the CPU/disk: said for as long as it is loaded
                loud = offload_warning(self.loaded, short=True, decode_tok_s=self.decode_speed.rate)
                text.append(f"  {loud}", style="bold reverse red")
        elif self.models_pane.load_stage is not None:
            text.append("◌ loading ", style="yellow")
            text.append(self.loading_label or "")
            stage = self.models_pane.load_stage
            frac = self.models_pane.load_fraction
            text.append(f" · {stage}" + (f" {frac * 100:.0f}%" if frac is not None else ""), style="dim")
        else:
            text.append("○ no model", style="dim")
        if self.endpoint:
            text.append(f" @ {self.endpoint}", style="dim")
        chat = self.chat_pane
        text.append("  │  ", style="dim")
        if chat.streaming:
            text.append("writing… (Esc stops)", style="bold yellow")
        else:
            text.append(chat.title)
        if self.store.in_memory:
            text.append("  │  history in memory only", style="red")
        self.query_one("#status", Static).update(text)

    # ------------------------------------------------------------------ loading

    def resolve_model(self, spec: str) -> tuple[Optional[str], str, Optional[str]]:
        """(folder, label, problem) for what the user typed (glmtui.resolve's rule)."""
        found = resolve_model(spec, self.paths.models_dir,
                              "highlight it under Models (F2) and press d, or run `glmtui pull {key}`")
        return found.folder, found.name, found.problem

    def request_load(self, spec: str, mode: Optional[str] = None, label: Optional[str] = None) -> None:
        if self.chat_pane.streaming:
            self.notify("A reply is still streaming: press Esc to stop it first.", severity="warning")
            return
        mode = mode or self.mode
        if self.endpoint:  # the server has its model: load() (re)connects, naming a served model id or none
            self.loading_label = spec or self.endpoint
            self.models_pane.last_error = None
            self.models_pane.set_load_progress("connecting", None)
            self.refresh_status()
            self.engine.load(spec)
            return
        folder, name, problem = self.resolve_model(spec)
        if problem is not None or folder is None:
            self.models_pane.last_error = problem
            self.models_pane.refresh_info()
            self.notify(problem or "nothing to load", severity="error", title="Could not load the model", timeout=15)
            return
        self.last_spec = spec
        self.last_load = (folder, mode, label or name)
        if self.engine_notice.kind == "exited":  # a new process is on its way
            self.engine_notice.show_notice(None)
        self.mode = mode
        if self.loaded is None:  # switching quantization keeps the figure from before the first load
            self._memory_before_load = self._own_memory()
            self._rss_after_imports = None
            # the imports stay only when the model runs in this process (an engine process takes them along)
            self._awaiting_import_baseline = self._engine_in_this_process()
        self.loading_label = label or name
        self.models_pane.last_error = None
        self.models_pane.set_load_progress("queued", None)
        self.refresh_status()
        try:
            self.engine.load(folder, mode, self.device)
        except Exception as exc:  # noqa: BLE001 - a remote engine may refuse at once
            self.models_pane.set_load_progress(None, None)
            self.notify(f"{type(exc).__name__}: {exc}", severity="error", title="Could not load the model")

    # ------------------------------------------------------------------ panes

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

    def _settle_pane_focus(self, pane: str, target) -> None:
        if self.current_pane != pane or isinstance(self.screen, ModalScreen):
            return
        if self.focused is not target:
            target.focus()

    def _pane_widget(self, pane: str):
        return self.query_one(f"#{pane}")

    def _in_pane(self, widget, pane: str) -> bool:
        container = self._pane_widget(pane)
        node = widget
        while node is not None:
            if node is container:
                return True
            node = node.parent
        return False

    def _pane_focus_target(self, pane: str):
        if pane == "chat":
            return self.chat_pane.input
        if pane == "history":
            return self.history_pane.option_list
        if pane == "models":
            return self.models_pane.option_list
        return self.monitor_pane

    def on_descendant_focus(self, event) -> None:
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

    # ------------------------------------------------------------------ chat actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("next_pane", "search") and isinstance(self.screen, (ModalScreen, CompletionScreen)):
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
            return (self.last_load is not None and self.loaded is None
                    and self.models_pane.load_stage is None and not isinstance(self.screen, ModalScreen))
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
        if isinstance(self.screen, CompletionScreen):
            if conversation_id is not None:
                self.screen.open(conversation_id)
            return
        self.push_screen(CompletionScreen(conversation_id))

    @on(HistoryPane.Open)
    async def _open_conversation(self, message: HistoryPane.Open) -> None:
        conv = self.db(self.store.get_conversation, message.conversation_id)
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

        self.push_screen(SettingsModal(chat.system_prompt, chat.generation_params(),
                                       thinking_switch=loaded_thinking_switch(self)), done)

    # ------------------------------------------------------------------ conversation actions

    def _target_conversation(self) -> Optional[int]:
        focused = self.focused
        if focused is not None and self._in_pane(focused, "history"):
            highlighted = self.history_pane.highlighted_id()
            if highlighted is not None:
                return highlighted
        return self.chat_pane.conversation_id

    def action_rename(self) -> None:
        cid = self._target_conversation()
        if cid is None:
            self.notify("No conversation to rename yet.", severity="warning")
            return
        conv = self.db(self.store.get_conversation, cid)
        if conv is None:
            return

        def done(title: Optional[str]) -> None:
            if not title:
                return
            self.db(self.store.rename, cid, title)
            if self.chat_pane.conversation_id == cid:
                self.chat_pane.title = title
                self.chat_pane.refresh_header()
            self.history_pane.reload()
            self.refresh_status()

        self.push_screen(TextModal("Rename conversation", conv.title, "title"), done)

    def action_delete_conversation(self) -> None:
        cid = self._target_conversation()
        if cid is None:
            self.notify("No conversation to delete.", severity="warning")
            return
        conv = self.db(self.store.get_conversation, cid)
        if conv is None:
            return

        async def done(yes: Optional[bool]) -> None:
            if not yes:
                return
            if self.chat_pane.conversation_id == cid:
                if self.chat_pane.streaming:
                    self.notify("A reply is still streaming: press Esc to stop it first.", severity="warning")
                    return
                await self.chat_pane.show_conversation(None)
            if self.db(self.store.delete_conversation, cid):
                self.notify(f"Deleted “{conv.title}”.", timeout=3)
            self.history_changed()
            self.refresh_status()
            self.refresh_bindings()

        self.push_screen(ConfirmModal(f"Delete “{conv.title}” and all its messages?\nThis cannot be undone."), done)

    @property
    def export_folder(self) -> Path:
        return self.paths.data_dir / "exports"

    def action_export(self) -> None:
        """Write the conversation as .md and .json (new files each time; see HistoryStore.export_files)."""
        cid = self._target_conversation()
        if cid is None:
            self.notify("No conversation to export yet.", severity="warning")
            return
        written = self.db(self.store.export_files, cid, self.export_folder)
        if written is not None:
            self.notify("\n".join(str(p) for p in written), title="Exported", timeout=15)

    # ------------------------------------------------------------------ model actions

    def action_load(self) -> None:
        row = self.models_pane.highlighted_row()
        spec = self.last_spec or (str(row.folder) if row is not None and row.folder is not None else "")

        def done(result) -> None:
            if result is not None:
                spec, mode, device = result
                if device is not None:  # checked by the dialog (glmtui.devices)
                    self.device = device
                self.request_load(spec, mode)

        # an endpoint's server decides where its model runs: no device field then
        self.push_screen(LoadModal(spec, self.mode, MODES, device=None if self.endpoint else self.device), done)

    def action_unload(self) -> None:
        if self.loaded is None:
            self.notify("No model is loaded.", severity="warning")
            return
        if self.chat_pane.streaming:
            self.notify("A reply is still streaming: press Esc to stop it first.", severity="warning")
            return
        self.engine.unload()

    def action_quantization(self) -> None:
        if self.endpoint:
            self.notify("The server at the endpoint decides how its model is quantized.", severity="warning")
            return
        def done(mode: Optional[str]) -> None:
            if mode is None:
                return
            if self.loaded is not None and mode != self.loaded.mode:
                self.request_load(self.loaded.model_path, mode, label=self.loaded.model_name)
            else:
                self.mode = mode
                self._save_prefs(mode=mode)
                self.models_pane.refresh_info()
                self.notify(f"The next load uses {mode}.", timeout=3)

        self.push_screen(ModeModal(self.mode, choices=lambda: self.models_pane.mode_choices(self.mode)), done)

    def _downloads_queue(self):
        if self._downloads is None:
            from glmtui import hub

            self._downloads = hub.DownloadQueue(
                hub.Downloader(self.paths.models_dir, config_file=self.paths.config_file),
                on_update=lambda job: self.post_message(DownloadUpdate(job)),
            )
        return self._downloads

    def action_download_model(self) -> None:
        row = self.models_pane.highlighted_row()
        if row is None or not (row.entry.hf_repo or row.entry.modelscope_repo):
            self.notify("Highlight a catalogue model under Models to download it.", severity="warning")
            return
        if row.status.state == "complete":
            self.notify(f"{row.entry.name} is already downloaded.", timeout=3)
            return
        source = self.download_source
        if not (row.entry.hf_repo if source == "hf" else row.entry.modelscope_repo):  # only on the other hub
            source = "modelscope" if source == "hf" else "hf"
        try:
            job = self._downloads_queue().submit(row.entry, source=source)
        except Exception as exc:  # noqa: BLE001
            self.notify(f"{type(exc).__name__}: {exc}", severity="error", title="Download")
            return
        self.notify(f"Downloading {row.entry.name} into {job.dest}", timeout=5)

    @property
    def download_source(self) -> str:
        """Where downloads come from: "hf" or "modelscope" (config.toml [ui] download_source)."""
        source = self.prefs.get("download_source")
        return source if source in ("hf", "modelscope") else "hf"

    def action_toggle_download_source(self) -> None:
        source = "modelscope" if self.download_source == "hf" else "hf"
        self._save_prefs(download_source=source)
        self.models_pane.refresh_detail()
        self.notify(f"Downloads now come from {'ModelScope' if source == 'modelscope' else 'Hugging Face'}.",
                    timeout=3)

    def action_cancel_download(self) -> None:
        row = self.models_pane.highlighted_row()
        job = self.models_pane._job_for(row) if row is not None else None
        if job is None or job.finished or self._downloads is None:
            self.notify("No download running for the highlighted model.", severity="warning")
            return
        self._downloads.cancel(job.id)

    def on_download_update(self, message: DownloadUpdate) -> None:
        job = message.job
        self.models_pane.update_job(job)
        if job.state == "done":
            self.notify(f"{job.label} downloaded to {job.path or job.dest}", title="Download complete")
        elif job.state == "failed":
            self.notify(job.error or "download failed", severity="error", title=f"Download of {job.label} failed")

    # ------------------------------------------------------------------ command palette

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        keys: dict[str, str] = {}
        for binding in self.BINDINGS:
            if isinstance(binding, Binding):
                keys.setdefault(binding.action, self.get_key_display(binding))
        keys.setdefault("download_model", "d in Models")
        keys.setdefault("cancel_download", "x in Models")
        keys.setdefault("toggle_download_source", "s in Models")
        keys.setdefault("toggle_engine_log", "l in Models")
        for action in ("completion_mode", "restart_kernel", "toggle_auto_tools"):
            keys.setdefault(action, "palette only")
        for action, title, help_text in self.COMMAND_LIST:
            key = keys.get(action)
            yield SystemCommand(title, f"{help_text}  [{key}]" if key else help_text, self._command(action))
        from .doctor import DoctorScreen  # `glmtui doctor` as a screen

        yield SystemCommand("Doctor", "Check the driver, torch build, quantizers, disk, hubs and history  "
                            "[palette only]", lambda: self.push_screen(DoctorScreen.for_app(self)))
        # Textual's own commands: the key where glmtui binds one, else say there is none
        textual_keys = {"Theme": keys.get("change_theme"), "Quit": keys.get("quit")}
        for command in super().get_system_commands(screen):
            key = textual_keys.get(command.title) or "palette only"
            yield command._replace(help=f"{command.help}  [{key}]")

    def _command(self, action: str) -> Callable:
        async def run() -> None:
            await self.run_action(action)

        return run


UNLOAD_MARGIN = 64 * 2**20


def unload_memory_note(kind: str, before: Optional[int], after: Optional[int],
                       torch_reserved: Optional[int] = None, after_imports: Optional[int] = None) -> Optional[str]:
    """What the monitor shows after an unload, against the figure taken before the load.

    ``kind`` is "GPU" (this process's memory on the GPUs, NVML) or "RAM"
    (this process's resident memory). Within UNLOAD_MARGIN counts as back.
    ``after_imports`` (RAM): the figure once the engine had imported torch and transformers,
    before it built the model. The first load imports them into this process and they stay:
    the model's own memory is compared with that figure, and the imports are named apart.
    """
    if before is None or after is None:
        return None
    imports = 0
    if kind == "RAM" and after_imports is not None and after_imports > before:
        imports, before = after_imports - before, after_imports
    delta = after - before
    libraries = (f"; torch and transformers, imported by the first load, hold {fmt_bytes(imports)} and stay loaded"
                 if imports > UNLOAD_MARGIN else "")
    if delta <= UNLOAD_MARGIN:
        since = "its figure after the engine's imports" if imports else "before the load"
        return f"{kind} back to within {fmt_bytes(UNLOAD_MARGIN)} of {since} ({fmt_bytes(after)}){libraries}"
    if kind == "GPU":
        why = "the CUDA context and cuBLAS/bitsandbytes workspaces stay resident while glmtui runs"
        if torch_reserved:
            why += f"; torch still reserves {fmt_bytes(torch_reserved)}"
    else:
        why = "freed memory the C allocator keeps for reuse (the next load reuses it)"
    return f"{fmt_bytes(delta)} of {kind} stayed behind after unload: {why}{libraries}"


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
