"""The engine interface every front end talks to.

Three implementations satisfy :class:`Engine`: ``EngineProcess`` (the model in
a child process; the default for front ends running a local model),
``InferenceWorker`` (a thread of the calling process; ``glmtui serve`` and fast
tests) and ``RemoteEngine`` (an OpenAI-compatible server). Commands return a
request id at once; what happens is reported as events (glmtui.engine.events)
to the listeners and to the command's ``sink``, on a thread of the engine's
own — listeners must be cheap and must not block.

This module imports neither torch nor transformers.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional, Protocol, Sequence, runtime_checkable

from .events import ChatMessage, Event, GenerationParams

Listener = Callable[[Event], None]

# How a local model's weights are held; a remote engine reports "remote".
Mode = Literal["bf16", "fp16", "fp32", "int8", "int4"]
MODES: tuple[str, ...] = ("bf16", "fp16", "fp32", "int8", "int4")
_NVIDIA_GPUS = "/proc/driver/nvidia/gpus"


def default_mode(device: str, cuda_available: Optional[bool] = None) -> str:
    """The mode of a load given as "auto": bf16 where a GPU is used, fp32 on the CPU.

    ``cuda_available``: torch's answer, inside the engine; a front end leaves it
    None and the NVIDIA driver's GPU list decides (no torch import).
    """
    if device.startswith("cuda"):
        return "bf16"
    if device == "cpu":
        return "fp32"
    if cuda_available is None:
        gpus = Path(_NVIDIA_GPUS)
        cuda_available = gpus.is_dir() and any(gpus.iterdir())
    return "bf16" if cuda_available else "fp32"


class Listeners:
    """The listener registry every engine shares: needs ``self._lock`` and ``self._listeners``."""

    _lock: threading.Lock
    _listeners: list[Listener]

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _deliver(self, event: Event, sink: Optional[Listener]) -> None:
        """``event`` to every listener, then to its request's ``sink``; one that raises is printed, not passed on."""
        with self._lock:
            listeners = list(self._listeners)
        if sink is not None:
            listeners.append(sink)
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a broken listener must not stop the engine
                traceback.print_exc()


@dataclass
class ModelInfo:
    """What is loaded, readable from any thread."""

    name: str
    path: str
    mode: str
    device: str
    footprint_bytes: int
    context_length: int
    # The prompt format: "chatglm3" (ChatGLM3's roles; tool calls and their list in its own shape),
    # "chat_template" (the tokenizer's template), "remote" (an OpenAI server builds the prompt).
    chat_format: str = ""
    # How requests arriving together are served: "continuous batching" (they join one running batch,
    # engine/batching.py) or "one at a time"; ``concurrency_reason`` says why, in a few words.
    concurrency: str = "one at a time"
    concurrency_reason: str = ""

    @property
    def chatglm3(self) -> bool:
        """Whether prompts and tool calls follow ChatGLM3's PROMPT.md."""
        return self.chat_format == "chatglm3"


@dataclass(frozen=True)
class MemoryReport:
    """What the engine's processes hold now.

    ``pids``: the processes that run the model (empty for a remote engine);
    ``host_rss_bytes``: their resident memory together (None when unknown);
    ``device_reserved_bytes`` / ``device_allocated_bytes``: torch's CUDA
    figures inside the engine (None without CUDA, or when not yet known).
    """

    pids: tuple[int, ...] = ()
    host_rss_bytes: Optional[int] = None
    device_reserved_bytes: Optional[int] = None
    device_allocated_bytes: Optional[int] = None


@runtime_checkable
class Engine(Protocol):
    # "empty", "loading", "ready", "generating" or "stopped"
    state: str
    model_info: Optional[ModelInfo]

    @property
    def alive(self) -> bool: ...

    def start(self) -> "Engine": ...

    def add_listener(self, listener: Listener) -> None: ...

    def remove_listener(self, listener: Listener) -> None: ...

    def load(self, path: str, mode: str = ..., device: str = ..., sink: Optional[Listener] = None) -> int: ...

    def unload(self, sink: Optional[Listener] = None) -> int: ...

    def generate(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams = ...,
        sink: Optional[Listener] = None,
        tools: Optional[list] = None,
        *,
        prompt_text: Optional[str] = None,
    ) -> int:
        """A reply to ``messages``; with ``prompt_text``, a raw continuation of that text instead
        (completion mode: no roles, the model's own prefix; ``messages`` and ``tools`` unused)."""
        ...

    def cancel(self, request_id: Optional[int] = None) -> None: ...

    def queue_length(self) -> int: ...

    def memory_report(self) -> MemoryReport: ...

    def shutdown(self, timeout: float = 10.0) -> None: ...


def rss_bytes(pids: Sequence[int]) -> Optional[int]:
    """Resident memory of these processes together (None when psutil cannot tell)."""
    try:
        import psutil
    except ImportError:
        return None
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except (psutil.Error, OSError):
            continue
    return total


def cuda_figures() -> tuple[Optional[int], Optional[int]]:
    """(reserved, allocated) CUDA bytes of this process; (None, None) without an initialised CUDA.

    Never imports torch: a process that has not imported it has no CUDA memory of torch's.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None, None
    try:
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return None, None
        return int(torch.cuda.memory_reserved()), int(torch.cuda.memory_allocated())
    except Exception:  # noqa: BLE001 - a broken CUDA context must not break a report
        return None, None


def this_process_report() -> MemoryReport:
    """The report of an engine that runs in the calling process."""
    reserved, allocated = cuda_figures()
    pid = os.getpid()
    return MemoryReport((pid,), rss_bytes([pid]), reserved, allocated)
