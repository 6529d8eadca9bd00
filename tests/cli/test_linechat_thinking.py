"""`glmtui chat --think/--no-think`: the thinking switch of a reasoning model's template, from line mode."""

from __future__ import annotations

import subprocess

import pytest

from engine_helpers import start_worker
from glmtui.engine.events import ChatMessage, Finished, GenerationParams, Loaded
from glmtui.engine.template_files import chat_template_text, has_thinking_switch
from terminals import CHAT, answer_line

QUESTION = "What is 2 + 2?"


def _greedy(folder, *thinking):
    """The greedy replies to QUESTION with each thinking setting, from one load of ``folder``."""
    worker, log = start_worker()
    try:
        assert isinstance(log.wait(worker.load(str(folder), "fp32")), Loaded)
        replies = []
        for switch in thinking:
            done = log.wait(worker.generate([ChatMessage("user", QUESTION)],
                                            GenerationParams(max_new_tokens=16, temperature=0.0, thinking=switch)))
            assert isinstance(done, Finished)
            replies.append(done)
        return replies
    finally:
        worker.shutdown()


def test_which_folders_have_the_switch(thinking_dir, inside_dir, chatglm3_dir, native_glm):
    # the template in chat_template.jinja (thinking_dir) or in tokenizer_config.json (inside_dir)
    assert (thinking_dir / "chat_template.jinja").is_file() and not (inside_dir / "chat_template.jinja").exists()
    assert has_thinking_switch(thinking_dir) and has_thinking_switch(inside_dir)
    assert chat_template_text(native_glm) and not has_thinking_switch(native_glm)
    assert not has_thinking_switch(chatglm3_dir)  # ChatGLM3: no template at all


@pytest.mark.slow
def test_no_think_answers_at_once(inside_dir):
    """The tiny GLM-Z1's prompt opens <think>: by default its whole greedy reply is reasoning; --no-think
    closes the block in the prompt, so the pipe prints the answer the engine writes with thinking off."""
    on, off = _greedy(inside_dir, None, False)
    assert on.reasoning and off.reasoning == "" and off.text.strip()
    run = subprocess.run(CHAT + ["--model", str(inside_dir), "--mode", "fp32", "--temperature", "0",
                                 "--max-new-tokens", "16", "--no-think"],
                         input=QUESTION.encode(), capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout.decode() == answer_line(off.text)
    assert b"no effect" not in run.stderr


@pytest.mark.slow
def test_think_on_a_model_without_the_switch_says_so(chatglm3_dir):
    run = subprocess.run(CHAT + ["--model", str(chatglm3_dir), "--temperature", "0", "--max-new-tokens", "4",
                                 "--think"], input=b"hi", capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr.decode()
    assert "--think has no effect: this model's chat template has no thinking switch" in run.stderr.decode()
