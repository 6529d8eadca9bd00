"""`glmtui chat` through real pipes and a real pty, on a tiny real model (local and via --endpoint)."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from glmtui.engine.events import ChatMessage, Finished, GenerationParams, Started, Token
from helpers import wait_until
from terminals import CHAT, Terminal, answer_line

MODEL = "tiny-chatglm3"


def greedy(served, messages, max_new_tokens=40):
    worker, log, _ = served
    done = log.wait(worker.generate(messages, GenerationParams(max_new_tokens, 0.0)))
    assert isinstance(done, Finished)
    return done


@pytest.mark.slow
def test_piped_question_prints_only_the_answer(served, chatglm3_dir):
    expected = greedy(served, [ChatMessage("user", "你好")])
    run = subprocess.run(CHAT + ["--model", str(chatglm3_dir), "--temperature", "0", "--max-new-tokens", "40"],
                         input="你好\n".encode(), capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout.decode() == answer_line(expected.text)
    assert "Loaded" in run.stderr.decode()


@pytest.mark.slow
def test_piped_question_through_an_endpoint(served):
    messages = [ChatMessage("system", "Be brief."), ChatMessage("user", "what is a GPU?\nexplain")]
    expected = greedy(served, messages, 30)
    run = subprocess.run(CHAT + ["--endpoint", served[2].url, "--system", "Be brief.", "--temperature", "0",
                                 "--max-new-tokens", "30"],
                         input=b"  what is a GPU?\nexplain\n\n", capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout.decode() == answer_line(expected.text)


@pytest.mark.slow
def test_piped_failures_keep_stdout_empty(chatglm3_dir, tmp_path):
    run = subprocess.run(CHAT + ["--model", str(chatglm3_dir)], input=b"  \n", capture_output=True, timeout=120)
    assert run.returncode == 2 and run.stdout == b"" and b"no question" in run.stderr
    run = subprocess.run(CHAT + ["--model", str(tmp_path / "missing")], input=b"hi", capture_output=True, timeout=300)
    assert run.returncode == 1 and run.stdout == b"" and b"missing" in run.stderr
    run = subprocess.run(CHAT + ["--endpoint", "http://127.0.0.1:9"], input=b"hi", capture_output=True, timeout=120)
    assert run.returncode == 1 and run.stdout == b"" and b"cannot reach" in run.stderr
    run = subprocess.run(CHAT + ["--model", str(chatglm3_dir), "--temperature", "-1"], input=b"hi",
                         capture_output=True, timeout=120)
    assert run.returncode == 2 and run.stdout == b"" and b"temperature" in run.stderr


@pytest.mark.slow
def test_a_reply_cut_by_the_context_says_so_not_max_new_tokens(short_context_chatty):
    run = subprocess.run(CHAT + ["--model", str(short_context_chatty), "--temperature", "0", "--max-new-tokens", "500"],
                         input=b"hi", capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert b"reached the model's context: 64 tokens" in run.stderr and b"--max-new-tokens" not in run.stderr
    run = subprocess.run(CHAT + ["--model", str(short_context_chatty), "--temperature", "0", "--max-new-tokens", "5"],
                         input=b"hi", capture_output=True, timeout=300)
    assert run.returncode == 0 and b"5-token limit" in run.stderr, run.stderr


def _reply_text(seen: bytes, name: str) -> str:
    """The reply as shown: after '<name>: ', before the next prompt."""
    text = seen.decode("utf-8", "replace").replace("\r\n", "\n")
    return text.split(f"{name}: ", 1)[1].rsplit("\nUser: ", 1)[0].rstrip("\n")


@pytest.mark.slow
def test_interactive_chat_clear_stop_and_ctrl_c(served):
    worker, log, server = served
    term = Terminal(CHAT + ["--endpoint", server.url, "--temperature", "0", "--max-new-tokens", "40"])
    try:
        term.read_until(b"User: ")
        mark = len(log.events)
        term.type("hello")
        first = _reply_text(term.read_until(b"User: "), MODEL)
        expected = greedy(served, [ChatMessage("user", "hello")])
        limit_note = " [token limit]" if expected.finish_reason == "length" else ""
        assert first == expected.text.lstrip("\n").rstrip("\n") + limit_note
        first_prompt = [e for e in log.events[mark:] if isinstance(e, Started)][0].prompt_tokens

        # the history goes along with the next question...
        mark = len(log.events)
        term.type("hello")
        term.read_until(b"User: ")
        assert [e for e in log.events[mark:] if isinstance(e, Started)][0].prompt_tokens > first_prompt
        # ...until `clear`
        term.type("clear")
        term.read_until(b"History cleared.")
        term.read_until(b"User: ")
        mark = len(log.events)
        term.type("hello")
        term.read_until(b"User: ")
        assert [e for e in log.events[mark:] if isinstance(e, Started)][0].prompt_tokens == first_prompt

        # Ctrl-C during a reply stops that reply, not the program
        def throttle(event):
            if isinstance(event, Token):
                time.sleep(0.05)

        worker.add_listener(throttle)
        try:
            term.type("clear")
            term.read_until(b"User: ")
            mark = len(log.events)
            term.type("story time")
            term.read_until(f"{MODEL}: ".encode())
            wait_until(lambda: len([e for e in log.events[mark:] if isinstance(e, Token)]) >= 3, 30, "a few tokens")
            term.proc.send_signal(signal.SIGINT)
            seen = term.read_until(b"User: ", timeout=30)
        finally:
            worker.remove_listener(throttle)
        assert b"[stopped]" in seen
        finished = wait_until(lambda: [e for e in log.events[mark:] if isinstance(e, Finished)], 10, "the reply's end")
        assert finished[-1].finish_reason == "cancelled"
        assert term.proc.poll() is None

        term.type("stop")
        assert term.proc.wait(30) == 0
    finally:
        term.close()


def test_ctrl_c_during_a_reply_sets_a_flag_and_loses_no_event():
    """Ctrl-C while a reply streams must not raise inside Queue.get (the event it had just taken, maybe the
    reply's end, would be lost): it sets a flag the loop sees within 0.1 s, and the old handler comes back."""
    import os

    from glmtui.linechat import _CtrlC, _Events

    before = signal.getsignal(signal.SIGINT)
    events = _Events()
    with _CtrlC() as ctrl_c:
        events(Finished(7, "done", 1, 1, 0.0, 0.0, 0.0, "stop"))
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt from here on
        time.sleep(0.05)
        assert ctrl_c.pressed.is_set()
        assert events.next(7, ctrl_c.pressed) is None  # the loop is told at once ...
        assert isinstance(events.next(7), Finished)  # ... and the queued end is still there
    assert signal.getsignal(signal.SIGINT) is before
