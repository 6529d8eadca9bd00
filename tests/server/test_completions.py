"""POST /v1/completions (OpenAI's legacy text completions) on real tiny models, through the official
openai client: the prompt is continued as it is, built as the model's own tokenizer builds raw text."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from engine_helpers import EventLog
from glmtui.engine.events import Finished, GenerationParams, Loaded
from glmtui.engine.remote import RemoteEngine
from glmtui.engine.worker import InferenceWorker
from glmtui.server import ServerThread, create_app

MODEL = "tiny-chatglm3"
TEXT = "The quick brown fox"


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served[2].url + "/v1", api_key="unused", max_retries=0, timeout=60)


def direct_continuation(loaded, prompt_ids: list[int], eos: int, max_new: int) -> str:
    """Greedy continuation straight from transformers, from ids built here (not by glmtui's format)."""
    import torch

    with torch.inference_mode():
        out = loaded.model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids),
                                    dtype=torch.long), max_new_tokens=max_new, do_sample=False, eos_token_id=[eos],
                                    pad_token_id=eos, temperature=None, top_p=None, top_k=None)
    new = out[0, len(prompt_ids):].tolist()
    if eos in new:
        new = new[:new.index(eos)]
    return loaded.chat_format.decode(new)


def test_a_chatglm3_prompt_is_gmask_sop_and_the_text_with_no_role_tokens(served, client):
    import sentencepiece

    worker = served[0]
    sp = sentencepiece.SentencePieceProcessor(model_file=str(served[0]._loaded.path / "tokenizer.model"))
    pieces = sp.get_piece_size()  # the special ids follow the pieces: [MASK] [gMASK] [sMASK] sop ...
    prompt_ids = [pieces + 1, pieces + 3] + sp.encode(TEXT)
    expected = direct_continuation(worker._loaded, prompt_ids, sp.eos_id(), 24)
    reply = client.completions.create(model=MODEL, prompt=TEXT, max_tokens=24, temperature=0)
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
    assert reply.choices[0].text == expected and reply.choices[0].index == 0
    assert reply.usage.prompt_tokens == len(prompt_ids)
    assert reply.choices[0].finish_reason == ("length" if reply.usage.completion_tokens == 24 else "stop")


