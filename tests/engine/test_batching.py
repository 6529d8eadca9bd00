"""Continuous batching on real tiny models: requests arriving together or mid-way join one batch
(transformers' ContinuousBatchingManager), each keeping its own parameters, stops and events."""

from __future__ import annotations

import threading
import time

import pytest

import tiny_models
from engine_helpers import EventLog
from glmtui.engine.events import ChatMessage, Finished, GenerationParams, Loaded, Started, Token
from glmtui.engine.worker import InferenceWorker

GREEDY = GenerationParams(max_new_tokens=24, temperature=0.0)
QUESTIONS = ["hello there", "what is the weather like", "tell me a story about cats", "x"]


def ask(text: str) -> list[ChatMessage]:
    return [ChatMessage("user", text)]


def start(folder, **options) -> tuple[InferenceWorker, EventLog]:
    log = EventLog()
    worker = InferenceWorker(log, **options).start()
    loaded = log.wait(worker.load(str(folder), "fp32"))
    assert isinstance(loaded, Loaded), loaded
    return worker, log


@pytest.fixture(scope="module")
def batched(chatty_chatglm3):
    """A worker with continuous batching on the ChatGLM3 that never stops (every reply runs to its max)."""
    worker, log = start(chatty_chatglm3, batching=True)
    yield worker, log
    worker.shutdown()


@pytest.fixture(scope="module")
def serial(chatty_chatglm3):
    """The same model one request at a time: the reference each batched reply must equal."""
    worker, log = start(chatty_chatglm3, batching=False)
    yield worker, log
    worker.shutdown()


def alone(serial, messages, params=GREEDY) -> Finished:
    worker, log = serial
    done = log.wait(worker.generate(messages, params))
    assert isinstance(done, Finished), done
    return done


def together(worker, log, requests) -> list[Finished]:
    """Submit all at once (no waiting in between), then wait for each."""
    ids = [worker.generate(messages, params) for messages, params in requests]
    finals = [log.wait(rid) for rid in ids]
    assert all(isinstance(f, Finished) for f in finals), finals
    return finals


def texts_in_order(log, rid) -> str:
    """The request's Token texts, which must add up to its Finished text (order kept per request)."""
    events = log.of(rid)
    assert isinstance(events[0], Started) and isinstance(events[-1], Finished), events[:2]
    assert all(isinstance(e, Token) for e in events[1:-1])
    return "".join(e.text for e in events[1:-1])


@pytest.mark.slow
@pytest.mark.parametrize("model", ["native_glm", "chatglm3_dir"])
def test_four_concurrent_greedy_requests_equal_each_run_alone(model, request):
    folder = request.getfixturevalue(model)
    worker, log = start(folder, batching=True)
    ref_worker, ref_log = start(folder, batching=False)
    try:
        assert worker.model_info.concurrency == "continuous batching", worker.model_info.concurrency_reason
        assert ref_worker.model_info.concurrency == "one at a time"
        refs = [alone((ref_worker, ref_log), ask(q)) for q in QUESTIONS]
        before = worker._batch.admitted_total
        ids = [worker.generate(ask(q), GREEDY) for q in QUESTIONS]
        finals = [log.wait(rid) for rid in ids]
        assert worker._batch.admitted_total - before >= 3  # they ran in the batch, not in turn
        for rid, ref, got in zip(ids, refs, finals, strict=True):
            assert isinstance(got, Finished), got
            assert (got.text, got.completion_tokens, got.prompt_tokens, got.finish_reason) == (
                ref.text, ref.completion_tokens, ref.prompt_tokens, ref.finish_reason)
            assert texts_in_order(log, rid) == got.text
            assert got.time_to_first_token is not None and got.total_seconds > 0
    finally:
        worker.shutdown()
        ref_worker.shutdown()


def arrival_mid_way(worker, log, long_params, short_params):
    """A long reply runs; once it has streamed a few tokens a short request arrives.
    Returns (long Finished, short Finished, seconds from the short one's arrival to its first token,
    whether the short one's first token came while the long reply was still running)."""
    streaming = threading.Event()
    marks = {}
    stamp = {}

    def watch(event):  # on the engine's thread
        long = marks.get("long")
        if not isinstance(event, Token) or long is None:
            return
        if event.request_id == long and len(log.of(long, Token)) >= 3:
            streaming.set()
        elif event.request_id != long and "at" not in stamp:  # the short request's first text
            stamp["at"] = time.perf_counter()
            stamp["long_running"] = not isinstance(log.of(long)[-1], Finished)

    worker.add_listener(watch)
    try:
        marks["long"] = worker.generate(ask("tell me a story about cats"), long_params)
        assert streaming.wait(60)
        arrived = time.perf_counter()
        short = worker.generate(ask("what is the weather like"), short_params)
        done_short = log.wait(short)
        done_long = log.wait(marks["long"])
    finally:
        worker.remove_listener(watch)
    assert "at" in stamp, "the short request streamed nothing"
    return done_long, done_short, stamp["at"] - arrived, stamp["long_running"]


