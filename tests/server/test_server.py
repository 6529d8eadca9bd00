"""The OpenAI-compatible server on a real tiny ChatGLM3 model, driven by the official openai client."""

from __future__ import annotations

import json
import threading
import time
import weakref

import httpx
import openai
import pytest

from engine_helpers import EventLog
from glmtui.engine.events import ChatMessage, Finished, GenerationParams, Started, Token
from glmtui.engine.worker import InferenceWorker
from glmtui.server import (
    CHARS_PER_TOKEN_BOUND,
    ServerThread,
    completion_body,
    create_app,
    format_tool_call,
    parse_tool_arguments,
    parse_tool_call,
    reply_text,
)
from helpers import wait_until

MODEL = "tiny-chatglm3"
PROMPT = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "count to ten"}]


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served[2].url + "/v1", api_key="unused", max_retries=0, timeout=60)


def local_greedy(worker, log, messages, max_new_tokens=40, **kw):
    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0, **kw)
    done = log.wait(worker.generate([ChatMessage(m["role"], m["content"]) for m in messages], params))
    assert isinstance(done, Finished)
    return done


@pytest.mark.slow
def test_health_and_models(served, client):
    worker, log, server = served
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL and health["server"] == "glmtui"
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_non_streaming_equals_the_workers_greedy_reply(served, client):
    worker, log, _ = served
    expected = local_greedy(worker, log, PROMPT)
    reply = client.chat.completions.create(model=MODEL, messages=PROMPT, temperature=0, max_tokens=40)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == reply_text(expected.text, chatglm3=True)
    assert choice.finish_reason == ("length" if expected.completion_tokens == 40 else "stop")
    assert reply.usage.prompt_tokens == expected.prompt_tokens
    assert reply.usage.completion_tokens == expected.completion_tokens
    assert reply.usage.total_tokens == expected.prompt_tokens + expected.completion_tokens


def test_max_tokens_and_max_completion_tokens_cut_with_length(served, client):
    for field in ("max_tokens", "max_completion_tokens"):
        reply = client.chat.completions.create(model=MODEL, messages=PROMPT, temperature=0, **{field: 3})
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == 3


