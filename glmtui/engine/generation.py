"""One streamed generation: prompt -> ``model.generate`` -> Token/Finished events.
Kept whole past 400 lines: one generation, prompt to events.

Runs on the worker thread. Text is produced by an incremental detokenizer
(constant work per token), stop strings are held back until they can be
ruled out, and a cancel flag is checked after every token. The KV cache
comes from the worker's KVSession (only the prompt's new tokens are
prefilled) and, when compiling, is a static one (compiled.py).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from .compiled import CompiledDecode
from .events import ChatMessage, Failed, Finished, FinishReason, GenerationParams, Started, Token
from .kvreuse import KVSession
from .prompts import IncrementalDetokenizer, PromptError
from .reasoning import ReasoningSplitter, hidden_tags, make_splitter, template_kwargs


class ReplyStream(BaseStreamer):
    """Receives token ids from ``generate`` and emits text as it becomes final."""

    def __init__(self, decode, stop_token_ids: Sequence[int], stop_strings: Sequence[str], emit_text,
                 drop_prefix: str = "", reasoning: Optional[ReasoningSplitter] = None, emit_reasoning=None,
                 tag_ids: Optional[dict] = None):
        self._detok = IncrementalDetokenizer(decode)
        # <think> blocks (reasoning.py): emitted through emit_reasoning, kept apart from ``text``;
        # tag_ids: tag tokens that decode drops, put back as text so the splitter sees them
        self._split = reasoning
        self._emit_reasoning = emit_reasoning
        self._tag_ids = tag_ids or {}
        self.reasoning = ""
        self._stop_ids = set(stop_token_ids)
        self._stop_strings = [s for s in stop_strings if s]
        self._hold = max((len(s) for s in self._stop_strings), default=1) - 1
        self._emit_text = emit_text
        self._prompt_seen = False
        self._pending = ""  # text held back while it might begin a stop string
        self._drop_prefix = drop_prefix  # dropped once from the very start of the reply
        self._started = False
        self.text = ""  # everything emitted so far
        self.generated = 0
        self.hit_stop_token = False
        self.hit_stop_string = False
        self.first_token_at: Optional[float] = None

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first pushes the prompt
            self._prompt_seen = True
            return
        self.push([int(t) for t in value.reshape(-1).tolist()])

    def push(self, ids: Sequence[int]) -> None:
        """New generated ids (the batch feeds them here directly: there is no prompt to skip)."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if self.hit_stop_string or self.hit_stop_token:
            return
        kept: list[int] = []
        for token_id in ids:
            if token_id in self._stop_ids:
                self.hit_stop_token = True
                break
            self.generated += 1
            if token_id in self._tag_ids and self._split is not None and self._split.state != "answer":
                self._take(self._detok.push(kept + [token_id]))  # decodes to nothing itself
                self._take(self._tag_ids[token_id])
                kept = []
                continue
            kept.append(token_id)
        if kept:
            self._take(self._detok.push(kept))

    def _take(self, new_text: str) -> None:
        if not new_text:
            return
        if not self._started:
            self._started = True
            if self._drop_prefix and new_text.startswith(self._drop_prefix):
                new_text = new_text[len(self._drop_prefix) :]
                if not new_text:
                    return
        pending = self._pending + new_text
        for stop in self._stop_strings:
            at = pending.find(stop)
            if at >= 0:
                self.hit_stop_string = True
                self._send(pending[:at])
                self._pending = ""
                return
        if self._hold and len(pending) > self._hold:
            self._send(pending[: -self._hold])
            self._pending = pending[-self._hold :]
        elif self._hold:
            self._pending = pending
        else:
            self._send(pending)

    def _send(self, text: str) -> None:
        if text and self._split is not None:
            self._route(self._split.feed(text))
        elif text:
            self.text += text
            self._emit_text(text)

    def _route(self, pieces) -> None:
        for reasoning, piece in pieces:
            if reasoning:
                self.reasoning += piece
                self._emit_reasoning(piece)
            else:
                self.text += piece
                self._emit_text(piece)

    def end(self) -> None:
        if not self.hit_stop_string:
            self._take(self._detok.flush())
            if not self.hit_stop_string:
                self._send(self._pending)
            self._pending = ""
        if self._split is not None:
            self._route(self._split.flush())


class _StopWhen(StoppingCriteria):
    """Stops after the current token when cancelled, a stop string appeared, or the reply is to
    move into the running batch (``handoff()`` true: another request arrived)."""

    def __init__(self, cancel: threading.Event, stream: ReplyStream, handoff: Optional[Callable[[], bool]] = None):
        self.cancel = cancel
        self.stream = stream
        self.handoff = handoff
        self.handed_off = False

    def __call__(self, input_ids, scores, **kwargs):
        done = self.cancel.is_set() or self.stream.hit_stop_string
        if not done and self.handoff is not None and self.handoff():
            self.handed_off = done = True
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


