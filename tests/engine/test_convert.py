"""ChatGLM3 -> native folder (glmtui.engine.convert): plain transformers serves it like glmtui's own load."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from glmtui.engine.convert import COMPLETE_MARKER, SPECIAL_NAMES, convert
from glmtui.engine.events import ChatMessage
from glmtui.engine.prompts import ChatGLM3Format

CORPUS = [
    "Hello, how are you today?",
    "你好，我是人工智能助手。今天天气很好，我们去公园散步吧。",
    "清华大学和智谱AI发布了ChatGLM3-6B模型，支持工具调用和代码解释器。",
    "量化可以减少显存占用：int8 大约 8 GB，int4 大约 5.5 GB。",
    "1234567890 3.14159 -42 1e-5 0xFF 2026-11-29",
    "def main():\n    print('hello world')\n\treturn 0\n",
    "  two leading spaces, three trailing   ",
    " one leading space",
    "\n\nnewlines first\n\n",
    "\r\nwindows line\r\n",
    "emoji 😀🚀👍🏽 and rare ©®™∑∫√½① 𝔘𝔫𝔦",
    "mixed 中文English混合123数字 and ümlauts, café, naïve",
    "Aesop told people about the sop and the eop.",
    "a literal <|user|> and <|assistant|> and [gMASK]sop in text",
    "      ",
    "x",
    "====----....!!!!????",
    "| a | b |\n|---|---|\n| 1 | 2 |",
]


@pytest.fixture(scope="module")
def converted(chatglm3_dir, tmp_path_factory) -> Path:
    return convert(chatglm3_dir, tmp_path_factory.mktemp("convert") / "tiny-chatglm3-native")


@pytest.fixture(scope="module")
def chat_format(chatglm3_dir) -> ChatGLM3Format:
    return ChatGLM3Format(chatglm3_dir / "tokenizer.model")


@pytest.fixture(scope="module")
def tokenizer(converted):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(converted), trust_remote_code=False)


def _dicts(messages):
    return [{"role": m.role, "content": m.content, "metadata": m.metadata} for m in messages]


def test_folder_is_native_and_marked_complete(converted, chat_format):
    config = json.loads((converted / "config.json").read_text())
    assert config["architectures"] == ["GlmForCausalLM"] and config["model_type"] == "glm"
    assert "auto_map" not in config and config["dtype"] == "float32"  # the tiny checkpoint's own dtype
    generation = json.loads((converted / "generation_config.json").read_text())
    assert generation["eos_token_id"] == chat_format.stop_token_ids
    settings = json.loads((converted / "tokenizer_config.json").read_text())
    assert settings["chat_template"].startswith("[gMASK]<sop>") and "auto_map" not in settings
    assert (converted / COMPLETE_MARKER).exists() and (converted / "model.safetensors").exists()
    assert not converted.with_name(converted.name + ".tmp").exists()


@pytest.mark.slow
def test_plain_transformers_generates_like_glmtui(converted, chatglm3_dir, tokenizer, chat_format):
    from transformers import AutoModelForCausalLM

    from glmtui.engine.loading import load_model

    native = AutoModelForCausalLM.from_pretrained(str(converted), trust_remote_code=False, dtype=torch.float32)
    own = load_model(chatglm3_dir, "fp32", "cpu")
    conversation = [ChatMessage("system", "You are a helpful assistant."), ChatMessage("user", "你好, how are you?")]
    prompt = chat_format.encode_conversation(conversation)
    ids = tokenizer.apply_chat_template(_dicts(conversation), add_generation_prompt=True, tokenize=True,
                                        return_dict=False)
    assert list(ids) == prompt
    settings = dict(max_new_tokens=24, do_sample=False, eos_token_id=chat_format.stop_token_ids, pad_token_id=0)
    with torch.no_grad():
        theirs = native.generate(torch.tensor([ids]), **settings)[0, len(prompt):].tolist()
        ours = own.model.generate(torch.tensor([prompt]), **settings)[0, len(prompt):].tolist()
        assert torch.allclose(native(torch.tensor([prompt])).logits, own.model(torch.tensor([prompt])).logits)
    assert theirs == ours and len(ours) > 1


def test_tokenizer_encodes_like_sentencepiece(tokenizer, chat_format):
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_NAMES] == list(
        range(chat_format.piece_count, chat_format.piece_count + 9))
    assert tokenizer.convert_tokens_to_ids("<|user|>") == chat_format.special_ids["<|user|>"]
    for text in CORPUS:
        got = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert got == chat_format.encode_text(text), text
        assert tokenizer.decode(got) == chat_format.decode(got), text
    for text in CORPUS[:-6]:  # ChatGLM3's tokenizer(text): [gMASK] sop + the text (a Base model's prompt)
        assert tokenizer(text)["input_ids"] == chat_format.encode_completion(text), text


def test_literal_special_text_is_a_special_token_without_split(tokenizer, chat_format):
    """The difference inherent to a tokenizer.json: literal special names in text become the special ids."""
    ids = tokenizer("say <|user|> now", add_special_tokens=False)["input_ids"]
    assert chat_format.special_ids["<|user|>"] in ids
    assert ids != chat_format.encode_text("say <|user|> now")


CONVERSATIONS = [
    [ChatMessage("user", "hello, Aesop's people")],  # "sop"/"eop" inside words stay text
    [ChatMessage("system", "You are ChatGLM3."), ChatMessage("user", "你好")],
    [ChatMessage("user", "first"), ChatMessage("assistant", "reply one"), ChatMessage("user", "  second, spaced  ")],
    [ChatMessage("system", "sys"), ChatMessage("user", "weather in Beijing?"),
     ChatMessage("assistant", "```python\ntool_call(city='Beijing')\n```", metadata="get_weather"),
     ChatMessage("observation", '{"temperature": 21}')],
    [ChatMessage("user", ""), ChatMessage("assistant", "\n"), ChatMessage("user", "😀 x\n\ny")],
    [ChatMessage("system", "Answer briefly"), ChatMessage("user", "run it"),
     ChatMessage("assistant", "```python\nprint(1)\n```", metadata="interpreter"),
     ChatMessage("observation", "1")],
]
TOOLS = [{"name": "get_weather", "description": "天气 of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_chat_template_reproduces_chatglm3_prompts(tokenizer, chat_format, index):
    conversation = CONVERSATIONS[index]
    ids = tokenizer.apply_chat_template(_dicts(conversation), add_generation_prompt=True, tokenize=True,
                                        return_dict=False)
    assert list(ids) == chat_format.encode_conversation(conversation)
    with_tools = tokenizer.apply_chat_template(_dicts(conversation), tools=TOOLS, add_generation_prompt=True,
                                               tokenize=True, return_dict=False)
    assert list(with_tools) == chat_format.encode_conversation(conversation, tools=TOOLS)


def _run_convert(src: Path, dst: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "glmtui.engine.convert", str(src), str(dst)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_bad_source_fails_in_one_line_and_leaves_nothing(chatglm3_dir, tmp_path):
    source = tmp_path / "broken"
    shutil.copytree(chatglm3_dir, source)
    shard = sorted(source.glob("pytorch_model-*.bin"))[-1]
    shard.write_bytes(shard.read_bytes()[:200])  # truncated: found while the weights are written
    dst = tmp_path / "out"
    out, err = _run_convert(source, dst).communicate(timeout=300)
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("conversion failed:") and "Traceback" not in err
    assert not dst.exists() and not (tmp_path / "out.tmp").exists()
    out, err = _run_convert(tmp_path / "missing", dst).communicate(timeout=300)
    assert err.strip().startswith("conversion failed:") and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_killed_conversion_leaves_no_complete_folder_and_is_redone(chatglm3_dir, tmp_path):
    dst = tmp_path / "out"
    tmp = tmp_path / "out.tmp"
    process = _run_convert(chatglm3_dir, dst)
    deadline = time.monotonic() + 300
    while not tmp.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the conversion ended before it could be interrupted"
    assert tmp.exists() and not dst.exists()  # half written, and not where a finished folder goes
    done = _run_convert(chatglm3_dir, dst)
    done.communicate(timeout=300)
    assert done.returncode == 0 and (dst / COMPLETE_MARKER).exists() and not tmp.exists()


@pytest.mark.slow
def test_vllm_prepare_hook_converts_once(chatglm3_dir, tmp_path):
    from glmtui.engine.vllm import plan_vllm

    plan = plan_vllm(str(chatglm3_dir), "bf16", "cpu", python=sys.executable, cache_dir=tmp_path)
    model_dir = Path(plan.argv[list(plan.argv).index("--model") + 1])
    stages: list[str] = []
    plan.prepare(stages.append)
    assert stages and (model_dir / COMPLETE_MARKER).exists() and (model_dir / "tokenizer.json").exists()
    written = (model_dir / "model.safetensors").stat().st_mtime_ns
    again: list[str] = []
    plan.prepare(again.append)
    assert again == [] and (model_dir / "model.safetensors").stat().st_mtime_ns == written