def test_streaming_chunks_concatenate_to_the_non_streaming_text(served, client):
    full = client.chat.completions.create(model=MODEL, messages=PROMPT, temperature=0, max_tokens=60)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=PROMPT, temperature=0, max_tokens=60, stream=True,
        stream_options={"include_usage": True},
    ))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    # without include_usage there is no usage chunk; the raw stream ends with [DONE]
    with httpx.stream("POST", served[2].url + "/v1/chat/completions", json={
        "model": MODEL, "messages": PROMPT, "temperature": 0, "max_tokens": 5, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    assert all(json.loads(line[5:])["choices"] for line in lines[:-1])


def test_stop_strings_and_seed(served, client):
    full = client.chat.completions.create(model=MODEL, messages=PROMPT, temperature=0, max_tokens=40)
    text = full.choices[0].message.content
    assert len(text) > 8
    stop = text[4:7]
    for value in (stop, [stop, "zzzz-never"]):
        cut = client.chat.completions.create(model=MODEL, messages=PROMPT, temperature=0, max_tokens=40, stop=value)
        assert cut.choices[0].message.content == text[: text.index(stop)]
        assert cut.choices[0].finish_reason == "stop"
    a, b = (client.chat.completions.create(model=MODEL, messages=PROMPT, temperature=1.0, top_p=0.9, seed=11,
                                           max_tokens=20).choices[0].message.content for _ in range(2))
    assert a == b


def test_eight_concurrent_clients_get_well_formed_answers(served, client):
    expected = client.chat.completions.create(model=MODEL, messages=PROMPT, temperature=0, max_tokens=25)
    results, errors = [None] * 8, []

    def ask(i):
        try:
            own = openai.OpenAI(base_url=served[2].url + "/v1", api_key="x", max_retries=0, timeout=120)
            if i % 2:
                stream = own.chat.completions.create(model=MODEL, messages=PROMPT, temperature=0, max_tokens=25,
                                                     stream=True)
                results[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            else:
                results[i] = own.chat.completions.create(model=MODEL, messages=PROMPT, temperature=0,
                                                         max_tokens=25).choices[0].message.content
        except Exception as exc:  # noqa: BLE001 - reported below  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    assert results == [expected.choices[0].message.content] * 8


class Throttle:
    """Slows the real worker down (sleeps on each Token on the worker thread) so a disconnect lands mid-reply."""

    def __init__(self, worker, seconds=0.01):
        self.worker, self.seconds = worker, seconds

    def __call__(self, event):
        if isinstance(event, Token):
            time.sleep(self.seconds)

    def __enter__(self):
        self.worker.add_listener(self)
        return self

    def __exit__(self, *exc):
        self.worker.remove_listener(self)


_LONG_PROMPTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _long_prompt(worker, log):
    """A prompt whose greedy reply is long (the tiny model stops early on most prompts). Greedy replies of one
    loaded model do not change, so each worker's search (six replies of up to 600 tokens) runs once."""
    if worker not in _LONG_PROMPTS:
        _LONG_PROMPTS[worker] = _search_long_prompt(worker, log)
    return _LONG_PROMPTS[worker]


def _search_long_prompt(worker, log):
    best = None
    for q in ("story time", "a", "b", "你好", "count to ten", "hello"):
        done = local_greedy(worker, log, [{"role": "user", "content": q}], max_new_tokens=600)
        if best is None or done.completion_tokens > best[1]:
            best = ([{"role": "user", "content": q}], done.completion_tokens)
    assert best[1] >= 150
    return best


def _finished(log, after_index, count=1):
    """The Finished events after ``after_index``, once there are ``count`` of them."""
    def done():
        found = [e for e in log.events[after_index:] if isinstance(e, Finished)]
        return found if len(found) >= count else None

    return wait_until(done, 30, f"{count} generation(s) to finish")


def _cancelled_generation(log, after_index):
    return _finished(log, after_index)[-1]


def _streaming(log, after_index):
    """Until a generation started after ``after_index`` has produced a token (it is running, not queued)."""
    wait_until(lambda: any(isinstance(e, Token) for e in log.events[after_index:]), 30, "the first request's tokens")


@pytest.mark.slow
def test_a_client_that_disconnects_mid_stream_cancels_its_generation(served, client):
    worker, log, server = served
    messages, full_tokens = _long_prompt(worker, log)
    mark = len(log.events)
    with Throttle(worker):
        stream = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=600,
                                                stream=True)
        got = 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                got += 1
            if got >= 3:
                break
        stream.close()
        done = _cancelled_generation(log, mark)
    assert done.finish_reason == "cancelled"
    assert 3 <= done.completion_tokens < full_tokens
    started = [e for e in log.events[mark:] if isinstance(e, Started)]
    assert started and started[-1].request_id == done.request_id
    # the server still answers
    assert client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=3).choices[0].finish_reason


@pytest.mark.slow
def test_a_client_that_disconnects_mid_request_cancels_its_generation(served, client):
    worker, log, server = served
    messages, full_tokens = _long_prompt(worker, log)
    mark = len(log.events)
    with Throttle(worker):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/chat/completions", timeout=httpx.Timeout(5, read=0.5), json={
                "model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 600})
        done = _cancelled_generation(log, mark)
    assert done.finish_reason == "cancelled"
    assert done.completion_tokens < full_tokens
    assert client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=3).choices[0].finish_reason


@pytest.fixture(scope="module")
def served_one_at_a_time(chatglm3_dir):
    """The API over a worker without continuous batching (the path for models and modes it cannot run),
    where a second request waits in the queue."""
    from glmtui.engine.events import Loaded
    from glmtui.server import ServerThread, create_app

    log = EventLog()
    worker = InferenceWorker(log, batching=False).start()
    assert isinstance(log.wait(worker.load(str(chatglm3_dir), "fp32")), Loaded)
    server = ServerThread(create_app(worker, MODEL)).start()
    yield worker, log, server
    server.stop()
    worker.shutdown()


@pytest.mark.slow
def test_a_queued_client_that_disconnects_never_runs(served_one_at_a_time):
    worker, log, server = served_one_at_a_time
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    messages, _ = _long_prompt(worker, log)
    mark = len(log.events)
    with Throttle(worker, 0.02):
        first = threading.Thread(target=lambda: client.chat.completions.create(
            model=MODEL, messages=messages, temperature=0, max_tokens=100))
        first.start()
        _streaming(log, mark)  # the first request is running; the next one queues behind it
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/chat/completions", timeout=httpx.Timeout(5, read=0.3),
                       json={"model": MODEL, "messages": PROMPT, "max_tokens": 50})
        first.join(60)
    finished = _finished(log, mark, 2)
    assert [f.finish_reason for f in finished][-1] == "cancelled"
    assert finished[-1].completion_tokens == 0


