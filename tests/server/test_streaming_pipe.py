"""The Pipe that moves a request's events from the engine's thread onto the event loop, and the SSE
chunks chat_stream makes of them: tokens that gather while the loop waits go out as one chunk."""

from __future__ import annotations

import asyncio
import json
import threading
import time

from glmtui.engine.events import Finished, Started, Token
from glmtui.server.streaming import Pipe, chat_stream

LONG = 30.0  # a coalescing interval no test waits out: whatever arrives does so because something else sent it


class Engine:
    """What chat_stream needs of an engine: cancel (a stream that ends early calls it)."""

    def __init__(self):
        self.cancelled = []

    def cancel(self, rid):
        self.cancelled.append(rid)


def finished(text: str) -> Finished:
    return Finished(1, text, 3, len(text), 0.1, 10.0, 0.5, "length")


def contents(data: list[str]) -> list[str]:
    chunks = [json.loads(d) for d in data if d != "[DONE]"]
    return [c["choices"][0]["delta"]["content"] for c in chunks if c["choices"][0]["delta"].get("content")]


def test_first_tokens_go_at_once_and_the_next_ones_gather_into_one_chunk():
    async def scenario():
        loop = asyncio.get_running_loop()
        pipe = Pipe(loop, coalesce=LONG)
        engine = Engine()
        threads = []

        def send(*events):
            thread = threading.Thread(target=lambda: [pipe(e) for e in events])
            threads.append(thread)
            thread.start()

        send(Started(1, 3, 0), Token(1, "a"))
        assert isinstance(await pipe.next(), Started)
        stream = chat_stream(engine, pipe, 1, "id", 0, "m", False, None, False)
        data = [await stream.__anext__(), await stream.__anext__()]  # the role chunk, then "a" at once
        send(Token(1, "b"))  # a token soon after the last one: it goes at once too ...
        data.append(await stream.__anext__())
        started = time.monotonic()
        # ... and now tokens come fast: the next ones wait for the coalescing timer; the Finished
        # is not held back by it and takes them along.
        send(Token(1, "c"), Token(1, "d"), Token(1, "e"), finished("abcde"))
        data += [d async for d in stream]
        for thread in threads:
            thread.join()
        return data, time.monotonic() - started, engine

    data, took, engine = asyncio.run(scenario())
    assert contents(data) == ["a", "b", "cde"]  # one chunk for the three tokens, in order
    assert took < LONG / 2  # the end did not wait for the timer
    assert data[-1] == "[DONE]" and json.loads(data[-2])["choices"][0]["finish_reason"] == "length"
    assert engine.cancelled == []


def test_another_request_s_first_token_is_not_held_back_and_takes_the_waiting_tokens_along():
    """The pipes of one loop share one delivery: a batch's streams are served in one loop pass."""

    async def scenario():
        loop = asyncio.get_running_loop()
        first, second = Pipe(loop, coalesce=LONG), Pipe(loop, coalesce=LONG)

        async def through(*sends):
            thread = threading.Thread(target=lambda: [pipe(event) for pipe, event in sends])
            thread.start()
            return thread

        threads = [await through((first, Token(1, "a1")))]
        assert (await first.next()).text == "a1"
        threads.append(await through((first, Token(1, "a2"))))
        assert (await first.next()).text == "a2"  # soon after a1: at once, and now the next ones gather
        threads.append(await through((first, Token(1, "a3")), (second, Token(2, "b1"))))
        b1 = await asyncio.wait_for(second.next(), LONG / 2)  # its first token: not held for the timer
        a3 = await asyncio.wait_for(first.next(), LONG / 2)  # delivered in the same pass
        for thread in threads:
            thread.join()
        return b1.text, a3.text

    assert asyncio.run(scenario()) == ("b1", "a3")


def test_tokens_delivered_together_keep_reasoning_and_answer_apart_and_in_order():
    async def scenario():
        pipe = Pipe(asyncio.get_running_loop(), coalesce=LONG)
        pipe(Started(1, 3, 0))
        assert isinstance(await pipe.next(), Started)
        for event in (Token(1, "think", reasoning=True), Token(1, "ing", reasoning=True), Token(1, "an"),
                      Token(1, "swer"), finished("answer")):
            pipe(event)
        return [d async for d in chat_stream(Engine(), pipe, 1, "id", 0, "m", False, None, False)]

    chunks = [json.loads(d)["choices"][0]["delta"] for d in asyncio.run(scenario())[:-1]]
    deltas = [d for d in chunks if d.get("content") or d.get("reasoning_content")]
    assert deltas == [{"reasoning_content": "thinking"}, {"content": "answer"}]


def test_without_coalescing_every_delivery_is_its_own_chunk():
    async def scenario():
        pipe = Pipe(asyncio.get_running_loop(), coalesce=0.0)
        pipe(Started(1, 3, 0))
        assert isinstance(await pipe.next(), Started)
        stream = chat_stream(Engine(), pipe, 1, "id", 0, "m", False, None, False)
        data = [await stream.__anext__()]
        for piece in "abc":
            pipe(Token(1, piece))
            data.append(await stream.__anext__())
        pipe(finished("abc"))
        return data + [d async for d in stream]

    assert contents(asyncio.run(scenario())) == ["a", "b", "c"]


def test_a_waiting_reader_checks_its_client_and_loses_no_event():
    class Request:
        def __init__(self):
            self.checks = 0

        async def is_disconnected(self):
            self.checks += 1
            return False

    async def scenario():
        loop = asyncio.get_running_loop()
        pipe = Pipe(loop)
        request = Request()
        # an event that comes after several polls of the client is still the one returned
        threading.Timer(0.35, lambda: pipe(Started(1, 3, 0))).start()
        event = await pipe.next(request, poll=0.05)
        return event, request.checks

    event, checks = asyncio.run(scenario())
    assert isinstance(event, Started)
    assert checks >= 2
