"""The stored exact count (engine/exact_cache.py + count_facts.py): a config is counted on the meta device
once per transformers version and device kind; any context and batch is then answered from what was
stored, without torch and without the predictor subprocess, and equals a fresh exact count."""

from __future__ import annotations

import pytest

import tiny_models
from glmtui.engine import exact_cache, memory
from predictor_watch import TEST_NICENESS, watch_predictor_starts

SLIDING = {"model_type": "mistral", "vocab_size": 1000, "hidden_size": 128, "intermediate_size": 256,
           "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
           "sliding_window": 64, "max_position_embeddings": 4096}


@pytest.fixture(scope="module")
def arch_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    return {name: tiny_models.ARCHITECTURES[name](root / name) for name in ("glm4-moe-lite", "glm4-thinking")}


@pytest.fixture
def predictor_starts(monkeypatch):
    return watch_predictor_starts(monkeypatch)


def _configs(arch_dirs):
    return {**{name: memory.read_config(folder) for name, folder in arch_dirs.items()}, "sliding": SLIDING}


def test_the_stored_count_answers_any_context_and_batch_like_a_fresh_count(arch_dirs):
    pytest.importorskip("transformers")
    from glmtui.engine import predict

    for name, cfg in _configs(arch_dirs).items():
        assert exact_cache.cached_exact(cfg, "cpu", None) is None
        predict.exact_results(cfg, ("cpu", "cuda"))  # one count, stored
        for device in ("cpu", "cuda"):
            for context, batch in ((None, 1), (1, 1), (100, 2), (5000, 1), (40000, 3)):
                stored = exact_cache.cached_exact(cfg, device, context, batch)
                fresh = predict.exact_results(cfg, (device,), context, use_cache=False, batch=batch)[device]
                assert stored is not None and stored.predictions == fresh.predictions, (name, device, context, batch)
    # the sliding-window layers keep their window whatever the context
    small = exact_cache.cached_exact(SLIDING, "cpu", 64).predictions["bf16"]
    large = exact_cache.cached_exact(SLIDING, "cpu", 6400).predictions["bf16"]
    assert small.kv_cache_bytes == large.kv_cache_bytes > 0


def test_an_unknown_architecture_is_stored_as_such_for_every_context():
    pytest.importorskip("transformers")
    from glmtui.engine import predict

    cfg = {"model_type": "llama3000", "hidden_size": 64}
    predict.exact_results(cfg, ("cpu",))
    for context in (None, 10, 9000):
        hit = exact_cache.cached_exact(cfg, "cpu", context)
        assert hit is not None and hit.unknown_architecture and not hit.predictions


@pytest.mark.slow
def test_a_new_context_after_one_count_starts_no_predictor(arch_dirs, predictor_starts):
    """The front end's path: the first ask starts the predictor; another context or device does not."""
    pytest.importorskip("transformers")
    from glmtui.engine import predict

    folder = arch_dirs["glm4-moe-lite"]
    first = exact_cache.predict_exact_subprocess(folder, "cpu")
    assert first.error is None, first.error
    assert len(predictor_starts) == 1 and not predictor_starts[0].low_priority  # someone waits: normal priority
    cfg = memory.read_config(folder)
    for device, context in (("cpu", 4096), ("cpu", 17), ("cuda", 300), ("cuda", None)):
        again = exact_cache.predict_exact_subprocess(folder, device, context_len=context)
        fresh = predict.exact_result(cfg, device, context, use_cache=False)
        assert again.error is None and again.predictions == fresh.predictions, (device, context)
    assert len(predictor_starts) == 1


@pytest.mark.slow
def test_a_background_count_runs_detached_at_low_priority_and_is_stored(arch_dirs, predictor_starts):
    pytest.importorskip("transformers")
    from helpers import wait_until

    folder = arch_dirs["glm4-thinking"]
    cfg = memory.read_config(folder)
    proc = exact_cache.count_in_background(folder)
    assert proc is not None
    assert predictor_starts[0].low_priority and predictor_starts[0].nice == TEST_NICENESS
    assert proc.wait(timeout=300) == 0
    wait_until(lambda: exact_cache.cached_count(cfg, "cpu") is not None, 5, what="the stored count")
    assert exact_cache.cached_count(cfg, "cuda") is not None  # both device kinds from the one build
    assert exact_cache.count_in_background(folder) is None  # counted already: nothing starts
    assert len(predictor_starts) == 1
