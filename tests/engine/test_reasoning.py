"""Reasoning models: the <think> block split from the answer (engine/reasoning.py) on the tiny GLM-Z1
shaped model's real tokenizer and template, through the reply stream, the worker and the outbox."""

from __future__ import annotations

from multiprocessing import Pipe

import pytest

import tiny_models
from engine_helpers import start_worker
from glmtui.engine.child import Outbox
from glmtui.engine.events import ChatMessage, Finished, GenerationParams, Loaded, Started, Token
from glmtui.engine.generation import finished_event, make_reply_stream
from glmtui.engine.prompts import ChatTemplateFormat
from glmtui.engine.reasoning import ReasoningSplitter, hidden_tags, opens_inside, template_kwargs

INSIDE_TEMPLATE = tiny_models.INSIDE_THINKING_CHAT_TEMPLATE

SCRIPT = "<think>\nFirst, 2 + 2. 你好 means hello.\n</think>\n\nThe answer is 4."


def _format(folder, template=None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if template is not None:
        tokenizer.chat_template = template
    return ChatTemplateFormat(tokenizer)


def _split_all(pieces, inside=False):
    splitter = ReasoningSplitter(inside=inside)
    out = []
    for piece in pieces:
        out += splitter.feed(piece)
    out += splitter.flush()
    reasoning = "".join(t for r, t in out if r)
    answer = "".join(t for r, t in out if not r)
    return reasoning, answer


# ---------------------------------------------------------------- the splitter on text


def test_tags_split_at_every_point_give_the_same_reasoning_and_answer():
    whole = _split_all([SCRIPT])
    assert whole == ("First, 2 + 2. 你好 means hello.", "The answer is 4.")
    for cut in range(1, len(SCRIPT)):
        assert _split_all([SCRIPT[:cut], SCRIPT[cut:]]) == whole, cut
    assert _split_all(list(SCRIPT)) == whole  # one character at a time


def test_a_reply_that_starts_inside_or_never_closes_or_has_no_block():
    assert _split_all(["Thinking here.\n</think>\nDone."], inside=True) == ("Thinking here.", "Done.")
    assert _split_all(["<think>still thinking when cut off </th"]) == ("still thinking when cut off </th", "")
    assert _split_all(list("Plain answer with <think> later.")) == ("", "Plain answer with <think> later.")
    assert _split_all(["  <thi"]) == ("", "  <thi")  # a reply that ends on what might have been a tag
    assert _split_all(["<think></think>\n", "Answer"]) == ("", "Answer")  # an empty block
    assert _split_all(list("</think>\nAnswer")) == ("", "Answer")  # a close without an open: an empty block


# ---------------------------------------------------------------- the real tokenizer and template


def _stream_script(chat_format, text, params=GenerationParams(), by=1):
    """``text`` tokenized by the model's tokenizer, pushed ``by`` ids at a time through the reply stream."""
    events = []
    stream = make_reply_stream(chat_format, params, events.append, 1)
    ids = chat_format.tokenizer.encode(text, add_special_tokens=False)
    for at in range(0, len(ids), by):
        stream.push(ids[at:at + by])
    stream.end()
    return events, finished_event(1, stream, 5, 100, 0.0, False)


@pytest.mark.parametrize("by", [1, 3])
def test_reply_stream_splits_a_scripted_reply_decoded_by_the_real_detokenizer(thinking_dir, by):
    chat_format = _format(thinking_dir)
    # the tiny tokenizer has <think> and </think> as special tokens: decoding drops them
    assert sorted(hidden_tags(chat_format).values()) == ["</think>", "<think>"]
    events, done = _stream_script(chat_format, SCRIPT, by=by)
    assert done.reasoning == "First, 2 + 2. 你好 means hello."
    assert done.text == "The answer is 4."
    assert "".join(e.text for e in events if e.reasoning) == done.reasoning
    assert "".join(e.text for e in events if not e.reasoning) == done.text
    flags = [e.reasoning for e in events]
    assert flags == sorted(flags, reverse=True)  # all reasoning first, then the answer


def test_tag_tokens_after_the_block_stay_dropped_as_decoding_drops_them(thinking_dir):
    _events, done = _stream_script(_format(thinking_dir), "<think>plan</think>An</think>swer<think>.")
    assert (done.reasoning, done.text) == ("plan", "Answer.")


def test_tags_written_as_several_ordinary_tokens_are_split_too(native_glm):
    """A tokenizer without <think> tokens (the tags are BPE pieces across several tokens)."""
    chat_format = _format(native_glm, tiny_models.THINKING_CHAT_TEMPLATE)
    assert hidden_tags(chat_format) == {}
    assert len(chat_format.tokenizer.encode("</think>", add_special_tokens=False)) > 1
    _events, done = _stream_script(chat_format, SCRIPT)
    assert (done.reasoning, done.text) == ("First, 2 + 2. 你好 means hello.", "The answer is 4.")


def test_a_format_without_a_think_template_passes_tags_through(native_glm):
    chat_format = _format(native_glm)
    events, done = _stream_script(chat_format, SCRIPT)
    assert done.reasoning == "" and done.text == SCRIPT
    assert not any(e.reasoning for e in events)


def test_where_the_block_opens_and_the_switch(thinking_dir):
    model_opens = _format(thinking_dir)
    prompt_opens = _format(thinking_dir, INSIDE_TEMPLATE)
    assert not opens_inside(model_opens, None) and not opens_inside(model_opens, False)
    assert opens_inside(prompt_opens, None) and opens_inside(prompt_opens, True)
    assert not opens_inside(prompt_opens, False)
    assert template_kwargs(model_opens, False) == {"enable_thinking": False}
    assert template_kwargs(model_opens, None) == {}
    # a reply of a prompt that opened the block: reasoning up to </think>
    _events, done = _stream_script(prompt_opens, "Hmm, let me see.</think>Four.")
    assert (done.reasoning, done.text) == ("Hmm, let me see.", "Four.")
    _events, done = _stream_script(prompt_opens, "Four.", GenerationParams(thinking=False))
    assert (done.reasoning, done.text) == ("", "Four.")


def test_the_template_drops_earlier_reasoning_from_the_history(thinking_dir):
    """GLM-Z1 / GLM-4.5 templates keep only what follows </think> of an assistant turn: glmtui sends
    the answer alone anyway (Finished.text), and a client's full text is stripped by the template."""
    chat_format = _format(thinking_dir)
    turns = [ChatMessage("user", "hi"), ChatMessage("assistant", "<think>secret plan</think>\nhello there"),
             ChatMessage("user", "again")]
    prompt = chat_format.tokenizer.decode(chat_format.encode_conversation(turns))
    assert "secret" not in prompt and "hello there" in prompt
    off_ids = chat_format.encode_conversation(turns, template_kwargs={"enable_thinking": False})
    off = chat_format.tokenizer.decode(off_ids)
    assert off.endswith("<think></think>\n") and not prompt.endswith("</think>\n")


# ---------------------------------------------------------------- the worker and the engine process's outbox


def _generate(worker, log, messages, params):
    rid = worker.generate(messages, params)
    done = log.wait(rid)
    assert isinstance(done, Finished), done
    return done, log.of(rid, Token), log.of(rid, Started)[0]


@pytest.mark.slow
def test_worker_streams_reasoning_apart_and_honours_the_switch(inside_dir):
    w, log = start_worker()
    try:
        loaded = log.wait(w.load(str(inside_dir), "fp32"))
        assert isinstance(loaded, Loaded), loaded
        messages = [ChatMessage("user", "What is 2 + 2?")]
        params = GenerationParams(max_new_tokens=16, temperature=0.0)
        done, tokens, _ = _generate(w, log, messages, params)
        # the prompt opened <think>: the random model's text is reasoning until it writes </think>
        assert tokens and tokens[0].reasoning and done.reasoning
        assert "".join(t.text for t in tokens if t.reasoning) == done.reasoning
        assert "".join(t.text for t in tokens if not t.reasoning) == done.text
        off, off_tokens, _ = _generate(w, log, messages, GenerationParams(max_new_tokens=16, temperature=0.0,
                                                                             thinking=False))
        assert off.reasoning == "" and off.text and not any(t.reasoning for t in off_tokens)
        assert "".join(t.text for t in off_tokens) == off.text
    finally:
        w.shutdown()


@pytest.mark.slow
def test_worker_switch_reaches_a_template_where_the_model_opens_the_block(thinking_dir):
    w, log = start_worker()
    try:
        assert isinstance(log.wait(w.load(str(thinking_dir), "fp32")), Loaded)
        messages = [ChatMessage("user", "What is 2 + 2?")]
        on, _, started_on = _generate(w, log, messages, GenerationParams(max_new_tokens=4, temperature=0.0))
        off, _, started_off = _generate(w, log, messages, GenerationParams(max_new_tokens=4, temperature=0.0,
                                                                          thinking=False))
        # enable_thinking=False adds "<think></think>\n" to this template's generation prompt
        assert started_off.prompt_tokens >= started_on.prompt_tokens + 2
        assert off.reasoning == ""
    finally:
        w.shutdown()


def test_outbox_never_merges_reasoning_and_answer_tokens():
    ours, theirs = Pipe()
    box = Outbox(theirs, interval=60.0, max_tokens=100)
    for event in (Token(1, "a", reasoning=True), Token(1, "b", reasoning=True), Token(1, "c"), Token(1, "d")):
        box.put(event)
    box.put(Finished(1, "cd", 1, 4, None, None, 0.0, "stop", reasoning="ab"))
    received = [ours.recv() for _ in range(4)]  # the request's first token goes at once
    assert received[:2] == [Token(1, "a", reasoning=True), Token(1, "b", reasoning=True)]
    assert received[2] == Token(1, "cd")
    assert received[3].reasoning == "ab"


@pytest.mark.slow
def test_replies_running_together_split_their_reasoning_each(inside_dir):
    """Several requests at once (the batch path when the model allows it, else one after another)."""
    w, log = start_worker()
    try:
        assert isinstance(log.wait(w.load(str(inside_dir), "fp32")), Loaded)
        params = GenerationParams(max_new_tokens=12, temperature=0.0)
        rids = [w.generate([ChatMessage("user", q)], params) for q in ("hello", "What is 2 + 2?", "hi there")]
        for rid in rids:
            done = log.wait(rid)
            assert isinstance(done, Finished), done
            tokens = log.of(rid, Token)
            assert done.reasoning and "".join(t.text for t in tokens if t.reasoning) == done.reasoning
            assert "".join(t.text for t in tokens if not t.reasoning) == done.text
    finally:
        w.shutdown()
