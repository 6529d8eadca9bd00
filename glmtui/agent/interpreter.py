"""ChatGLM3's code interpreter: one code block at a time in a Jupyter kernel of its own.
Kept whole past 400 lines: one class around one kernel.

The kernel is a separate process (ipykernel, this Python), working in a folder
under the data dir. ``run(code)`` returns the block's stdout/stderr, result and
error text, and its images saved as files in that folder. Bounds:

* Time: past the timeout (60 s unless configured) the kernel is interrupted;
  if it does not stop within a few seconds it is killed and a new one started.
* Output: at most ``output_limit`` bytes are kept. A wrapper installed in the
  kernel forwards only that much of stdout/stderr (and of a result's text) and
  counts the rest, so 100 MB of printing never crosses the pipe; this side caps
  again whatever still arrives. The text ends with "… N MB more not shown".
* Death: a kernel that dies mid-run is reported with its exit status; the next
  run (or ``restart()``) starts a new one.
* No orphans: ``shutdown()`` ends the kernel's process group; interpreters still
  running at exit are shut down, and ipykernel exits when its parent changes.
"""

from __future__ import annotations

import atexit
import base64
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .capture import DEFAULT_LIMIT, CappedText

if TYPE_CHECKING:
    from jupyter_client import BlockingKernelClient, KernelManager

DEFAULT_TIMEOUT = 60.0
INTERRUPT_GRACE = 5.0  # seconds an interrupted block has to stop before the kernel is killed
START_TIMEOUT = 60.0
MAX_IMAGE_BYTES = 20 * 1024 * 1024
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpg"}

# Runs once in each new kernel (silently): caps stdout/stderr writes and result
# text inside the kernel, counting what it drops in __glmtui_out["dropped"].
_KERNEL_SETUP = r'''
def __glmtui_setup(limit):
    import sys
    state = {"left": limit, "dropped": 0}

    def keep(text):
        data = text.encode("utf-8", "replace")
        if len(data) <= state["left"]:
            state["left"] -= len(data)
            return text
        head = data[:max(state["left"], 0)].decode("utf-8", "ignore")
        state["left"] = 0
        state["dropped"] += len(data) - len(head.encode("utf-8"))
        return head

    def wrap(stream):
        write = stream.write

        def capped(text):
            if not isinstance(text, str):
                return write(text)
            head = keep(text)
            if head:
                write(head)
            return len(text)
        stream.write = capped

    ip = get_ipython()

    # IPython puts its own write wrapper on the streams for each cell and restores
    # the plain one afterwards, so the cap is put on at the start of every cell.
    def reset(*args):
        state["left"] = limit
        state["dropped"] = 0
        wrap(sys.stdout)
        wrap(sys.stderr)
    ip.events.register("pre_execute", reset)
    formatter = ip.display_formatter.format

    def format(obj, include=None, exclude=None):
        data, metadata = formatter(obj, include=include, exclude=exclude)
        text = data.get("text/plain") if isinstance(data, dict) else None
        if isinstance(text, str) and len(text) > 1024:
            data["text/plain"] = keep(text)
        return data, metadata
    ip.display_formatter.format = format
    return state

__glmtui_out = __glmtui_setup(%d)
del __glmtui_setup
'''


class InterpreterError(RuntimeError):
    """The kernel could not be started (ipykernel missing, a broken Python)."""


@dataclass
class RunResult:
    """What one code block came to. ``status``: "ok", "error" (an exception), "timeout",
    "cancelled" or "died" (the kernel ended during the run)."""

    status: str
    text: str
    images: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    kernel_restarted: bool = False  # the kernel's variables are gone

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def default_workdir() -> Path:
    from ..config import default_paths, ensure_private_dir

    return ensure_private_dir(default_paths().data_dir / "interpreter")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


_live: "weakref.WeakSet[CodeInterpreter]" = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:
    for interpreter in list(_live):
        interpreter.shutdown()


