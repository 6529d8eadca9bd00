"""The API over engines other than the in-process worker: an EngineProcess (what the TUI's --api
serves from). The server reads only the Engine interface and ModelInfo, never a worker's fields."""

from __future__ import annotations

import openai
import pytest

from engine_helpers import EventLog
from glmtui.engine.events import Loaded
from glmtui.engine.process import EngineProcess
from glmtui.server import ServerThread, create_app

MODEL = "tiny-chatglm3"
PROMPT = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "count to ten"}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}}


@pytest.fixture(scope="module")
def process_served(chatglm3_dir, tmp_path_factory):
    log = EventLog()
    engine = EngineProcess(log, keep_spare=False, log_dir=tmp_path_factory.mktemp("engine-logs")).start()
    assert isinstance(log.wait(engine.load(str(chatglm3_dir), "auto"), timeout=180), Loaded)
    server = ServerThread(create_app(engine, MODEL)).start()
    yield engine, server
    server.stop()
    engine.shutdown()


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.mark.slow
def test_the_api_over_an_engine_process_answers_plain_and_streamed(process_served, served):
    engine, server = process_served
    assert engine.model_info.chat_format == "chatglm3" and engine.model_info.mode == "fp32"  # "auto" on the CPU
    client, reference = _client(server), _client(served[2])  # served: the same model on an in-process worker
    ask = dict(model=MODEL, messages=PROMPT, temperature=0, max_tokens=20)
    plain = client.chat.completions.create(**ask)
    expected = reference.chat.completions.create(**ask)
    assert plain.choices[0].message.content == expected.choices[0].message.content
    assert plain.usage == expected.usage

    chunks = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


@pytest.mark.slow  # the module's engine process imports torch and loads a model
def test_tools_reach_an_engine_process_in_the_chatglm3_shape(process_served, served):
    """The tool list and its system prompt follow ModelInfo.chat_format: the same prompt as on the worker."""
    _, server = process_served
    ask = dict(model=MODEL, messages=[{"role": "user", "content": "weather in Paris?"}], tools=[WEATHER],
               temperature=0, max_tokens=1)
    over_process = _client(server).chat.completions.create(**ask).usage.prompt_tokens
    assert over_process == _client(served[2]).chat.completions.create(**ask).usage.prompt_tokens
