"""Continuous batching: requests that arrive while others run join the running batch.
Kept whole past 400 lines: one runner around transformers' batching manager.

transformers' own ``ContinuousBatchingManager`` (``model.init_continuous_batching``) does all of
the scheduling: the paged KV cache, mixing prefills into decode steps, per-request sampling,
removing a cancelled request at its next step. This module only feeds it and turns its streamed
ids into glmtui's events, per request and in order (Started comes from the worker before the
request is added; Token... and Finished from the one thread here that reads the manager's outputs):

- each request keeps its own ReplyStream (generation.py): incremental detokenizing, stop
  strings (a stop string cancels the request in the manager), the stop tokens;
- sampling per request through the manager's per-request processors (temperature, top_k,
  top_p); temperature 0 is greedy as top_k=1 (an exact tie between two logits is the only
  case where it could pick differently from ``generate``'s argmax);
- at most ``Limits.sequences`` requests are in the manager at once (from free memory and the
  KV bytes per token); the rest wait here, first come first served, and count as queued.

KV reuse across turns: kvreuse.py's session belongs to the one-at-a-time path. In the batch,
the manager's prefix sharing (``allow_block_sharing``, on for full-attention models) keeps the
blocks a request completed for later requests, so a next turn reuses its conversation's full
pages (``page_size`` tokens each) of the common prefix; the last partial page is prefilled again.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from .events import Failed, GenerationParams
from .generation import ReplyStream, finished_event

log = logging.getLogger("glmtui.engine")

CONTINUOUS = "continuous batching"
ONE_AT_A_TIME = "one at a time"

MAX_SEQUENCES = 16  # never more in the batch, however much memory is free
SEQUENCE_TOKENS = 4096  # the KV planned per sequence (the model's context when shorter)
PAGE_SIZE = 64  # tokens per page of the paged cache (also the granularity of prefix sharing)
MEMORY_SHARE = 0.25  # of the free memory at load, the most the batch's KV cache may take
BATCH_TOKENS = 256  # tokens one step may carry (longer prompts are prefilled over several steps)
POLL_SECONDS = 0.05  # how often the reader looks at cancels while no output arrives


def batchable(params: GenerationParams) -> Optional[str]:
    """Why these parameters need the one-at-a-time path (None: the batch can serve them)."""
    if params.seed is not None:
        return "a seed"
    if params.repetition_penalty != 1.0:
        return "a repetition penalty"
    return None


def kv_bytes_per_token(model) -> int:
    """KV cache bytes per token of context in the paged cache (it stores the model's dtype)."""
    from .memory import arch_from_config

    arch = arch_from_config(model.config.to_dict())
    return 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * model.dtype.itemsize


@dataclass(frozen=True)
class Limits:
    sequences: int  # requests in the batch at once
    cache_tokens: int  # tokens the paged cache holds, all sequences together
    page_size: int = PAGE_SIZE
    batch_tokens: int = BATCH_TOKENS

    @property
    def num_blocks(self) -> int:
        return max(1, self.cache_tokens // self.page_size)


def plan_limits(per_token: int, context_length: int, free_bytes: Optional[int],
                max_sequences: int = MAX_SEQUENCES) -> Limits:
    """How many sequences fit: ``MEMORY_SHARE`` of the free memory over the KV of one sequence
    (``SEQUENCE_TOKENS``, or the model's context when shorter), between 1 and ``max_sequences``.
    The cache is sized for exactly that many sequences (it is allocated, and zeroed, at once).
    Beside it the manager keeps a static attention mask of ``batch_tokens x (batch_tokens +
    cache tokens)`` (sdpa and eager need one), which ``BATCH_TOKENS`` keeps small."""
    per_sequence = min(context_length or SEQUENCE_TOKENS, SEQUENCE_TOKENS)
    sequences = max_sequences
    if free_bytes is not None and per_token > 0:
        sequences = int(free_bytes * MEMORY_SHARE) // (per_token * per_sequence)
    sequences = max(1, min(max_sequences, sequences))
    pages = -(-per_sequence // PAGE_SIZE)
    return Limits(sequences, sequences * pages * PAGE_SIZE)


@dataclass(eq=False)  # compared by identity (the waiting deque's remove)
class _Live:
    """One request in (or waiting for) the batch."""

    request_id: int
    input_ids: list  # what the manager prefills: the prompt, plus the reply so far after a handoff
    prompt_tokens: int
    max_new: int  # the reply's whole budget
    already: int  # reply ids generated before the batch (a handoff)
    stream: ReplyStream
    params: GenerationParams
    started: float
    emit: Callable
    stop_ids: list  # the chat format's stops (a raw continuation: eos only)
    cached_tokens: int = 0
    seen: int = 0  # of the manager's generated ids, those pushed to the stream
    admitted: bool = False
    on_done: Optional[Callable[[], None]] = None

    @property
    def key(self) -> str:
        return f"glmtui-{self.request_id}"


class BatchError(RuntimeError):
    pass


class BatchRunner:
    """A started ContinuousBatchingManager for one loaded model and the thread that reads it."""

    def __init__(self, loaded, limits: Limits):
        import torch
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        from . import batch_attention

        self.loaded = loaded
        self.limits = limits
        model = loaded.model
        if model.device.type == "cpu":
            batch_attention.install()  # the batch's sdpa attends each sequence alone (batch_attention.py)
        stops = list(loaded.chat_format.stop_token_ids)
        before = model.config._attn_implementation
        # Sampling on with all three processors present, so that every request can set its own
        # (a processor the config leaves out cannot be set per request); each request passes all three.
        config = GenerationConfig(do_sample=True, temperature=0.5, top_k=50, top_p=0.9, max_new_tokens=16,
                                  eos_token_id=stops, pad_token_id=stops[0])
        cb_config = ContinuousBatchingConfig(
            page_size=limits.page_size,
            num_blocks=limits.num_blocks,
            max_batch_tokens=min(limits.batch_tokens, limits.cache_tokens),
            max_requests_per_batch=limits.sequences,
            per_request_processors=True,
            # Keep the model's attention as loaded: the one-at-a-time path shares the model.
            auto_switch_to_flash=False,
        )
        self.manager = model.init_continuous_batching(generation_config=config, continuous_batching_config=cb_config)
        after = model.config._attn_implementation
        if after != before:  # eager becomes paged|eager, which generate() cannot run
            model.set_attn_implementation(before)
            raise BatchError(f"needs sdpa or flash attention, the model uses {before}")
        self._torch = torch
        self._running = False  # the manager's thread (and its paged cache) exists only while needed
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._live: dict[str, _Live] = {}
        self._waiting: collections.deque[_Live] = collections.deque()
        self._cancels: list[int] = []
        self._closed = False
        self.failure = ""
        self._parker: Optional[threading.Thread] = None
        self.admitted_total = 0  # requests ever added to the manager (tests and logs)
        self.vocab_size = int(model.config.vocab_size)
        from .kvreuse import env_flag

        # the submitting thread gives up its OpenMP pool, so the batch's is the only one and its workers spin, as
        # plain generate's do (omp_pool.py); GLMTUI_BATCH_ONE_POOL=0 keeps both pools
        self.one_pool = env_flag("GLMTUI_BATCH_ONE_POOL", True)
        self._reader = threading.Thread(target=self._read, name="glmtui-batch", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------ any thread

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._live)

    @property
    def closed(self) -> bool:
        """Closed, or its manager failed (``failure`` says why): no request can join it any more."""
        return self._closed

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def submit(self, request_id: int, input_ids: list, prompt_tokens: int, max_new: int, stream: ReplyStream,
               params: GenerationParams, started: float, emit: Callable, stop_ids, *, already: int = 0,
               cached_tokens: int = 0, on_done: Optional[Callable[[], None]] = None) -> None:
        live = _Live(request_id, list(input_ids), prompt_tokens, max_new, already, stream, params, started, emit,
                     list(stop_ids), cached_tokens, on_done=on_done)
        if self.one_pool:
            from .omp_pool import release_pool

            release_pool()
        with self._lock:
            if self._closed:
                raise BatchError("the batch is closed")
            self._start()
            self._live[live.key] = live
            self._waiting.append(live)
            self._admit()

    def park_soon(self) -> None:
        """park() on a thread of its own: the manager's stop collects garbage twice (a second or so
        in a big process), which a load need not wait for."""
        self._parker = threading.Thread(target=self.park, name="glmtui-batch-park", daemon=True)
        self._parker.start()

    def park(self, timeout: float = 10.0) -> None:
        """Stop the manager's thread and free its paged cache while nothing is in the batch; the next
        submit starts it again. A single conversation (the TUI) then holds no batch cache at all."""
        with self._lock:  # held while stopping: a submit meanwhile must not find the old thread alive
            if self._live or not self._running:
                return
            self._running = False
            self.manager.stop(block=True, timeout=timeout)

    def _start(self) -> None:
        """Start the manager's thread (under the lock): it allocates the paged cache."""
        if self._running:
            return
        with self._torch.inference_mode():  # the manager's thread runs in its starter's inference mode
            self.manager.start()
        self._running = True
        self._idle.notify_all()  # wakes the reader

    def cancel(self, request_id: int) -> bool:
        """Remove a request from the batch (at its next step); False when it is not here."""
        with self._lock:
            if f"glmtui-{request_id}" not in self._live:
                return False
            self._cancels.append(request_id)
        return True

    def cancel_all(self) -> None:
        with self._lock:
            self._cancels.extend(live.request_id for live in self._live.values())

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Until no request is in the batch (the one-at-a-time path and loads wait for it)."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._live or self._closed, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Fail what is still here and stop the manager's thread."""
        if self._parker is not None:
            self._parker.join(timeout)
        with self._lock:
            self._closed = True
            left = list(self._live.values())
            self._live.clear()
            self._waiting.clear()
            self._idle.notify_all()
        for live in left:
            self.manager.cancel_request(live.key)
            self._done(live, Failed(live.request_id, "the model was unloaded", "generate"))
        try:
            if self.manager.is_running():
                self.manager.stop(block=True, timeout=timeout)
            self.manager.destroy()
        except Exception as exc:  # noqa: BLE001 - stopping must not keep an unload from freeing the model
            log.warning("continuous batching did not stop cleanly: %s", exc)
        self._reader.join(timeout)

    # ------------------------------------------------------------ internals

    def _sampling(self, params: GenerationParams) -> dict:
        if params.temperature <= 0.0:
            return {"temperature": 1.0, "top_k": 1, "top_p": 1.0}
        top_k = int(params.top_k) if params.top_k > 0 else self.vocab_size
        return {"temperature": float(params.temperature), "top_k": top_k, "top_p": float(params.top_p)}

    def _admit(self) -> None:
        """Move waiting requests into the manager while there is room (under the lock)."""
        running = len(self._live) - len(self._waiting)
        while self._waiting and running < self.limits.sequences:
            live = self._waiting.popleft()
            live.admitted = True
            running += 1
            self.admitted_total += 1
            self.manager.add_request(
                live.input_ids, request_id=live.key, max_new_tokens=live.max_new - live.already, streaming=True,
                eos_token_id=live.stop_ids, **self._sampling(live.params),
            )

    def _done(self, live: _Live, event) -> None:
        try:
            live.emit(event)
        finally:
            if live.on_done is not None:
                live.on_done()

    def _finish(self, live: _Live, cancelled: bool = False, event=None) -> None:
        with self._lock:
            if self._live.pop(live.key, None) is None:
                return  # already finished (a cancel raced the last output)
            if live in self._waiting:
                self._waiting.remove(live)
            self._admit()
            if not self._live:
                self._idle.notify_all()
        if event is None:
            live.stream.end()
            event = finished_event(live.request_id, live.stream, live.prompt_tokens, live.max_new, live.started,
                                   cancelled, live.cached_tokens)
        self._done(live, event)

    def _read(self) -> None:
        manager = self.manager
        while True:
            with self._idle:
                self._idle.wait_for(lambda: self._running or self._closed)
                if self._closed:
                    return
                cancels, self._cancels = self._cancels, []
            for request_id in cancels:
                live = self._live.get(f"glmtui-{request_id}")
                if live is not None:
                    if live.admitted:
                        manager.cancel_request(live.key)
                    self._finish(live, cancelled=True)
            if not manager.is_running() and self._running:
                self._fail_all("the batch stopped: " + str(manager.background_thread_status.fatal_error or "unknown"))
                return
            output = manager.get_result(timeout=POLL_SECONDS)
            if output is None:
                continue
            live = self._live.get(output.request_id)
            if live is None:  # cancelled or failed meanwhile
                continue
            try:
                self._take(live, output)
            except Exception as exc:  # noqa: BLE001 - a broken request must not stop the others
                manager.cancel_request(live.key)
                self._finish(live, event=Failed(live.request_id, f"generation failed: {type(exc).__name__}: {exc}",
                                                "generate"))

    def _take(self, live: _Live, output) -> None:
        from transformers.generation.continuous_batching import RequestStatus

        if output.status == RequestStatus.FAILED:
            self._finish(live, event=Failed(live.request_id, f"generation failed: {output.error}", "generate"))
            return
        ids = output.generated_tokens
        if len(ids) > live.seen:
            live.stream.push(ids[live.seen:])
            live.seen = len(ids)
        if live.stream.hit_stop_string:  # the manager knows only stop tokens
            self.manager.cancel_request(live.key)
            self._finish(live)
        elif output.is_finished():
            self._finish(live)

    def _fail_all(self, message: str) -> None:
        log.warning("continuous batching failed: %s", message)
        self.failure = message
        with self._lock:
            left = list(self._live.values())
            self._live.clear()
            self._waiting.clear()
            self._closed = True
            self._idle.notify_all()
        for live in left:
            self._done(live, Failed(live.request_id, message, "generate"))


class _Recorder(ReplyStream):
    """A ReplyStream that keeps the raw ids (the probe compares them)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.ids: list[int] = []

    def push(self, ids) -> None:
        self.ids.extend(int(t) for t in ids)
        super().push(ids)


def start_batching(loaded, probe_prompt: list, max_sequences: int = MAX_SEQUENCES,
                   timeout: float = 120.0) -> tuple[Optional[BatchRunner], str]:
    """A running BatchRunner for this model, or None and why not (the one-at-a-time path then).

    Decided by trying: the manager must start, and a short greedy reply through it must give the
    same first tokens as ``generate`` (a quantization or placement it cannot run fails here).
    """
    import torch

    from .kvreuse import free_device_bytes

    model = loaded.model
    try:
        per_token = kv_bytes_per_token(model)
        logging.getLogger("ContinuousBatchingLogger").setLevel(logging.CRITICAL)  # a failed probe is said once, here
        limits = plan_limits(per_token, loaded.context_length, free_device_bytes(model.device), max_sequences)
        runner = BatchRunner(loaded, limits)
    except Exception as exc:  # noqa: BLE001 - any failure: one at a time, with why
        return None, f"{type(exc).__name__}: {exc}"
    try:
        n = 2
        stops = list(loaded.chat_format.stop_token_ids)
        with torch.inference_mode():
            want = model.generate(torch.tensor([probe_prompt], device=model.device), max_new_tokens=n,
                                  do_sample=False, temperature=None, top_p=None, top_k=None,
                                  eos_token_id=stops, pad_token_id=stops[0],
                                  attention_mask=torch.ones((1, len(probe_prompt)), dtype=torch.long,
                                                            device=model.device))
        want = want[0, len(probe_prompt):].tolist()
        finished = threading.Event()
        failures = []

        def emit(event) -> None:
            if isinstance(event, Failed):
                failures.append(event.message)
            finished.set()

        stream = _Recorder(loaded.chat_format.decode, [], (), lambda text: None)
        got = stream.ids
        runner.submit(0, probe_prompt, len(probe_prompt), n, stream,
                      GenerationParams(max_new_tokens=n, temperature=0.0), time.perf_counter(), emit, stops)
        if not finished.wait(timeout):
            raise BatchError(f"a {n}-token probe took over {timeout:.0f} s")
        if failures:
            raise BatchError(failures[0])
        if got != want:
            raise BatchError(f"its greedy tokens {got} differ from generate's {want}")
        runner.park_soon()
    except Exception as exc:  # noqa: BLE001 - any failure of the probe: one at a time, with why
        runner.close()
        return None, str(exc) if isinstance(exc, BatchError) else f"{type(exc).__name__}: {exc}"
    return runner, (f"up to {limits.sequences} sequences, {limits.cache_tokens} tokens of paged KV cache "
                    f"({limits.cache_tokens * per_token / 2**20:.0f} MiB)")
