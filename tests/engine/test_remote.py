"""RemoteEngine against glmtui's own server on a real tiny model."""

from __future__ import annotations

import threading
import time

import pytest

from engine_helpers import EventLog
from glmtui.engine.events import ChatMessage, Failed, Finished, GenerationParams, Loaded, Started, Token, Unloaded
from glmtui.engine.remote import RemoteEngine, normalize_endpoint, to_openai_messages
from glmtui.engine.worker import InferenceWorker
from glmtui.server import ServerThread, create_app, reply_text
from helpers import free_port, wait_until

MODEL = "tiny-chatglm3"
KEY = "remote-test-key"
GREEDY = GenerationParams(max_new_tokens=50, temperature=0.0)
MESSAGES = [ChatMessage("system", "You are helpful."), ChatMessage("user", "你好，介绍一下你自己")]


@pytest.fixture(scope="module")
def served(chatglm3_dir):
    log = EventLog()
    worker = InferenceWorker(log).start()
    assert isinstance(log.wait(worker.load(str(chatglm3_dir), "fp32")), Loaded)
    server = ServerThread(create_app(worker, MODEL, api_key=KEY)).start()
    yield worker, log, server
    server.stop()
    worker.shutdown()


@pytest.fixture
def remote(served):
    log = EventLog()
    engine = RemoteEngine(served[2].url, api_key=KEY, listener=log).start()
    yield engine, log
    engine.shutdown()


def test_connect_reports_the_servers_model(remote):
    engine, log = remote
    loaded = log.wait(1)
    assert isinstance(loaded, Loaded), loaded
    assert loaded.model_name == MODEL and loaded.mode == "remote" and loaded.context_length == 2048
    assert engine.model_info.name == MODEL and engine.state == "ready"


def test_streamed_tokens_equal_the_local_greedy_reply(served, remote):
    worker, worker_log, _ = served
    local = worker_log.wait(worker.generate(MESSAGES, GREEDY))
    engine, log = remote
    rid = engine.generate(MESSAGES, GREEDY)
    done = log.wait(rid)
    assert isinstance(done, Finished), done
    tokens = log.of(rid, Token)
    assert len(tokens) > 1  # streamed, not one lump
    assert "".join(t.text for t in tokens) == done.text == reply_text(local.text, chatglm3=True)
    assert done.completion_tokens == local.completion_tokens
    assert done.prompt_tokens == local.prompt_tokens
    assert done.finish_reason == local.finish_reason
    assert log.of(rid, Started) and engine.state == "ready"


@pytest.mark.slow
def test_cancel_mid_stream_stops_the_server_generation(served, remote):
    worker, worker_log, _ = served
    engine, log = remote

    def throttle(event):  # slow the real server worker so the cancel lands mid-reply
        if isinstance(event, Token):
            time.sleep(0.01)

    lengths = {q: worker_log.wait(worker.generate([ChatMessage("user", q)],
                                                  GenerationParams(600, 0.0))).completion_tokens
               for q in ("story time", "a", "b", "你好")}
    prompt = max(lengths, key=lengths.get)
    mark = len(worker_log.events)
    cancelled_at = threading.Event()

    def sink(event):
        if isinstance(event, Token) and len(log.of(event.request_id, Token)) >= 3 and not cancelled_at.is_set():
            cancelled_at.set()
            engine.cancel(event.request_id)

    worker.add_listener(throttle)
    try:
        rid = engine.generate([ChatMessage("user", prompt)], GenerationParams(600, 0.0), sink=sink)
        done = log.wait(rid, 30)
        wait_until(lambda: [e for e in worker_log.events[mark:] if isinstance(e, Finished)], 10,
                   "the server's generation to finish")
    finally:
        worker.remove_listener(throttle)
    assert done.finish_reason == "cancelled" and done.completion_tokens < lengths[prompt]
    server_side = [e for e in worker_log.events[mark:] if isinstance(e, Finished)]
    assert server_side and server_side[-1].finish_reason == "cancelled"


