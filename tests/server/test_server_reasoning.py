"""The API on the tiny GLM-Z1 (its prompt opens <think>): reasoning_content on the message and on streamed
deltas (vLLM/SGLang), chat_template_kwargs.enable_thinking=false turns it off, and RemoteEngine reads it
back into Token(reasoning=True) / Finished.reasoning. Through the official openai client."""

from __future__ import annotations

import openai
import pytest

from engine_helpers import EventLog, start_worker
from glmtui.engine.events import ChatMessage, Finished, GenerationParams, Loaded, Token
from glmtui.engine.remote import RemoteEngine
from glmtui.server import ServerThread, create_app

MODEL = "tiny-z1"
QUESTION = [{"role": "user", "content": "hello"}]
TOKENS = 12


@pytest.fixture(scope="module")
def z1_served(inside_dir):
    w, log = start_worker()
    assert isinstance(log.wait(w.load(str(inside_dir), "fp32")), Loaded)
    server = ServerThread(create_app(w, MODEL)).start()
    yield w, log, server
    server.stop()
    w.shutdown()


@pytest.fixture
def client(z1_served):
    return openai.OpenAI(base_url=z1_served[2].url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _direct(z1_served, thinking=None) -> Finished:
    """The same request through the worker itself: what the API must return."""
    w, log, _ = z1_served
    done = log.wait(w.generate([ChatMessage("user", "hello")], GenerationParams(TOKENS, 0.0, thinking=thinking)))
    assert isinstance(done, Finished)
    return done


@pytest.mark.slow
def test_message_carries_reasoning_content_apart_from_the_content(z1_served, client):
    expected = _direct(z1_served)
    assert expected.reasoning  # the prompt opened <think>: the tiny model's text is reasoning
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=TOKENS, temperature=0)
    message = reply.choices[0].message
    assert message.reasoning_content == expected.reasoning
    assert (message.content or "") == expected.text


def test_streamed_deltas_carry_reasoning_content(z1_served, client):
    expected = _direct(z1_served)
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=TOKENS, temperature=0,
                                            stream=True)
    reasoning, content = [], []
    for chunk in stream:
        for choice in chunk.choices:
            reasoning.append(getattr(choice.delta, "reasoning_content", None) or "")
            content.append(choice.delta.content or "")
    assert "".join(reasoning) == expected.reasoning and "".join(content) == expected.text
    first = next(i for i, r in enumerate(reasoning) if r)
    assert all(not c for c in content[: first + 1])  # the reasoning comes before any answer


def test_enable_thinking_false_turns_the_reasoning_off(z1_served, client):
    expected = _direct(z1_served, thinking=False)
    assert not expected.reasoning and expected.text
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=TOKENS, temperature=0,
                                           extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    message = reply.choices[0].message
    assert message.content == expected.text
    assert getattr(message, "reasoning_content", None) is None
    raw = reply.model_dump()["choices"][0]["message"]
    assert "reasoning_content" not in raw or raw["reasoning_content"] is None


def test_earlier_reasoning_sent_back_by_a_client_is_not_prompted(z1_served, client):
    """A client that sends reasoning_content (or the <think> text in content) back: the template keeps
    only the answer, so the prompt is that of the answer alone."""
    history = QUESTION + [{"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "again"}]
    with_thoughts = QUESTION + [
        {"role": "assistant", "content": "<think>a long secret plan</think>Hi!",
         "reasoning_content": "a long secret plan"},
        {"role": "user", "content": "again"}]
    plain = client.chat.completions.create(model=MODEL, messages=history, max_tokens=2, temperature=0)
    sent = client.chat.completions.create(model=MODEL, messages=with_thoughts, max_tokens=2, temperature=0)
    assert sent.usage.prompt_tokens == plain.usage.prompt_tokens


def test_remote_engine_reads_reasoning_content_into_reasoning_events(z1_served):
    expected = _direct(z1_served)
    log = EventLog()
    engine = RemoteEngine(z1_served[2].url, listener=log).start()
    try:
        assert isinstance(log.wait(engine.load(MODEL)), Loaded)
        done = log.wait(engine.generate([ChatMessage("user", "hello")], GenerationParams(TOKENS, 0.0)))
        assert isinstance(done, Finished)
        assert (done.reasoning, done.text) == (expected.reasoning, expected.text)
        tokens = log.of(done.request_id, Token)
        assert "".join(t.text for t in tokens if t.reasoning) == expected.reasoning
        off = log.wait(engine.generate([ChatMessage("user", "hello")], GenerationParams(TOKENS, 0.0, thinking=False)))
        assert (off.reasoning, off.text) == ("", _direct(z1_served, thinking=False).text)
    finally:
        engine.shutdown()