@pytest.mark.slow
def test_a_request_arriving_mid_way_joins_the_running_batch(batched, serial):
    long_params = GenerationParams(max_new_tokens=1200, temperature=0.0)  # long enough to dwarf a join
    short_params = GenerationParams(max_new_tokens=8, temperature=0.0)
    ref_long = alone(serial, ask("tell me a story about cats"), long_params)
    ref_short = alone(serial, ask("what is the weather like"), short_params)

    long_b, short_b, wait_b, joined = arrival_mid_way(*batched, long_params, short_params)
    long_s, short_s, wait_s, overlapped = arrival_mid_way(*serial, long_params, short_params)

    # Batched: the short reply streams while the long one still runs; one at a time it waits for it.
    assert joined and not overlapped
    assert wait_b < wait_s / 2, (wait_b, wait_s)
    # The long reply moved from the one-at-a-time path into the batch mid-way: still exactly the same.
    assert (long_b.text, long_b.completion_tokens) == (ref_long.text, ref_long.completion_tokens)
    assert (short_b.text, short_b.completion_tokens) == (ref_short.text, ref_short.completion_tokens)
    assert long_b.finish_reason == "length" and short_b.finish_reason == "length"


@pytest.mark.slow  # long replies in a batch
def test_cancel_mid_batch_ends_that_request_only_within_a_few_tokens(batched, serial):
    worker, log = batched
    params = GenerationParams(max_new_tokens=120, temperature=0.0)
    refs = [alone(serial, ask(q), params) for q in QUESTIONS[:3]]
    cancel_after = 10
    seen = {}
    victim = {}

    def cancel_at(event):  # runs on the engine's thread, as the tokens are produced
        rid = victim.get("id")
        if isinstance(event, Token) and event.request_id == rid:
            seen[rid] = seen.get(rid, 0) + 1
            if seen[rid] == cancel_after:
                worker.cancel(rid)

    worker.add_listener(cancel_at)
    try:
        ids = [worker.generate(ask(q), params) for q in QUESTIONS[:3]]
        victim["id"] = ids[1]
        finals = [log.wait(rid) for rid in ids]
    finally:
        worker.remove_listener(cancel_at)
    cancelled = finals[1]
    assert cancelled.finish_reason == "cancelled"
    assert cancel_after <= cancelled.completion_tokens <= cancel_after + 3
    assert refs[1].text.startswith(cancelled.text)
    for i in (0, 2):
        assert (finals[i].text, finals[i].completion_tokens, finals[i].finish_reason) == (
            refs[i].text, refs[i].completion_tokens, "length")


