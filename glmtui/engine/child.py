"""The engine process's own side: an InferenceWorker behind a pipe.

Started by glmtui.engine.process (a fresh interpreter, or a fork of the launcher that imported torch and
transformers already: launcher.py) with
its stdout/stderr already sent to a log file. It imports torch and
transformers at once, so a spare process is ready before it is needed, then
serves commands from the pipe: load, unload, generate and cancel go to the
worker; ping and exit are answered by the main thread itself, so a busy
worker does not delay them. Events go back over the pipe as the dataclasses
of glmtui.engine.events, tokens coalesced (see :class:`Outbox`).

The process ends when its parent does: a parent-death signal (Linux), the
pipe's end of file, and a thread that watches the parent's pid.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Callable, Optional

from .events import Failed, Finished, Token, Unloaded
from .worker import InferenceWorker

# Tokens wait at most this long (seconds), or until this many have piled up, before they are sent: about
# half a frame of the TUI's (ui STREAM_FRAME 0.1 s), so a frame has its text and a reply costs few messages.
FLUSH_INTERVAL = 0.05
FLUSH_TOKENS = 64


class Outbox:
    """Sends events over ``conn``, in order, one sender at a time; consecutive Tokens coalesced.

    A token run of one request (reasoning or answer: never mixed) is sent as one Token once it is ``interval``
    old or ``max_tokens`` long, and before any other event, so the texts
    arrive in order and add up to exactly the reply. A flusher thread sends a
    run that no later token would flush (a slow model, the last tokens). A
    request's first token goes at once: coalescing costs no time to first token.
    """

    def __init__(self, conn: Connection, interval: float = FLUSH_INTERVAL, max_tokens: int = FLUSH_TOKENS):
        self._conn = conn
        self._interval = interval
        self._max_tokens = max_tokens
        self._cond = threading.Condition()
        self._rid = 0  # the run's request
        self._reasoning = False  # the run's Token.reasoning
        self._parts: list[str] = []
        self._since = 0.0
        self._closed = False
        self._replying: set[int] = set()  # requests whose first token has been sent
        self.exit_after: set[int] = set()  # requests whose Unloaded ends the process
        threading.Thread(target=self._flusher, name="glmtui-outbox", daemon=True).start()

    def put(self, event) -> None:
        """A worker event (called on the worker thread)."""
        with self._cond:
            if isinstance(event, Token):
                if self._parts and (self._rid != event.request_id or self._reasoning != event.reasoning):
                    self._flush()
                if not self._parts:
                    self._since = time.monotonic()
                    self._cond.notify()
                self._rid = event.request_id
                self._reasoning = event.reasoning
                self._parts.append(event.text)
                first = event.request_id not in self._replying
                if first:
                    self._replying.add(event.request_id)
                if (first or len(self._parts) >= self._max_tokens
                        or time.monotonic() - self._since >= self._interval):
                    self._flush()
                return
            self._flush()
            if isinstance(event, (Finished, Failed)):
                self._replying.discard(event.request_id)
            self._send(event)
            if isinstance(event, Unloaded) and event.request_id in self.exit_after:
                # Unloading ends the process: whatever the model held goes back to the system with it.
                os._exit(0)

    def send(self, message) -> None:
        """A message of the main thread (pong); tokens waiting are not held back by it."""
        with self._cond:
            self._send(message)

    def close(self) -> None:
        with self._cond:
            self._flush()
            self._closed = True
            self._cond.notify()

    def _flush(self) -> None:
        if self._parts:
            text = "".join(self._parts)
            self._parts = []
            self._send(Token(self._rid, text, reasoning=self._reasoning))

    def _send(self, message) -> None:
        try:
            self._conn.send(message)
        except (OSError, ValueError):  # the parent is gone: the main loop sees the end of file and exits
            pass

    def _flusher(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._parts:
                    self._cond.wait()
                    continue
                left = self._since + self._interval - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                else:
                    self._flush()


class EngineWorker(InferenceWorker):
    """The worker of an engine process, with one more command: "end".

    "end" reports Unloaded without freeing the model first (a garbage
    collection of the whole heap, 0.2 s): the process ends right after it
    (Outbox.exit_after), and that gives everything back at once.
    """

    def _do_end(self, command) -> None:
        name = self.model_info.name if self.model_info is not None else ""
        self._emit(command, Unloaded(command.request_id, name, None))


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent thread ends."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    """End this process once its parent is gone (where no parent-death signal exists, or it was missed)."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(0.5)


