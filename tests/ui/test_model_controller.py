"""ModelController without any widget: load, switch, fail, unload and the engine's death, driven by a
real tiny model through the in-process engine and through the engine process; and quitting the app
while the Models pane's exact count (a predictor subprocess) runs."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import psutil
import pytest

from glmtui.config import default_paths
from glmtui.engine import exact_cache, launcher, memory
from glmtui.engine.events import EngineExited, Failed, Loaded, LoadProgress, Unloaded
from glmtui.ui.exact_counts import PREDICTOR_MODULE
from glmtui.ui.model_controller import (
    EngineNoticeState,
    ModelController,
    Note,
    StateChanged,
    make_engine,
)
from helpers import wait_until

TIMEOUT = 120.0  # a load imports torch once per process; more on a loaded machine


class Driver:
    """Plays the app's part: engine events are handed to the controller on one thread, as the UI would."""

    def __init__(self, local: str) -> None:
        self.events: queue.Queue = queue.Queue()
        self.emitted: list[Any] = []
        self.saved_modes: list[str] = []
        engine, _ = make_engine(None, "transformers", local, [])
        self.engine = engine
        engine.add_listener(self.events.put)
        engine.start()
        self.model = ModelController(engine, paths=default_paths(), mode="fp32", device="cpu",
                                     emit=self.emitted.append, tell=self.emitted.append,
                                     save_mode=self.saved_modes.append)

    def until(self, kind: type, timeout: float = TIMEOUT) -> Any:
        """Hand events to the controller until one of ``kind`` has been handled; return it."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind.__name__} within {timeout:.0f} s; last error {self.model.last_error}")
            try:
                event = self.events.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            assert self.model.handle(event) or not isinstance(event, (LoadProgress, Loaded, Unloaded))
            if isinstance(event, kind):
                return event

    def notes(self) -> list[str]:
        return [c.message for c in self.emitted if isinstance(c, Note)]

    def close(self) -> None:
        self.model.close()


@pytest.fixture
def thread_driver():
    driver = Driver("thread")
    yield driver
    driver.close()


@pytest.mark.slow  # over ~2 s on an idle machine: the fast loop keeps the room's other tests
def test_load_switch_and_unload_in_process(native_glm, thread_driver):
    d, model = thread_driver, thread_driver.model
    model.request_load(str(native_glm), label="tiny")
    assert model.load_stage == "queued" and model.loading_label == "tiny" and model.loaded is None
    assert model.last_load == (str(native_glm), "fp32", "tiny")
    assert StateChanged(progress_only=True) in d.emitted

    loaded = d.until(Loaded)
    assert model.loaded is loaded and loaded.mode == "fp32"
    assert model.load_stage is None and model.loading_label is None and model.last_error is None
    assert d.saved_modes == ["fp32"] and str(native_glm) in model.extra_model_paths
    assert StateChanged(rows=True) in d.emitted and any("· fp32 · cpu ·" in n for n in d.notes())
    assert not model.can_reload  # a model is loaded

    # F8: another mode reloads the loaded model in it
    model.choose_mode("bf16")
    assert model.load_stage == "queued" and model.mode == "bf16"
    switched = d.until(Loaded)
    assert model.loaded is switched and switched.mode == "bf16" and d.saved_modes[-1] == "bf16"

    model.unload()
    gone = d.until(Unloaded)
    assert model.loaded is None and model.unloaded_note == f"unloaded {gone.model_name}"
    assert model.can_reload  # nothing loaded or loading, something to load again
    model.unload()
    assert d.notes()[-1] == "No model is loaded."


def test_a_load_that_fails_leaves_its_error_and_no_stage(tmp_path, thread_driver):
    d, model = thread_driver, thread_driver.model
    model.request_load("glm-edge-1.5b-chat")  # a catalogue model not downloaded: refused before the engine
    assert model.load_stage is None and "is not downloaded" in (model.last_error or "")
    assert d.emitted[-1] == Note(model.last_error, "error", "Could not load the model", 15)

    model.request_load(str(tmp_path / "nowhere"))  # the engine finds nothing there
    assert model.load_stage == "queued" and model.last_error is None
    failed = d.until(Failed)
    assert failed.during == "load" and "not found" in failed.message and model.last_error == failed.message
    assert model.load_stage is None and model.loaded is None and model.loading_label is None


@pytest.mark.slow
def test_the_engine_process_dies_and_reloads(native_glm):
    d = Driver("process")
    model = d.model
    try:
        model.request_load(str(native_glm), label="tiny")
        d.until(Loaded)
        pids = model.engine_pids()
        assert pids and not model.engine_in_this_process()  # the model runs in a child process
        model.kill_engine()
        exited = d.until(EngineExited)
        assert model.loaded is None and model.load_stage is None
        assert model.notice == EngineNoticeState("exited", exited.message, "F6 loads tiny (fp32) again",
                                                 exited.log_path)
        assert model.can_reload
        model.reload()
        assert model.notice is None and model.load_stage == "queued"  # a new process is on its way
        d.until(Loaded)
        assert model.loaded is not None and model.engine_pids() and set(model.engine_pids()).isdisjoint(pids)
    finally:
        d.close()


# ---------------------------------------------------------------- quitting during an exact count


def ended(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def predictors() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children():
        try:
            if PREDICTOR_MODULE in child.cmdline():
                found.append(child)
        except psutil.Error:
            pass
    return found


@pytest.mark.slow
def test_quitting_ends_a_running_exact_count_at_once(native_glm, monkeypatch):
    """``App.run`` returns without waiting for the predictor subprocess, which quitting ends."""
    from glmtui.ui.app import GlmApp

    monkeypatch.setattr(exact_cache, "_memo", {})  # counted afresh: the predictor imports torch (seconds)
    monkeypatch.setattr(launcher, "_shared", launcher.Launcher())  # none ready: a fresh interpreter, not a fork
    app = GlmApp(mode="fp32", local_engine="thread")
    done = threading.Event()
    thread = threading.Thread(target=lambda: (app.run(headless=True), done.set()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not app.is_running:
        assert time.monotonic() < deadline and thread.is_alive(), "the app did not start"
        time.sleep(0.02)
    app.call_from_thread(app.model.exact.result, native_glm, "cpu")  # as the Models pane asks for it
    while not (running := predictors()):
        assert time.monotonic() < deadline, "no predictor subprocess started"
        time.sleep(0.02)
    app.call_from_thread(app.exit)
    assert done.wait(15), "quitting waited for the exact count"
    thread.join(5)
    # killed, not left to finish its count (a kill takes effect a moment later)
    wait_until(lambda: all(ended(p) for p in running), 5, what="the predictor to end")
    cfg = memory.read_config(native_glm)
    assert memory.cached_exact(cfg, "cpu", None) is None  # it never finished