def test_each_request_keeps_its_max_new_tokens_and_stop_strings(batched, serial):
    worker, log = batched
    longest = alone(serial, ask(QUESTIONS[2]), GenerationParams(max_new_tokens=40, temperature=0.0))
    stop = longest.text[len(longest.text) // 2:][:3]  # a piece of the reply's second half
    assert stop.strip() and stop in longest.text
    requests = [
        (ask(QUESTIONS[0]), GenerationParams(max_new_tokens=5, temperature=0.0)),
        (ask(QUESTIONS[1]), GenerationParams(max_new_tokens=13, temperature=0.0)),
        (ask(QUESTIONS[2]), GenerationParams(max_new_tokens=40, temperature=0.0, stop=(stop,))),
    ]
    refs = [alone(serial, m, p) for m, p in requests]
    finals = together(worker, log, requests)
    assert [f.completion_tokens for f in finals[:2]] == [5, 13]
    assert [f.finish_reason for f in finals] == ["length", "length", "stop"]
    assert finals[2].text == longest.text[: longest.text.index(stop)]
    for ref, got in zip(refs, finals, strict=True):
        assert (got.text, got.completion_tokens, got.finish_reason) == (ref.text, ref.completion_tokens,
                                                                          ref.finish_reason)


def test_the_batch_attends_each_sequence_alone_through_packed_sdpa(batched, serial):
    """The batch's sdpa is glmtui's per-sequence one (engine/batch_attention.py), and its replies stay exact."""
    from transformers import AttentionInterface

    from glmtui.engine import batch_attention

    worker, log = batched
    assert AttentionInterface()["sdpa"] is batch_attention.packed_sdpa
    requests = [(ask(q), GenerationParams(max_new_tokens=12, temperature=0.0)) for q in QUESTIONS[:3]]
    refs = [alone(serial, m, p) for m, p in requests]
    before, decoded = batch_attention.packed_calls, batch_attention.decode_calls
    finals = together(worker, log, requests)
    assert batch_attention.packed_calls > before
    assert batch_attention.decode_calls > decoded  # its decode steps: one padded call per layer
    assert [(f.text, f.completion_tokens) for f in finals] == [(r.text, r.completion_tokens) for r in refs]


def test_a_sampling_request_next_to_a_greedy_one_leaves_the_greedy_one_exact(batched, serial):
    worker, log = batched
    greedy = GenerationParams(max_new_tokens=40, temperature=0.0)
    hot = GenerationParams(max_new_tokens=40, temperature=1.5, top_p=1.0, top_k=0)
    ref = alone(serial, ask(QUESTIONS[0]), greedy)
    finals = together(worker, log, [(ask(QUESTIONS[0]), hot), (ask(QUESTIONS[0]), greedy), (ask(QUESTIONS[0]), hot)])
    assert (finals[1].text, finals[1].completion_tokens) == (ref.text, ref.completion_tokens)
    # The same prompt sampled hot, beside it: its own temperature, not the greedy one's.
    assert finals[0].text != ref.text or finals[2].text != ref.text
    assert finals[0].text != finals[2].text


@pytest.mark.slow
def test_requests_over_the_sequence_limit_wait_their_turn_and_count_as_queued(chatty_chatglm3, serial):
    worker, log = start(chatty_chatglm3, batching=True, max_sequences=2)
    try:
        assert worker._batch.limits.sequences == 2
        params = GenerationParams(max_new_tokens=60, temperature=0.0)
        refs = [alone(serial, ask(q), params) for q in QUESTIONS]
        queued = []
        ids = [worker.generate(ask(q), params) for q in QUESTIONS]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(log.of(rid, Finished) for rid in ids):
            queued.append((worker._batch.in_flight - worker._batch.waiting, worker.queue_length()))
            time.sleep(0.005)
        finals = [log.wait(rid) for rid in ids]
        running = max(r for r, _ in queued)
        assert running == 2  # never more than the limit in the manager
        assert any(q >= 1 for _, q in queued)  # the rest were queued, and said so
        for ref, got in zip(refs, finals, strict=True):
            assert (got.text, got.completion_tokens) == (ref.text, ref.completion_tokens)
    finally:
        worker.shutdown()


def test_the_limit_follows_free_memory_and_kv_bytes_per_token():
    from glmtui.engine.batching import MAX_SEQUENCES, MEMORY_SHARE, plan_limits

    per_token = 28672  # ChatGLM3-6B in bf16: 28 layers x 2 x 2 KV heads x 128 x 2 bytes
    plenty = plan_limits(per_token, 8192, 64 * 2**30)
    assert plenty.sequences == MAX_SEQUENCES
    tight = plan_limits(per_token, 8192, 2 * 2**30)
    assert tight.sequences == int(2 * 2**30 * MEMORY_SHARE) // (per_token * 4096)
    assert tight.cache_tokens * per_token <= 2 * 2**30 * MEMORY_SHARE
    assert plan_limits(per_token, 8192, 2**20).sequences == 1  # always room for one
    short = plan_limits(512, 64, None)  # a 64-token context: 64 tokens per sequence
    assert short.cache_tokens == short.sequences * 64


def test_parameters_the_batch_cannot_honour_run_alone_after_the_batch(batched, serial):
    worker, log = batched
    params = GenerationParams(max_new_tokens=30, temperature=0.0)
    penalised = GenerationParams(max_new_tokens=30, temperature=0.0, repetition_penalty=1.3)
    requests = [(ask(QUESTIONS[0]), params), (ask(QUESTIONS[1]), params), (ask(QUESTIONS[2]), penalised)]
    refs = [alone(serial, m, p) for m, p in requests]
    before = worker._batch.admitted_total
    finals = together(worker, log, requests)
    for ref, got in zip(refs, finals, strict=True):
        assert (got.text, got.completion_tokens) == (ref.text, ref.completion_tokens)
    assert worker._batch.admitted_total - before == 2  # the penalised one did not go into the batch
    # (when it starts relative to the batch's last Finished is not checked: that event is delivered by the
    # batch's thread and can reach the log a moment after the worker has started the next request)


@pytest.fixture(scope="module")
def mla_model(tmp_path_factory):
    """GLM-4.7-Flash shaped (MLA attention): transformers' paged cache cannot hold its latent KV."""
    return tiny_models.build_glm4_moe_lite(tmp_path_factory.mktemp("mla") / "tiny-moe-lite")


@pytest.mark.slow  # over ~2 s on an idle machine: the fast loop keeps the room's other tests
def test_a_model_the_batch_cannot_run_falls_back_to_one_at_a_time(mla_model):
    log = EventLog()
    worker = InferenceWorker(log, batching=True).start()
    try:
        loaded = log.wait(worker.load(str(mla_model), "fp32"))
        assert isinstance(loaded, Loaded), loaded
        assert loaded.concurrency == worker.model_info.concurrency == "one at a time"
        assert "continuous batching unavailable" in loaded.concurrency_reason
        assert any(note.startswith("concurrency: one at a time") for note in loaded.notes)
        ids = [worker.generate(ask(q), GenerationParams(max_new_tokens=6, temperature=0.0)) for q in QUESTIONS[:2]]
        finals = [log.wait(rid) for rid in ids]
        assert all(isinstance(f, Finished) and f.completion_tokens >= 1 for f in finals), finals
        # One at a time: the second started only after the first had finished.
        first_done = log.events.index(finals[0])
        assert log.events.index(log.of(ids[1], Started)[0]) > first_done
    finally:
        worker.shutdown()


@pytest.mark.slow
def test_batching_through_the_engine_process(native_glm, tmp_path):
    from glmtui.engine.process import EngineProcess

    ref_worker, ref_log = start(native_glm, batching=False)
    refs = [alone((ref_worker, ref_log), ask(q)) for q in QUESTIONS[:3]]
    ref_worker.shutdown()
    log = EventLog()
    engine = EngineProcess(log, log_dir=tmp_path / "logs", keep_spare=False).start()
    try:
        loaded = log.wait(engine.load(str(native_glm), "fp32"), timeout=180)
        assert isinstance(loaded, Loaded), loaded
        assert engine.model_info.concurrency == "continuous batching", engine.model_info.concurrency_reason
        ids = [engine.generate(ask(q), GREEDY) for q in QUESTIONS[:3]]
        finals = [log.wait(rid) for rid in ids]
        for rid, ref, got in zip(ids, refs, finals, strict=True):
            assert (got.text, got.completion_tokens) == (ref.text, ref.completion_tokens)
            assert texts_in_order(log, rid) == got.text
    finally:
        engine.shutdown()


@pytest.mark.slow
def test_a_failed_batch_fails_its_requests_and_the_engine_goes_on_one_at_a_time(chatty_chatglm3, serial):
    worker, log = start(chatty_chatglm3, batching=True)
    try:
        params = GenerationParams(max_new_tokens=400, temperature=0.0)
        ids = [worker.generate(ask(q), params) for q in QUESTIONS[:2]]
        deadline = time.monotonic() + 60
        while worker._batch.in_flight < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker._batch.in_flight == 2
        worker._batch.manager.stop(block=True, hard_stop=True)  # as when its loop dies on an error
        finals = [log.wait(rid) for rid in ids]
        assert all(type(f).__name__ == "Failed" for f in finals), finals  # ended, not left hanging
        ref = alone(serial, ask(QUESTIONS[2]))
        after = log.wait(worker.generate(ask(QUESTIONS[2]), GREEDY))
        assert (after.text, after.completion_tokens) == (ref.text, ref.completion_tokens)
        assert worker.model_info.concurrency == "one at a time"
        assert "continuous batching failed" in worker.model_info.concurrency_reason
        assert worker._batch is None
    finally:
        worker.shutdown()


@pytest.mark.slow
def test_in_the_batch_a_next_turn_prefills_only_past_the_shared_full_pages(native_glm):
    """KV reuse across turns with batching on: the manager's prefix sharing keeps a finished
    request's complete pages, so the next turn's prefill starts at the last shared page."""
    from glmtui.engine import batching, loading
    from glmtui.engine.generation import ReplyStream

    loaded = loading.load_model(str(native_glm), "fp32", "cpu", lambda *a: None)
    fmt = loaded.chat_format
    runner, why = batching.start_batching(loaded, fmt.encode_conversation(ask("Hello")))
    assert runner is not None, why
    fed = []
    loaded.model.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append(int(kwargs["input_ids"].shape[-1])), with_kwargs=True)

    def turn(ids) -> int:
        done = threading.Event()
        stream = ReplyStream(fmt.decode, [], (), lambda text: None)
        fed.clear()
        runner.submit(len(ids), ids, len(ids), 2, stream, GenerationParams(max_new_tokens=2, temperature=0.0),
                      time.perf_counter(), lambda event: done.set(), fmt.stop_token_ids)
        assert done.wait(60)
        return sum(fed) - 1  # every forward's tokens, less the one decode step after the prefill

    try:
        first = fmt.encode_conversation(ask("tell me a story about cats " * 30))
        assert turn(first) == len(first)
        second = first + fmt.encode_conversation(ask("and dogs"))[2:]
        page = runner.limits.page_size
        assert turn(second) == len(second) - (len(first) // page) * page
    finally:
        runner.close()