# transformers imports these lazily on a process's first load (seconds): a spare imports them in advance.
_WARM_NAMES = ("GlmConfig", "GlmForCausalLM", "GenerationConfig", "AutoConfig", "AutoModelForCausalLM",
               "AutoTokenizer")


def warm_up(quantizers: bool = False) -> None:
    """Import what a load and a generation need, so that a spare process loads as fast as a used one.

    ``quantizers``: bitsandbytes too (seconds, ~100 MiB), once int8/int4 has been used.
    """
    import transformers

    from . import generation, loading, memory  # noqa: F401  (torch and transformers)

    for name in _WARM_NAMES:
        try:
            getattr(transformers, name)
        except Exception:  # noqa: BLE001 - an older or newer transformers: the load itself will say what is missing
            pass
    try:  # a table of ~1,000 regular expressions, built on the first load and cached (0.3 s)
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping

        get_checkpoint_conversion_mapping("glm")
    except Exception:  # noqa: BLE001 - a warm-up only: the load builds it when needed
        pass
    try:
        import sentencepiece  # noqa: F401  (ChatGLM3's tokenizer)
    except ImportError:
        pass
    if quantizers:
        try:
            import bitsandbytes  # noqa: F401  (the quantizer, before the first request)
        except Exception:  # noqa: BLE001 - missing or broken: the int8/int4 load reports it
            pass


def _warm_up_when_idle(quantizers: bool) -> None:
    """warm_up() on idle CPU time: a spare started ahead of need must not slow the reply generated next to it."""
    on_idle_thread(lambda: warm_up(quantizers), "glmtui-warm-up")


def on_idle_thread(work: Callable[[], None], name: str) -> None:
    """Run ``work`` on a thread that gets only CPU time nobody else wants (Linux SCHED_IDLE), and wait for it.

    Only that thread has the idle policy: it cannot be undone without privileges, so the threads that
    serve, generate (or fork, in the launcher) are made after it, or are the main thread, as normal ones.
    """

    def run() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):
            pass
        work()

    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join()


def _serve(conn: Connection, interval: float, idle: bool, quantizers: bool) -> None:
    started = time.perf_counter()
    _warm_up_when_idle(quantizers) if idle else warm_up(quantizers)
    from .api import cuda_figures

    outbox = Outbox(conn, interval)
    worker = EngineWorker(outbox.put).start()
    outbox.send(("ready", time.perf_counter() - started))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent closed the pipe or died
            os._exit(0)
        kind = message[0]
        if kind == "load":
            _, rid, path, mode, device = message  # mode "auto" is decided by the worker (api.default_mode)
            worker._submit("load", {"path": path, "mode": mode, "device": device}, None, rid)
        elif kind == "generate":
            _, rid, messages, params, tools, prompt_text = message
            worker._submit("generate", {"messages": messages, "params": params, "tools": tools,
                                        "prompt_text": prompt_text}, None, rid)
        elif kind == "unload":  # after the work already queued, end the process (Outbox.put exits)
            _, rid = message
            outbox.exit_after.add(rid)
            worker._submit("end", {}, None, rid)
        elif kind == "cancel":
            worker.cancel(message[1])
        elif kind == "ping":
            outbox.send(("pong", message[1], *cuda_figures()))
        elif kind == "exit":
            outbox.close()
            os._exit(0)


def main(argv: Optional[list[str]] = None) -> None:
    """``FD PARENT_PID [FLUSH_INTERVAL [FLAGS]]``: serve the parent's pipe on file descriptor FD.

    FLAGS, comma-separated: ``idle``, a spare started ahead of need, which imports on idle CPU
    time only; ``quantizers``, import bitsandbytes in advance too.
    """
    args = sys.argv[1:] if argv is None else argv
    fd, parent_pid = int(args[0]), int(args[1])
    interval = float(args[2]) if len(args) > 2 else FLUSH_INTERVAL
    flags = set(args[3].split(",")) if len(args) > 3 else set()
    faulthandler.enable(all_threads=False)  # a crash writes "Fatal Python error: ..." and a traceback to the log
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the front end's to handle
    set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="glmtui-parent-watch", daemon=True).start()
    conn = Connection(fd)
    print(f"glmtui engine process {os.getpid()} (parent {parent_pid}) started {time.strftime('%Y-%m-%d %H:%M:%S')}",
          flush=True)
    conn.send(("hello", os.getpid()))
    _serve(conn, interval, "idle" in flags, "quantizers" in flags)
