"""KV reuse across turns on real tiny models: same greedy replies as without it, only the new suffix prefilled."""

from __future__ import annotations

import pytest

from engine_helpers import EventLog
from glmtui.engine.events import ChatMessage, Failed, Finished, GenerationParams, Loaded, Started
from glmtui.engine.kvreuse import KVSession, common_prefix
from glmtui.engine.worker import InferenceWorker

GREEDY = GenerationParams(max_new_tokens=16, temperature=0.0)


def _worker(**options):
    log = EventLog()
    return InferenceWorker(log, **options).start(), log


def _load(w, log, folder, mode="fp32"):
    event = log.wait(w.load(str(folder), mode))
    assert isinstance(event, Loaded), event


class Prefills:
    """The length of each forward's input_ids on the loaded model: the first call of a reply is its prefill."""

    def __init__(self, worker):
        self.calls = []
        self.handle = worker._loaded.model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls.append(int(ids.shape[1]))

    def run(self, w, log, messages, params=GREEDY) -> Finished:
        self.calls.clear()
        done = log.wait(w.generate(messages, params))
        assert isinstance(done, Finished), done
        self.prefilled = self.calls[0]
        return done


@pytest.fixture
def pair(request):
    """A worker with KV reuse and one without, on the same model."""
    folder = request.getfixturevalue(request.param)
    on, on_log = _worker(kv_reuse=True)
    off, off_log = _worker(kv_reuse=False)
    _load(on, on_log, folder)
    _load(off, off_log, folder)
    yield (on, on_log), (off, off_log)
    on.shutdown()
    off.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("pair", ["chatglm3_dir", "chatty_chatglm3", "native_glm"], indirect=True)
def test_reuse_gives_the_same_greedy_replies_and_prefills_only_the_new_suffix(pair):
    (on, on_log), (off, off_log) = pair
    counter = Prefills(on)
    encode = on._loaded.chat_format.encode_conversation
    history = [ChatMessage("system", "You are helpful."), ChatMessage("user", "Tell me about GPUs.")]
    previous_prompt = None
    turns = []

    def turn(messages):
        a = counter.run(on, on_log, messages)
        b = log_wait(off, off_log, messages)
        assert a.text == b.text and a.completion_tokens == b.completion_tokens, (a, b)
        prompt = encode(messages)
        assert a.prompt_tokens == len(prompt) == b.prompt_tokens
        assert b.cached_tokens == 0
        # What the model was fed on this turn is exactly the part of the prompt that was not cached.
        assert counter.prefilled == a.prompt_tokens - a.cached_tokens
        assert on_log.of(a.request_id, Started)[0].cached_tokens == a.cached_tokens
        turns.append((prompt, a))
        return a, prompt

    done, previous_prompt = turn(history)
    assert done.cached_tokens == 0 and counter.prefilled == len(previous_prompt)
    for i in range(3):  # ordinary turns: the whole previous prompt (and usually some of the reply) is reused
        history += [ChatMessage("assistant", done.text), ChatMessage("user", f"And question {i}?")]
        done, prompt = turn(history)
        assert len(previous_prompt) <= done.cached_tokens < len(prompt)
        previous_prompt = prompt

    # Regenerate: the same prompt again; everything but its last token comes from the cache.
    again, prompt = turn(history)
    assert again.cached_tokens == len(prompt) - 1 and counter.prefilled == 1
    assert again.text == done.text

    # Edit an earlier turn: the cache is cropped to where the prompts part.
    edited = history[:3] + [ChatMessage("user", "Something else entirely?")]
    done, edited_prompt = turn(edited)
    assert done.cached_tokens == common_prefix(prompt, edited_prompt)
    assert done.cached_tokens <= len(encode(history[:3] + [ChatMessage("user", "")]))

    # Back on the first branch (a branch switch): its prefix up to the edit still serves.
    done, prompt = turn(history)
    assert done.cached_tokens == common_prefix(edited_prompt, prompt)


def log_wait(w, log, messages, params=GREEDY):
    done = log.wait(w.generate(messages, params))
    assert isinstance(done, Finished), done
    return done