@pytest.mark.slow  # long batched replies
def test_a_batched_client_that_disconnects_is_cancelled(served, client):
    """With continuous batching the second request joins the running batch; its client leaving ends it
    within a step, and the first reply is untouched."""
    worker, log, server = served
    messages, _ = _long_prompt(worker, log)
    mark = len(log.events)
    with Throttle(worker, 0.02):
        first = threading.Thread(target=lambda: client.chat.completions.create(
            model=MODEL, messages=messages, temperature=0, max_tokens=100))
        first.start()
        _streaming(log, mark)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/chat/completions", timeout=httpx.Timeout(5, read=0.3),
                       json={"model": MODEL, "messages": PROMPT, "max_tokens": 50})
        first.join(60)
    finished = _finished(log, mark, 2)
    reasons = sorted(f.finish_reason for f in finished)
    assert "cancelled" in reasons and len(finished) == 2, reasons
    cancelled = next(f for f in finished if f.finish_reason == "cancelled")
    assert cancelled.completion_tokens < 50


# ------------------------------------------------------------------ bad input


def post(server, body, raw=None, headers=None):
    return httpx.post(server.url + "/v1/chat/completions", json=body if raw is None else None,
                      content=raw, headers=headers or {}, timeout=60)


def ok(**over):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    body.update(over)
    return body


BAD = [
    ("malformed json", None, b'{"model": "tiny-chatglm3", "messages": [', 400, None),
    ("not an object", None, b'[1, 2]', 400, None),
    ("empty body", None, b"", 400, None),
    ("unknown model", ok(model="gpt-4"), None, 404, "model"),
    ("no messages", ok(messages=[]), None, 400, "messages"),
    ("unknown role", ok(messages=[{"role": "wizard", "content": "x"}]), None, 400, "messages.0.role"),
    ("system not first", ok(messages=[{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]),
     None, 400, "messages"),
    ("ends with assistant", ok(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]),
     None, 400, "messages"),
    ("image part", ok(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     None, 400, "messages.0.content.0.type"),
    ("temperature < 0", ok(temperature=-0.1), None, 400, "temperature"),
    ("temperature > 2", ok(temperature=2.5), None, 400, "temperature"),
    ("temperature string", ok(temperature="hot"), None, 400, "temperature"),
    ("top_p 0", ok(top_p=0), None, 400, "top_p"),
    ("top_p > 1", ok(top_p=1.5), None, 400, "top_p"),
    ("max_tokens 0", ok(max_tokens=0), None, 400, "max_tokens"),
    ("max_tokens huge", ok(max_tokens=10**12), None, 400, "max_tokens"),
    ("max_tokens over context", ok(max_tokens=100_000), None, 400, "max_tokens"),
    ("max_completion_tokens -1", ok(max_completion_tokens=-1), None, 400, "max_completion_tokens"),
    ("n=2", ok(n=2), None, 400, "n"),
    ("n=0", ok(n=0), None, 400, "n"),
    ("stop not str", ok(stop=[1, 2]), None, 400, "stop.0"),
    ("too many stops", ok(stop=["a"] * 17), None, 400, "stop"),
    ("seed not an int", ok(seed="abc"), None, 400, "seed"),
    ("logprobs", ok(logprobs=True), None, 400, "logprobs"),
    ("NaN temperature", None, b'{"model": "tiny-chatglm3", "messages": [{"role": "user", "content": "x"}], '
                              b'"temperature": NaN}', 400, "temperature"),
    ("bad tool name", ok(tools=[{"type": "function", "function": {"name": "rm -rf /"}}]), None, 400,
     "tools.0.function.name"),
    ("tool message without content", ok(messages=[{"role": "user", "content": "a"},
                                                   {"role": "tool", "content": [{"type": "text"}]}]), None, 400,
     "messages.1.content.0.text"),
    ("prompt over context", ok(messages=[{"role": "user", "content": "word " * 5000}]), None, 400, "messages"),
]


@pytest.mark.parametrize("name,body,raw,status,param", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_openai_error_bodies(served, name, body, raw, status, param):
    response = post(served[2], body, raw, {"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error
    if name == "prompt over context":
        assert error["code"] == "context_length_exceeded"


def test_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=PROMPT)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=PROMPT, n=3)
    assert info.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=PROMPT, stream=True, temperature=5)


def test_unknown_route_and_method_have_error_bodies(served):
    r = httpx.get(served[2].url + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(served[2].url + "/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_openapi_schema_is_real(served):
    schema = httpx.get(served[2].url + "/openapi.json").json()
    request = schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert request["temperature"]["anyOf"][0]["maximum"] == 2.0
    assert "/v1/chat/completions" in schema["paths"] and "/health" in schema["paths"]


# ------------------------------------------------------------------ auth and no model


@pytest.mark.slow
def test_api_key_is_required_everywhere_but_health(served):
    worker = served[0]
    server = ServerThread(create_app(worker, MODEL, api_key="sekret")).start()
    try:
        assert httpx.get(server.url + "/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekret"}):
            for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/openapi.json")):
                r = httpx.request(method, server.url + path, headers=headers, json=ok())
                assert r.status_code == 401, (headers, path)
                assert r.json()["error"]["code"] == "invalid_api_key"
        # even a malformed body gets 401 first
        r = httpx.post(server.url + "/v1/chat/completions", content=b"{", headers={"content-type": "application/json"})
        assert r.status_code == 401
        good = openai.OpenAI(base_url=server.url + "/v1", api_key="sekret", max_retries=0)
        assert good.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=2).usage.completion_tokens == 2
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="bad", max_retries=0).models.list()
    finally:
        server.stop()


