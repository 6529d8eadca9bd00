"""The chat's Tool / Code modes on screen: the confirmation dialog, the call and result messages,
and the glue between the chat pane and :class:`agent_controller.AgentController`.
Kept whole past 400 lines: the Tool/Code widgets of one conversation, rendered together.

Each model turn streams into its own message; a tool call or code block is shown as a message
of its own (the tool's name and arguments, or the code) with what came of it (ran, declined,
malformed, not allowed here); its result follows as a "Result" message (images as file links).
Every turn is saved as it is added: user, assistant (with the tool name or "interpreter" as
metadata) and observation rows, so the conversation can be read, searched and continued. The store is
called on its worker thread (ui/store_calls.py), in order; each turn is shown once it is saved.
"""

from __future__ import annotations

import json
import os
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Protocol

from rich.text import Text
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.notifications import SeverityLevel
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from glmtui.agent.session import Action, Step, is_loopback, tool_call_summary
from glmtui.config import Paths
from glmtui.engine.events import ChatMessage, Loaded
from glmtui.store import HistoryStore

from .agent_controller import DEFAULT_INTERPRETER_TIMEOUT, MODE_LABELS, AgentController
from .chat_session import Turn
from .chat_text import make_title
from .messages import AssistantMessage
from .store_calls import store_calls

if TYPE_CHECKING:  # pragma: no cover
    from .chat import ChatPane

WEB_HOST_ENV = "GLMTUI_WEB_HOST"  # set by `glmtui web` for its sessions: the host the page is served on

OUTCOMES = {
    "ran": ("✓ ran", "green"),
    "declined": ("✗ declined, not run", "yellow"),
    "malformed": ("⚠ malformed, not run", "red"),
    "blocked": ("⛔ not run: tools and code are off while served over the network", "red"),
    "error": ("✗ error", "red"),
    # a call that ran but did not end well (the Result message says more)
    "failed": ("✗ ran, the tool failed", "red"),
    "raised": ("✗ ran, raised an error", "red"),
    "timeout": ("⏱ stopped at the time limit", "red"),
    "stopped": ("■ stopped", "yellow"),
    "died": ("✗ the kernel died", "red"),
    "unavailable": ("✗ not run: the code kernel did not start", "red"),
}
# an interpreter run's status -> how its call is shown
_RUN_OUTCOMES = {"ok": "ran", "error": "raised", "timeout": "timeout", "cancelled": "stopped", "died": "died"}
MAX_INTERPRETER_TIMEOUT = 24 * 3600.0


def shown_outcome(step: Step) -> str:
    """What a call came to, as its message shows it: a call that ran is told apart by how it ended
    (a tool's error, a code block's exception, its time limit, a stop, a kernel that died)."""
    if step.outcome != "ran":
        return step.outcome
    status = getattr(step.result, "status", None)  # an interpreter RunResult
    if isinstance(status, str):
        return _RUN_OUTCOMES.get(status, "ran")
    return "failed" if getattr(step.result, "kind", "") == "error" else "ran"


def interpreter_timeout(prefs: dict) -> tuple[float, str]:
    """Code mode's time limit per block: ``interpreter_timeout`` (seconds) in config.toml's ``[ui]``,
    60 s by default; and a line saying why a bad value was not used ("" when none)."""
    value = prefs.get("interpreter_timeout")
    if value is None:
        return DEFAULT_INTERPRETER_TIMEOUT, ""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= MAX_INTERPRETER_TIMEOUT:
        return DEFAULT_INTERPRETER_TIMEOUT, (
            f"interpreter_timeout = {value!r} in config.toml is not seconds between 1 and "
            f"{MAX_INTERPRETER_TIMEOUT:g}; code blocks stop after {DEFAULT_INTERPRETER_TIMEOUT:g} s")
    return float(value), ""


def execution_allowed(environ=os.environ) -> bool:
    """Tools and code may run unless `glmtui web` serves this TUI on a host other machines reach."""
    host = environ.get(WEB_HOST_ENV)
    return not host or is_loopback(host)


