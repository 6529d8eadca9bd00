"""What a streamed reply costs the engine process's pipe: a request's first token at once, then runs of
tokens (few messages per reply), texts that add up to the reply, and a cancel that the coalescing never holds up."""

from __future__ import annotations

import math
import time
from multiprocessing import Pipe

import pytest

from engine_helpers import EventLog
from glmtui.engine.child import FLUSH_TOKENS, Outbox
from glmtui.engine.events import ChatMessage, Finished, GenerationParams, Loaded, Token
from glmtui.engine.process import EngineProcess

HELLO = [ChatMessage("user", "你好")]


def test_a_requests_first_token_goes_at_once_and_the_rest_in_runs():
    ours, theirs = Pipe()
    box = Outbox(theirs, interval=60.0)  # only the run length flushes the rest
    box.put(Token(1, "t0 "))
    assert ours.poll(5.0), "the first token waited for the coalescing interval (time to first token)"
    assert ours.recv() == Token(1, "t0 ")
    for i in range(1, 200):
        box.put(Token(1, f"t{i} "))
    text = "".join(f"t{i} " for i in range(200))
    box.put(Finished(1, text, 3, 200, None, None, 0.0, "length"))
    received = []
    while not received or not isinstance(received[-1], Finished):
        assert ours.poll(5.0)
        received.append(ours.recv())
    tokens = [m for m in received if isinstance(m, Token)]
    assert len(tokens) == math.ceil(199 / FLUSH_TOKENS)  # 200 tokens: 1 + 4 messages
    assert "t0 " + "".join(t.text for t in tokens) == text
    box.put(Token(2, "next"))  # the next request's first token goes at once too
    assert ours.poll(5.0) and ours.recv() == Token(2, "next")


@pytest.mark.slow
def test_a_200_token_reply_is_a_few_messages_and_cancel_is_not_held_up(chatty_chatglm3, tmp_path):
    log = EventLog()
    # a long interval: only the first token and the run length send tokens, so the count is exact
    eng = EngineProcess(log, log_dir=tmp_path, flush_interval=30.0, keep_spare=False).start()
    try:
        assert isinstance(log.wait(eng.load(str(chatty_chatglm3), "fp32"), timeout=180), Loaded)
        rid = eng.generate(HELLO, GenerationParams(max_new_tokens=200, temperature=0.0))
        done = log.wait(rid, timeout=120)
        assert isinstance(done, Finished) and done.completion_tokens == 200
        tokens = log.of(rid, Token)
        assert 1 < len(tokens) <= 1 + math.ceil(199 / FLUSH_TOKENS)  # vs one message per token
        assert "".join(t.text for t in tokens) == done.text

        sent = []

        def cancel_on_first_token(event):
            if isinstance(event, Token) and not sent:
                sent.append(time.perf_counter())
                eng.cancel(event.request_id)

        rid = eng.generate(HELLO, GenerationParams(max_new_tokens=1500, temperature=0.0), sink=cancel_on_first_token)
        done = log.wait(rid, timeout=60)
        latency = time.perf_counter() - sent[0]
        assert isinstance(done, Finished) and done.finish_reason == "cancelled"
        assert done.completion_tokens < 1500
        assert latency < 5.0, f"cancel took {latency:.1f} s: held up behind the token runs?"
        assert "".join(t.text for t in log.of(rid, Token)) == done.text  # nothing lost, nothing twice
    finally:
        eng.shutdown()
