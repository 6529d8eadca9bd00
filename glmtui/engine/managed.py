"""ManagedServer: an OpenAI-compatible server process run by glmtui as its engine.

Used for vLLM (``glmtui --engine vllm``): glmtui starts the server for the
chosen model and mode, waits for its ``/health`` with progress, drives it
through :class:`RemoteEngine`, stops it on unload or quit, and reports its
log's last lines if it dies. The server's launch (argv, environment) comes
from a :class:`ServerPlan`; glmtui/engine/vllm.py builds vLLM's.

Like EngineProcess, the front end imports neither torch nor the server's
packages: the server runs in its own interpreter (often another venv), in a
session of its own, with a parent-death signal so no server outlives
glmtui holding GPU memory.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

from .api import Listener, Listeners, MemoryReport, ModelInfo, rss_bytes
from .events import (
    ChatMessage,
    EngineExited,
    Event,
    Failed,
    GenerationParams,
    Loaded,
    LoadProgress,
    Unloaded,
)
from .process import describe_exit, last_error_line, log_tail, prune_logs

if TYPE_CHECKING:
    from .remote import RemoteEngine

LOG_KEEP = 10
# Sets the parent-death signal, then becomes the server: the signal survives exec.
_PDEATHSIG_EXEC = (
    "import ctypes, os, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, 9)\n"  # PR_SET_PDEATHSIG, SIGKILL
    "    if os.getppid() != int(sys.argv[1]): os._exit(1)\n"  # the parent died before prctl
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


@dataclass(frozen=True)
class ServerPlan:
    """How to start one server for one model: all glmtui needs to run it."""

    argv: tuple[str, ...]  # argv[0] is an executable path
    port: int
    served_name: str  # the model id the server answers to
    mode: str
    device: str
    env: dict = field(default_factory=dict)  # added to glmtui's environment
    kind: str = "vllm"  # names the log files and the messages
    notes: tuple[str, ...] = ()  # what the plan decided that the user should know
    # Run before the server starts, off the caller's thread (e.g. converting ChatGLM3 weights once).
    prepare: Optional[Callable[[Callable[[str], None]], None]] = None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class ManagedServer(Listeners):
    """The Engine interface over a server process glmtui starts and stops.

    ``planner(path, mode, device)`` returns the :class:`ServerPlan` for a load
    or raises ``ValueError`` with a one-line reason. Loads, unloads and the
    server's death are handled on one thread of this engine; generation goes
    straight to the RemoteEngine of the running server.
    """

    def __init__(self, planner: Callable[[str, str, str], ServerPlan], listener: Optional[Listener] = None, *,
                 log_dir: Optional[Path] = None, health_timeout: float = 900.0, stop_timeout: float = 20.0):
        self._planner = planner
        self._listeners: list[Listener] = [listener] if listener else []
        self._lock = threading.Lock()
        self._ids = itertools.count(1_000_000)  # apart from the RemoteEngine's ids, which pass through
        self._log_dir = log_dir
        self._health_timeout = health_timeout
        self._stop_timeout = stop_timeout
        self._popen: Optional[subprocess.Popen] = None
        self._plan: Optional[ServerPlan] = None
        self._log_path: Optional[Path] = None
        self._remote: Optional[RemoteEngine] = None  # of the running server
        self._stopping = False  # set while glmtui itself ends the server
        self._jobs: list[tuple[Optional[Callable], tuple]] = []  # None: stop
        self._wake = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._run, name="glmtui-managed", daemon=True)
        self.model_info: Optional[ModelInfo] = None
        self.state = "empty"

    # ------------------------------------------------------------ Engine interface

    def start(self) -> "ManagedServer":
        if not self._thread.is_alive():
            self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.state != "stopped"

    def load(self, path: str, mode: str = "auto", device: str = "auto", sink: Optional[Listener] = None) -> int:
        request_id = next(self._ids)
        self.state = "loading"
        self._submit(self._do_load, (request_id, str(path), mode, device, sink))
        return request_id

    def unload(self, sink: Optional[Listener] = None) -> int:
        request_id = next(self._ids)
        self._submit(self._do_unload, (request_id, sink))
        return request_id

    def generate(self, messages: Sequence[ChatMessage], params: GenerationParams = GenerationParams(),
                 sink: Optional[Listener] = None, tools: Optional[list] = None, *,
                 prompt_text: Optional[str] = None) -> int:
        remote = self._remote
        if remote is None:
            request_id = next(self._ids)
            self._deliver(Failed(request_id, "no model is loaded — load one first", "generate", kind="no_model"), sink)
            return request_id
        return remote.generate(messages, params, sink=sink, tools=tools, prompt_text=prompt_text)

    def cancel(self, request_id: Optional[int] = None) -> None:
        remote = self._remote
        if remote is not None:
            remote.cancel(request_id)

    def queue_length(self) -> int:
        remote = self._remote
        return remote.queue_length() if remote is not None else 0

    def memory_report(self) -> MemoryReport:
        pids = self.server_pids()
        return MemoryReport(tuple(pids), rss_bytes(pids) if pids else None)

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop_server(timeout)
        with self._lock:
            self._jobs.append((None, ()))
            self._wake.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self.state = "stopped"

    # ------------------------------------------------------------ what the UI and monitor read

    @property
    def endpoint(self) -> Optional[str]:
        remote = self._remote
        return remote.endpoint if remote is not None else None

    @property
    def log_path(self) -> Optional[Path]:
        return self._log_path

    def server_pids(self) -> list[int]:
        """The server process and its children (vLLM runs its engine core in a child)."""
        popen = self._popen
        if popen is None or popen.poll() is not None:
            return []
        pids = [popen.pid]
        try:
            import psutil
        except ImportError:
            return pids
        try:
            pids += [c.pid for c in psutil.Process(popen.pid).children(recursive=True)]
        except (psutil.Error, OSError):  # NoSuchProcess, AccessDenied: the tree changed while read
            pass
        return pids

    # ------------------------------------------------------------ the engine's thread

    def _submit(self, job: Callable, args: tuple) -> None:
        with self._lock:
            self._jobs.append((job, args))
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._jobs:
                    self._wake.wait(0.5)
                    if not self._jobs:
                        self._check_server()
                job, args = self._jobs.pop(0)
            if job is None:
                return
            try:
                job(*args)
            except Exception as exc:  # noqa: BLE001 - a bug here must not leave the UI waiting
                traceback.print_exc()
                self._deliver(Failed(args[0], f"{type(exc).__name__}: {exc}", "load"), args[-1])

    def _check_server(self) -> None:
        """Called with the lock held, between jobs: a server that died on its own is reported once."""
        popen = self._popen
        if popen is None or self._stopping or popen.poll() is None:
            return
        self._popen = None
        remote, self._remote = self._remote, None
        self.model_info = None
        self.state = "empty"
        threading.Thread(target=self._report_death, args=(popen.returncode, remote), daemon=True).start()

    def _report_death(self, code: int, remote) -> None:
        if remote is not None:
            remote.shutdown(2.0)  # its open streams end with Failed (lost the server)
        tail = log_tail(self._log_path)
        cause = describe_exit(code)
        last = last_error_line(tail)
        kind = self._plan.kind if self._plan else "server"
        message = f"the {kind} server stopped ({cause})" + (f": {last}" if last else "")
        self._deliver(EngineExited(0, message, cause, tail, str(self._log_path or "")), None)

    def _do_load(self, request_id: int, path: str, mode: str, device: str, sink: Optional[Listener]) -> None:
        started = time.monotonic()
        self._stop_server(self._stop_timeout)
        try:
            plan = self._planner(path, mode, device)
        except ValueError as exc:
            self._fail_load(request_id, str(exc), sink)
            return
        if plan.prepare is not None:
            try:
                plan.prepare(lambda stage: self._deliver(LoadProgress(request_id, stage, None), sink))
            except Exception as exc:  # noqa: BLE001 - a plan's own preparation: any failure fails the load with why
                self._fail_load(request_id, f"cannot prepare the model for {plan.kind}: {exc}", sink)
                return
        problem = self._spawn(plan)
        if problem:
            self._fail_load(request_id, problem, sink)
            return
        problem = self._wait_healthy(request_id, plan, started, sink)
        if problem:
            self._stop_server(self._stop_timeout)
            self._fail_load(request_id, problem, sink)
            return
        self._connect(request_id, plan, started, sink)

    def _spawn(self, plan: ServerPlan) -> str:
        from ..config import default_paths, ensure_private_dir

        log_dir = self._log_dir or default_paths().data_dir / "logs"
        try:
            ensure_private_dir(log_dir)
            prune_logs(log_dir, LOG_KEEP - 1, pattern=f"{plan.kind}-*.log")
            self._log_path = log_dir / f"{plan.kind}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
            log_fd = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            return f"cannot write the {plan.kind} log: {exc}"
        try:
            self._stopping = False
            self._popen = subprocess.Popen(
                [sys.executable, "-c", _PDEATHSIG_EXEC, str(os.getpid()), *plan.argv],
                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                env=dict(os.environ, PYTHONUNBUFFERED="1", **plan.env),
                start_new_session=True,  # Ctrl-C in the terminal is glmtui's; the group is stopped as one
            )
        except OSError as exc:
            return f"cannot start {plan.argv[0]}: {exc}"
        finally:
            os.close(log_fd)
        self._plan = plan
        return ""

    def _wait_healthy(self, request_id: int, plan: ServerPlan, started: float, sink: Optional[Listener]) -> str:
        """Poll /health until it answers 200; "" when it did, else why not."""
        import httpx

        url = f"http://127.0.0.1:{plan.port}/health"
        shown = ""
        with httpx.Client(timeout=httpx.Timeout(2.0), trust_env=False) as client:
            while True:
                popen = self._popen
                if popen is None:
                    return "the load was stopped"
                code = popen.poll()
                if code is not None:
                    tail = log_tail(self._log_path)
                    last = last_error_line(tail) or (tail.splitlines()[-1] if tail else "")
                    return (f"the {plan.kind} server ended while starting ({describe_exit(code)})"
                            + (f": {last}" if last else "") + f" — log: {self._log_path}")
                elapsed = time.monotonic() - started
                if elapsed > self._health_timeout:
                    return f"the {plan.kind} server did not become ready within {self._health_timeout:.0f} s"
                try:
                    if client.get(url).status_code == 200:
                        return ""
                except httpx.HTTPError:
                    pass
                line = (log_tail(self._log_path, lines=1) or "").strip()[:120]
                stage = f"starting {plan.kind} ({elapsed:.0f} s)" + (f": {line}" if line else "")
                if stage != shown:
                    shown = stage
                    self._deliver(LoadProgress(request_id, stage, None), sink)
                time.sleep(0.5)

    def _connect(self, request_id: int, plan: ServerPlan, started: float, sink: Optional[Listener]) -> None:
        from .remote import RemoteEngine

        done = threading.Event()
        outcome: list[Union[Loaded, Failed]] = []

        def on_connect(event: Event) -> None:
            if isinstance(event, (Loaded, Failed)):
                outcome.append(event)
                done.set()

        remote = RemoteEngine(f"http://127.0.0.1:{plan.port}/v1", api_key="", model=plan.served_name,
                              autoconnect=False)
        remote.add_listener(self._forward)
        remote.start()
        remote.load("", sink=on_connect)
        done.wait(60)
        event = outcome[0] if outcome else Failed(request_id, f"the {plan.kind} server did not list its model", "load")
        if isinstance(event, Failed):
            remote.shutdown(2.0)
            self._stop_server(self._stop_timeout)
            self._fail_load(request_id, event.message, sink)
            return
        self._remote = remote
        assert remote.model_info is not None  # set before its Loaded is delivered
        self.model_info = replace(remote.model_info, mode=plan.mode, device=plan.device)
        self.state = "ready"
        self._deliver(Loaded(request_id, plan.served_name, event.model_path, plan.mode, plan.device, 0,
                             time.monotonic() - started, event.context_length,
                             notes=(f"served by {plan.kind} (pid {self._popen.pid if self._popen else '?'})",
                                    *plan.notes)), sink)

    def _forward(self, event: Event) -> None:
        """The RemoteEngine's generation events, to our listeners; its own connect events are ours to make."""
        if isinstance(event, (Loaded, LoadProgress, Unloaded)):
            return
        if isinstance(event, Failed) and event.during == "load":
            return
        self._deliver(event, None)

    def _do_unload(self, request_id: int, sink: Optional[Listener]) -> None:
        name = self.model_info.name if self.model_info is not None else ""
        self._stop_server(self._stop_timeout)
        self._deliver(Unloaded(request_id, name, None), sink)

    def _fail_load(self, request_id: int, message: str, sink: Optional[Listener]) -> None:
        self.model_info = None
        self.state = "empty"
        self._deliver(Failed(request_id, message, "load"), sink)

    def _stop_server(self, timeout: float) -> None:
        """End the server and everything it started (its process group): SIGTERM, then SIGKILL."""
        with self._lock:
            popen, self._popen = self._popen, None
            remote, self._remote = self._remote, None
            self._stopping = True
            self.model_info = None
            if self.state != "stopped":
                self.state = "empty" if self.state != "loading" else self.state
        if remote is not None:
            remote.shutdown(2.0)
        if popen is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(popen.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                popen.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