@pytest.mark.slow
def test_503_before_a_model_is_loaded():
    worker = InferenceWorker().start()
    server = ServerThread(create_app(worker, MODEL)).start()
    try:
        r = httpx.get(server.url + "/health")
        assert r.status_code == 503 and r.json()["status"] == "no_model"
        r = post(server, ok())
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_loaded"
        with pytest.raises(openai.InternalServerError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
                model=MODEL, messages=PROMPT, stream=True)
        # a load that fails is reported, without the server's paths to a server open to anyone
        log = EventLog()
        log.wait(worker.load("/nonexistent/model", "fp32", sink=log))
        error = post(server, ok()).json()["error"]
        assert error["code"] == "model_not_loaded" and "load failed" in error["message"]
        assert "nonexistent" not in error["message"]
    finally:
        server.stop()
        worker.shutdown()


def test_the_503_tells_why_a_load_failed_only_behind_the_key(tmp_path):
    worker = InferenceWorker().start()
    missing = tmp_path / "private-models" / "nothing-here"
    server = ServerThread(create_app(worker, MODEL, api_key="sekret")).start()
    try:
        log = EventLog()
        log.wait(worker.load(str(missing), "fp32", sink=log))
        r = post(server, ok(), headers={"Authorization": "Bearer sekret"})
        assert r.status_code == 503 and "private-models" in r.json()["error"]["message"]
    finally:
        server.stop()
        worker.shutdown()


# ------------------------------------------------------------------ tool calls

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_tools_and_tool_messages_reach_the_chatglm3_prompt(served, client):
    worker, log, _ = served
    messages = [
        {"role": "user", "content": "weather in Beijing?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Beijing", "days": 2, "ok": true}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 22}'},
    ]
    reply = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], max_tokens=2,
                                           temperature=0)
    expected = [
        ChatMessage("system", "Answer the following questions as best as you can. "
                              "You have access to the following tools:"),
        ChatMessage("user", "weather in Beijing?"),
        ChatMessage("assistant", '```python\ntool_call(city="Beijing", days=2, ok=True)\n```', "get_weather"),
        ChatMessage("observation", '{"temperature": 22}'),
    ]
    fmt = worker._loaded.chat_format
    ids = fmt.encode_conversation(expected, tools=[WEATHER["function"]])
    assert reply.usage.prompt_tokens == len(ids)
    # tool_choice "none" drops the tools (and the tool system prompt)
    plain = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], tool_choice="none",
                                           max_tokens=2, temperature=0)
    assert plain.usage.prompt_tokens == len(fmt.encode_conversation(expected[1:]))
    # arguments that are not a JSON object are kept verbatim in the history
    messages[1]["tool_calls"][0]["function"]["arguments"] = "city=Beijing"
    odd = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], max_tokens=2)
    expected[2] = ChatMessage("assistant", "city=Beijing", "get_weather")
    assert odd.usage.prompt_tokens == len(fmt.encode_conversation(expected, tools=[WEATHER["function"]]))