class ToolConfirmModal(ModalScreen[str]):
    """A tool call or code block, before it runs: y runs it, n (Esc) declines, a runs it and every
    later one of its kind in this session (built-in tools, or code blocks)."""

    AUTO_FOCUS = "#run"
    DEFAULT_CSS = """
    ToolConfirmModal #call-body { height: auto; max-height: 16; }
    """
    BINDINGS = [
        Binding("y", "answer('run')", "Run"),
        Binding("n,escape", "answer('decline')", "Decline"),
        Binding("a", "answer('always')", "Always"),
    ]

    def __init__(self, action: Action, **kwargs) -> None:
        super().__init__(**kwargs)
        self.action_shown = action

    def compose(self) -> Iterable:
        action = self.action_shown
        code = action.kind == "interpreter"
        if code:
            title, body, always = "Run this code in the kernel?", action.code, "a: run every code block this session"
        else:
            title = f"Run the tool {action.name}?" + (" (built-in)" if action.builtin else "")
            body = json.dumps(action.arguments or {}, indent=2, ensure_ascii=False)
            always = "a: run built-in tools without asking this session" if action.builtin else ""
        with Vertical(classes="dialog"):
            yield Static(Text(title, style="bold"), classes="dialog-title")
            yield Static(Text(tool_call_summary(action)), id="call-summary")
            with VerticalScroll(id="call-body"):
                yield Static(Text(body), id="call-text")
            yield Static(Text("y runs it · n or Esc declines" + (f" · {always}" if always else ""), style="dim"))
            with Horizontal(classes="dialog-buttons"):
                yield Button("Run (y)", variant="warning", id="run")
                yield Button("Decline (n)", id="decline")
                if always:
                    yield Button("Always (a)", id="always")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id or "decline")

    def action_answer(self, value: str) -> None:
        if value == "always" and not self.query("#always"):
            return  # a user tool is confirmed every time
        self.dismiss(value)


class CallMessage(AssistantMessage):
    """A model turn of Tool/Code mode: plain text, or a call with its outcome in the head line."""

    outcome = ""
    note = ""

    def _head(self) -> Text:
        head = super()._head()
        if self.outcome in OUTCOMES:
            label, style = OUTCOMES[self.outcome]
            head.append(f"  {label}", style=style)
        return head

    def set_outcome(self, outcome: str, note: str = "") -> None:
        self.outcome, self.note = outcome, note
        if note:
            self.stats = {**self.stats, "error": note}
        self._refresh_labels()

    def show_call(self, speaker: str) -> None:
        """The turn turned out to be a call: its head names the tool (or the interpreter)."""
        self.speaker = speaker
        self.add_class("-call")
        self._refresh_labels()


def call_text(message: ChatMessage) -> str:
    """How a call turn is shown: the tool (or "interpreter") and its arguments or code."""
    if message.metadata == "interpreter":
        return f"**Code** (interpreter)\n\n{message.content}"
    return f"**Tool call** `{message.metadata}`\n\n{message.content}"


def result_text(content: str, images: Iterable = ()) -> str:
    shown = content if content.lstrip().startswith("```") else f"```\n{content}\n```"
    links = [f"- image saved: [{os.path.basename(str(p))}]({_file_url(p)}) `{p}`" for p in images]
    return shown + ("\n\n" + "\n".join(links) if links else "")


def _file_url(path) -> str:
    from pathlib import Path

    return Path(path).absolute().as_uri()


