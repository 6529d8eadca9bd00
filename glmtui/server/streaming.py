"""Engine events onto the event loop, and the SSE generators of streamed replies.

The engine reports on a thread of its own; :class:`Pipe` is the sink that
moves one request's events onto asyncio. ``chat_stream`` turns them into
``chat.completion.chunk`` data lines ending in ``[DONE]``, ``completion_stream``
into ``text_completion`` ones. A stream that ends before the reply did (the
client went away, the server stops) cancels it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
import weakref
from typing import Optional

from ..engine.events import Failed, Finished, Started, Token
from ..engine.tools import parse_tool_call
from .guard import error_body
from .translate import CANCELLED, during_generation, finish_reason, reply_text, tool_call_object, usage


class ClientGone(Exception):
    """The request's client disconnected."""


COALESCE_SECONDS = 0.05  # while tokens come fast, how long the next ones gather before the loop takes them


class _Gate:
    """The event loop's one door for all its requests' events (one per loop and interval).

    Engine threads only append to a pipe's inbox; the loop is woken once for everything that
    gathered in all pipes (one ``call_soon_threadsafe``, not one per token and request). While
    tokens come faster than one per ``coalesce`` seconds, a delivery of tokens makes the next one
    wait that long: a fast reply's tokens reach its stream a few at a time (one SSE chunk each),
    and the streams of a batch are served in one loop pass, instead of a wake-up, a chunk and a
    socket write per token. A request's first token, tokens coming slower than that, and every
    event that is not a token (start, end, failure) go at once.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, coalesce: float):
        self._loop = weakref.ref(loop)  # not kept alive by its entry in _gates
        self.coalesce = coalesce
        self.lock = threading.Lock()
        self.dirty: dict[Pipe, None] = {}  # pipes with undelivered events, in arrival order (under lock)
        self.woken = False  # a delivery is on its way: a call_soon_threadsafe or the timer (under lock)
        self.timed = False  # ... and it is the timer, which an urgent event does not wait for (under lock)
        self.timer: Optional[asyncio.TimerHandle] = None
        self.last_tokens = float("-inf")  # loop time of the last delivery that held tokens

    def post(self, pipe: "Pipe", event) -> None:  # an engine thread: never blocks
        with self.lock:
            urgent = not isinstance(event, Token) or not pipe._sent_token
            pipe._sent_token = pipe._sent_token or isinstance(event, Token)
            pipe._inbox.append(event)
            self.dirty[pipe] = None
            if self.woken and not (urgent and self.timed):
                return
            self.woken, self.timed = True, False
        loop = self._loop()
        try:
            if loop is not None:
                loop.call_soon_threadsafe(self.deliver)
        except RuntimeError:  # the loop is closed: the server is gone
            pass

    def deliver(self, timed: bool = False) -> None:  # the loop
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        loop = self._loop()
        assert loop is not None  # it is running this
        now = loop.time()
        with self.lock:
            arrived = [(pipe, pipe._inbox) for pipe in self.dirty]
            for pipe in self.dirty:
                pipe._inbox = []
            self.dirty.clear()
            tokens = any(isinstance(e, Token) for _, events in arrived for e in events)
            # they come fast (these gathered in the wait, or came soon after the last ones): gather the next ones
            hold = tokens and (timed or now - self.last_tokens < self.coalesce)
            self.woken = self.timed = hold
        if tokens:
            self.last_tokens = now
        if hold:
            self.timer = loop.call_later(self.coalesce, self.deliver, True)
        for pipe, events in arrived:
            pipe._arrived(events)


_gates: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, _Gate]]" = weakref.WeakKeyDictionary()
_gates_lock = threading.Lock()


def _gate(loop: asyncio.AbstractEventLoop, coalesce: float) -> _Gate:
    with _gates_lock:
        gates = _gates.setdefault(loop, {})
        gate = gates.get(coalesce)
        if gate is None:
            gate = gates[coalesce] = _Gate(loop, coalesce)
        return gate


class Pipe:
    """Events of one request, moved from the engine's thread onto the event loop (through the
    loop's :class:`_Gate`, which gathers them)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, coalesce: float = COALESCE_SECONDS):
        self.loop = loop
        self._gate = _gate(loop, coalesce)
        self._inbox: list = []  # engine thread -> loop (under the gate's lock)
        self._sent_token = False  # a token went through already (under the gate's lock)
        self._ready: collections.deque = collections.deque()  # delivered, not yet taken (loop only)
        self._waiter: Optional[asyncio.Future] = None
        self._checked = time.monotonic()

    def __call__(self, event) -> None:  # engine thread: never blocks
        self._gate.post(self, event)

    def _arrived(self, events: list) -> None:  # the loop
        self._ready.extend(events)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self, request=None, poll: float = 0.1):
        """The next event; raises ClientGone when ``request``'s client disconnected meanwhile.

        The client is checked at least every ``poll`` seconds, whether or not events keep
        arriving. Delivered events wait in a deque, never inside a future: a wait cancelled or
        timed out loses nothing.
        """
        while True:
            if request is not None:
                now = time.monotonic()
                if now - self._checked >= poll:
                    self._checked = now
                    if await request.is_disconnected():
                        raise ClientGone()
            if self._ready:
                return self._ready.popleft()
            timeout = None if request is None else max(0.0, poll - (time.monotonic() - self._checked)) or poll
            self._waiter = self.loop.create_future()
            try:
                await asyncio.wait({self._waiter}, timeout=timeout)
            finally:
                self._waiter = None

    def more_text(self, reasoning: bool) -> str:
        """The text of the tokens delivered right behind the one just taken, of the same kind
        (answer or reasoning), taken too: a stream sends them together as one chunk."""
        pieces = []
        ready = self._ready
        while ready and isinstance(ready[0], Token) and ready[0].reasoning == reasoning:
            pieces.append(ready.popleft().text)
        return "".join(pieces)


