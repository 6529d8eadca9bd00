"""The launcher (glmtui/engine/launcher.py): starts as forks of one pre-imported interpreter, answered like Popen."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from glmtui.engine import exact_cache, launcher, launcher_process
from glmtui.engine.process import EngineProcess
from helpers import wait_until

pytestmark = pytest.mark.slow  # the launcher imports torch and transformers once (seconds)


@pytest.fixture(scope="module")
def ready():
    """A launcher of this module's own, its imports done."""
    own = launcher.Launcher().start()
    wait_until(lambda: own.ready_now() or own.ended or own.refused, 120, what="the launcher's imports")
    assert own.ready_now(), own.refused
    yield own
    own.stop()


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode()


def test_a_fork_gets_the_front_ends_arguments_environment_folder_and_descriptors(ready, tmp_path, monkeypatch):
    monkeypatch.setenv("GLMTUI_HOME", str(tmp_path / "home"))  # glmtui's own variables may change between starts
    monkeypatch.chdir(tmp_path)
    read_fd, write_fd = os.pipe()
    child = ready.spawn("tests.launcher_targets:show", ["a", "b c"], {1: write_fd}, new_session=True, nice=2)
    os.close(write_fd)
    shown = json.loads(_read_all(read_fd))
    assert child.wait(10) == 0
    assert shown["args"] == ["a", "b c"] and shown["home"] == str(tmp_path / "home")
    assert shown["cwd"] == str(tmp_path) and shown["ppid"] == ready.pid
    assert shown["nice"] == 2 and shown["leader"]
    assert shown["fds"] == [0, 1, 2, 3] or shown["fds"] == [0, 1, 2]  # 3: the listing's own, if any
    assert shown["torch"]  # imported before the fork: nothing to pay


def test_exit_codes_kills_and_timeouts_come_back_like_popen(ready):
    assert ready.spawn("tests.launcher_targets:exit_with", ["3"], {}).wait(10) == 3
    hung = ready.spawn("tests.launcher_targets:hang", [], {})
    with pytest.raises(subprocess.TimeoutExpired):
        hung.wait(0.2)
    assert hung.poll() is None
    hung.kill()
    assert hung.wait(10) == -signal.SIGKILL
    hung.kill()  # once ended: nothing happens (the pid may be another process's by now)
    assert ready.spawn("glmtui.no_such_module:main", [], {}).wait(10) == 1


def test_another_environment_starts_fresh_interpreters(ready, monkeypatch):
    """The imports read the environment (HF_HOME, OMP_NUM_THREADS ...): a change outside GLMTUI_* is not forked."""
    assert ready.ready_now()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if os.environ.get("HF_HUB_OFFLINE") != "1" else "0")
    assert not ready.ready_now()
    monkeypatch.undo()
    assert ready.ready_now()


def test_a_gpu_build_of_torch_is_never_forked():
    assert launcher_process.names_gpu_build("cuda: Optional[str] = '12.8'\nhip: Optional[str] = None\n")
    assert launcher_process.names_gpu_build("cuda: Optional[str] = None\nhip: Optional[str] = '6.2.41133'\n")
    assert not launcher_process.names_gpu_build("cuda: Optional[str] = None\nhip: Optional[str] = None\n")
    assert not launcher_process._gpu_build()  # this machine's CPU build


