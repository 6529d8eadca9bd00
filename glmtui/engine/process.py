"""EngineProcess: the model in a process of its own.
Kept whole past 400 lines: one class, this side of the engine process.

The front end (TUI, ``glmtui chat``) keeps no torch: this class starts a fresh
interpreter (glmtui.engine.child; a fork of the launcher once it is ready,
launcher.py) that owns torch, CUDA and the
model, and talks to it over a socket pair with multiprocessing's
length-prefixed messages. Its interface is the InferenceWorker's
(glmtui.engine.api.Engine): the same commands, the same events, delivered to
listeners and sinks on a reader thread of this process.

Life of the processes:
- every load goes to a fresh process; the one holding the previous model is
  told to unload and exit first, and the new load starts only once it is gone,
  so two models never share the memory;
- unload ends the process: all it held returns to the system;
- while a model is loaded and nothing runs, a spare process is started in the
  background (it spends its first seconds importing torch), so that switching
  the quantization costs no more than an in-process unload + load;
- a process that dies under a request (kill -9, a crash, os.abort) ends each
  request it had with a Failed naming the cause (signal or exit code, the last
  error line of its log), then an EngineExited event; the next load starts a
  fresh process. One that stops answering pings is reported
  (EngineUnresponsive) and can be killed with :meth:`EngineProcess.kill`;
- the children die with this process (see glmtui.engine.child).

Starting a child (a fork of the launcher or a fresh interpreter, its log file under the data folder's
``logs/``), this side of its pipe and the words for its end are in children.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import queue
import subprocess
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import launcher
from .api import Listener, MemoryReport, ModelInfo, rss_bytes
from .children import LOG_KEEP, Child, describe_exit, last_error_line, log_tail, prune_logs, start_child
from .commands import NO_MODEL, CommandEngine, crashed, refused
from .events import (
    EngineExited,
    EngineUnresponsive,
    Failed,
    Finished,
    GenerationParams,
    Loaded,
    Started,
    Unloaded,
)

__all__ = ["EngineProcess", "FLUSH_INTERVAL", "LOG_KEEP", "describe_exit", "last_error_line", "log_tail", "prune_logs"]

QUANTIZED_MODES = ("int8", "int4")  # bitsandbytes's
FLUSH_INTERVAL = 0.05  # the child's token coalescing (seconds); see child.Outbox


@dataclass
class _Request:
    kind: str  # "load", "unload", "generate"
    sink: Optional[Listener] = None
    child: Optional[Child] = None  # the process it was sent to
    cancelled: bool = False
    started: bool = False
    internal: bool = False  # our own (retiring a process): its events are not delivered


class EngineProcess(CommandEngine):
    """The Engine interface over a child process (see the module's docstring)."""

    def __init__(
        self,
        listener: Optional[Listener] = None,
        *,
        keep_spare: bool = True,
        spare_idle: float = 1.0,
        ping_interval: float = 2.0,
        hang_after: float = 15.0,
        log_dir: Optional[Path] = None,
        flush_interval: float = FLUSH_INTERVAL,
        use_launcher: bool = True,
    ):
        self._listeners: list[Listener] = [listener] if listener else []
        self._keep_spare = keep_spare
        self._spare_idle = spare_idle
        self._ping_interval = ping_interval
        self._hang_after = hang_after
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._flush_interval = flush_interval
        self._use_launcher = use_launcher
        self._ids = itertools.count(1)
        self._internal_ids = itertools.count(-1, -1)
        self._lock = threading.Lock()
        self._requests: dict[int, _Request] = {}
        self._commands: "queue.Queue[tuple]" = queue.Queue()
        self._active: Optional[Child] = None
        self._spare: Optional[Child] = None
        self._retiring: list[Child] = []
        self._last_child: Optional[Child] = None
        self._idle_since = time.monotonic()
        self._last_ping_round = 0.0
        self._stopping = False
        self._quantized = False  # an int8/int4 load was asked for
        self.model_info: Optional[ModelInfo] = None
        self.state = "empty"  # empty, loading, ready, generating, stopped
        self.last_exit: Optional[EngineExited] = None
        self._lost_model = ""  # why no model is loaded when its process died under it ("" otherwise)
        self.spawned = 0  # processes started so far
        self._thread = threading.Thread(target=self._run, name="glmtui-engine", daemon=True)

    # ------------------------------------------------------------ public API (any thread)

    def start(self) -> "EngineProcess":
        if not self._thread.is_alive() and not self._stopping:
            self._thread.start()
        return self

    def load(self, path: str, mode: str = "bf16", device: str = "auto", sink: Optional[Listener] = None) -> int:
        """Load in a fresh process; ``mode="auto"``: bf16 on a GPU, fp32 on the CPU (decided by the engine)."""
        return self._submit("load", {"path": str(path), "mode": mode, "device": device}, sink)

    def cancel(self, request_id: Optional[int] = None) -> None:
        """Stop a generation (the current one when no id is given); it ends after at most one more token."""
        with self._lock:
            if request_id is None:
                running = [r for r in self._requests.values() if r.kind == "generate" and r.child is not None]
                child = running[0].child if running else self._active
            else:
                request = self._requests.get(request_id)
                if request is None or request.kind != "generate":
                    return
                if request.child is None:  # still waiting here: it will finish as cancelled
                    request.cancelled = True
                    return
                child = request.child
        if child is not None:
            child.send(("cancel", request_id))

    def queue_length(self) -> int:
        with self._lock:
            return sum(1 for r in self._requests.values() if r.kind == "generate")

    def memory_report(self) -> MemoryReport:
        """The engine's processes now (the model's, a spare, any still ending); CUDA figures from the last ping."""
        with self._lock:
            children = [c for c in (self._active, self._spare, *self._retiring)
                        if c is not None and c.popen.returncode is None]
            device = self._active.device if self._active is not None else (None, None)
        pids = tuple(c.pid for c in children)
        return MemoryReport(pids, rss_bytes(pids) if pids else 0, *device)

    def prestart(self) -> None:
        """Start a spare process now (if none is waiting), so the next load does not wait for imports."""
        self._commands.put(("spare", None, {"now": True}))

    def kill(self, reason: str = "stopped by glmtui") -> bool:
        """Kill the model's process at once (a hung engine); reported like any other death."""
        with self._lock:
            child = self._active
            if child is None or child.lost:
                return False
            child.killed_reason = reason
        try:
            child.popen.kill()
        except OSError:
            return False
        return True

    def shutdown(self, timeout: float = 10.0) -> None:
        """End every engine process and the engine's thread."""
        with self._lock:
            self._stopping = True
        if self._thread.is_alive():
            self._commands.put(("stop", None, {"timeout": timeout}))
            self._thread.join(timeout + 2.0)
        else:
            self._stop_all(timeout)
        with self._lock:
            self.state = "stopped"

    @property
    def pid(self) -> Optional[int]:
        """The process that holds (or is loading) the model."""
        child = self._active
        return child.pid if child is not None and not child.lost else None

    @property
    def log_path(self) -> Optional[Path]:
        """The log of the model's process, else of the last one started."""
        child = self._active or self._last_child
        return child.log_path if child is not None else None

    # ------------------------------------------------------------ commands (the engine's thread)

    def _submit(self, kind: str, args: dict, sink: Optional[Listener]) -> int:
        request_id = next(self._ids)
        with self._lock:
            self._requests[request_id] = _Request(kind, sink)
            self._settle()
        if self._stopping:
            self._finish(request_id, Failed(request_id, "the engine has been shut down", kind))
        else:
            self._commands.put((kind, request_id, args))
        return request_id

    def _run(self) -> None:
        while True:
            try:
                # (kind, request id, the handler's keyword arguments); a request id of None: our own
                kind, request_id, args = self._commands.get(timeout=0.25)
            except queue.Empty:
                self._housekeeping()
                continue
            if kind == "stop":
                self._stop_all(args["timeout"])
                return
            try:
                if request_id is None:
                    getattr(self, f"_do_{kind}")(**args)
                else:
                    getattr(self, f"_do_{kind}")(request_id, **args)
            except Exception as exc:  # noqa: BLE001 - the engine's thread must survive anything
                if request_id is not None:
                    self._finish(request_id, crashed(request_id, exc, kind, traceback.format_exc()))
                else:
                    traceback.print_exc()
            self._housekeeping()

    def _do_load(self, request_id: int, path: str, mode: str, device: str) -> None:
        self._quantized = self._quantized or mode in QUANTIZED_MODES
        with self._lock:
            self._lost_model = ""
            old, self._active = self._active, None
            spare, self._spare = self._spare, None
            self.model_info = None
        if old is not None:
            self._retire(old)
        if spare is not None and (spare.lost or (spare.ahead and not spare.ready.is_set())):
            self._end(spare)  # a spare still importing on idle time could be starved: start one at full speed
            spare = None
        child = spare if spare is not None else self._spawn()
        if child is None:
            return self._finish(request_id, Failed(request_id, self._spawn_error, "load"))
        self._wait_retired()  # two models never share the memory
        with self._lock:
            self._active = child
        self._send_request(child, request_id, ("load", request_id, path, mode, device))

    def _do_unload(self, request_id: int) -> None:
        with self._lock:
            self._lost_model = ""
            child, self._active = self._active, None
            spare, self._spare = self._spare, None
        if spare is not None:  # memory goes back to what it was before the first load
            self._end(spare)
        if child is None:
            with self._lock:
                self.model_info = None
            self._finish(request_id, Unloaded(request_id, "", None))
        else:
            self._retire(child, request_id)
        if self._use_launcher and launcher.shared().started:  # the launcher's imports go too, once its forks have
            self._wait_retired()
            if spare is not None:
                spare.exited.wait(10)
            launcher.shared().stop_if_idle()

    def _do_generate(self, request_id: int, messages, params: GenerationParams, tools,
                     prompt_text: Optional[str] = None) -> None:
        with self._lock:
            request = self._requests.get(request_id)
            child = self._active
            lost = self._lost_model
        # a later turn of an agent's reply can come after the process died between turns: say why
        no_model = f"no model is loaded: {lost} — load it again" if lost else NO_MODEL
        refusal = refused(request_id, request is not None and request.cancelled, params, child is not None, no_model)
        if refusal is not None:
            return self._finish(request_id, refusal)
        assert child is not None  # refused() answered for no model
        self._send_request(child, request_id, ("generate", request_id, messages, params, tools, prompt_text))

    def _do_spare(self, now: bool = False) -> None:
        """A spare process; ``now``: asked for (prestart), not one the engine wants while idle."""
        with self._lock:
            if self._spare is not None and not self._spare.lost:
                return
        if self._use_launcher and not now:
            # the first spare's imports go to the launcher instead (launcher.py): this spare and every later
            # one are forks of it; a load that comes before it is ready starts a fresh process, as before
            shared = launcher.shared()
            if not shared.started:
                shared.start()
                return
            if shared.importing():
                return
        spare = self._spawn(ahead=True)
        with self._lock:
            self._spare = spare

    def _retire(self, child: Child, request_id: Optional[int] = None) -> None:
        """Unload and end ``child`` after whatever it was already asked to do."""
        child.retiring = True
        if request_id is None:
            request_id = next(self._internal_ids)
            with self._lock:
                self._requests[request_id] = _Request("unload", internal=True)
        with self._lock:
            self._retiring.append(child)
        self._send_request(child, request_id, ("unload", request_id))

    def _wait_retired(self) -> None:
        while True:
            with self._lock:
                waiting = [c for c in self._retiring if not c.exited.is_set()]
            if not waiting or self._stopping:
                return
            waiting[0].exited.wait(0.25)
            self._housekeeping()  # pings: a retiring process that stops answering is killed

    def _send_request(self, child: Child, request_id: int, message: tuple) -> None:
        with self._lock:
            request = self._requests.get(request_id)
            if request is None:
                return
            gone = child.lost
            if not gone:
                request.child = child
        if gone:  # it died before this reached it: its reader is done, so the request ends here
            message_text = child.exit_message or "the engine process has ended"
            self._finish(request_id, Failed(request_id, message_text, request.kind,
                                            interrupted=request.kind == "generate"))
            return
        child.send(message)  # on failure the reader reports the death, and this request with it

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_ping_round >= self._ping_interval:
            self._last_ping_round = now
            self._ping(now)
        with self._lock:
            want_spare = (
                self._keep_spare and not self._stopping and self._spare is None
                and self._active is not None and self.model_info is not None
                and not self._requests and now - self._idle_since >= self._spare_idle
            )
        if want_spare:
            self._do_spare()

    def _ping(self, now: float) -> None:
        with self._lock:
            children = [c for c in (self._active, *self._retiring)
                        if c is not None and not c.lost and c.ready.is_set()]
            active = self._active
        for child in children:
            if child.ping_sent is None:
                child.ping_sent = now
                child.send(("ping", 0))
                continue
            silent = now - child.ping_sent
            if silent < self._hang_after:
                continue
            if child is not active:  # ending anyway, and holding up the next load
                if child.killed_reason is None:
                    child.killed_reason = f"stopped by glmtui: it did not answer for {silent:.0f} s while ending"
                    child.popen.kill()
            elif not child.hung_reported:
                child.hung_reported = True
                self._deliver(EngineUnresponsive(
                    0, silent, f"the engine process (pid {child.pid}) has not answered for {silent:.0f} s: "
                               "it may be hung — it can be killed and the model reloaded"), None)

    # ------------------------------------------------------------ processes

    _spawn_error = ""

    def _spawn(self, ahead: bool = False) -> Optional[Child]:
        """Start a fresh engine process (on the engine's thread: the parent-death signal follows it).

        ``ahead``: a spare nobody waits for yet, whose imports use idle CPU time only.
        """
        try:
            from ..config import default_paths

            log_dir = self._log_dir or default_paths().data_dir / "logs"
            self.spawned += 1
            # bitsandbytes is imported in advance once a quantized mode has been used (as in-process:
            # the first int8/int4 load pays its import, later switches do not)
            flags = ["idle"] * ahead + ["quantizers"] * self._quantized
            child = start_child(log_dir, self.spawned, self._flush_interval, flags, ahead, self._use_launcher)
        except OSError as exc:
            self._spawn_error = f"cannot start the engine process: {exc}"
            return None
        self._last_child = child
        threading.Thread(target=self._read, args=(child,), name=f"glmtui-engine-{child.pid}", daemon=True).start()
        return child

    def _read(self, child: Child) -> None:
        """The reader thread of one process: its messages become events; its end is reported."""
        while True:
            try:
                message = child.conn.recv()
            except (EOFError, OSError):
                break
            except Exception:  # noqa: BLE001 - a message that cannot be unpickled: note it, keep reading
                traceback.print_exc()
                continue
            try:
                if isinstance(message, tuple):
                    self._on_control(child, message)
                else:
                    self._on_event(child, message)
            except Exception:  # noqa: BLE001 - one bad message must not stop the reader
                traceback.print_exc()
        self._on_exit(child)

    def _on_control(self, child: Child, message: tuple) -> None:
        kind = message[0]
        if kind == "ready":
            child.ready_at = time.perf_counter()
            child.ready.set()
        elif kind == "pong":
            child.ping_sent = None
            child.device = (message[2], message[3])
            if child.hung_reported:
                child.hung_reported = False
                self._deliver(EngineUnresponsive(0, 0.0, f"the engine process (pid {child.pid}) answers again"), None)

    def _on_event(self, child: Child, event) -> None:
        request_id = getattr(event, "request_id", None)
        if not isinstance(request_id, int):
            return
        with self._lock:
            request = self._requests.get(request_id)
        if request is None:
            return
        if isinstance(event, Unloaded):  # the process ends itself after sending this
            self._reap(child)
            event = dataclasses.replace(event, device_bytes_after=None)
        retire = False
        with self._lock:
            if isinstance(event, Started):
                request.started = True
            elif isinstance(event, Loaded) and child is self._active:
                self.model_info = ModelInfo(event.model_name, event.model_path, event.mode, event.device,
                                            event.footprint_bytes, event.context_length,
                                            chat_format=event.chat_format,
                                            concurrency=event.concurrency or "one at a time",
                                            concurrency_reason=event.concurrency_reason)
            elif isinstance(event, Failed) and request.kind == "load" and child is self._active:
                self._active = None  # nothing loaded there: end it, memory back to the baseline
                self.model_info = None
                retire = True
            elif isinstance(event, Unloaded) and not request.internal:
                self.model_info = None
            if isinstance(event, (Loaded, Unloaded, Finished, Failed)):
                self._requests.pop(request_id, None)
            self._settle()
        if retire:
            self._retire(child)
        if not request.internal:
            self._deliver(event, request.sink)

    def _reap(self, child: Child, timeout: float = 10.0) -> int:
        try:
            return child.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            child.popen.kill()
            return child.popen.wait()

    def _on_exit(self, child: Child) -> None:
        code = self._reap(child)
        child.close()
        with self._lock:
            child.lost = True
            orphans = [(rid, r) for rid, r in self._requests.items() if r.child is child]
            for rid, _ in orphans:
                del self._requests[rid]
            was_active = child is self._active
            if was_active:
                self._active = None
                self.model_info = None
            if child is self._spare:
                self._spare = None
            if child in self._retiring:
                self._retiring.remove(child)
            if any(r.kind == "unload" and not r.internal for _, r in orphans):
                self.model_info = None
            report = not self._stopping and (was_active or any(r.kind != "unload" for _, r in orphans))
            cause = describe_exit(code, child.killed_reason)
            end = log_tail(child.log_path, 400) if report or orphans else ""
            line = last_error_line(end)  # a crash's thread stacks can follow its error line by many lines
            tail = "\n".join(end.splitlines()[-20:])
            child.exit_message = f"the engine process ended ({cause})" + (f": {line}" if line else "")
            if was_active:
                self._lost_model = child.exit_message
            self._settle()
        for rid, request in orphans:
            if request.internal:
                continue
            if request.kind == "unload":  # it was ending anyway: what it held is gone all the same
                self._deliver(Unloaded(rid, "", None), request.sink)
            elif report:
                self._deliver(Failed(rid, child.exit_message, request.kind, tail,
                                     interrupted=request.kind == "generate"), request.sink)
        if report:
            self.last_exit = EngineExited(0, child.exit_message, cause, tail, str(child.log_path))
            self._deliver(self.last_exit, None)
        child.exited.set()

    def _end(self, child: Child) -> None:
        """End a process that holds nothing of the user's (a spare, or at shutdown)."""
        child.retiring = True
        if child.ready.is_set():
            child.send(("exit",))
        else:  # still importing torch: nothing to keep, no reason to wait
            try:
                child.popen.kill()
            except OSError:
                pass

    def _stop_all(self, timeout: float) -> None:
        with self._lock:
            children = [c for c in (self._active, self._spare, *self._retiring) if c is not None]
            self._active = self._spare = None
        for child in children:
            self._end(child)
        deadline = time.monotonic() + timeout
        for child in children:
            try:
                child.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.popen.kill()
        for child in children:
            child.exited.wait(max(0.1, deadline - time.monotonic()))

    # ------------------------------------------------------------ events

    def _settle(self) -> None:
        """The state from what is in hand (called under the lock, before a final event is delivered)."""
        requests = [r for r in self._requests.values() if not r.internal]
        if not self._requests:
            self._idle_since = time.monotonic()
        if self._stopping and not self._thread.is_alive():
            self.state = "stopped"
        elif any(r.kind == "load" for r in requests):
            self.state = "loading"
        elif any(r.kind == "generate" and r.started for r in requests):
            self.state = "generating"
        else:
            self.state = "ready" if self.model_info is not None else "empty"

    def _finish(self, request_id: int, event) -> None:
        """A final event made here, not by the process."""
        with self._lock:
            request = self._requests.pop(request_id, None)
            self._settle()
        self._deliver(event, request.sink if request is not None else None)
