"""The launcher process's own side (see launcher.py): its imports, its single-threaded loop, a fork's first steps."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
import threading
from pathlib import Path

from .launcher import _MAX_MESSAGE

LAUNCHER_REFUSES = "a GPU build of torch"  # the launcher's answer where it does not fork (see launcher.py)


def _gpu_build() -> bool:
    """Whether the installed torch is a CUDA or ROCm build, read from its version file without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    try:
        text = (Path(list(spec.submodule_search_locations)[0]) / "version.py").read_text("utf-8")
    except OSError:
        return True  # unknown: do not fork
    return names_gpu_build(text)


def names_gpu_build(version_py: str) -> bool:
    """Whether torch's version.py gives a CUDA or ROCm version (``cuda: Optional[str] = '12.8'``; None on CPU)."""
    import re

    return bool(re.search(r"^(cuda|hip)\b[^=]*=\s*['\"]", version_py, re.MULTILINE))


def _imports() -> str:
    """Import what a child needs; "" when forking is safe from here, else why not."""
    from . import predict  # noqa: F401  (the predictors' module)
    from .child import warm_up

    warm_up(False)
    return ""


def serve() -> None:
    """``FD PARENT_PID``: the launcher process's main loop (single-threaded)."""
    import selectors

    from .child import set_parent_death_signal

    fd, parent = int(sys.argv[1]), int(sys.argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_parent_death_signal()
    if os.getppid() != parent:
        os._exit(1)
    sock = socket.socket(fileno=fd)
    refused = LAUNCHER_REFUSES if _gpu_build() else ""
    if not refused:
        refused = _idle_imports()
    # torch's own native helper thread is there after its import, as when its DataLoader forks workers;
    # a Python thread left running could hold a lock that a fork would copy locked
    if not refused and threading.active_count() != 1:
        refused = f"{threading.active_count()} Python threads after the imports"
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    _send(sock, ("ready", refused))
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    children: set[int] = set()
    while True:
        for key, _ in selector.select():
            if key.fileobj == wake_r:
                os.read(wake_r, 4096)
                _reap(sock, children)
                continue
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, _MAX_MESSAGE, 64)
            except OSError:
                data, fds = b"", []
            if not data:  # the front end is gone
                os._exit(0)
            message = pickle.loads(data)
            if message[0] == "spawn":
                _spawn(sock, message, fds, children, (sock.fileno(), wake_r, wake_w, selector), refused)
            elif message[0] == "signal" and message[1] in children:
                try:
                    os.kill(message[1], message[2])
                except ProcessLookupError:
                    pass
            for received in fds:
                os.close(received)


def _idle_imports() -> str:
    """_imports() on idle CPU time, so a launcher started beside a reply does not slow it; the forks are made
    by the main thread, a normal one."""
    from .child import on_idle_thread

    answer = ["the imports did not finish"]

    def run() -> None:
        try:
            answer[0] = _imports()
        except Exception as exc:  # noqa: BLE001 - a broken install: each start then runs fresh and says why
            answer[0] = f"{type(exc).__name__}: {exc}"

    on_idle_thread(run, "glmtui-launcher-imports")
    return answer[0]


def _send(sock: socket.socket, message: tuple) -> None:
    try:
        sock.send(pickle.dumps(message))
    except OSError:
        os._exit(0)


def _reap(sock: socket.socket, children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        _send(sock, ("exited", pid, os.waitstatus_to_exitcode(status)))


def _spawn(sock: socket.socket, message: tuple, fds: list[int], children: set[int], own: tuple,
           refused: str) -> None:
    _, token, target, args, targets, env, cwd, new_session, nice = message
    if refused or len(fds) != len(targets):
        _send(sock, ("failed", token, refused or "descriptors missing"))
        return
    from .child import set_parent_death_signal  # imported by serve() already

    sys.stdout.flush()
    sys.stderr.flush()
    launcher_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            set_parent_death_signal()  # the launcher ends with the front end, and this with the launcher
            if os.getppid() != launcher_pid:  # it ended before the signal was armed
                os._exit(1)
            code = _run_child(target, args, dict(zip(targets, fds, strict=True)), env, cwd, new_session, nice, own)
        finally:
            os._exit(code)
    children.add(pid)
    _send(sock, ("spawned", token, pid))


def _run_child(target: str, args: list[str], fds: dict[int, int], env: dict[str, str], cwd: str,
               new_session: bool, nice: int, own: tuple) -> int:
    """In the forked child: become the process the front end asked for, run ``target`` and give its exit code."""
    import importlib

    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    own[3].close()
    for fd in own[:3]:
        os.close(fd)
    if new_session:
        os.setsid()
    if nice:
        os.nice(nice)
    high = {want: os.dup(fd) for want, fd in fds.items()}  # out of the way of the numbers asked for
    for fd in fds.values():
        os.close(fd)
    for want, fd in high.items():
        os.dup2(fd, want)
        os.close(fd)
    _close_others(set(fds))
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    module, _, function = target.partition(":")
    sys.argv = [module, *args]
    try:
        result = getattr(importlib.import_module(module), function)(args)
        code = result if isinstance(result, int) else 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - as an uncaught exception would end an interpreter
        import traceback

        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    return code


def _close_others(keep: set[int]) -> None:
    """Close every descriptor above 2 but those in ``keep`` (what the launcher held is not the child's)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:  # the listing's own descriptor, closed already
                pass
