"""Compiled static-cache decode on the CPU (forced): same greedy replies as eager, failures fall back."""

from __future__ import annotations

import logging
import os

import pytest

from engine_helpers import EventLog
from glmtui.engine import compiled
from glmtui.engine.events import ChatMessage, Finished, GenerationParams, Loaded, LoadProgress
from glmtui.engine.worker import InferenceWorker

GREEDY = GenerationParams(max_new_tokens=12, temperature=0.0)


def _worker(**options):
    log = EventLog()
    return InferenceWorker(log, **options).start(), log


def _load(w, log, folder, mode="fp32"):
    event = log.wait(w.load(str(folder), mode), timeout=600)
    assert isinstance(event, Loaded), event
    return event


def _conversation(w, log, turns=3):
    """Replies of a few greedy turns, each turn building on the last reply."""
    history = [ChatMessage("user", "Tell me about GPUs.")]
    replies = []
    for i in range(turns):
        done = log.wait(w.generate(history, GREEDY), timeout=600)
        assert isinstance(done, Finished), done
        replies.append((done.text, done.completion_tokens, done.cached_tokens))
        history += [ChatMessage("assistant", done.text), ChatMessage("user", f"Why {i}?")]
    return replies


@pytest.fixture
def eager_replies(chatty_chatglm3):
    w, log = _worker(compiled_decode=False)
    try:
        _load(w, log, chatty_chatglm3)
        yield _conversation(w, log)
    finally:
        w.shutdown()


@pytest.fixture
def cache_dir(monkeypatch, isolated_home):
    # Unset for this test only (setenv first, so that the undo restores what was there).
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "unset")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    return isolated_home / "cache" / "torchinductor"


@pytest.mark.slow
def test_static_cache_decode_traced_by_dynamo_equals_eager(chatty_chatglm3, eager_replies, cache_dir):
    from transformers import StaticCache

    w, log = _worker(compiled_decode=True, compile_backend="eager")
    try:
        loaded = _load(w, log, chatty_chatglm3)
        assert any("decode compiled" in note for note in loaded.notes), loaded.notes
        stages = [e for e in log.of(loaded.request_id, LoadProgress) if e.stage == compiled.COMPILING_STAGE]
        assert stages and stages[-1].fraction == 1.0 and stages[-1].elapsed > 0
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache_dir)
        replies = _conversation(w, log)
        # The replies ran on the kept static cache, through generate's compiled call.
        assert isinstance(w._kv.cache, StaticCache)
        assert hasattr(w._loaded.model, "_compiled_call") and w._compiled.enabled
    finally:
        w.shutdown()
    assert [r[:2] for r in replies] == [r[:2] for r in eager_replies]
    assert all(cached > 0 for _, _, cached in replies[1:])  # KV reuse works on the static cache too


@pytest.mark.slow
def test_a_compiler_that_fails_falls_back_to_eager(chatty_chatglm3, eager_replies, cache_dir, caplog):
    def broken_compiler(gm, example_inputs):
        raise RuntimeError("no C compiler on this machine")

    w, log = _worker(compiled_decode=True, compile_backend=broken_compiler)
    try:
        with caplog.at_level(logging.WARNING, logger="glmtui.engine"):
            loaded = _load(w, log, chatty_chatglm3)
        assert any("compiled decode off" in n and "no C compiler" in n for n in loaded.notes), loaded.notes
        assert "no C compiler on this machine" in caplog.text
        replies = _conversation(w, log)
        assert not w._compiled.enabled
    finally:
        w.shutdown()
    assert [r[:2] for r in replies] == [r[:2] for r in eager_replies]


def test_compiling_is_on_by_default_only_for_16_bit_on_cuda(monkeypatch):
    monkeypatch.delenv("GLMTUI_COMPILE", raising=False)
    assert compiled.wanted(None, "cuda:0", "bf16") and compiled.wanted(None, "cuda", "fp16")
    assert not compiled.wanted(None, "cpu", "bf16")
    assert not compiled.wanted(None, "cuda", "int4") and not compiled.wanted(None, "cuda", "fp32")
    assert compiled.wanted(True, "cpu", "fp32") and not compiled.wanted(False, "cuda", "bf16")
    monkeypatch.setenv("GLMTUI_COMPILE", "0")
    assert not compiled.wanted(None, "cuda", "bf16")


@pytest.mark.slow
def test_cpu_worker_does_not_compile_by_default(chatglm3_dir, monkeypatch):
    monkeypatch.delenv("GLMTUI_COMPILE", raising=False)
    w, log = _worker()
    try:
        loaded = _load(w, log, chatglm3_dir)
        assert not any(e.stage == compiled.COMPILING_STAGE for e in log.of(loaded.request_id, LoadProgress))
        assert w._compiled is None
    finally:
        w.shutdown()


@pytest.mark.slow
def test_inductor_decode_equals_eager_and_fills_the_disk_cache(chatty_chatglm3, eager_replies, cache_dir):
    """The real compiler (C++ on the CPU: minutes on a 2-core machine)."""
    w, log = _worker(compiled_decode=True)
    try:
        loaded = _load(w, log, chatty_chatglm3)
        assert any("decode compiled" in note for note in loaded.notes), loaded.notes
        replies = _conversation(w, log)
    finally:
        w.shutdown()
    assert [r[:2] for r in replies] == [r[:2] for r in eager_replies]
    assert cache_dir.is_dir() and any(cache_dir.iterdir())