@dataclass
class Handoff:
    """A one-at-a-time reply stopped after some tokens so that it continues in the batch
    (batching.py): the batch prefills ``prompt_ids + generated`` and decodes the rest into the
    same ReplyStream, so the text, stop strings and counts run on as if nothing had happened."""

    request_id: int
    prompt_ids: list
    generated: list  # the reply's ids so far (no stop token: it would have ended the reply)
    stream: ReplyStream
    params: GenerationParams
    max_new: int  # the reply's whole budget; len(generated) of it is spent
    started: float
    cached_tokens: int
    emit: Callable


def prepare_prompt(loaded, messages, params: GenerationParams, emit: Callable, request_id: int,
                   tools: Optional[list] = None, prompt_text: Optional[str] = None) -> Optional[tuple[list, int]]:
    """(prompt ids, max new tokens cut to the context), or None after emitting why not.
    ``prompt_text``: the text continued as it is (completion mode) instead of ``messages``."""
    chat_format = loaded.chat_format
    try:
        if prompt_text is not None:
            prompt_ids = chat_format.encode_completion(prompt_text)
            if not prompt_ids:  # a tokenizer with no prefix of its own, and no text
                raise PromptError("the prompt is empty")
        elif template_kwargs(chat_format, params.thinking):  # the thinking switch (reasoning.py)
            prompt_ids = chat_format.encode_conversation(
                messages, tools=tools, template_kwargs=template_kwargs(chat_format, params.thinking))
        elif tools:
            prompt_ids = chat_format.encode_conversation(messages, tools=tools)
        else:
            prompt_ids = chat_format.encode_conversation(messages)
    except PromptError as exc:
        emit(Failed(request_id, f"cannot build the prompt: {exc}", "generate", kind="prompt"))
        return None
    context = loaded.context_length or 0
    max_new = max(1, int(params.max_new_tokens))
    if context and len(prompt_ids) >= context:
        emit(
            Failed(
                request_id,
                f"the conversation is {len(prompt_ids)} tokens, longer than the model's context of {context}: "
                "start a new chat or delete earlier turns",
                "generate",
                kind="context",
            )
        )
        return None
    if context:
        max_new = min(max_new, context - len(prompt_ids))
    return list(prompt_ids), max_new


def stop_token_ids(chat_format, completion: bool = False) -> list[int]:
    """A reply ends at the chat format's stops; a raw continuation (completion) at eos only."""
    return list(chat_format.completion_stop_token_ids if completion else chat_format.stop_token_ids)


def make_reply_stream(chat_format, params: GenerationParams, emit: Callable, request_id: int,
                      completion: bool = False) -> ReplyStream:
    splitter = None if completion else make_splitter(chat_format, params.thinking)  # <think> blocks
    return ReplyStream(
        chat_format.decode,
        stop_token_ids(chat_format, completion),
        params.stop,
        lambda text: emit(Token(request_id, text)),
        "" if completion else getattr(chat_format, "reply_prefix", ""),  # no metadata line to drop
        reasoning=splitter,
        emit_reasoning=lambda text: emit(Token(request_id, text, reasoning=True)),
        tag_ids=hidden_tags(chat_format) if splitter is not None else None,
    )


def finished_event(request_id: int, stream: ReplyStream, prompt_tokens: int, max_new: int, started: float,
                   cancelled: bool, cached_tokens: int = 0) -> Finished:
    """The Finished of a reply whose ids went through ``stream`` (either path)."""
    finished = time.perf_counter()
    reason: FinishReason
    if stream.hit_stop_token or stream.hit_stop_string:
        reason = "stop"
    elif cancelled:
        reason = "cancelled"
    elif stream.generated >= max_new:
        reason = "length"
    else:
        reason = "stop"
    ttft = (stream.first_token_at - started) if stream.first_token_at else None
    decode_time = finished - stream.first_token_at if stream.first_token_at else 0.0
    tps = (stream.generated - 1) / decode_time if stream.generated > 1 and decode_time > 0 else None
    return Finished(request_id, stream.text, prompt_tokens, stream.generated, ttft, tps, finished - started,
                    reason, cached_tokens=cached_tokens, reasoning=stream.reasoning)