def test_the_launcher_and_its_forks_die_with_the_front_end(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        sys.path[0:0] = [{os.getcwd()!r}, {str(tmp_path)!r}]
        from glmtui.engine import launcher
        own = launcher.shared().start()
        while not own.ready_now():
            assert not own.ended and not own.refused, own.refused
            time.sleep(0.05)
        child = own.spawn("tests.launcher_targets:hang", [], {{}})
        print(own.pid, child.pid, flush=True)
        time.sleep(600)
    """)
    front = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        pids = [int(p) for p in front.stdout.readline().split()]
        assert len(pids) == 2, "the front end did not start its launcher"
        procs = [psutil.Process(p) for p in pids]
    finally:
        front.kill()
        front.wait(10)
    _gone, alive = psutil.wait_procs(procs, timeout=2)
    # a zombie has ended (reparented, it waits for init to reap it)
    assert not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "outlived the front end"


def test_a_count_through_the_launcher_equals_a_fresh_one(ready, native_glm, monkeypatch):
    monkeypatch.setattr(launcher, "_shared", ready)
    monkeypatch.setattr(exact_cache, "_memo", {})
    cmd = exact_cache._predictor_command(native_glm, "cpu", None)
    forked = exact_cache._run_predictor(cmd, 60, False)
    monkeypatch.setattr(launcher, "_shared", launcher.Launcher())  # not started: a fresh interpreter
    fresh = exact_cache._run_predictor(cmd, 60, False)
    assert forked.predictions and forked == fresh
    assert not exact_cache._running


def test_the_engine_forks_its_spare_and_next_load_then_unload_ends_the_launcher(native_glm, monkeypatch, tmp_path):
    """Once the launcher is ready, a spare is a fork of it (no imports), and a switch loads in that spare; an
    unload ends the launcher too (glmtui's processes back to what they were before the first load)."""
    from engine_helpers import EventLog
    from glmtui.engine.events import ChatMessage, Finished, GenerationParams, Loaded, Unloaded

    own = launcher.Launcher()
    monkeypatch.setattr(launcher, "_shared", own)
    log = EventLog()
    engine = EngineProcess(log, spare_idle=0.0, log_dir=tmp_path).start()
    try:
        assert isinstance(log.wait(engine.load(str(native_glm), "fp32", "cpu"), 120), Loaded)
        wait_until(lambda: own.started, 30, what="the launcher, started for the first spare wanted")
        wait_until(lambda: engine._spare is not None and engine._spare.ready.is_set(), 120, what="a spare")
        spare = engine._spare
        assert isinstance(spare.popen, launcher.Launched) and psutil.Process(spare.pid).ppid() == own.pid
        assert psutil.Process(spare.pid).cpu_times().user < 2.0  # no imports of its own (a fresh one: ~5 CPU-s)
        assert isinstance(log.wait(engine.load(str(native_glm), "bf16", "cpu"), 120), Loaded)
        assert engine.pid == spare.pid
        reply = log.wait(engine.generate([ChatMessage("user", "hi")],
                                         GenerationParams(max_new_tokens=4, temperature=0)), 60)
        assert isinstance(reply, Finished)
        launcher_process = psutil.Process(own.pid)
        assert isinstance(log.wait(engine.unload(), 60), Unloaded)
        wait_until(lambda: own.ended, 15, what="the launcher to end with the unload")
        assert not psutil.pid_exists(spare.pid) or psutil.Process(spare.pid).status() == "zombie"
        assert launcher_process.wait(5) is not None or not launcher_process.is_running()
        assert not [c for c in psutil.Process().children(recursive=True) if c.status() != "zombie"
                    and c.pid in (own.pid, spare.pid)]
    finally:
        engine.shutdown()
        own.stop()


def test_a_count_that_must_run_starts_the_launcher_for_the_next_ones(native_glm, monkeypatch):
    own = launcher.Launcher()
    monkeypatch.setattr(launcher, "_shared", own)
    monkeypatch.setattr(exact_cache, "_memo", {})
    first = exact_cache.predict_exact_subprocess(native_glm, "cpu", start_launcher=True)
    assert first.predictions and own.started  # this count ran fresh, beside the launcher's imports
    try:
        wait_until(lambda: own.ready_now(), 120, what="the launcher's imports")
        started = []
        real = exact_cache._start_predictor

        def watched(*args, **kwargs):
            started.append(real(*args, **kwargs))
            return started[-1]

        monkeypatch.setattr(exact_cache, "_start_predictor", watched)
        again = exact_cache._run_predictor(exact_cache._predictor_command(native_glm, "cpu", 4096), 60, False)
        assert again.predictions and isinstance(started[0].proc, launcher.Launched)
    finally:
        own.stop()