class CodeInterpreter:
    def __init__(self, workdir: Optional[Path] = None, timeout: float = DEFAULT_TIMEOUT,
                 output_limit: int = DEFAULT_LIMIT, interrupt_grace: float = INTERRUPT_GRACE):
        self.workdir = Path(workdir) if workdir is not None else default_workdir()
        self.timeout = timeout
        self.output_limit = output_limit
        self.interrupt_grace = interrupt_grace
        self._manager: Optional[KernelManager] = None
        self._client: Optional[BlockingKernelClient] = None
        self._lock = threading.RLock()
        self._cancel = threading.Event()
        self._images = 0
        _live.add(self)

    # -------------------------------------------------------------- lifecycle

    @property
    def pid(self) -> Optional[int]:
        process = getattr(getattr(self._manager, "provisioner", None), "process", None)
        return getattr(process, "pid", None)

    @property
    def alive(self) -> bool:
        manager = self._manager
        try:
            return manager is not None and manager.is_alive()
        except Exception:  # noqa: BLE001 - jupyter_client on a dying kernel raises anything: not alive
            return False

    def start(self) -> None:
        with self._lock:
            if self._manager is None:
                self._start()

    def _start(self) -> None:
        try:
            from jupyter_client import KernelManager
            from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
        except ImportError as exc:
            raise InterpreterError("the code interpreter needs jupyter_client and ipykernel "
                                   "(pip install jupyter_client ipykernel)") from exc

        class _ThisPython(KernelSpecManager):
            """Always this interpreter's ipykernel, whatever kernels the user has installed."""

            def get_kernel_spec(self, kernel_name):
                return KernelSpec(
                    argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                          "--HistoryManager.enabled=False"],
                    display_name="glmtui", language="python", interrupt_mode="signal",
                )

        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)  # the user's files: private, as the data dir
        private = self.workdir.parent / ".interpreter-runtime"
        private.mkdir(mode=0o700, parents=True, exist_ok=True)
        manager = KernelManager(kernel_name="glmtui", kernel_spec_manager=_ThisPython())
        manager.connection_file = str(private / f"kernel-{os.getpid()}-{uuid.uuid4().hex[:8]}.json")
        manager.shutdown_wait_time = 2.0
        env = dict(os.environ)
        env["IPYTHONDIR"] = str(private / "ipython")  # no profile or history in the user's ~/.ipython
        env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
        try:
            manager.start_kernel(cwd=str(self.workdir), env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        except Exception as exc:
            raise InterpreterError(f"the kernel did not start: {exc}") from exc
        client = manager.client()
        client.start_channels()
        try:
            client.wait_for_ready(timeout=START_TIMEOUT)
        except Exception as exc:
            client.stop_channels()
            self._end(manager)
            if "No module named" in str(exc) or not _has_ipykernel():
                raise InterpreterError("the code interpreter needs ipykernel (pip install ipykernel)") from exc
            raise InterpreterError(f"the kernel did not start: {exc}") from exc
        self._manager, self._client = manager, client
        client.execute(_KERNEL_SETUP % self.output_limit, silent=True, store_history=False)

    def _end(self, manager) -> None:
        """Stop a kernel and everything in its process group; wait for it."""
        pgid = getattr(manager.provisioner, "pgid", None) if manager.provisioner else None
        try:
            manager.shutdown_kernel(now=True)
        except Exception:  # noqa: BLE001 - a kernel that will not shut down politely is killed below
            pass
        if pgid:
            try:
                os.killpg(pgid, signal.SIGKILL)  # what the code started (subprocesses) ends too
            except (ProcessLookupError, PermissionError):
                pass

    def _stop(self) -> None:
        client, manager = self._client, self._manager
        self._client = self._manager = None
        if client is not None:
            try:
                client.stop_channels()
            except Exception:  # noqa: BLE001 - closing a dead kernel's channels may raise anything: stopping goes on
                pass
        if manager is not None:
            self._end(manager)

    def restart(self) -> None:
        """A new kernel (variables gone); waits for it to be ready."""
        with self._lock:
            self._stop()
            self._start()

    def shutdown(self) -> None:
        with self._lock:
            self._stop()

    def cancel(self) -> None:
        """Interrupt the block that is running (from another thread)."""
        self._cancel.set()

    # -------------------------------------------------------------- running code

    def run(self, code: str, timeout: Optional[float] = None) -> RunResult:
        with self._lock:
            self._cancel.clear()
            restarted = False
            if self._manager is not None and not self.alive:
                self._stop()
                restarted = True
            if self._manager is None:
                self._start()
            result = self._run(code, self.timeout if timeout is None else timeout)
            result.kernel_restarted = result.kernel_restarted or restarted
            return result

    def _run(self, code: str, timeout: float) -> RunResult:
        client, manager = self._client, self._manager
        assert client is not None and manager is not None  # run() started the kernel
        started = time.monotonic()
        msg_id = client.execute(code, store_history=True, allow_stdin=False, stop_on_error=False,
                                user_expressions={"dropped": "__glmtui_out['dropped']"})
        output = CappedText(self.output_limit)
        images: list[Path] = []
        status = "ok"
        deadline = started + timeout
        interrupted_at: Optional[float] = None
        while True:
            now = time.monotonic()
            if interrupted_at is None and (now > deadline or self._cancel.is_set()):
                status = "cancelled" if self._cancel.is_set() else "timeout"
                interrupted_at = now
                try:
                    manager.interrupt_kernel()
                except Exception:  # noqa: BLE001 - an interrupt that fails: the grace period ends in a stop
                    pass
            if interrupted_at is not None and now > interrupted_at + self.interrupt_grace:
                self._stop()
                note = self._note_for(status, timeout, started)
                try:
                    self._start()
                    fresh = "a new kernel was started (earlier variables are gone)"
                except InterpreterError as exc:
                    fresh = f"a new kernel could not be started: {exc}"
                text = _with_note(output, f"{note}; the kernel did not stop and was killed; {fresh}")
                return RunResult(status, text, images, time.monotonic() - started, True)
            try:
                message = client.get_iopub_msg(timeout=0.1)
            except queue.Empty:
                if not manager.is_alive():
                    return self._died(manager, output, images, started)
                continue
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = message.get("msg_type"), message.get("content", {})
            if kind == "stream":
                output.add(content.get("text", ""))
            elif kind in ("execute_result", "display_data"):
                self._take_display(content.get("data", {}), output, images)
            elif kind == "error":
                if interrupted_at is None or content.get("ename") != "KeyboardInterrupt":
                    status = "error" if interrupted_at is None else status
                    output.add(_ANSI.sub("", "\n".join(content.get("traceback") or
                                                       [f"{content.get('ename')}: {content.get('evalue')}"])) + "\n")
            elif kind == "status" and content.get("execution_state") == "idle":
                break
        dropped = self._kernel_dropped(client, msg_id)
        if dropped:
            output.dropped += dropped
        note = self._note_for(status, timeout, started) if interrupted_at is not None else ""
        return RunResult(status, _with_note(output, note), images, time.monotonic() - started)

    @staticmethod
    def _note_for(status: str, timeout: float, started: float) -> str:
        if status == "cancelled":
            return f"stopped by the user after {time.monotonic() - started:.0f} s"
        return f"stopped: no result within {timeout:g} s"

    def _died(self, manager, output: CappedText, images: list[Path], started: float) -> RunResult:
        process = getattr(manager.provisioner, "process", None) if manager.provisioner else None
        code = process.poll() if process is not None else None
        if code is None:
            why = "the kernel died"
        elif code < 0:
            why = f"the kernel died (killed by {_signal_name(-code)}"
            why += " — the system may have run out of memory)" if -code == signal.SIGKILL else ")"
        else:
            why = f"the kernel died (exit code {code})"
        self._stop()
        text = _with_note(output, f"{why}; the next run starts a new kernel (earlier variables are gone)")
        return RunResult("died", text, images, time.monotonic() - started, True)

    def _take_display(self, data: dict, output: CappedText, images: list[Path]) -> None:
        for mime, suffix in _IMAGE_TYPES.items():
            encoded = data.get(mime)
            if isinstance(encoded, str):
                if len(encoded) * 3 // 4 > MAX_IMAGE_BYTES:
                    output.add(f"[an image over {MAX_IMAGE_BYTES // (1024 * 1024)} MB was not saved]\n")
                    return
                try:
                    raw = base64.b64decode(encoded, validate=False)
                except ValueError:
                    output.add("[an image that could not be decoded]\n")
                    return
                self._images += 1
                path = self.workdir / f"image-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{self._images}.{suffix}"
                path.write_bytes(raw)
                images.append(path)
                return
        text = data.get("text/plain")
        if isinstance(text, str):
            output.add(text + "\n")

    def _kernel_dropped(self, client, msg_id: str) -> int:
        """Bytes the kernel's own cap dropped during this run (from the execute reply)."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                reply = client.get_shell_msg(timeout=0.5)
            except queue.Empty:
                continue
            if reply.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            value = reply.get("content", {}).get("user_expressions", {}).get("dropped", {})
            try:
                return int(value.get("data", {}).get("text/plain", "0"))
            except (TypeError, ValueError, AttributeError):
                return 0
        return 0


def _with_note(output: CappedText, note: str) -> str:
    """The capped output, then a line about how the run ended (never cut by the cap)."""
    text = output.render().strip("\n")
    return f"{text}\n{note}" if text and note else (text or note)


def _has_ipykernel() -> bool:
    import importlib.util

    return importlib.util.find_spec("ipykernel") is not None
