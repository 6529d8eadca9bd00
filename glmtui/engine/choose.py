"""Which Engine a front end runs a local model on: `--engine transformers` (glmtui's own) or `--engine vllm`.

No torch here. ``in_process`` is for `glmtui serve` (already its clients' engine process) and fast tests.
:class:`SwitchingEngine` is the TUI's: the load dialog picks the engine for the next load.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable, Optional

from .events import Failed, GenerationParams, Unloaded

ENGINES = ("transformers", "vllm")
RETIRE_TIMEOUT = 120.0  # s the previous engine may take to let go of its model before the next load goes on


def local_engine(kind: str = "transformers", *, in_process: bool = False, keep_spare: bool = True, listener=None):
    """A not yet started engine for running models on this machine."""
    if kind == "vllm":
        from .vllm_engine import make_vllm_engine

        return make_vllm_engine(listener)
    if kind != "transformers":
        raise ValueError(f"unknown engine {kind!r}; choose from {', '.join(ENGINES)}")
    if in_process:
        from .worker import InferenceWorker

        return InferenceWorker(listener)
    from .process import EngineProcess

    return EngineProcess(listener, keep_spare=keep_spare)


def configured_vllm_python() -> Optional[str]:
    """``python`` under [vllm] in config.toml, or None (then this interpreter is asked)."""
    from ..config import default_paths, read_table

    return read_table(default_paths().config_file, "vllm").get("python") or None


@functools.lru_cache(maxsize=8)
def _vllm_python(configured: Optional[str]) -> tuple[Optional[str], str]:
    from .vllm import vllm_python

    return vllm_python(configured)


def vllm_offered() -> tuple[bool, str]:
    """(whether vLLM can run here, why not): the interpreter [vllm] names, else this one, can import it.
    Runs that interpreter once (a fraction of a second; remembered per interpreter): call it off the UI thread."""
    python, why = _vllm_python(configured_vllm_python())
    return python is not None, why


class SwitchingEngine:
    """The Engine interface over glmtui's own engine or the managed vLLM server, whichever runs now.

    :meth:`use` names the engine for the next load (the load dialog's choice); that load first has
    the previous engine unload its model and shut down (on a thread of its own: the UI never waits),
    so two models never share the memory. Listeners go to every engine; anything else a front end
    reads (``pid``, ``log_path``, ``endpoint``, ``kill`` ...) is the current engine's.
    """

    def __init__(self, kind: str = "transformers", *, in_process: bool = False, keep_spare: bool = True,
                 listener=None, make: Optional[Callable[[str], Any]] = None) -> None:
        if kind not in ENGINES:
            raise ValueError(f"unknown engine {kind!r}; choose from {', '.join(ENGINES)}")
        self._make = make or (lambda k: local_engine(k, in_process=in_process, keep_spare=keep_spare))
        self._listeners: list = [listener] if listener else []
        self._started = self._closed = False
        self._retiring: list[tuple[threading.Thread, Any]] = []  # (the switch's thread, the engine it retires)
        self.kind = self.wanted = kind
        self.current = self._new(kind)

    def _new(self, kind: str):
        engine = self._make(kind)
        for listener in self._listeners:
            engine.add_listener(listener)
        return engine

    def use(self, kind: str) -> None:
        """Run the next load on ``kind`` ("transformers" or "vllm"); what is loaded now stays until then."""
        if kind not in ENGINES:
            raise ValueError(f"unknown engine {kind!r}; choose from {', '.join(ENGINES)}")
        self.wanted = kind

    # ------------------------------------------------------------ Engine interface

    def start(self) -> "SwitchingEngine":
        self._started = True
        self.current.start()
        return self

    @property
    def alive(self) -> bool:
        return self.current.alive

    @property
    def state(self) -> str:
        return self.current.state

    @property
    def model_info(self):
        return self.current.model_info

    def add_listener(self, listener) -> None:
        self._listeners.append(listener)
        self.current.add_listener(listener)

    def remove_listener(self, listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)
        self.current.remove_listener(listener)

    def load(self, path: str, mode: str = "auto", device: str = "auto", sink=None) -> int:
        """The load's request id; 0 when it waits for the previous engine to let go of its model
        (its events reach the listeners and ``sink`` as any load's do)."""
        if self.wanted == self.kind:
            return self.current.load(path, mode, device, sink)
        old, self.kind = self.current, self.wanted
        self.current = new = self._new(self.kind)
        if self._started:
            new.start()
        holds_model = old.model_info is not None or old.state == "loading"
        if not holds_model:
            threading.Thread(target=old.shutdown, name="glmtui-engine-retire", daemon=True).start()
            return new.load(path, mode, device, sink)
        thread = threading.Thread(target=self._retire_then_load, args=(old, new, (path, mode, device, sink)),
                                  name="glmtui-engine-switch", daemon=True)
        self._retiring.append((thread, old))
        thread.start()
        return 0

    def _retire_then_load(self, old, new, load: tuple) -> None:
        done = threading.Event()
        old.unload(sink=lambda event: done.set() if isinstance(event, (Unloaded, Failed)) else None)
        done.wait(RETIRE_TIMEOUT)
        old.shutdown()
        if self.current is new and not self._closed:  # not switched again, nor shut down, meanwhile
            new.load(*load)

    def unload(self, sink=None) -> int:
        return self.current.unload(sink)

    def generate(self, messages, params: GenerationParams = GenerationParams(), sink=None, tools=None, *,
                 prompt_text: Optional[str] = None) -> int:
        return self.current.generate(messages, params, sink=sink, tools=tools, prompt_text=prompt_text)

    def cancel(self, request_id: Optional[int] = None) -> None:
        self.current.cancel(request_id)

    def queue_length(self) -> int:
        return self.current.queue_length()

    def memory_report(self):
        return self.current.memory_report()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._closed = True
        for thread, old in self._retiring:  # a switch under way: its engine ends now too
            if thread.is_alive():
                old.shutdown(timeout)
        self.current.shutdown(timeout)

    def __getattr__(self, name: str):
        # only for what this class does not have: the current engine's own attributes (pid, log_path, kill ...)
        current = self.__dict__.get("current")
        if current is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(current, name)
