"""The engine's child processes as the front end sees them: starting one, this side of its pipe, its end.

A child runs glmtui.engine.child: a fork of the launcher once it has done its
imports (launcher.py), else a fresh interpreter (never a fork of this process),
on one end of a socket pair, its stdout/stderr in a log file of its own under
the data folder's ``logs/`` (the newest :data:`LOG_KEEP` kept).
When it ends, :func:`describe_exit` and the last error-like line of its log
(:func:`last_error_line`) say why. EngineProcess (process.py) decides when
children start and end.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .launcher import Launched

LOG_KEEP = 10  # engine log files kept (one per process)
_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding the glmtui package
_BOOT = f"import sys; sys.path[0] = {_ROOT!r}; from glmtui.engine.child import main; main()"
_TARGET = "glmtui.engine.child:main"  # the same, in a fork of the launcher
_ERRORISH = re.compile(r"^\S.*(Error|Exception|error:|Fatal|fault|Abort|Killed|CUDA)")


class Child:
    """One engine process and this side of its pipe."""

    def __init__(self, popen: "subprocess.Popen | Launched", conn: Connection, log_path: Path, ahead: bool = False):
        self.popen = popen
        self.ahead = ahead  # started ahead of need: imports on idle CPU time only
        self.pid = popen.pid
        self.conn = conn
        self.log_path = log_path
        self.spawned_at = time.perf_counter()
        self.ready_at: Optional[float] = None  # perf_counter when its imports were done
        self.ready = threading.Event()
        self.exited = threading.Event()  # reaped, its requests settled
        self.lost = False  # its end has been handled (set under the engine's lock)
        self.retiring = False  # asked to end: its exit is no failure
        self.killed_reason: Optional[str] = None
        self.exit_message = ""
        self.ping_sent: Optional[float] = None
        self.hung_reported = False
        self.device: tuple[Optional[int], Optional[int]] = (None, None)
        self._send_lock = threading.Lock()

    def send(self, message) -> bool:
        with self._send_lock:
            try:
                self.conn.send(message)
                return True
            except (OSError, ValueError):  # it died; its reader reports that
                return False

    def close(self) -> None:
        with self._send_lock:
            self.conn.close()


def start_child(log_dir: Path, number: int, flush_interval: float, flags: list[str], ahead: bool = False,
                use_launcher: bool = True) -> Child:
    """Start engine process number ``number`` with its log in ``log_dir``; raises OSError when it cannot.

    ``flags``: the child's (``idle``, ``quantizers``: see child.main); ``ahead``: a spare nobody waits for yet.
    Call it from a thread that lives as long as the child should: the parent-death signal follows that thread.
    """
    from ..config import ensure_private_dir

    ensure_private_dir(log_dir)
    prune_logs(log_dir, LOG_KEEP - 1)
    log_path = log_dir / f"engine-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{number}.log"
    ours, theirs = socket.socketpair()
    try:
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            popen = _start(theirs.fileno(), log_fd, [str(flush_interval), ",".join(flags) or "-"], use_launcher)
        finally:
            os.close(log_fd)
    except OSError:
        ours.close()
        raise
    finally:
        theirs.close()
    return Child(popen, Connection(ours.detach()), log_path, ahead)


def _start(conn_fd: int, log_fd: int, args: list[str], use_launcher: bool) -> "subprocess.Popen | Launched":
    """A fork of the launcher when it is ready (imports done), else a fresh interpreter. Either way the
    child's parent (the launcher, or this process) is the pid it watches."""
    from . import launcher

    shared = launcher.shared()
    if use_launcher and shared.ready_now() and shared.pid is not None:
        try:
            return shared.spawn(_TARGET, ["3", str(shared.pid), *args], {1: log_fd, 2: log_fd, 3: conn_fd})
        except OSError:
            pass  # the launcher is gone or refused: a fresh interpreter
    return subprocess.Popen(
        [sys.executable, "-c", _BOOT, str(conn_fd), str(os.getpid()), *args],
        stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, pass_fds=(conn_fd,),
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        start_new_session=True,  # the terminal's Ctrl-C and hangup are the front end's
    )


def describe_exit(code: Optional[int], killed_reason: Optional[str] = None) -> str:
    """"killed by SIGKILL", "exit code 3", ... for a process's return code."""
    if killed_reason:
        return killed_reason
    if code is None:
        return "it ended"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " — the system may have run out of memory" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}" if code else "it exited"


def log_tail(path: Optional[Path], lines: int = 20, max_bytes: int = 16384) -> str:
    """The last ``lines`` lines of a log file ("" when it cannot be read)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def last_error_line(text: str) -> str:
    """The last line of a log that reads like an error ("" when none does)."""
    for line in reversed(text.splitlines()):
        if _ERRORISH.search(line):
            return line.strip()[:300]
    return ""


def prune_logs(log_dir: Path, keep: int, pattern: str = "engine-*.log") -> None:
    """Delete all but the newest ``keep`` logs matching ``pattern``."""
    try:
        logs = sorted(log_dir.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for old in logs[keep:]:
        try:
            old.unlink()
        except OSError:
            pass
