"""InferenceWorker: the one thread that owns the model.
Kept whole past 400 lines: one class, the model's thread.

The UI and the API server never touch torch: they put commands on this
worker's queue (load, unload, generate) or call ``cancel``, and receive
events (glmtui.engine.events) through listener callbacks invoked on the
worker thread. Listeners must be cheap and must not block — the Textual app
posts a message, the API server puts the event on an asyncio queue.

torch and transformers are imported here, inside the thread, the first time
a command needs them; importing this module stays cheap.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from .api import Listener, MemoryReport, ModelInfo, this_process_report
from .commands import Command, QueuedCommands, cancelled, crashed, refused
from .events import (
    ChatMessage,
    Event,
    Failed,
    Finished,
    GenerationParams,
    Loaded,
    LoadProgress,
    Started,
    Unloaded,
)

if TYPE_CHECKING:
    from .batching import BatchRunner
    from .compiled import CompiledDecode
    from .kvreuse import KVSession
    from .loading import LoadedModel


@dataclass
class _Command(Command):
    cancel: threading.Event = field(default_factory=threading.Event)


class InferenceWorker(QueuedCommands[_Command]):
    """Owns the model on a background thread; serves commands one at a time."""

    def __init__(
        self,
        listener: Optional[Listener] = None,
        *,
        kv_reuse: Optional[bool] = None,
        kv_max_tokens: Optional[int] = None,
        kv_max_bytes: Optional[int] = None,
        compiled_decode: Optional[bool] = None,
        compile_backend=None,
        batching: Optional[bool] = None,
        max_sequences: Optional[int] = None,
    ):
        """``kv_reuse``: keep the conversation's KV cache between replies (default on;
        ``GLMTUI_KV_REUSE=0`` turns it off), capped at ``kv_max_tokens`` / ``kv_max_bytes``
        (``GLMTUI_KV_MAX_TOKENS`` / ``GLMTUI_KV_MAX_BYTES``). ``compiled_decode``: None compiles
        on CUDA in bf16/fp16 (``GLMTUI_COMPILE=0`` turns it off), True forces it (CPU tests),
        False turns it off; ``compile_backend`` is torch.compile's backend (default inductor).
        ``batching``: requests arriving while others run join a continuous batch (batching.py;
        default on where the model and mode support it, ``GLMTUI_BATCHING=0`` turns it off), at most
        ``max_sequences`` at once (``GLMTUI_MAX_SEQUENCES``; memory may allow fewer)."""
        from .kvreuse import env_flag, env_int

        super().__init__(listener)
        self.kv_reuse = env_flag("GLMTUI_KV_REUSE", True) if kv_reuse is None else kv_reuse
        self.kv_max_tokens = kv_max_tokens if kv_max_tokens is not None else env_int("GLMTUI_KV_MAX_TOKENS")
        self.kv_max_bytes = kv_max_bytes if kv_max_bytes is not None else env_int("GLMTUI_KV_MAX_BYTES")
        self.compiled_decode = compiled_decode
        self.compile_backend = compile_backend
        self.batching = env_flag("GLMTUI_BATCHING", True) if batching is None else batching
        self.max_sequences = max_sequences if max_sequences is not None else env_int("GLMTUI_MAX_SEQUENCES")
        self._batch: Optional[BatchRunner] = None  # of the loaded model (None: one at a time)
        self._batched: dict[int, _Command] = {}  # requests handed to the batch, until they finish
        self._kv: Optional[KVSession] = None  # of the loaded model, worker thread only
        self._compiled: Optional[CompiledDecode] = None  # of the loaded model, worker thread only
        self._queue: "queue.Queue[_Command]" = queue.Queue()
        self._loaded: Optional[LoadedModel] = None  # worker thread only
        self.model_info: Optional[ModelInfo] = None
        self._state = "empty"  # empty, loading, ready, generating, stopped
        self._thread = threading.Thread(target=self._run, name="glmtui-inference", daemon=True)

    # ------------------------------------------------------------ public API (any thread)

    @property
    def state(self) -> str:
        """empty, loading, ready, generating or stopped (generating while the batch has requests)."""
        if self._state == "ready" and self._batch is not None and self._batch.in_flight:
            return "generating"
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        self._state = value

    def start(self) -> "InferenceWorker":
        if not self._thread.is_alive():
            self._thread.start()
        return self

    def load(self, path: str, mode: str = "bf16", device: str = "auto", sink: Optional[Listener] = None) -> int:
        if self.state == "empty" and self._thread.is_alive():
            # loading from now on, not from when the worker takes the command (its first import of torch
            # can take seconds): glmtui serve answers /health "loading", not "no_model", meanwhile
            self.state = "loading"
        return self._submit("load", {"path": str(path), "mode": mode, "device": device}, sink)

    def cancel(self, request_id: Optional[int] = None) -> None:
        """Stop a generation (the current one when no id is given).

        A running generation stops after at most one more token; a queued one
        finishes as cancelled without running.
        """
        with self._lock:
            if request_id is None:
                command = self._current
            else:
                command = self._pending.get(request_id) or self._batched.get(request_id)
            batch = self._batch
        if command is not None and command.kind == "generate":
            command.cancel.set()
            if batch is not None and command.request_id in self._batched:
                batch.cancel(command.request_id)  # out of the batch at its next step

    def queue_length(self) -> int:
        """Generations waiting (and, one at a time, the one running). With batching, the requests
        running in the batch do not count: only those not yet in it (over its sequence limit)."""
        with self._lock:
            waiting = self._generations_waiting()
            batch = self._batch
        return waiting + (batch.waiting if batch is not None else 0)

    def memory_report(self) -> MemoryReport:
        """This process's figures: the model lives here, next to whatever else the process holds."""
        return this_process_report()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel everything, free the model and stop the thread."""
        with self._lock:
            for command in self._pending.values():
                command.cancel.set()
            batch = self._batch
        if batch is not None:
            batch.cancel_all()
        self._queue.put(_Command("stop", 0))
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------ internals

    def _submit(self, kind: str, args: dict, sink: Optional[Listener], request_id: Optional[int] = None) -> int:
        # An explicit id comes from an engine process's parent, which numbers the requests.
        if request_id is None:
            request_id = next(self._ids)
        command = _Command(kind, request_id, args, sink)
        with self._lock:
            self._pending[request_id] = command
        self._queue.put(command)
        return request_id

    def _run(self) -> None:
        while True:
            command = self._queue.get()
            if command.kind == "stop":
                self._drop_model()
                self.state = "stopped"
                return
            with self._lock:
                self._current = command
            try:
                if command.kind != "generate" and self._batch is not None:
                    self._batch.wait_idle()  # loads and unloads come after the replies being written
                handler = getattr(self, f"_do_{command.kind}")
                handler(command)
            except Exception as exc:  # noqa: BLE001 - the worker must survive anything
                self._emit(command, crashed(command.request_id, exc, command.kind, traceback.format_exc()))
            finally:
                self._command_done(command, self._loaded is not None)

    def _do_load(self, command: _Command) -> None:
        from . import loading

        args = command.args
        if self._loaded is not None:
            self._drop_model()
        self.state = "loading"

        def progress(stage: str, fraction: Optional[float]) -> None:
            self._emit(command, LoadProgress(command.request_id, stage, fraction))

        mode = args["mode"]
        if mode == "auto":  # decided here, where torch can tell whether CUDA is there
            import torch

            from .api import default_mode

            mode = default_mode(args["device"], torch.cuda.is_available())
        error = None
        try:
            loaded = loading.load_model(args["path"], mode, args["device"], progress)
        except loading.ModelLoadError as exc:
            error = str(exc)
        if error is not None:
            # Only now, with the exception and its traceback's frames gone, can
            # a half-built model's tensors actually be freed.
            loading.release_memory()
            self.state = "empty"
            self._emit(command, Failed(command.request_id, error, "load"))
            return
        self._loaded = loaded
        notes = tuple(getattr(loaded, "notes", ()))
        if self.kv_reuse:
            from .kvreuse import KVSession

            self._kv = KVSession(self.kv_max_tokens, self.kv_max_bytes)
        notes += self._prepare_compiled(command, loaded)
        concurrency, why = self._prepare_batching(command, loaded)
        notes += (f"concurrency: {concurrency} ({why})",)
        chat_format = getattr(loaded.chat_format, "name", "")
        self.model_info = ModelInfo(
            loaded.name, str(loaded.path), loaded.mode, loaded.device, loaded.footprint_bytes, loaded.context_length,
            chat_format=chat_format, concurrency=concurrency, concurrency_reason=why,
        )
        self.state = "ready"
        self._emit(
            command,
            Loaded(
                command.request_id,
                loaded.name,
                str(loaded.path),
                loaded.mode,
                loaded.device,
                loaded.footprint_bytes,
                loaded.load_seconds,
                loaded.context_length,
                notes,
                placement=loaded.placement.summary() if loaded.placement else "",  # where the layers went
                layer_devices=loaded.placement.runs if loaded.placement else (),
                offloaded=loaded.placement.offloaded if loaded.placement else (),
                device_bytes=loaded.placement.bytes_per_device if loaded.placement else (),
                chat_format=chat_format,
                concurrency=concurrency,
                concurrency_reason=why,
            ),
        )

    def _prepare_batching(self, command: _Command, loaded) -> tuple[str, str]:
        """(concurrency, why): start continuous batching when this model and mode run it (tried at load)."""
        from . import batching

        if not self.batching:
            return batching.ONE_AT_A_TIME, "continuous batching is turned off"
        self._emit(command, LoadProgress(command.request_id, "trying continuous batching", None))
        try:
            probe = list(loaded.chat_format.encode_conversation([ChatMessage("user", "Hello")]))
        except Exception as exc:  # noqa: BLE001 - a chat format that cannot say hello cannot be probed either
            return batching.ONE_AT_A_TIME, f"no probe prompt: {exc}"
        runner, why = batching.start_batching(loaded, probe, self.max_sequences or batching.MAX_SEQUENCES)
        if runner is None:
            return batching.ONE_AT_A_TIME, f"continuous batching unavailable: {why}"
        self._batch = runner
        return batching.CONTINUOUS, why

    def _prepare_compiled(self, command: _Command, loaded) -> tuple[str, ...]:
        """Compile the decode step now (a short warm-up generation) when this model is to be compiled."""
        from . import compiled

        if not compiled.wanted(self.compiled_decode, loaded.device, loaded.mode, loaded.quant_backend):
            return ()
        try:
            plan = compiled.CompiledDecode(loaded.model, loaded.context_length, self.compile_backend)
        except Exception as exc:  # noqa: BLE001 - transformers without CompileConfig, an unwritable cache folder...
            return (f"compiled decode off: {type(exc).__name__}: {exc}",)

        def progress(stage: str, fraction: Optional[float], elapsed: float) -> None:
            self._emit(command, LoadProgress(command.request_id, stage, fraction, elapsed))

        def run() -> None:
            from .generation import run_generation

            outcome: list[Event] = []
            run_generation(
                loaded, [ChatMessage("user", "Hello")], GenerationParams(max_new_tokens=4, temperature=0.0),
                threading.Event(), outcome.append, 0, session=self._kv, compiled=plan,
            )
            last = outcome[-1]
            if not isinstance(last, Finished):
                raise RuntimeError(last.message if isinstance(last, Failed) else f"the warm-up ended with {last}")

        plan.warm_up(run, progress)
        self._compiled = plan  # kept even when off: generation reads plan.enabled, unload resets dynamo
        if plan.enabled:
            return (f"decode compiled in {plan.warmup_seconds:.1f} s (static KV cache)",)
        return (f"compiled decode off, eager instead: {plan.reason}",)

    def _drop_model(self) -> Optional[int]:
        if self._loaded is None:
            return None
        from . import loading

        self._loaded = None
        if self._batch is not None:
            self._batch.close()
            self._batch = None
        if self._kv is not None:
            self._kv.evict("the model was unloaded")
        self._kv = None
        if self._compiled is not None:
            self._compiled = None
            import torch

            torch._dynamo.reset()  # compiled frames and their guards refer to the old model
        self.model_info = None
        self.state = "empty"
        return loading.release_memory()

    def _do_unload(self, command: _Command) -> None:
        name = self._loaded.name if self._loaded is not None else ""
        after = self._drop_model()
        self._emit(command, Unloaded(command.request_id, name, after))

    def _do_generate(self, command: _Command) -> None:
        from .generation import run_generation

        refusal = refused(command.request_id, command.cancel.is_set(), command.args["params"], self._loaded is not None)
        if refusal is not None:
            self._emit(command, refusal)
            return
        if self._batch is not None and self._batch.closed:  # its manager failed: one at a time from now on
            self._batch_lost()
        if self._batch is not None:
            self._generate_with_batch(command)
            return
        self.state = "generating"
        run_generation(
            self._loaded,
            command.args["messages"],
            command.args["params"],
            command.cancel,
            lambda event: self._emit(command, event),
            command.request_id,
            command.args.get("tools"),
            session=self._kv,
            compiled=self._compiled,
            prompt_text=command.args.get("prompt_text"),
        )

    # ------------------------------------------------------------ continuous batching

    def _generate_with_batch(self, command: _Command) -> None:
        """A reply with the batch available: alone, it runs on the one-at-a-time path (KV reuse,
        compiled decode, no batching overhead) and moves into the batch as soon as another request
        arrives; with the batch busy, it joins it. Parameters the batch cannot honour (a seed, a
        repetition penalty) or a reply longer than its cache wait for the batch to empty."""
        from . import batching
        from .generation import make_reply_stream, prepare_prompt, run_generation, stop_token_ids

        loaded, batch = self._loaded, self._batch
        assert loaded is not None and batch is not None  # _generate checked both
        params = command.args["params"]
        rid = command.request_id
        prompt_text = command.args.get("prompt_text")
        completion = prompt_text is not None

        def emit(event) -> None:
            self._emit(command, event)

        prepared = prepare_prompt(loaded, command.args["messages"], params, emit, rid,
                                  command.args.get("tools"), prompt_text)
        if prepared is None:
            return
        prompt_ids, max_new = prepared
        stops = stop_token_ids(loaded.chat_format, completion)
        alone = batching.batchable(params)
        if alone is None and len(prompt_ids) + max_new > batch.limits.cache_tokens:
            alone = "more tokens than the batch's cache"
        if alone is None and (batch.in_flight or self._batchable_waiting(command)):
            emit(Started(rid, len(prompt_ids), 0))
            stream = make_reply_stream(loaded.chat_format, params, emit, rid, completion)
            self._to_batch(command, prompt_ids, len(prompt_ids), max_new, stream, time.perf_counter(), stops, 0, 0)
            return
        if alone is not None:
            batch.wait_idle()
            if command.cancel.is_set():
                emit(cancelled(rid))
                return
        self.state = "generating"
        handoff = run_generation(
            loaded, command.args["messages"], params, command.cancel, emit, rid,
            session=self._kv, compiled=self._compiled, prepared=prepared, prompt_text=prompt_text,
            handoff=None if alone is not None else (lambda: self._batchable_waiting(command)),
        )
        if handoff is not None:
            self._to_batch(command, handoff.prompt_ids + handoff.generated, len(handoff.prompt_ids), handoff.max_new,
                           handoff.stream, handoff.started, stops, len(handoff.generated), handoff.cached_tokens)

    def _batch_lost(self) -> None:
        import dataclasses

        from .batching import ONE_AT_A_TIME

        batch = self._batch
        if batch is None:
            return
        why = f"continuous batching failed: {batch.failure or 'closed'}"
        batch.close()
        self._batch = None
        if self.model_info is not None:
            self.model_info = dataclasses.replace(self.model_info, concurrency=ONE_AT_A_TIME, concurrency_reason=why)

    def _batchable_waiting(self, command: _Command) -> bool:
        """Another generation waits that the batch could serve (asked after every token of a reply)."""
        from .batching import batchable

        with self._lock:
            return any(
                c.kind == "generate" and c is not command and not c.cancel.is_set()
                and batchable(c.args["params"]) is None
                for c in self._pending.values()
            )

    def _to_batch(self, command: _Command, input_ids, prompt_tokens: int, max_new: int, stream, started: float,
                  stops, already: int, cached: int) -> None:
        rid = command.request_id

        def done() -> None:
            with self._lock:
                self._batched.pop(rid, None)

        batch = self._batch
        assert batch is not None  # only _generate_with_batch hands requests over
        with self._lock:
            self._batched[rid] = command
        batch.submit(rid, input_ids, prompt_tokens, max_new, stream, command.args["params"], started,
                     lambda event: self._emit(command, event), stops, already=already, cached_tokens=cached,
                     on_done=done)
        if command.cancel.is_set():  # cancelled while it was being handed over
            batch.cancel(rid)
