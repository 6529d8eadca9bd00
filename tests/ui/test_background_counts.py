"""Exact counts nobody waits for yet: a model glmtui downloads (the TUI's queue, `glmtui pull`) and the local
models the Models pane lists are counted in the background (a predictor subprocess at low priority, one at a
time, while no load runs), so that `glmtui fit` and the pane answer them from the store."""

from __future__ import annotations

import os

import pytest

from glmtui import catalog
from glmtui.config import default_paths
from glmtui.engine import exact_cache, memory
from glmtui.ui.exact_counts import ExactCounts, count_key
from glmtui.ui.model_controller import DownloadChanged, ModelController
from helpers import wait_for, wait_until
from predictor_watch import TEST_NICENESS, running_predictors, watch_predictor_starts

COUNT_TIMEOUT = 450.0  # a predictor imports torch: seconds; minutes on a loaded machine (pytest's limit: 600 s)


@pytest.fixture
def predictor_starts(monkeypatch):
    return watch_predictor_starts(monkeypatch)


def _stored(folder) -> bool:
    return exact_cache.cached_count(memory.read_config(folder), "cpu") is not None


@pytest.mark.slow  # over ~2 s on an idle machine: the fast loop keeps the room's other tests
def test_background_counts_wait_for_idle_and_a_shown_model_goes_first(native_glm, thinking_dir, predictor_starts):
    """With both counts already stored (no subprocess), only the order and the idle rule are at play."""
    pytest.importorskip("transformers")
    from glmtui.engine import predict

    for folder in (native_glm, thinking_dir):
        predict.exact_results(memory.read_config(folder), ("cpu",))
    idle_asks: list[bool] = []
    idle = [False]

    def is_idle() -> bool:
        idle_asks.append(idle[0])
        return idle[0]

    arrivals: list[int] = []
    counts = ExactCounts(lambda: arrivals.append(1), idle=is_idle)
    try:
        counts.background([native_glm, thinking_dir], "cpu")
        wait_until(lambda: len(idle_asks) >= 2, 10, what="the counting thread to ask whether the app is idle")
        assert counts.results == {} and len(counts.queued) == 2  # a load runs: nothing counted
        assert counts.result(thinking_dir, "cpu") is None  # shown: counted now, idle or not
        wait_until(lambda: count_key(thinking_dir, "cpu") in counts.results, 30, what="the shown model's count")
        assert counts.queued == (count_key(native_glm, "cpu"),)
        idle[0] = True
        wait_until(lambda: count_key(native_glm, "cpu") in counts.results, 30, what="the background count")
        assert all(r.predictions for r in counts.results.values()) and len(arrivals) == 2
        counts.background([native_glm, thinking_dir], "cpu")  # counted: not queued again
        assert counts.queued == ()
    finally:
        counts.close()
    assert predictor_starts == []  # both from the store


@pytest.mark.slow
def test_a_model_the_tui_downloads_is_counted_in_the_background(fake_hub, predictor_starts):
    emitted: list[object] = []
    ctrl = ModelController(None, paths=default_paths(), mode="fp32", device="cpu", emit=emitted.append)
    try:
        ctrl.download(catalog.resolve("glm-edge-1.5b-chat"), "hf")
        job = wait_until(lambda: next((e.job for e in emitted if isinstance(e, DownloadChanged)
                                       and e.job.state == "done"), None), 120, what="the download")
        folder = job.path or job.dest
        wait_until(lambda: count_key(folder, "cpu") in ctrl.exact.results, COUNT_TIMEOUT, what="the background count")
        assert ctrl.exact.results[count_key(folder, "cpu")].predictions
        assert [(s.low_priority, s.nice) for s in predictor_starts] == [(True, TEST_NICENESS)]
        assert _stored(folder)  # `glmtui fit` and the pane answer from the store now
    finally:
        ctrl.close()


@pytest.mark.slow
def test_glmtui_pull_starts_the_count_and_returns(fake_hub, predictor_starts, tmp_path):
    from glmtui.hub import pull_cli

    models = tmp_path / "models"
    assert pull_cli(["THUDM/glm-edge-1.5b-chat", "--models-dir", str(models)]) == 0
    folder = next(p for p in models.iterdir() if (p / "config.json").is_file())
    assert len(predictor_starts) == 1 and predictor_starts[0].low_priority  # pull returned: the count runs on
    assert predictor_starts[0].nice == TEST_NICENESS
    wait_until(lambda: _stored(folder), COUNT_TIMEOUT, what="the stored count")
    wait_until(lambda: not running_predictors(), 30, what="the predictor to end")
    log = (default_paths().cache_dir / "predictions" / "count.log").read_text()
    assert f"counting {folder}" in log


@pytest.mark.slow
async def test_the_models_pane_counts_its_local_models_in_the_background(native_glm, thinking_dir, quiet_sampler,
                                                                       predictor_starts):
    """Both local models are counted though neither is shown; one was counted before: it starts nothing."""
    pytest.importorskip("transformers")
    from glmtui.engine import predict
    from glmtui.ui.app import GlmApp

    predict.exact_results(memory.read_config(native_glm), ("cpu",))
    models_dir = default_paths().models_dir
    models_dir.mkdir(parents=True, exist_ok=True)
    for folder in (native_glm, thinking_dir):
        os.symlink(folder, models_dir / folder.name)
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: _stored(thinking_dir) and not app.model.exact.busy and not app.model.exact.queued,
                       timeout=COUNT_TIMEOUT, what="the local models counted")
        assert {key for key, r in app.model.exact.results.items() if r.predictions} == {
            count_key(native_glm, "cpu"), count_key(thinking_dir, "cpu")}
    seen = [(os.path.basename(s.cmd[3]), s.low_priority, s.nice, s.running) for s in predictor_starts]
    assert seen == [(thinking_dir.name, True, TEST_NICENESS, 1)]
