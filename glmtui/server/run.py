"""Running the API: the listening socket, ``ServerThread`` (tests, the TUI's ``--api``), the
log plumbing that keeps uvicorn's writes off the event loop, and ``glmtui serve``."""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import socket
import sys
import threading
import time

from ..engine.events import Failed, Loaded

log = logging.getLogger("glmtui.server")


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), ready for uvicorn; raises OSError (errno EADDRINUSE when taken).

    Bound before anything slow happens, so a taken port is reported at once
    and nobody can take it between the check and the server's start.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not a taken port: only TIME_WAIT leftovers
        # Accepted connections inherit this (Linux). Served from a socket of our own, asyncio does not set it
        # per connection, and Nagle + delayed ACK then held every keep-alive response ~40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def bind_problem(host: str, port: int, exc: OSError) -> str:
    """One line saying why (host, port) cannot be served."""
    import errno

    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} is already in use on {host}: stop what uses it or pick another with --port"
    if exc.errno == errno.EACCES:
        return f"not allowed to listen on {where} (ports below 1024 need privileges): pick another with --port"
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return f"cannot listen on {where}: {host} is not an address of this machine"
    return f"cannot listen on {where}: {exc.strerror or exc}"


class ServerThread:
    """uvicorn serving an app on a background thread (tests, and the TUI's --api mode).

    ``port=0`` picks a free port; ``url`` tells which.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.host = host
        self._socket = listen_socket(host, port)
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=3, lifespan="off")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="glmtui-api", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _run(self) -> None:
        self.server.run(sockets=[self._socket])

    def start(self, timeout: float = 15.0) -> "ServerThread":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        try:
            self._socket.close()
        except OSError:
            pass


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """Hands records to a log thread; when its queue is full the record is dropped: never blocks."""

    def prepare(self, record):
        return record  # same process: the listener's handlers format it (uvicorn's formatters need args)

    def enqueue(self, record) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            pass


def log_off_the_loop(logger_names=("uvicorn", "uvicorn.access"), limit: int = 10_000) -> list:
    """Move these loggers' output to threads of their own; returns the listeners (``.stop()`` them at exit).

    uvicorn writes one access-log line per request from the event loop. Into a
    stdout or stderr that is not drained (``glmtui serve | less`` left on one
    page, a pipe nobody reads) that write blocks once the 64 KiB pipe buffer is
    full, and the whole server stops answering. With this only the log thread
    waits; beyond ``limit`` waiting records, new ones are dropped.
    """
    listeners = []
    for name in logger_names:
        logger = logging.getLogger(name)
        handlers = list(logger.handlers)
        if not handlers:
            continue
        records: queue.Queue = queue.Queue(limit)
        for handler in handlers:
            logger.removeHandler(handler)
        logger.addHandler(_DroppingQueueHandler(records))
        listener = logging.handlers.QueueListener(records, *handlers, respect_handler_level=True)
        listener.start()
        listeners.append(listener)
    return listeners


def _watch_parent(parent_pid: int, server) -> None:
    while not server.should_exit:
        if os.getppid() != parent_pid:
            server.should_exit = True
            return
        time.sleep(0.5)


def _log_to_stderr() -> None:
    """Server-side details (unexpected failures) go to stderr, as uvicorn's own lines do."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("glmtui serve: %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def run_server(args) -> int:
    """``glmtui serve``: load ``--model`` on one worker and serve the API until Ctrl-C."""
    import uvicorn

    from ..engine.choose import local_engine
    from ..resolve import resolve_model
    from .routes import create_app

    if not getattr(args, "model", None):
        print("glmtui serve: give --model (a model folder or a downloaded catalogue model)", file=sys.stderr)
        return 2
    try:  # before loading anything: a taken port is said at once, in one line
        sock = listen_socket(args.host, args.port)
    except OSError as exc:
        print(f"glmtui serve: {bind_problem(args.host, args.port, exc)}", file=sys.stderr)
        return 1
    resolved = resolve_model(args.model)
    if resolved.folder is None:
        sock.close()
        print(f"glmtui serve: {resolved.problem}", file=sys.stderr)
        return 1
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    path, name = resolved.folder, resolved.key
    device = getattr(args, "device", None) or "auto"
    mode = getattr(args, "mode", None) or "auto"  # the worker picks: bf16 on a GPU, fp32 on the CPU
    api_key = getattr(args, "api_key", None) or os.environ.get("GLMTUI_API_KEY") or None
    # glmtui serve is its clients' engine process: its own engine runs in this process (or manages vLLM's)
    worker = local_engine(getattr(args, "engine", None) or "transformers", in_process=True).start()
    app = create_app(worker, name, api_key, host=args.host, allow_hosts=tuple(getattr(args, "allow_host", None) or ()))
    config = uvicorn.Config(app, host=args.host, port=port, log_level="info", timeout_graceful_shutdown=5)
    _log_to_stderr()
    log_listeners = log_off_the_loop(("uvicorn", "uvicorn.access", log.name))
    server = uvicorn.Server(config)
    outcome: dict = {}

    def on_load(event) -> None:
        if isinstance(event, Loaded):
            print(f"glmtui serve: {event.model_name} loaded ({event.mode} on {event.device}, "
                  f"{event.load_seconds:.1f} s); serving {name!r} on http://{host}:{port}/v1",
                  file=sys.stderr, flush=True)
        elif isinstance(event, Failed):
            print(f"glmtui serve: cannot load {args.model}: {event.message}", file=sys.stderr, flush=True)
            outcome["failed"] = True
            server.should_exit = True

    shown = "default mode" if mode == "auto" else mode
    print(f"glmtui serve: loading {path} ({shown}, device {device})", file=sys.stderr, flush=True)
    worker.load(path, mode, device, sink=on_load)
    parent = getattr(args, "parent_pid", None)
    if parent:
        threading.Thread(target=_watch_parent, args=(int(parent), server), daemon=True).start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown: nothing to report
        pass
    finally:
        worker.shutdown()
        for listener in log_listeners:
            listener.stop()
        sock.close()
    return 1 if outcome.get("failed") else 0