def run_generation(
    loaded,
    messages: Sequence[ChatMessage],
    params: GenerationParams,
    cancel: threading.Event,
    emit: Callable,
    request_id: int,
    tools: Optional[list] = None,
    session: Optional[KVSession] = None,
    compiled: Optional[CompiledDecode] = None,
    handoff: Optional[Callable[[], bool]] = None,
    prepared: Optional[tuple[list, int]] = None,
    prompt_text: Optional[str] = None,
) -> Optional[Handoff]:
    """Generate one reply. ``session`` keeps the KV cache between calls (reused when
    ``params.kv_reuse``); ``compiled`` runs the decode step compiled on a static cache.
    ``handoff``: asked after every token; when it says yes the reply stops there and is returned
    as a :class:`Handoff` (no Finished: the batch finishes it). ``prepared``: prepare_prompt's result.
    ``prompt_text``: continue this text (completion mode) instead of replying to ``messages``."""
    started = time.perf_counter()
    chat_format = loaded.chat_format
    if prepared is None:
        prepared = prepare_prompt(loaded, messages, params, emit, request_id, tools, prompt_text)
        if prepared is None:
            return None
    prompt_ids, max_new = prepared

    model = loaded.model
    reuse = session if (session is not None and params.kv_reuse) else None
    plan = _CachePlan(model, prompt_ids, max_new, reuse, compiled)
    emit(Started(request_id, len(prompt_ids), plan.cached))

    def make_stream() -> ReplyStream:
        return make_reply_stream(chat_format, params, emit, request_id, prompt_text is not None)

    stream = make_stream()
    input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=model.device)
    sampling = params.temperature > 0
    kwargs = dict(
        max_new_tokens=max_new,
        do_sample=sampling,
        eos_token_id=stop_token_ids(chat_format, prompt_text is not None),
        pad_token_id=chat_format.stop_token_ids[0],
        repetition_penalty=float(params.repetition_penalty),
        attention_mask=torch.ones_like(input_ids),
    )
    if sampling:
        kwargs.update(temperature=float(params.temperature), top_p=float(params.top_p), top_k=int(params.top_k))
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    stopper: list[Optional[_StopWhen]] = [None]

    def generate(stream: ReplyStream):
        if params.seed is not None:
            torch.manual_seed(int(params.seed))
        extra = plan.generate_kwargs()
        stopper[0] = _StopWhen(cancel, stream, handoff)
        with torch.inference_mode():
            return model.generate(
                input_ids, streamer=stream, stopping_criteria=StoppingCriteriaList([stopper[0]]),
                **kwargs, **extra,
            )

    try:
        try:
            output = generate(stream)
        except (torch.OutOfMemoryError, MemoryError):
            raise
        except Exception as exc:
            # A compiled generation that failed before its first token runs again eagerly.
            if plan.compiled is None or stream.first_token_at is not None:
                raise
            plan.compiled.disable(f"generation failed: {type(exc).__name__}: {exc}")
            plan.fall_back_to_eager()
            stream = make_stream()
            output = generate(stream)
    except (torch.OutOfMemoryError, MemoryError):
        plan.drop("out of memory")
        _release()
        emit(
            Failed(
                request_id,
                "out of memory during generation: shorten the conversation, lower max new tokens, "
                "or load a smaller quantization",
                "generate",
                kind="out_of_memory",
            )
        )
        return None
    except Exception as exc:  # noqa: BLE001 - any failure becomes a Failed event for this request
        plan.drop(f"generation failed: {type(exc).__name__}")
        emit(Failed(request_id, f"generation failed: {type(exc).__name__}: {exc}", "generate"))
        return None
    sequence = output[0].tolist()
    plan.keep(sequence)
    ended = stream.hit_stop_token or stream.hit_stop_string or cancel.is_set() or stream.generated >= max_new
    if stopper[0] is not None and stopper[0].handed_off and not ended:
        return Handoff(request_id, list(prompt_ids), sequence[len(prompt_ids):], stream, params, max_new,
                       started, plan.cached, emit)
    emit(finished_event(request_id, stream, len(prompt_ids), max_new, started, cancel.is_set(), plan.cached))
    return None


class _CachePlan:
    """Which cache a generation runs with: the session's (cropped to the common prefix), a fresh
    static one for the compiled decode, or none (``generate`` makes its own)."""

    def __init__(self, model, prompt_ids, max_new: int, session: Optional[KVSession],
                 compiled: Optional[CompiledDecode]):
        self.model = model
        self.session = session
        self.compiled = compiled if compiled is not None and compiled.enabled else None
        self.needed = len(prompt_ids) + max_new
        self.cache = None
        self.cached = 0
        if session is not None:
            self.cache, self.cached = session.prepare(prompt_ids, self._make_cache, self._fits)
        elif self.compiled is not None:
            self.cache = self._make_cache()

    @property
    def compiling(self) -> bool:
        return self.compiled is not None

    def _make_cache(self):
        if self.compiled is not None:
            return self.compiled.make_cache(self.model, self.needed)
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _fits(self, cache) -> bool:
        from transformers import StaticCache

        if self.compiled is None:
            return not isinstance(cache, StaticCache)  # compiling was turned off: back to a growing cache
        return isinstance(cache, StaticCache) and self.compiled.fits(cache, self.needed)

    def generate_kwargs(self) -> dict:
        extra: dict[str, Any] = {}
        if self.cache is not None:
            extra["cache"] = self.cache
        if self.compiled is not None:
            extra["compile_config"] = self.compiled.compile_config
        return extra

    def fall_back_to_eager(self) -> None:
        self.drop("the compiled generation failed")
        self.compiled = None
        self.cache = None

    def drop(self, reason: str) -> None:
        """The cache may be inconsistent (a generation raised): never reuse it."""
        self.cached = 0
        if self.session is not None:
            self.session.evict(reason)
            self.session = None
        self.cache = None

    def keep(self, sequence_ids) -> None:
        if self.session is not None:
            self.session.commit(sequence_ids, self.model.device)


def _release() -> None:
    from .loading import release_memory

    release_memory()
