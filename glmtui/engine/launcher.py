"""One interpreter that has imported torch and transformers starts glmtui's torch processes as forks of itself.

An engine process or an exact-count predictor spends its first seconds importing torch and
transformers (about 6 CPU-s on a 2-core machine). The launcher pays that once per front end: a
fresh interpreter (never a fork of the front end) imports them, never runs a torch op (no OpenMP
threads, no device context), stays single-threaded, and forks a child per start, which runs a
glmtui function with the front end's arguments, environment, working folder and file descriptors.

Used where torch is a CPU build only: forking after importing a CUDA or ROCm build is unmeasured on a
GPU, so there every start stays a fresh interpreter (launcher_process.LAUNCHER_REFUSES). Also a fresh interpreter
whenever the front end's environment differs from the launcher's in a variable an import may have
read (anything but ``GLMTUI_*`` and pytest's per-test marker), and when the launcher cannot start.

This module is the front end's side; the launcher's own loop and the forked child's first steps are in
launcher_process.py. The launcher is its children's parent: it reaps them and reports each exit code over its socket,
and signals them on request, so :class:`Launched` answers like ``subprocess.Popen`` without a pid
race. It dies with the front end (parent-death signal, end of file on its socket); its children die
with it (parent-death signal), so nothing outlives the front end but what is started detached,
which never comes here.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Mapping, Optional, Sequence

_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding the glmtui package
_BOOT = f"import sys; sys.path[0] = {_ROOT!r}; from glmtui.engine.launcher_process import serve; serve()"
_MAX_MESSAGE = 1 << 20  # one request or answer (launcher_process.py reads the same)


# ---------------------------------------------------------------- the front end's side

class Launched:
    """A process the launcher forked, answering like ``subprocess.Popen`` (pid, returncode, poll, wait, kill)."""

    def __init__(self, pid: int, launcher: "Launcher"):
        self.pid = pid
        self.returncode: Optional[int] = None
        self.args = ["launched", str(pid)]
        self._launcher = launcher
        self._done = threading.Event()

    def poll(self) -> Optional[int]:
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            self._launcher._post(("signal", self.pid, int(sig)))

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def _ended(self, code: int) -> None:
        self.returncode = code
        self._done.set()


class Launcher:
    """This front end's launcher process (see the module's docstring); :func:`shared` gives the one in use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self._popen: Optional[subprocess.Popen] = None
        self._env: dict[str, str] = {}
        self._ready = threading.Event()
        self._answers: dict[int, tuple] = {}
        self._answered = threading.Condition(self._lock)
        self._children: dict[int, Launched] = {}
        self._exits: dict[int, int] = {}  # exits reported before their spawn's answer was read
        self._next = 0
        self.refused = ""  # why it does not fork ("" while it does or has not said yet)
        self.ended = False
        self._started = False

    @property
    def pid(self) -> Optional[int]:
        return self._popen.pid if self._popen is not None else None

    def start(self) -> "Launcher":
        """Start the launcher process in the background (idempotent); its imports run on idle CPU time."""
        with self._lock:
            if self._started or self.ended:
                return self
            self._started = True
        started = threading.Event()
        # the thread that starts the launcher lives as long as this process and reads its socket: the
        # launcher's parent-death signal fires when that thread ends, not when the process does
        threading.Thread(target=self._run, args=(started,), name="glmtui-launcher", daemon=True).start()
        started.wait(10)
        return self

    @property
    def started(self) -> bool:
        return self._started

    def importing(self) -> bool:
        """Started and still doing its imports."""
        return self._started and not self._ready.is_set() and not self.ended

    def ready_now(self) -> bool:
        """Whether a start can be a fork now: the launcher has done its imports, forks here, and the
        environment its imports read has not changed since."""
        return self._ready.is_set() and not self.refused and not self.ended and _environment() == self._env

    def spawn(self, target: str, args: Sequence[str], fds: Mapping[int, int], *, new_session: bool = True,
              nice: int = 0, timeout: float = 30.0) -> Launched:
        """Fork a child that calls ``target`` ("module:function", given ``args``) with ``fds`` (the child's
        descriptor number -> ours) and this process's environment and working folder; raises OSError."""
        env = dict(os.environ)
        with self._lock:
            if self.ended or self._sock is None:
                raise OSError("the launcher has ended")
            self._next += 1
            token = self._next
        message = ("spawn", token, target, list(args), list(fds), env, os.getcwd(), new_session, nice)
        self._post(message, list(fds.values()))
        with self._answered:
            if not self._answered.wait_for(lambda: token in self._answers or self.ended, timeout):
                raise OSError("the launcher did not answer")
            answer = self._answers.pop(token, None)
            if answer is None:
                raise OSError("the launcher has ended")
            if answer[0] != "spawned":
                raise OSError(f"the launcher could not start it: {answer[1]}")
            child = Launched(answer[1], self)
            self._children[child.pid] = child
            early = self._exits.pop(child.pid, None)
        if early is not None:
            child._ended(early)
        return child

    def stop_if_idle(self) -> bool:
        """End the launcher if none of its forks runs (after an unload: glmtui's memory back to what it was
        before the first load); the next spare starts a new one."""
        with self._lock:
            if self._children or not self._started or self.ended:
                return False
        self.stop()
        return True

    def stop(self) -> None:
        """End the launcher (and so the children it forked that still run)."""
        with self._lock:
            sock, popen = self._sock, self._popen
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if popen is not None:
            try:
                popen.wait(5)
            except subprocess.TimeoutExpired:
                popen.kill()

    def _post(self, message: tuple, fds: Sequence[int] = ()) -> None:
        sock = self._sock
        if sock is None:
            raise OSError("the launcher is not running")
        data = pickle.dumps(message)
        if len(data) > _MAX_MESSAGE:
            raise OSError("the request is too large for the launcher")
        try:
            socket.send_fds(sock, [data], list(fds))
        except OSError as exc:
            if message[0] == "spawn":
                raise OSError(f"the launcher is gone: {exc}") from exc

    def _run(self, started: threading.Event) -> None:
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self._env = _environment()
            try:
                self._popen = subprocess.Popen(
                    [sys.executable, "-c", _BOOT, str(theirs.fileno()), str(os.getpid())],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    pass_fds=(theirs.fileno(),), env=dict(self._env, PYTHONUNBUFFERED="1"), start_new_session=True)
            finally:
                theirs.close()
            self._sock = ours
        except OSError as exc:
            self.refused = f"it could not start: {exc}"
            self.ended = True
            return
        finally:
            started.set()
        self._read(ours)

    def _read(self, sock: socket.socket) -> None:
        while True:
            try:
                data, _fds, _flags, _addr = socket.recv_fds(sock, _MAX_MESSAGE, 0)
            except OSError:
                data = b""
            if not data:
                break
            try:
                message = pickle.loads(data)
            except Exception:  # noqa: BLE001 - a garbled message: ignore it, keep reading
                continue
            kind = message[0]
            if kind == "ready":
                self.refused = message[1]
                self._ready.set()
            elif kind in ("spawned", "failed"):
                with self._answered:
                    self._answers[message[1]] = (kind, message[2])
                    self._answered.notify_all()
            elif kind == "exited":
                with self._lock:
                    child = self._children.pop(message[1], None)
                    if child is None:
                        self._exits[message[1]] = message[2]
                if child is not None:
                    child._ended(message[2])
        # the launcher ended: its children got its parent-death signal
        with self._answered:
            self.ended = True
            children, self._children = list(self._children.values()), {}
            self._answered.notify_all()
        self._ready.set()
        for child in children:
            child._ended(-signal.SIGKILL)
        if self._popen is not None:
            try:
                self._popen.wait(5)
            except subprocess.TimeoutExpired:
                pass


_shared: Optional[Launcher] = None
_shared_lock = threading.Lock()


def shared() -> Launcher:
    """This process's launcher (a new one once the last has ended); not started until asked."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.ended:
            _shared = Launcher()
        return _shared


# read by no import: glmtui's own (read when used) and pytest's name of the running test (it changes per test)
_UNREAD = ("GLMTUI_", "PYTEST_CURRENT_TEST")


def _environment() -> dict[str, str]:
    """What the launcher's imports may have read: the environment but the variables no import reads."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_UNREAD)}
