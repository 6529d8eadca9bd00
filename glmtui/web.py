"""``glmtui web``: the TUI in a browser, through textual-serve.

textual-serve starts one app process per browser connection. Loading a model
in each of them would multiply memory, so every session talks to ONE API
server instead:

* ``glmtui web --model PATH`` starts ``glmtui serve --model PATH`` on
  127.0.0.1 (a free port, or ``--api-port``) with a random API key, waits for
  the model to load, then serves the page; each browser session runs
  ``python -m glmtui.cli --endpoint http://127.0.0.1:PORT`` (the TUI over
  RemoteEngine), which inherits the key as ``$GLMTUI_API_KEY``. The API
  process ends with ``glmtui web`` (and on its own if web dies).
* ``glmtui web --endpoint URL`` reuses a running server (glmtui serve, vLLM,
  SGLang); set ``$GLMTUI_API_KEY`` if it needs a key.
* ``glmtui web`` alone reuses a ``glmtui serve`` already answering on
  127.0.0.1:8000.

The page is served on 127.0.0.1:8080 by default. Anyone who can open it drives
the app, so a ``--host`` other machines can reach is refused unless an access
token is set (``--token``, ``$GLMTUI_WEB_TOKEN`` or ``token`` under ``[web]`` in
config.toml); with a token the browser signs in first (glmtui.web_gate).
"""

from __future__ import annotations

import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
from typing import Optional

DEFAULT_SERVE_URL = "http://127.0.0.1:8000"


def app_command(endpoint: str, python: Optional[str] = None) -> str:
    """The shell command textual-serve runs for each browser session."""
    python = python or sys.executable
    return f"{shlex.quote(python)} -m glmtui.cli --endpoint {shlex.quote(endpoint)}"


def serve_argv(args, port: int, python: Optional[str] = None) -> list[str]:
    """``glmtui serve`` for ``args.model`` on 127.0.0.1:``port``, ending with this process."""
    argv = [python or sys.executable, "-m", "glmtui.cli", "serve", "--model", args.model,
            "--host", "127.0.0.1", "--port", str(port), "--parent-pid", str(os.getpid())]
    if getattr(args, "mode", None):
        argv += ["--mode", args.mode]
    if getattr(args, "device", None) and args.device != "auto":
        argv += ["--device", args.device]
    if getattr(args, "engine", "transformers") == "vllm":
        argv += ["--engine", "vllm"]
    return argv


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _health(url: str, timeout: float = 2.0) -> Optional[dict]:
    """/health's JSON when ``url`` is a glmtui server (any status), else None."""
    import httpx

    try:
        response = httpx.get(url.rstrip("/") + "/health", timeout=timeout, trust_env=False)
        body = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    return body if isinstance(body, dict) and body.get("server") == "glmtui" else None


def wait_until_ready(url: str, process: subprocess.Popen, timeout: float = 3600.0) -> Optional[str]:
    """None once ``url`` answers /health with a loaded model; else why not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"the API server exited with status {process.returncode}"
        health = _health(url)
        if health is not None and health.get("status") == "ok":
            return None
        time.sleep(0.25)
    return "the API server did not get ready in time"


def _stop(process: Optional[subprocess.Popen]) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def run_web(args) -> int:
    from textual_serve.server import Server

    from .config import default_paths
    from .web_gate import is_loopback, make_gated_server, refusal, resolve_token

    # before anything starts: a page other machines can reach needs a token
    token, token_source = resolve_token(getattr(args, "token", None), default_paths().config_file)
    if not token and not is_loopback(args.host):
        print(refusal(args.host), file=sys.stderr)
        return 2
    endpoint = getattr(args, "endpoint", None)
    api: Optional[subprocess.Popen] = None
    try:
        if not endpoint and getattr(args, "model", None):
            port = getattr(args, "api_port", 0) or free_port()
            key = os.environ.get("GLMTUI_API_KEY") or secrets.token_urlsafe(24)
            os.environ["GLMTUI_API_KEY"] = key  # the API server and every app session get it
            endpoint = f"http://127.0.0.1:{port}"
            print(f"glmtui web: starting the API server for {args.model} on {endpoint}", file=sys.stderr, flush=True)
            api = subprocess.Popen(serve_argv(args, port), env=dict(os.environ))
            problem = wait_until_ready(endpoint, api)
            if problem:
                print(f"glmtui web: {problem}", file=sys.stderr)
                return 1
        elif not endpoint:
            health = _health(DEFAULT_SERVE_URL)
            if health is None:
                print("glmtui web: give --model PATH (to start an API server) or --endpoint URL "
                      f"(no glmtui serve answers on {DEFAULT_SERVE_URL})", file=sys.stderr)
                return 2
            endpoint = DEFAULT_SERVE_URL
        command = app_command(endpoint)
        # the sessions inherit it: their Tool/Code modes run nothing unless the page is loopback-only
        os.environ["GLMTUI_WEB_HOST"] = args.host
        print(f"glmtui web: each browser session runs: {command}", file=sys.stderr, flush=True)
        if token:
            make_gated_server(command, args.host, args.port, token, token_source).serve()
        else:
            Server(command, host=args.host, port=args.port, title="glmtui").serve()
        return 0
    finally:
        _stop(api)
        _stop_sessions()


def _stop_sessions() -> None:
    """End app sessions textual-serve left behind (a browser that vanished without closing its socket)."""
    import psutil

    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        try:
            child.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            pass