def test_streaming_with_tools_equals_non_streaming(served, client):
    # the tiny model answers in plain text: with tools the stream holds the first line back, then flows
    kw = dict(model=MODEL, messages=PROMPT, tools=[WEATHER], temperature=0, max_tokens=40)
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        full.choices[0].finish_reason]
    assert full.choices[0].finish_reason in ("stop", "length") and not full.choices[0].message.tool_calls


def test_parse_tool_call_code_style_and_json():
    code = ('get_weather\n ```python\n'
            'tool_call(city="Beijing", days=3, units=["c", "f"], extra={"a": None, "b": True})\n ```')
    assert parse_tool_call(code, {"get_weather"}) == (
        "get_weather", {"city": "Beijing", "days": 3, "units": ["c", "f"], "extra": {"a": None, "b": True}})
    assert parse_tool_call('get_weather\n{"city": "上海"}', {"get_weather"}) == ("get_weather", {"city": "上海"})
    assert parse_tool_call("get_weather\n```\ntool_call()\n```", None) == ("get_weather", {})
    # not tool calls: plain answers, unknown tools, positional args, non-objects
    assert parse_tool_call("\nHello there", {"get_weather"}) is None
    assert parse_tool_call("Hello there", {"get_weather"}) is None
    assert parse_tool_call('other\n{"a": 1}', {"get_weather"}) is None
    assert parse_tool_call('get_weather\ntool_call("Beijing")', {"get_weather"}) is None
    assert parse_tool_call('get_weather\n[1, 2]', {"get_weather"}) is None
    assert parse_tool_call('get_weather\ntool_call(**{"a": 1})', {"get_weather"}) is None
    # the history rendering round-trips through the parser
    args = {"city": "Beijing", "n": -2.5, "flags": [True, None], "d": {"k": "v\n\"q\""}}
    assert parse_tool_call("f\n" + format_tool_call(args), {"f"}) == ("f", args)


MALICIOUS = [
    "tool_call(x=__import__('os').system('touch {p}'))",
    "tool_call(x=open('{p}', 'w').write('x'))",
    "tool_call(x=(lambda: open('{p}', 'w'))())",
    "tool_call(x=[open('{p}', 'w') for _ in range(1)])",
    "tool_call(x=exec(\"open('{p}', 'w')\"))",
    "tool_call(x=eval(\"open('{p}', 'w')\"))",
    "__import__('os').system('touch {p}')",
    "open('{p}', 'w')",
    "tool_call(x=().__class__.__base__.__subclasses__())",
    "tool_call(x=f'{{open(\"{p}\", \"w\")}}')",
    "tool_call(x=1 if open('{p}', 'w') else 2)",
    "tool_call(x=globals())",
    "tool_call(x=tool_call)",
]


@pytest.mark.parametrize("payload", MALICIOUS)
def test_malicious_tool_calls_are_never_executed(tmp_path, payload):
    canary = tmp_path / "pwned"
    code = payload.format(p=canary)
    for text in (f"get_weather\n```python\n{code}\n```", f"get_weather\n{code}"):
        assert parse_tool_call(text, {"get_weather"}) is None
        finished = Finished(1, text, 5, 5, None, None, 0.1, "stop")
        body = completion_body("chatcmpl-x", 0, MODEL, finished, {"get_weather"})
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["choices"][0]["message"]["content"] == text  # returned as plain text
    assert parse_tool_arguments(code) is None
    assert not canary.exists()


def test_chatglm3_metadata_newline_is_dropped():
    assert reply_text("\nHello", chatglm3=True) == "Hello"
    assert reply_text("\n\nHello", chatglm3=True) == "\nHello"
    assert reply_text("\nHello", chatglm3=False) == "\nHello"
    body = completion_body("c", 1, MODEL, Finished(1, "\nHi", 1, 2, None, None, 0.1, "stop"), None, chatglm3=True)
    assert body["choices"][0]["message"]["content"] == "Hi"


def test_completion_body_reports_tool_calls():
    text = 'get_weather\n```python\ntool_call(city="Paris")\n```'
    body = completion_body("chatcmpl-x", 1, MODEL, Finished(1, text, 10, 7, None, None, 0.1, "stop"), {"get_weather"})
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17}
    # without tools in the request the same text is a plain answer
    assert completion_body("c", 1, MODEL, Finished(1, text, 1, 1, None, None, 0.1, "length"), None)[
        "choices"][0]["finish_reason"] == "length"


