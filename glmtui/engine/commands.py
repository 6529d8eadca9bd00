"""The command side the three engines share (EngineProcess, InferenceWorker, RemoteEngine).

Each engine takes the Engine's commands as ``(kind, args, sink)`` through its own ``_submit``
and runs them on a thread of its own; what is the same in all three is here: ``unload`` and
``generate`` as commands, ``alive``, the bookkeeping when a command ends, and the events that
end a generation before it runs or when its handler raises. No torch, no transformers.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Generic, Optional, Sequence, TypeVar

from .api import Listener, Listeners
from .events import ChatMessage, Event, Failed, Finished, GenerationParams

NO_MODEL = "no model is loaded — load one first"


class CommandEngine(Listeners):
    """An engine whose commands go through ``_submit`` to ``self._thread``."""

    _thread: threading.Thread

    def _submit(self, kind: str, args: dict, sink: Optional[Listener]) -> int:
        raise NotImplementedError

    def unload(self, sink: Optional[Listener] = None) -> int:
        return self._submit("unload", {}, sink)

    def generate(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams = GenerationParams(),
        sink: Optional[Listener] = None,
        tools: Optional[list] = None,
        *,
        prompt_text: Optional[str] = None,
    ) -> int:
        args = {"messages": list(messages), "params": params, "tools": tools, "prompt_text": prompt_text}
        return self._submit("generate", args, sink)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


@dataclass
class Command:
    """One command as the engine's thread takes it (each engine adds how it is cancelled)."""

    kind: str  # "load", "unload", "generate", "stop"
    request_id: int
    args: dict = field(default_factory=dict)
    sink: Optional[Listener] = None


C = TypeVar("C", bound=Command)


class QueuedCommands(CommandEngine, Generic[C]):
    """Commands numbered here and kept in ``self._pending`` by request id until they end;
    ``self._current`` is the one running (InferenceWorker, RemoteEngine)."""

    state: str

    def __init__(self, listener: Optional[Listener]) -> None:
        self._listeners: list[Listener] = [listener] if listener else []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, C] = {}
        self._current: Optional[C] = None

    def queue_length(self) -> int:
        with self._lock:
            return self._generations_waiting()

    def _generations_waiting(self) -> int:
        """Generations not yet ended (the caller holds the lock)."""
        return sum(1 for c in self._pending.values() if c.kind == "generate")

    def _emit(self, command: C, event: Event) -> None:
        self._deliver(event, command.sink)

    def _command_done(self, command: C, loaded: bool) -> None:
        """``command`` has ended: nothing runs; a load or reply still marked as going settles on the model."""
        with self._lock:
            self._current = None
            self._pending.pop(command.request_id, None)
        if self.state in ("loading", "generating"):
            self.state = "ready" if loaded else "empty"


def cancelled(request_id: int) -> Finished:
    """A generation cancelled before it produced anything."""
    return Finished(request_id, "", 0, 0, None, None, 0.0, "cancelled")


def crashed(request_id: int, exc: BaseException, during: str, detail: str) -> Failed:
    """A command whose handler raised (``detail``: the traceback)."""
    return Failed(request_id, f"{type(exc).__name__}: {exc}", during, detail)


def refused(request_id: int, was_cancelled: bool, params: GenerationParams, has_model: bool,
            no_model: str = NO_MODEL) -> Optional[Event]:
    """The event that ends a generation before it runs (cancelled while it waited, parameters out of
    range, nothing to generate with), in that order; None when it can run."""
    if was_cancelled:
        return cancelled(request_id)
    problems = params.problems() if hasattr(params, "problems") else []
    if problems:
        return Failed(request_id, "invalid parameters: " + "; ".join(problems), "params", kind="params")
    if not has_model:
        return Failed(request_id, no_model, "generate", kind="no_model")
    return None