def merged(pipe: Pipe, event):
    """A Token with the text of the tokens already delivered behind it (the event itself otherwise)."""
    if isinstance(event, Token):
        more = pipe.more_text(event.reasoning)
        if more:
            return Token(event.request_id, event.text + more, event.reasoning)
    return event


def chat_chunk(completion_id: str, created: int, model: str, delta: dict, finish: Optional[str] = None,
               include_usage: bool = False) -> str:
    body = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if include_usage:
        body["usage"] = None
    return json.dumps(body, ensure_ascii=False)


async def chat_stream(engine, pipe: Pipe, rid: int, completion_id: str, created: int, model: str,
                      include_usage: bool, tool_names: Optional[set[str]], chatglm3: bool):
    """SSE data of one streamed chat reply whose Started has been seen."""
    finished = False
    text = ""
    first = [True]

    def chunk(delta: dict, finish: Optional[str] = None) -> str:
        return chat_chunk(completion_id, created, model, delta, finish, include_usage)

    def content(piece: str) -> str:
        if first[0] and piece:
            first[0] = False
            return reply_text(piece, chatglm3)
        return piece

    held = tool_names is not None  # with tools, the first line decides: tool name or plain text
    tool_mode = False
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            event = merged(pipe, await pipe.next())
            if isinstance(event, Token) and event.reasoning:  # <think> text: its own delta field (vLLM, SGLang)
                if event.text:
                    yield chunk({"reasoning_content": event.text})
                continue
            if isinstance(event, Token):
                text += event.text
                if held:
                    if "\n" not in text:
                        continue
                    held = False
                    tool_mode = text.partition("\n")[0].strip() in (tool_names or ())
                    piece = "" if tool_mode else content(text)
                elif not tool_mode:
                    piece = content(event.text)
                else:
                    piece = ""
                if piece:
                    yield chunk({"content": piece})
            elif isinstance(event, Finished):
                finished = True
                if event.finish_reason == "cancelled":
                    yield json.dumps(error_body(CANCELLED, "server_error", None, "cancelled"))
                    return
                reason = finish_reason(event)
                if held or tool_mode:
                    call = parse_tool_call(event.text, tool_names) if tool_mode else None
                    if call is not None:
                        tool = tool_call_object(*call)
                        yield chunk({"tool_calls": [{"index": 0, **tool}]})
                        reason = "tool_calls"
                    elif content(event.text):
                        yield chunk({"content": reply_text(event.text, chatglm3)})
                yield chunk({}, reason)
                if include_usage:
                    yield json.dumps({
                        "id": completion_id, "object": "chat.completion.chunk", "created": created,
                        "model": model, "system_fingerprint": None, "choices": [], "usage": usage(event),
                    })
                yield "[DONE]"
                return
            elif isinstance(event, Failed):
                finished = True
                yield json.dumps(during_generation(event).body())
                return
    finally:
        if not finished:  # the client went away (or the server is stopping)
            engine.cancel(rid)


def text_chunk(completion_id: str, created: int, model: str, index: int, text: str,
               finish: Optional[str] = None, include_usage: bool = False) -> str:
    body = {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}],
    }
    if include_usage:
        body["usage"] = None
    return json.dumps(body, ensure_ascii=False)


async def completion_stream(engine, pipes: list[Pipe], rids: list[int], completion_id: str, created: int,
                            model: str, prompts: list[str], echo: bool, include_usage: bool):
    """SSE data of a streamed /v1/completions: the prompts' completions one after another (the
    first one's Started has been seen), each ending with its finish_reason; usage summed at the end."""
    from .translate import failed_to_error

    open_ids = set(rids)
    finished: list[Finished] = []

    def chunk(index: int, text: str, finish: Optional[str] = None) -> str:
        return text_chunk(completion_id, created, model, index, text, finish, include_usage)

    try:
        for index, (pipe, rid, prompt) in enumerate(zip(pipes, rids, prompts, strict=True)):
            if echo and prompt:
                yield chunk(index, prompt)
            started = index == 0
            while True:
                event = merged(pipe, await pipe.next())
                if isinstance(event, Started):
                    started = True
                elif isinstance(event, Token):
                    yield chunk(index, event.text)
                elif isinstance(event, Finished):
                    open_ids.discard(rid)
                    if event.finish_reason == "cancelled":
                        yield json.dumps(error_body(CANCELLED, "server_error", None, "cancelled"))
                        return
                    finished.append(event)
                    yield chunk(index, "", finish_reason(event))
                    break
                elif isinstance(event, Failed):
                    open_ids.discard(rid)
                    loaded = engine.model_info is not None
                    error = during_generation(event) if started else failed_to_error(event, loaded, "prompt")
                    yield json.dumps(error.body())
                    return
        if include_usage:
            prompt_tokens = sum(done.prompt_tokens for done in finished)
            completion_tokens = sum(done.completion_tokens for done in finished)
            yield json.dumps({
                "id": completion_id, "object": "text_completion", "created": created, "model": model,
                "system_fingerprint": None, "choices": [],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens},
            })
        yield "[DONE]"
    finally:
        for rid in open_ids:  # the client went away, or a prompt failed: the rest need not run
            engine.cancel(rid)