# ------------------------------------------------------------------ invalid text, unexpected failures, a full queue


def raw_post(server, body: dict, **kw):
    """POST a body whose JSON may hold lone surrogates (json.dumps escapes them as \\udXXX; httpx's json= cannot)."""
    return httpx.post(server.url + "/v1/chat/completions", content=json.dumps(body),
                      headers={"content-type": "application/json"}, timeout=60, **kw)


@pytest.mark.parametrize("where", ["content", "stop", "tool"])
def test_a_lone_surrogate_is_a_clear_400_before_the_worker(served, where):
    worker, log, server = served
    body = ok(messages=[{"role": "user", "content": "a\ud800b" if where == "content" else "hi"}])
    if where == "stop":
        body["stop"] = ["x", "\udc00"]
    if where == "tool":
        body["tools"] = [{"type": "function", "function": {"name": "f", "description": "bad \udfff text"}}]
    mark = len(log.events)
    r = raw_post(server, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_text"
    assert error["param"] == {"content": "messages.0.content", "stop": "stop.1",
                              "tool": "tools.0.function.description"}[where]
    assert "not valid Unicode" in error["message"] and "pybind" not in error["message"]
    assert log.events[mark:] == []  # refused at validation: the worker never saw it
    # a proper pair (an emoji written as two escapes) is valid text
    assert raw_post(server, ok(messages=[{"role": "user", "content": "\U0001F600"}])).status_code == 200


class Fault:
    """Makes one method of the loaded model's objects raise, at the worker's true edge (tokenizer, generate)."""

    def __init__(self, target, name, exc):
        self.target, self.name, self.exc = target, name, exc

    def __enter__(self):
        def fail(*args, **kwargs):
            raise self.exc

        setattr(self.target, self.name, fail)  # an instance attribute shadows the method
        return self

    def __exit__(self, *exc):
        delattr(self.target, self.name)


SECRET = "/srv/secret/glmtui/tokenizer.model"


@pytest.mark.parametrize("edge", ["tokenizer", "generate", "generate-stream"])
def test_an_unexpected_failure_is_a_generic_500_with_details_in_the_log(served, caplog, edge):
    worker, log, server = served
    loaded = worker._loaded
    target, name = (loaded.chat_format, "encode_conversation") if edge == "tokenizer" else (loaded.model, "generate")
    with caplog.at_level("ERROR", logger="glmtui.server"), Fault(target, name, RuntimeError(f"cannot read {SECRET}")):
        if edge == "generate-stream":
            with httpx.stream("POST", server.url + "/v1/chat/completions", json=ok(stream=True)) as r:
                assert r.status_code == 200  # the stream had begun: the error is its last event
                events = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
            error = events[-1]["error"]
        else:
            r = post(server, ok())
            assert r.status_code == 500, r.text
            error = r.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "internal_error"
    assert SECRET not in json.dumps(error) and "RuntimeError" not in error["message"]
    assert "server's log" in error["message"]
    assert any(SECRET in record.getMessage() for record in caplog.records)
    # the server keeps serving
    assert post(server, ok()).status_code == 200


@pytest.mark.parametrize("words", ["no model is loaded at {secret}", "{secret} is longer than the model's context"])
def test_a_library_error_worded_like_a_user_error_is_still_a_generic_500(served, caplog, words):
    """Failures are told apart by Failed.kind, never by their words: a library's exception before the
    reply starts that happens to say "no model is loaded" or "longer than the model's context" is
    neither a 503 nor a 400 (and its text stays in the server's log)."""
    worker, log, server = served
    target, error = worker._loaded.chat_format, RuntimeError(words.format(secret=SECRET))
    with caplog.at_level("ERROR", logger="glmtui.server"), Fault(target, "encode_conversation", error):
        r = post(server, ok())
    assert r.status_code == 500, r.text
    assert r.json()["error"]["code"] == "internal_error" and SECRET not in r.text


class Gate:
    """Holds the worker at the first Started event (on the worker thread) until opened."""

    def __init__(self, worker):
        self.worker, self.reached, self.open = worker, threading.Event(), threading.Event()

    def __call__(self, event):
        if isinstance(event, Started) and not self.reached.is_set():
            self.reached.set()
            self.open.wait(60)

    def __enter__(self):
        self.worker.add_listener(self)
        return self

    def __exit__(self, *exc):
        self.open.set()
        self.worker.remove_listener(self)


def test_a_full_queue_is_429_with_retry_after_and_a_rate_limit_type(served):
    worker = served[0]
    server = ServerThread(create_app(worker, MODEL, max_queue=1)).start()
    try:
        assert post(server, ok()).status_code == 200  # one generation measured: Retry-After follows it
        with Gate(worker) as gate:
            first = threading.Thread(target=post, args=(server, ok()))
            first.start()
            assert gate.reached.wait(30)
            r = post(server, ok())
            assert r.status_code == 429, r.text
            assert r.json()["error"]["type"] == "rate_limit_error" and r.json()["error"]["code"] == "queue_full"
            assert 1 <= int(r.headers["Retry-After"]) <= 60
            with pytest.raises(openai.RateLimitError):
                openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
                    model=MODEL, messages=PROMPT, max_tokens=2)
        first.join(60)
        assert post(server, ok()).status_code == 200
    finally:
        server.stop()