class AgentHost(Protocol):
    """What the agent view asks of its app (never imported from app.py: no import circle). The app is also what
    ``store_calls`` runs the history calls on (its workers and ``db``)."""

    engine: Any  # the Engine the agent's turns are asked of
    paths: Paths
    prefs: dict
    store: HistoryStore

    @property
    def loaded(self) -> Optional[Loaded]: ...

    def notify(self, message: str, *, title: str = ..., severity: SeverityLevel = ...,
               timeout: Optional[float] = ...) -> None: ...
    def call_from_thread(self, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> Any: ...
    def push_screen(self, screen: ModalScreen[str], callback: Callable[[Optional[str]], None]) -> Any: ...
    def generation_state_changed(self) -> None: ...
    def history_changed(self) -> None: ...


class AgentView:
    """Tool/Code mode for the app's chat pane (one at a time)."""

    def __init__(self, app: AgentHost) -> None:
        self.app = app
        self.controller = AgentController(
            app.engine, post=app.call_from_thread, ask=self._ask, config_dir=app.paths.config_dir,
            workdir=app.paths.data_dir / "interpreter", execution_allowed=execution_allowed(),
            auto_run_builtins=bool(app.prefs.get("auto_run_builtin_tools")))
        self.controller.interpreter_timeout, self.timeout_problem = interpreter_timeout(app.prefs)
        self._chat: Optional["ChatPane"] = None
        self._streaming: Optional[Turn] = None
        self._images: list = []
        self._modal: Optional[ToolConfirmModal] = None
        self._cid: Optional[int] = None
        self._written_by: dict = {}  # the model, mode and device of the send that runs (kept if the engine dies)
        self._starting = False  # a send's history is being read (or its conversation saved): it starts next

    @property
    def mode(self) -> str:
        return self.controller.mode

    @property
    def busy(self) -> bool:
        return self._starting or self.controller.busy

    def header_label(self) -> Optional[Text]:
        if self.mode == "chat":
            return None
        label = Text(f"  {MODE_LABELS[self.mode]} mode", style="bold reverse")
        allowed = "" if self.controller.execution_allowed else " · nothing runs (served)"
        label.append(f" F10 switches{allowed}", style="dim")
        return label

    def cycle_mode(self) -> str:
        if self.busy:
            self.app.notify("A reply is still being written: Esc stops it.", severity="warning")
            return self.mode
        mode = self.controller.cycle_mode()
        if mode == "tool":
            box = self.controller.load_toolbox()
            for problem in self.controller.toolbox_problems:
                self.app.notify(problem, severity="warning", title="Tools", timeout=10)
            self.app.notify(f"Tool mode: {len(box.tools)} tools ({', '.join(box.tools)}); each call is shown "
                            "and runs once you confirm.", timeout=5)
        elif mode == "code":
            if self.timeout_problem:
                self.app.notify(self.timeout_problem, severity="warning", title="Settings", timeout=10)
            self.app.notify("Code mode: the model's code blocks run in a Jupyter kernel once you confirm "
                            f"each (timeout {self.controller.interpreter_timeout:g} s).", timeout=5)
        else:
            self.app.notify("Chat mode.", timeout=2)
        return mode

    def stop(self) -> bool:
        return self.controller.stop()

    def shutdown(self) -> None:
        self.controller.shutdown()

    # -------------------------------------------------------------- a send

    async def send(self, chat: "ChatPane", text: str) -> bool:
        app = self.app
        if self.busy or chat.active is not None:
            app.notify("A reply is still being written: Esc stops it.", severity="warning")
            return False
        if app.loaded is None and self.controller.source is None:
            app.notify("No model loaded: press Ctrl+L to load one.", severity="error", title="Cannot send")
            return False
        self._starting = True
        try:
            history = await self._history_of(chat, text)
        finally:
            self._starting = False
        self._chat, self._streaming, self._images = chat, None, []
        self._cid = chat.conversation_id  # where this send's turns are saved, whatever is shown later
        loaded = app.loaded
        self._written_by = ({"model": loaded.model_name, "mode": loaded.mode, "device": loaded.device}
                            if loaded is not None else {})
        self.controller.start(text, history, chat.generation_params(), on_message=self._message_added,
                              on_text=self._text_arrived, on_step=self._step_done, on_done=self._send_done)
        chat.refresh_header()
        app.generation_state_changed()
        app.history_changed()
        return True

    async def _history_of(self, chat: "ChatPane", text: str) -> list[ChatMessage]:
        """The open conversation's earlier turns; a new conversation is saved first (and has none)."""
        app, calls = self.app, store_calls(self.app)
        store = app.store
        history = []
        if chat.conversation_id is not None:
            for m in await calls.call(store.messages, chat.conversation_id) or []:
                if m.role in ("user", "assistant", "observation") and m.status != "error" and (m.content or m.metadata):
                    history.append(ChatMessage(m.role, m.content, m.metadata))
        else:
            chat.title = make_title(text)
            model = app.loaded.model_name if app.loaded is not None else None
            chat.conversation_id = await calls.call(store.create_conversation, chat.title, model,
                                                    self.controller.system_prompt(), chat.params)
        return history

    # -------------------------------------------------------------- the session's callbacks (UI thread)

    async def _save(self, message: ChatMessage, status: str = "complete") -> Optional[int]:
        if self._cid is None:
            return None
        return await store_calls(self.app).call(self.app.store.add_message, self._cid, message.role,
                                                message.content, status, None, message.metadata)

    def _model(self) -> str:
        return self.app.loaded.model_name if self.app.loaded is not None else "GLM"

    async def _mount(self, role: str, text: str, status: str, name: str, mid: Optional[int]) -> Turn:
        chat = self._chat
        assert chat is not None
        if role == "user":
            turn = Turn("user", text, status, mid)
            await chat.session.add_turn(turn)
            return turn
        widget = CallMessage(text, status, None, name, classes="message assistant")
        turn = Turn(role, text, status, mid, widget)
        chat.turns.append(turn)
        chat.query_one("#chat-empty").display = False
        await chat.messages_view.mount(widget)
        return turn

    async def mount_stored(self, chat: "ChatPane", m) -> None:
        """A saved call or result turn of a conversation being opened, shown as when it was written."""
        self._chat = chat
        if m.role == "observation":
            turn = await self._mount("observation", result_text(m.content), m.status, "Result", m.id)
        else:
            turn = await self._mount(m.role, call_text(ChatMessage(m.role, m.content, m.metadata)), m.status,
                                     f"{self._model()} → {m.metadata}", m.id)
            turn.widget.add_class("-call")
        turn.content = m.content

    async def _text_arrived(self, piece: str) -> None:
        if self._streaming is None:
            self._streaming = await self._mount("assistant", "", "streaming", self._model(), None)
            self._streaming.widget.start_stream()
        await self._streaming.widget.write(piece)

    async def _message_added(self, message: ChatMessage) -> None:
        stopped = self.controller.stopping
        status = "stopped" if stopped and message.role == "assistant" else "complete"
        mid = await self._save(message, status)
        if message.role == "user":
            await self._mount("user", message.content, "complete", "You", mid)
            return
        if message.role == "observation":
            turn = await self._mount("observation", result_text(message.content, self._images), "complete",
                                     "Result", mid)
            turn.content = message.content
            self._images = []
            return
        shown = call_text(message) if message.metadata else message.content
        streamed, self._streaming = self._streaming, None
        if streamed is None:
            turn = await self._mount("assistant", shown, status, self._model(), mid)
        else:
            turn = streamed
            await turn.widget.finish(shown, status, {})
        turn.content, turn.status, turn.message_id = message.content, status, mid
        if message.metadata:
            turn.widget.show_call(f"{self._model()} → {message.metadata}")

    async def _step_done(self, step: Step) -> None:
        result = step.result
        self._images = list(getattr(result, "images", []) or [])
        if step.outcome == "error":
            note = str(result) if result else "the model could not reply"
            if self.controller.interruption is not None:
                await self._interrupted(note)
                return
            if self._streaming is not None:
                turn, self._streaming = self._streaming, None
                await turn.widget.finish(turn.widget.text, "error", {"error": note})
            self.app.notify(note, severity="error", title="Generation failed")
            return
        if step.outcome == "answer":
            return
        chat = self._chat
        call = next((t for t in reversed(chat.turns) if isinstance(t.widget, CallMessage)
                     and t.widget.has_class("-call")), None) if chat is not None else None
        if call is not None:
            note = step.reply.problem if step.outcome == "malformed" else ""
            if step.outcome == "malformed" and not note and step.observation:
                note = step.observation
            call.widget.set_outcome(shown_outcome(step), note)

    async def _interrupted(self, note: str) -> None:
        """The engine process ended under a model turn: what it wrote is kept and saved, marked interrupted, as a
        chat reply is (the app's notice names the cause and the reload key, so no toast here)."""
        turn, self._streaming = self._streaming, None
        text = turn.widget.text if turn is not None else ""
        stats = {"error": note, **self._written_by}
        mid = None
        if self._cid is not None:
            mid = await store_calls(self.app).call(self.app.store.add_message, self._cid, "assistant", text,
                                                   "interrupted", stats)
        if turn is None:  # it ended before any text
            turn = await self._mount("assistant", "", "interrupted", self._model(), mid)
        await turn.widget.finish(text, "interrupted", stats)
        turn.content, turn.status, turn.message_id = text, "interrupted", mid

    async def _send_done(self) -> None:
        if self._streaming is not None:  # stopped before the reply was parsed
            turn, self._streaming = self._streaming, None
            await turn.widget.finish(turn.widget.text, "stopped", {})
        chat = self._chat
        if chat is not None:
            chat.refresh_header()
        self.app.generation_state_changed()
        self.app.history_changed()

    # -------------------------------------------------------------- confirmation (agent thread)

    def _ask(self, action: Action):
        done = threading.Event()
        answer: list = []

        def show() -> None:
            self._modal = ToolConfirmModal(action)

            def decided(value: Optional[str]) -> None:
                self._modal = None
                answer.append(value or "decline")
                done.set()

            self.app.push_screen(self._modal, decided)

        try:
            self.app.call_from_thread(show)
        except Exception:  # noqa: BLE001 - the app is closing
            return "decline"
        while not done.wait(0.2):
            if self.controller.stopping:  # stopped, or the app closing
                try:
                    self.app.call_from_thread(self._close_dialog)
                except Exception:  # noqa: BLE001 - the app is gone
                    pass
                return "decline"
        return answer[0]

    def _close_dialog(self) -> None:
        modal, self._modal = self._modal, None
        if modal is not None and modal.is_attached:
            modal.dismiss("decline")

    def restart_kernel(self) -> None:
        def work() -> None:
            message = self.controller.restart_kernel()
            try:
                self.app.call_from_thread(self.app.notify, message, title="Code kernel", timeout=5)
            except Exception:  # noqa: BLE001 - the app is gone
                pass

        threading.Thread(target=work, name="glmtui-kernel-restart", daemon=True).start()
