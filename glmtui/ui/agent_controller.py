"""The chat's Tool and Code modes, without widgets: an ``agent.session.AgentSession`` per send, run
on a thread of its own.

Chat (plain replies), Tool (the system turn lists the tools: built-ins plus
``<config>/tools/*.json``, as ChatGLM3 expects them) and Code (ChatGLM3's
code-interpreter system prompt; blocks run in a Jupyter kernel process in a
folder under the data dir). The session's callbacks reach the UI through
``post`` (the app's ``call_from_thread``: the thread waits until the UI has
shown each piece, so messages appear in order); ``ask`` shows a call and
blocks the thread until the user decides. Model text comes from the engine
(every Token already queued is taken at once: one UI update per batch), or
from ``source`` when one is set (tests script the model's text there).
Nothing runs when ``execution_allowed`` is False (the TUI is served to other
machines by ``glmtui web``).
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from glmtui.agent.session import Action, AgentSession, Decision, GenerationFailed, Step
from glmtui.engine.events import ChatMessage, Failed, Finished, GenerationParams, Token

if TYPE_CHECKING:  # pragma: no cover
    from glmtui.agent.interpreter import CodeInterpreter
    from glmtui.agent.toolbox import Toolbox

MODES = ("chat", "tool", "code")
MODE_LABELS = {"chat": "Chat", "tool": "Tool", "code": "Code"}
DEFAULT_INTERPRETER_TIMEOUT = 60.0


class EngineTurns:
    """Model text through the engine: a generation per model turn, cancellable by :meth:`cancel`."""

    def __init__(self, engine, params: GenerationParams):
        self.engine = engine
        self.params = params
        self.request: Optional[int] = None
        self.cancelled = False
        self.failure: Optional[Failed] = None  # the Failed that ended the last turn

    def cancel(self) -> None:
        self.cancelled = True
        if self.request is not None:
            try:
                self.engine.cancel(self.request)
            except Exception:  # noqa: BLE001 - an engine already gone
                pass

    def __call__(self, messages: list, tools: Optional[list]) -> Iterable[str]:
        if self.cancelled:
            return
        events: "queue.Queue" = queue.Queue()
        self.request = request = self.engine.generate(messages, self.params, sink=events.put, tools=tools)
        while True:
            batch = [events.get()]
            while True:  # what is already queued goes to the UI at once
                try:
                    batch.append(events.get_nowait())
                except queue.Empty:
                    break
            text = "".join(e.text for e in batch if isinstance(e, Token) and e.request_id == request
                           and not getattr(e, "reasoning", False))
            if text:
                yield text
            for event in batch:
                if getattr(event, "request_id", request) != request:
                    continue
                if isinstance(event, Finished):
                    return
                if isinstance(event, Failed):
                    self.failure = event
                    raise GenerationFailed(event.message)


class AgentController:
    """One chat's mode, its toolbox and kernel, and the session running now (at most one)."""

    def __init__(self, engine, *, post: Callable, ask: Callable[[Action], Decision],
                 config_dir: Optional[Path] = None, workdir: Optional[Path] = None,
                 execution_allowed: bool = True, auto_run_builtins: bool = False):
        self.engine = engine
        self.post = post
        self.ask = ask
        self.config_dir = config_dir
        self.workdir = workdir
        self.execution_allowed = execution_allowed
        self.auto_run_builtins = auto_run_builtins
        self.allow_interpreter = False  # "always" for this session's code blocks
        self.interpreter_timeout = DEFAULT_INTERPRETER_TIMEOUT
        self.mode = "chat"
        self.source: Optional[Callable] = None  # scripted model text (tests); None: the engine
        self.toolbox: Optional[Toolbox] = None
        self.toolbox_problems: list[str] = []
        self.interpreter: Optional[CodeInterpreter] = None
        self._session: Optional[AgentSession] = None
        self._turns: Optional[EngineTurns] = None
        self._thread: Optional[threading.Thread] = None
        self._running = False  # a send runs (cleared before on_done, so the UI sees it ended)
        self._stopping = threading.Event()

    # -------------------------------------------------------------- mode

    @property
    def busy(self) -> bool:
        return self._running

    @property
    def stopping(self) -> bool:
        """The send that runs was asked to stop (Esc, or the app closing)."""
        return self._stopping.is_set()

    @property
    def interruption(self) -> Optional[Failed]:
        """The engine's Failed that ended this send's model turn because the engine process ended under it
        (kill -9, a crash, F7 on a hung engine); None otherwise."""
        failure = self._turns.failure if self._turns is not None else None
        return failure if failure is not None and failure.interrupted else None

    def cycle_mode(self) -> str:
        self.mode = MODES[(MODES.index(self.mode) + 1) % len(MODES)]
        return self.mode

    def load_toolbox(self):
        """The tools (built-ins + the user's files), read again at each send; problems are kept to show."""
        from glmtui.agent.toolbox import Toolbox

        self.toolbox = Toolbox.load(self.config_dir)
        self.toolbox_problems = list(getattr(self.toolbox, "problems", []) or [])
        return self.toolbox

    def get_interpreter(self) -> CodeInterpreter:
        interpreter = self.interpreter
        if interpreter is None:
            from glmtui.agent.interpreter import CodeInterpreter

            interpreter = self.interpreter = CodeInterpreter(self.workdir, timeout=self.interpreter_timeout)
        interpreter.timeout = self.interpreter_timeout
        return interpreter

    def system_prompt(self) -> str:
        """The system turn of this mode (what a new session starts with)."""
        return self._new_session(lambda m, t: iter(())).messages[0].content if self.mode != "chat" else ""

    def _new_session(self, source: Callable) -> AgentSession:
        code = self.mode == "code"
        return AgentSession(
            source,
            toolbox=None if code else self.toolbox if self.toolbox is not None else self.load_toolbox(),
            interpreter=self.get_interpreter() if code else None,
            confirm=self._confirm,
            auto_run_builtins=self.auto_run_builtins,
            allow_interpreter=self.allow_interpreter,
            execution_allowed=self.execution_allowed,
        )

    # -------------------------------------------------------------- a send

    def start(self, text: str, history: list, params: GenerationParams, *,
              on_message: Callable[[ChatMessage], Any], on_text: Callable[[str], Any],
              on_step: Callable[[Step], Any], on_done: Callable[[], Any]) -> None:
        """Run ``text`` after ``history`` (the conversation's earlier turns, with their metadata) on a
        thread; the callbacks run on the UI thread (through ``post``), in order."""
        if self.busy:
            raise RuntimeError("a reply is still being written")
        self._stopping.clear()
        if self.mode == "tool":
            self.load_toolbox()
        source: Callable = self.source if self.source is not None else EngineTurns(self.engine, params)
        self._turns = source if isinstance(source, EngineTurns) else None
        session = self._new_session(source)
        session.messages[1:1] = list(history)  # after the mode's system turn
        session.on_message = lambda message: self.post(on_message, message)
        session.on_text = lambda piece: self.post(on_text, piece)
        session.on_step = lambda step: self.post(on_step, step)
        self._session = session

        def run() -> None:
            try:
                session.send(text)
            except Exception as exc:  # noqa: BLE001 - shown as a failed step, the app keeps running
                from glmtui.agent.session import Reply

                self.post(on_step, Step(Reply("answer", ""), "error", None, f"{type(exc).__name__}: {exc}"))
            finally:
                self.allow_interpreter = session.allow_interpreter
                self.auto_run_builtins = session.auto_run_builtins
                self._session = None
                self._running = False
                try:
                    self.post(on_done)
                except Exception:  # noqa: BLE001 - the app is closing
                    pass

        self._running = True
        self._thread = threading.Thread(target=run, name="glmtui-agent", daemon=True)
        self._thread.start()

    def _confirm(self, action: Action) -> Decision:
        if self._stopping.is_set():
            return "decline"
        return self.ask(action)

    def stop(self) -> bool:
        """Stop the send that runs (its generation, or its code block); False when none runs."""
        if not self.busy:
            return False
        self._stopping.set()
        session = self._session
        if session is not None:
            session.stop()
        if self._turns is not None:
            self._turns.cancel()
        return True

    def restart_kernel(self) -> str:
        """A fresh kernel (blocks until it is ready); the message to show."""
        if self.interpreter is None:
            return "The code kernel was not started yet: it starts with the first code block."
        try:
            self.interpreter.restart()
        except Exception as exc:  # noqa: BLE001 - said in one line
            return f"The kernel did not restart: {exc}"
        return "Code kernel restarted: earlier variables are gone."

    def shutdown(self) -> None:
        self.stop()
        if self.interpreter is not None:
            try:
                self.interpreter.shutdown()
            except Exception:  # noqa: BLE001 - closing: best effort
                pass