def test_streaming_adds_up_to_the_plain_completion_and_ends_with_usage(served, client):
    plain = client.completions.create(model=MODEL, prompt=TEXT, max_tokens=24, temperature=0)
    chunks = list(client.completions.create(model=MODEL, prompt=TEXT, max_tokens=24, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert all(c.object == "text_completion" for c in chunks)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == plain.choices[0].text
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == plain.choices[0].finish_reason and set(reasons[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    # without include_usage every chunk has a choice (as OpenAI streams)
    bare = list(client.completions.create(model=MODEL, prompt=TEXT, max_tokens=5, temperature=0, stream=True))
    assert all(c.choices for c in bare)


def test_a_list_of_prompts_is_one_choice_each_and_echo_writes_the_prompt_first(served, client):
    prompts = [TEXT, "Once upon a time"]
    alone = [client.completions.create(model=MODEL, prompt=p, max_tokens=12, temperature=0) for p in prompts]
    both = client.completions.create(model=MODEL, prompt=prompts, max_tokens=12, temperature=0, echo=True)
    assert [c.index for c in both.choices] == [0, 1]
    for prompt, single, choice in zip(prompts, alone, both.choices, strict=True):
        assert choice.text == prompt + single.choices[0].text
        assert choice.finish_reason == single.choices[0].finish_reason
    assert both.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)
    assert both.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)
    streamed = list(client.completions.create(model=MODEL, prompt=prompts, max_tokens=12, temperature=0,
                                              echo=True, stream=True))
    for index, choice in enumerate(both.choices):
        assert "".join(c.choices[0].text for c in streamed if c.choices[0].index == index) == choice.text


def test_stop_cuts_the_completion_before_the_stop_text(served, client):
    plain = client.completions.create(model=MODEL, prompt=TEXT, max_tokens=40, temperature=0).choices[0].text
    stop = plain.strip()[len(plain.strip()) // 2:][:3]
    assert stop, plain
    cut = client.completions.create(model=MODEL, prompt=TEXT, max_tokens=40, temperature=0, stop=[stop])
    assert cut.choices[0].text == plain[:plain.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_temperature_top_p_and_seed_reach_the_sampler(served, client):
    def text(**sampling) -> str:
        return client.completions.create(model=MODEL, prompt=TEXT, max_tokens=16, **sampling).choices[0].text

    greedy = text(temperature=0)
    hot = [text(temperature=2.0, top_p=1.0, seed=seed) for seed in (1, 2, 3)]
    assert text(temperature=2.0, top_p=1.0, seed=1) == hot[0]  # the seed makes sampling repeatable
    assert any(h != greedy for h in hot)  # a high temperature leaves the greedy path
    # top_p this small keeps only the likeliest token at each step: the greedy text, whatever the temperature
    assert text(temperature=2.0, top_p=1e-6, seed=1) == greedy


@pytest.mark.parametrize("extra, field", [
    ({"logprobs": 1}, "logprobs"),
    ({"best_of": 2}, "best_of"),
    ({"suffix": "the end"}, "suffix"),
    ({"n": 2}, "n"),
    ({"extra_body": {"ignore_eos": True}}, "ignore_eos"),
    ({"prompt": [1, 2, 3]}, "prompt"),
])
def test_what_is_not_supported_is_a_clear_400(served, client, extra, field):
    mark = len(served[1].events)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(**{"model": MODEL, "prompt": TEXT, "max_tokens": 4, **extra})
    error = caught.value.body
    assert error["type"] == "invalid_request_error" and error["message"].startswith(field)
    assert error["param"].startswith(field)
    assert served[1].events[mark:] == []  # refused before the engine


def test_bad_prompts_are_400s_and_unknown_models_404(served):
    url = served[2].url + "/v1/completions"
    r = httpx.post(url, content=json.dumps({"model": MODEL, "prompt": ["ok", "a\ud800"]}),
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt.1"
    assert r.json()["error"]["code"] == "invalid_text"
    r = httpx.post(url, json={"model": MODEL, "prompt": "x" * (2048 * 64 + 1)}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = httpx.post(url, json={"model": MODEL, "prompt": TEXT, "max_tokens": 5000}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = httpx.post(url, json={"model": "nope", "prompt": TEXT}, timeout=60)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_a_remote_engine_completes_through_the_servers_completions(served, client):
    plain = client.completions.create(model=MODEL, prompt=TEXT, max_tokens=16, temperature=0)
    log = EventLog()
    remote = RemoteEngine(served[2].url, api_key="", autoconnect=False).start()
    try:
        assert isinstance(log.wait(remote.load("", sink=log)), Loaded)
        assert remote.model_info.chat_format == "remote"
        done = log.wait(remote.generate([], GenerationParams(max_new_tokens=16, temperature=0.0), sink=log,
                                        prompt_text=TEXT))
    finally:
        remote.shutdown()
    assert isinstance(done, Finished), done
    assert done.text == plain.choices[0].text
    assert (done.prompt_tokens, done.completion_tokens) == (plain.usage.prompt_tokens, plain.usage.completion_tokens)


@pytest.mark.slow
def test_a_chat_template_model_continues_its_tokenizers_own_encoding(native_glm):
    from transformers import AutoTokenizer

    log = EventLog()
    worker = InferenceWorker(log).start()
    try:
        assert isinstance(log.wait(worker.load(str(native_glm), "fp32")), Loaded)
        assert worker.model_info.chat_format == "chat_template"
        tokenizer = AutoTokenizer.from_pretrained(str(native_glm))
        prompt_ids = tokenizer(TEXT)["input_ids"]  # with the tokenizer's own special prefix, if any
        if prompt_ids and prompt_ids[-1] == tokenizer.eos_token_id:
            prompt_ids = prompt_ids[:-1]
        expected = direct_continuation(worker._loaded, prompt_ids, tokenizer.eos_token_id, 16)
        server = ServerThread(create_app(worker, "tiny-glm")).start()
        try:
            reply = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0).completions.create(
                model="tiny-glm", prompt=TEXT, max_tokens=16, temperature=0)
        finally:
            server.stop()
        assert reply.choices[0].text == expected
        assert reply.usage.prompt_tokens == len(prompt_ids)
    finally:
        worker.shutdown()
