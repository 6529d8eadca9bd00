"""The batch's single OpenMP pool (engine/omp_pool.py; GLMTUI_BATCH_ONE_POOL=0 turns it off): the thread that
hands the batch a request gives up its own pool of torch's OpenMP workers."""

from __future__ import annotations

import os
import threading
import time

import pytest

torch = pytest.importorskip("torch")

from glmtui.engine import omp_pool  # noqa: E402 - after the importorskip

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/task") or omp_pool.torch_openmp() is None,
                                reason="needs /proc and torch's OpenMP runtime")


def tids() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def gone(workers: set[int], timeout: float = 10.0) -> bool:
    """Whether those threads have all ended (a released worker exits on its own, soon after)."""
    deadline = time.monotonic() + timeout
    while workers & tids():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def make_pool() -> set[int]:
    """Run a parallel op on this thread: the OpenMP workers it started (its pool)."""
    before = tids()
    x = torch.randn(512, 512)
    with torch.inference_mode():
        for _ in range(3):
            x @ x
    return tids() - before


def on_a_thread(fn):
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("result", fn()))
    thread.start()
    thread.join(120)
    return out["result"]


@pytest.fixture
def parallel():
    if torch.get_num_threads() < 2:
        pytest.skip("one torch thread: no OpenMP pool to release")


def test_release_pool_frees_the_calling_threads_workers_only(parallel):
    def run():
        mine = make_pool()
        assert mine, "a parallel op started no OpenMP worker"
        assert omp_pool.release_pool()
        return mine, gone(mine)

    mine, freed = on_a_thread(run)
    assert freed


@pytest.mark.parametrize("one_pool", [True, False], ids=["unset (the default)", "GLMTUI_BATCH_ONE_POOL=0"])
def test_handing_the_batch_a_request_releases_the_handing_threads_pool(parallel, native_glm, monkeypatch, one_pool):
    from engine_helpers import EventLog
    from glmtui.engine.batching import _Recorder
    from glmtui.engine.events import Failed, GenerationParams, Loaded
    from glmtui.engine.worker import InferenceWorker

    if one_pool:
        monkeypatch.delenv("GLMTUI_BATCH_ONE_POOL", raising=False)
    else:
        monkeypatch.setenv("GLMTUI_BATCH_ONE_POOL", "0")
    log = EventLog()
    worker = InferenceWorker(log, batching=True).start()
    try:
        assert isinstance(log.wait(worker.load(str(native_glm), "fp32")), Loaded)
        batch, loaded = worker._batch, worker._loaded
        assert batch is not None and batch.one_pool is one_pool
        stops = list(loaded.chat_format.stop_token_ids)

        def hand_over():
            mine = make_pool()
            finished = threading.Event()
            events = []
            stream = _Recorder(loaded.chat_format.decode, [], (), lambda text: None)
            batch.submit(901, [1, 2, 3, 4], 4, 3, stream, GenerationParams(max_new_tokens=3, temperature=0.0),
                         time.perf_counter(), lambda event: (events.append(event), finished.set()), stops)
            assert finished.wait(60) and not isinstance(events[-1], Failed), events
            return mine, gone(mine, timeout=0.5 if not one_pool else 10.0), len(stream.ids)

        mine, freed, generated = on_a_thread(hand_over)
        assert mine and generated == 3
        assert freed is one_pool  # set to 0: the handing thread keeps its pool
    finally:
        worker.shutdown()