def test_a_queued_request_can_be_cancelled(remote):
    engine, log = remote
    first = engine.generate(MESSAGES, GenerationParams(30, 0.0))
    second = engine.generate(MESSAGES, GenerationParams(30, 0.0))
    engine.cancel(second)
    assert isinstance(log.wait(first), Finished)
    done = log.wait(second)
    assert done.finish_reason == "cancelled" and done.text == ""
    assert not log.of(second, Started)


def test_server_errors_become_failed_events(remote):
    engine, log = remote
    bad_role = engine.generate([ChatMessage("user", "a"), ChatMessage("assistant", "b")], GREEDY)
    failed = log.wait(bad_role)
    # the server's refusal in its own words, its kind carried (glmtui serve over this engine answers 400)
    assert isinstance(failed, Failed) and failed.kind == "prompt" and "last message" in failed.message
    too_long = log.wait(engine.generate([ChatMessage("user", "word " * 5000)], GREEDY))
    assert isinstance(too_long, Failed) and too_long.kind == "context" and "context" in too_long.message
    # the engine checks parameters itself, like the local worker
    bad = log.wait(engine.generate(MESSAGES, GenerationParams(max_new_tokens=0)))
    assert isinstance(bad, Failed) and bad.during == "params"
    # and keeps working
    assert isinstance(log.wait(engine.generate(MESSAGES, GenerationParams(5, 0.0))), Finished)


def test_a_remote_engine_cannot_load_models(remote):
    engine, log = remote
    log.wait(1)
    failed = log.wait(engine.load("/models/chatglm3-6b", "int4", "cuda"))
    assert isinstance(failed, Failed) and "cannot load models" in failed.message and MODEL in failed.message
    assert engine.model_info.name == MODEL  # still connected
    assert isinstance(log.wait(engine.load(MODEL)), Loaded)
    unloaded = log.wait(engine.unload())
    assert isinstance(unloaded, Unloaded) and engine.model_info is None and engine.state == "empty"
    assert isinstance(log.wait(engine.generate(MESSAGES, GREEDY)), Failed)
    assert isinstance(log.wait(engine.load("")), Loaded)
    assert isinstance(log.wait(engine.generate(MESSAGES, GenerationParams(3, 0.0))), Finished)


def test_wrong_key_and_unreachable_server(served):
    log = EventLog()
    engine = RemoteEngine(served[2].url, api_key="wrong", listener=log).start()
    try:
        failed = log.wait(1)
        assert isinstance(failed, Failed) and "401" in failed.message
    finally:
        engine.shutdown()
    log = EventLog()
    engine = RemoteEngine(f"127.0.0.1:{free_port()}", listener=log).start()
    try:
        failed = log.wait(1)
        assert isinstance(failed, Failed) and "cannot reach" in failed.message
        assert isinstance(log.wait(engine.generate(MESSAGES, GREEDY)), Failed)
    finally:
        engine.shutdown()
    assert not engine.alive and engine.state == "stopped"


def test_endpoint_forms():
    assert normalize_endpoint("127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert normalize_endpoint("http://h:1/") == "http://h:1/v1"
    assert normalize_endpoint("https://h/v1/") == "https://h/v1"
    assert normalize_endpoint("http://h:1/openai/v1") == "http://h:1/openai/v1"


def test_tool_turns_map_to_openai_messages():
    messages = [
        ChatMessage("system", "tools"),
        ChatMessage("user", "weather?"),
        ChatMessage("assistant", '```python\ntool_call(city="Beijing", days=2)\n```', "get_weather"),
        ChatMessage("observation", '{"t": 22}'),
    ]
    out = to_openai_messages(messages)
    assert out[2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Beijing", "days": 2}'}
    assert out[3] == {"role": "tool", "content": '{"t": 22}', "tool_call_id": out[2]["tool_calls"][0]["id"]}
