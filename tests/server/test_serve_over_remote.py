"""`glmtui serve` over a RemoteEngine (serve --engine vllm, an --endpoint): a request the remote server
refuses (400) is refused to the client too, with the remote's words, not turned into a 500.

The remote here is glmtui's own API (the app `glmtui serve` runs) over the tiny ChatGLM3."""

from __future__ import annotations

import openai
import pytest

from engine_helpers import EventLog
from glmtui.engine.events import Loaded
from glmtui.engine.remote import RemoteEngine
from glmtui.server import ServerThread, create_app

MODEL = "tiny-chatglm3"  # the name both servers serve it under


@pytest.fixture(scope="module")
def outer(served):
    """The API over a RemoteEngine driving the `served` server (its model: the tiny ChatGLM3)."""
    log = EventLog()
    engine = RemoteEngine(served[2].url, listener=log).start()
    assert isinstance(log.wait(1), Loaded)
    server = ServerThread(create_app(engine, MODEL)).start()
    yield server, served[2]
    server.stop()
    engine.shutdown()


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _refusal(server, **ask) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as caught:
        _client(server).chat.completions.create(model=MODEL, temperature=0, max_tokens=5, **ask)
    return caught.value


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_over_the_remote_context_is_a_400_with_its_message(outer, stream):
    """Few characters per token pass this server's character bound; the remote's tokenizer refuses them."""
    server, remote = outer
    ask = dict(messages=[{"role": "user", "content": "word " * 5000}], stream=stream)
    direct = _refusal(remote, **ask)  # what the remote itself answers
    relayed = _refusal(server, **ask)
    assert relayed.status_code == 400
    assert relayed.body["code"] == "context_length_exceeded"
    assert relayed.body["message"] == direct.body["message"] and "context" in relayed.body["message"]


def test_the_server_goes_on_answering_after_a_relayed_refusal(outer):
    server, _ = outer
    _refusal(server, messages=[{"role": "user", "content": "word " * 5000}])
    done = _client(server).chat.completions.create(model=MODEL, temperature=0, max_tokens=3,
                                                   messages=[{"role": "user", "content": "hi"}])
    assert done.choices[0].finish_reason in ("stop", "length")