@pytest.mark.slow
def test_a_request_can_turn_reuse_off(chatglm3_dir):
    w, log = _worker()
    try:
        _load(w, log, chatglm3_dir)
        counter = Prefills(w)
        first = [ChatMessage("user", "hi")]
        done = counter.run(w, log, first)
        second = first + [ChatMessage("assistant", done.text), ChatMessage("user", "more")]
        off = counter.run(w, log, second, GenerationParams(max_new_tokens=16, temperature=0.0, kv_reuse=False))
        assert off.cached_tokens == 0 and counter.prefilled == off.prompt_tokens
        on = counter.run(w, log, second)
        assert on.cached_tokens > 0 and on.text == off.text
    finally:
        w.shutdown()


@pytest.mark.slow
def test_a_new_load_never_reuses_the_old_models_cache(chatglm3_dir):
    w, log = _worker()
    try:
        _load(w, log, chatglm3_dir, "fp32")
        messages = [ChatMessage("user", "hi")]
        log_wait(w, log, messages)
        _load(w, log, chatglm3_dir, "bf16")  # another mode: another model
        counter = Prefills(w)
        done = counter.run(w, log, messages)
        assert done.cached_tokens == 0 and counter.prefilled == done.prompt_tokens
    finally:
        w.shutdown()


@pytest.mark.slow
def test_the_token_cap_drops_a_long_cache(chatty_chatglm3):
    w, log = _worker(kv_max_tokens=20)
    try:
        _load(w, log, chatty_chatglm3)
        first = [ChatMessage("user", "hi")]
        done = log_wait(w, log, first)  # prompt + 16 reply tokens > 20: not kept
        assert w._kv.tokens == 0 and "over the cap" in w._kv.last_eviction
        counter = Prefills(w)
        again = counter.run(w, log, first + [ChatMessage("assistant", done.text), ChatMessage("user", "x")])
        assert again.cached_tokens == 0 and counter.prefilled == again.prompt_tokens
    finally:
        w.shutdown()


@pytest.mark.slow  # long replies
def test_the_byte_cap_drops_a_large_cache(chatty_chatglm3):
    w, log = _worker(kv_max_bytes=1024)
    try:
        _load(w, log, chatty_chatglm3)
        log_wait(w, log, [ChatMessage("user", "hi")])
        assert w._kv.tokens == 0 and "bytes is over the cap" in w._kv.last_eviction
    finally:
        w.shutdown()


def test_a_failed_generation_does_not_leave_a_cache_behind(tmp_path, native_glm):
    """NaN logits make sampling raise after the prefill extended the cache: the next reply starts clean."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "nan"
    shutil.copytree(native_glm, folder)
    tensors = load_file(folder / "model.safetensors")
    tensors["lm_head.weight"][:] = float("nan")
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    w, log = _worker()
    try:
        _load(w, log, folder)
        messages = [ChatMessage("user", "hi")]
        bad = log.wait(w.generate(messages, GenerationParams(temperature=0.7, max_new_tokens=5)))
        assert isinstance(bad, Failed)
        assert w._kv.cache is None and w._kv.tokens == 0
        counter = Prefills(w)
        done = counter.run(w, log, messages)
        assert done.cached_tokens == 0 and counter.prefilled == done.prompt_tokens
    finally:
        w.shutdown()


def test_short_memory_drops_the_cache(native_glm):
    """A real DynamicCache filled by the model: kept normally, dropped when the device has less free memory
    than the session's floor."""
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    model = AutoModelForCausalLM.from_pretrained(str(native_glm)).eval()
    ids = list(range(5, 25))

    def fill(session):
        cache, reused = session.prepare(ids, lambda: DynamicCache(config=model.config))
        assert reused == 0
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False, cache=cache,
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long))
        session.commit(out[0].tolist(), model.device)

    kept = KVSession()
    fill(kept)
    assert kept.tokens == len(ids) + 2 and kept.cache is not None
    short = KVSession(min_free_bytes=2**62)
    fill(short)
    assert short.tokens == 0 and short.cache is None and "free" in short.last_eviction


def test_a_cache_that_cannot_be_cropped_back_is_replaced():
    """A sliding-window layer that has gone past its window cannot be rolled back: the session starts over."""
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import Cache, DynamicSlidingWindowLayer

    window = Cache(layers=[DynamicSlidingWindowLayer(sliding_window=4)])
    kv = torch.zeros(1, 1, 8, 2)
    window.update(kv, kv, 0)
    session = KVSession()
    session.cache, session.ids = window, list(range(8))
    cache, reused = session.prepare(list(range(5)) + [99], lambda: DynamicCache())
    assert reused == 0 and cache is not window and isinstance(cache, DynamicCache)
    assert "cannot crop" in session.last_eviction
