"""ManagedServer: a real OpenAI-compatible server process started, driven, watched and stopped by glmtui.

The managed process here is `glmtui serve` on a tiny model (a real server; vLLM itself runs in the
opt-in peer tests, `bash dev.sh test-peer`). What these tests hold is the management: start with
progress, wait for /health, stream through it, stop it on unload, report its death with the log.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from glmtui.engine.events import (
    ChatMessage,
    EngineExited,
    Failed,
    Finished,
    GenerationParams,
    Loaded,
    LoadProgress,
    Unloaded,
)
from glmtui.engine.managed import ManagedServer, ServerPlan
from helpers import free_port, wait_until

SERVE = "import sys; from glmtui.cli import main; sys.exit(main())"


def serve_planner(log: list):
    def planner(path: str, mode: str, device: str) -> ServerPlan:
        if not Path(path, "config.json").is_file():
            raise ValueError(f"{path} is not a model folder")
        port = free_port()
        log.append(port)
        argv = (sys.executable, "-c", SERVE, "serve", "--model", path, "--mode", "fp32", "--device", "cpu",
                "--port", str(port))
        return ServerPlan(argv, port, Path(path).name, mode, "cpu", {"OMP_NUM_THREADS": "1"}, "glmtui-serve",
                          ("test plan",))
    return planner


def running(pid: int) -> bool:
    """The process exists and has not ended (a zombie has)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(events: "queue.Queue", kinds, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            event = events.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(event)
        if isinstance(event, kinds):
            return event, seen
    raise AssertionError(f"no {kinds} within {timeout} s; saw {seen[-5:]}")


@pytest.fixture
def managed(tmp_path):
    events: "queue.Queue" = queue.Queue()
    ports: list = []
    engine = ManagedServer(serve_planner(ports), events.put, log_dir=tmp_path / "logs", stop_timeout=10).start()
    yield engine, events, ports
    engine.shutdown(15)


@pytest.mark.slow
def test_load_streams_through_the_server_and_unload_ends_its_processes(managed, chatglm3_dir):
    engine, events, _ = managed
    engine.load(str(chatglm3_dir), "bf16", "cpu")
    loaded, seen = wait_for(events, (Loaded, Failed))
    assert isinstance(loaded, Loaded), loaded
    assert any(isinstance(e, LoadProgress) and "starting glmtui-serve" in e.stage for e in seen)
    assert "test plan" in loaded.notes and engine.model_info.mode == "bf16"
    pids = engine.server_pids()
    assert pids and engine.memory_report().host_rss_bytes > 0

    engine.generate([ChatMessage("user", "hello")], GenerationParams(max_new_tokens=8, temperature=0))
    finished, _ = wait_for(events, (Finished, Failed))
    assert isinstance(finished, Finished) and finished.completion_tokens > 0

    engine.unload()
    wait_for(events, Unloaded, timeout=40)
    wait_until(lambda: not any(running(p) for p in pids), 30, "the server's processes to end", interval=0.2)
    assert engine.model_info is None and engine.server_pids() == []


@pytest.mark.slow
def test_a_server_killed_mid_way_is_reported_with_its_cause_and_log(managed, chatglm3_dir):
    engine, events, _ = managed
    engine.load(str(chatglm3_dir), "bf16", "cpu")
    loaded, _ = wait_for(events, (Loaded, Failed))
    assert isinstance(loaded, Loaded), loaded
    os.kill(engine.server_pids()[0], signal.SIGKILL)
    exited, _ = wait_for(events, EngineExited, timeout=30)
    assert exited.cause.startswith("killed by SIGKILL")
    assert exited.log_path.endswith(".log") and Path(exited.log_path).exists()
    assert engine.model_info is None and engine.state == "empty"
    # reload works: a fresh server
    engine.load(str(chatglm3_dir), "bf16", "cpu")
    again, _ = wait_for(events, (Loaded, Failed))
    assert isinstance(again, Loaded), again


def test_a_server_that_cannot_start_fails_the_load_with_its_last_log_line(tmp_path):
    events: "queue.Queue" = queue.Queue()

    def planner(path, mode, device):
        argv = (sys.executable, "-c", "import sys; print('Error: no CUDA device found', file=sys.stderr); sys.exit(3)")
        return ServerPlan(argv, free_port(), "x", mode, device)

    engine = ManagedServer(planner, events.put, log_dir=tmp_path).start()
    try:
        engine.load("x", "bf16", "cpu")
        failed, _ = wait_for(events, (Failed, Loaded), timeout=30)
        assert isinstance(failed, Failed) and failed.during == "load"
        assert "exit code 3" in failed.message and "no CUDA device found" in failed.message
        assert engine.state == "empty"
    finally:
        engine.shutdown(5)


def test_a_plan_refusal_is_one_line_and_nothing_starts(tmp_path):
    events: "queue.Queue" = queue.Queue()
    engine = ManagedServer(serve_planner([]), events.put, log_dir=tmp_path).start()
    try:
        engine.load(str(tmp_path / "missing"), "bf16", "cpu")
        failed, _ = wait_for(events, (Failed, Loaded), timeout=10)
        assert isinstance(failed, Failed) and "is not a model folder" in failed.message
        assert engine.server_pids() == []
    finally:
        engine.shutdown(5)


@pytest.mark.slow
def test_the_server_dies_with_glmtui(tmp_path, chatglm3_dir):
    """SIGKILL of the front end: the parent-death signal ends the managed server (no orphan holding VRAM)."""
    import subprocess

    script = (
        "import sys, time, queue\n"
        "sys.path[:0] = [%r, %r]\n"
        "from test_managed_server import serve_planner\n"
        "from glmtui.engine.managed import ManagedServer\n"
        "from glmtui.engine.events import Loaded\n"
        "q = queue.Queue()\n"
        "e = ManagedServer(serve_planner([]), q.put, log_dir=__import__('pathlib').Path(%r)).start()\n"
        "e.load(%r, 'bf16', 'cpu')\n"
        "while not isinstance(q.get(), Loaded): pass\n"
        "print(e.server_pids()[0], flush=True)\n"
        "time.sleep(600)\n"
    ) % (str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1]), str(tmp_path),
         str(chatglm3_dir))
    front = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(front.stdout.readline())
        assert psutil.pid_exists(server_pid)
        front.kill()
        front.wait(10)
        wait_until(lambda: not running(server_pid), 5, "the server to end with its front end", interval=0.1)
    finally:
        front.kill()