@pytest.mark.slow
def test_health_tells_why_a_load_failed_only_to_a_caller_with_the_key(tmp_path):
    worker = InferenceWorker().start()
    missing = tmp_path / "private-models" / "nothing-here"
    servers = {key: ServerThread(create_app(worker, MODEL, api_key=key)).start() for key in (None, "sekret")}
    try:
        log = EventLog()
        log.wait(worker.load(str(missing), "fp32", sink=log))
        for server in servers.values():
            r = httpx.get(server.url + "/health")
            assert "private-models" not in r.text and r.json()["detail"] is None  # no server paths
            assert r.status_code == 503 and r.json()["status"] == "load_failed"  # status words only
        keyed = httpx.get(servers["sekret"].url + "/health", headers={"Authorization": "Bearer sekret"})
        assert keyed.json()["status"] == "load_failed" and "private-models" in keyed.json()["detail"]
        wrong = httpx.get(servers["sekret"].url + "/health", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 503 and "private-models" not in wrong.text
    finally:
        for server in servers.values():
            server.stop()
        worker.shutdown()


# ------------------------------------------------------------------ size: refused before tokenizing


@pytest.mark.slow
def test_a_conversation_too_long_in_characters_is_refused_before_tokenizing(served):
    worker, log, server = served
    context = worker.model_info.context_length
    limit = context * CHARS_PER_TOKEN_BOUND
    mark = len(log.events)
    body = ok(messages=[{"role": "user", "content": "word " * (limit // 5 + 1000)}])
    r = post(server, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert f"{limit:,} characters" in error["message"] and f"{context:,} tokens" in error["message"]
    assert log.events[mark:] == []  # the worker never tokenized it
    # ~30 MB (under the 32 MB body cap) is refused quickly: no tokenizing of megabytes
    big = ok(messages=[{"role": "system", "content": "x" * 10_000_000},
                       {"role": "user", "content": "y" * 20_000_000}])
    started = time.monotonic()
    r = post(server, big)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert time.monotonic() - started < 10  # was 5.4 s on a fast machine, tokenizing 30 MB; now parsing only
    assert log.events[mark:] == []


def test_deeply_nested_tool_schemas_count_the_indentation_they_are_written_with(served):
    # ChatGLM3 writes tools as indented JSON: 400 levels of {"a": ...} (~3 KB of body) become ~1.3 M
    # characters of prompt and ~1 M tokens; they are counted as written and refused before tokenizing
    worker, log, server = served
    schema = '{"a":' * 400 + "{}" + "}" * 400
    raw = ('{"model": "%s", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}], '
           '"tools": [{"type": "function", "function": {"name": "f", "parameters": %s}}]}' % (MODEL, schema))
    mark = len(log.events)
    r = post(server, None, raw.encode(), {"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    assert log.events[mark:] == []


@pytest.mark.slow
def test_keep_alive_requests_are_not_held_by_nagle(served):
    """Served from a socket glmtui binds itself (to report a taken port first), connections did not get
    TCP_NODELAY: Nagle + delayed ACK held every keep-alive response ~40 ms (1.3 ms before)."""
    import statistics

    url = served[2].url + "/v1/models"
    times = []
    with httpx.Client(timeout=10) as http:
        http.get(url)
        for _ in range(30):
            start = time.perf_counter()
            assert http.get(url).status_code == 200
            times.append(time.perf_counter() - start)
    assert statistics.median(times) < 0.02, f"median {statistics.median(times) * 1000:.1f} ms per request"
