"""RemoteEngine: the InferenceWorker interface over an OpenAI-compatible server.
Kept whole past 400 lines: one class, the engine interface over HTTP, and its message mapping.

The TUI and ``glmtui chat`` take ``--endpoint URL`` to talk to ``glmtui serve``,
vLLM or SGLang instead of loading a model in-process. Commands run one at a
time, in order, on a background thread with its own asyncio loop and an
``httpx.AsyncClient``; replies are streamed over SSE and reported with the
same events as the local worker (LoadProgress, Loaded, Unloaded, Started,
Token, Finished, Failed), on that thread — listeners must not block.

A remote engine cannot load models: ``load(path)`` connects to the server and
reports the model it serves (``path`` empty, or one of the served ids); any
other path fails with a message naming what the server serves. ``unload()``
detaches. ``start()`` connects at once unless ``autoconnect=False``.
``cancel`` closes the HTTP stream, which makes glmtui serve (and vLLM) stop
generating. ``generate(prompt_text=...)`` (completion mode) uses the server's
``/v1/completions``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
import traceback
from dataclasses import dataclass
from typing import AsyncGenerator, Optional, Sequence, cast
from urllib.parse import urlsplit

from .api import Listener, MemoryReport, ModelInfo
from .commands import Command, QueuedCommands, cancelled, crashed, refused
from .events import (
    ChatMessage,
    Failed,
    Finished,
    GenerationParams,
    Loaded,
    LoadProgress,
    Started,
    Token,
    Unloaded,
)

MIN_DECODE_SPAN = 0.05  # s: below this, arrival times of streamed tokens are not a decode rate


def normalize_endpoint(endpoint: str) -> str:
    """``host:port``, ``http://host:port`` or ``http://host:port/v1`` -> the API base ending in /v1."""
    endpoint = endpoint.strip()
    if "://" not in endpoint:
        endpoint = "http://" + endpoint
    endpoint = endpoint.rstrip("/")
    if urlsplit(endpoint).path in ("", "/"):
        endpoint += "/v1"
    return endpoint


def _is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


@dataclass
class _Command(Command):
    cancelled: bool = False
    task: Optional[asyncio.Task] = None


class RemoteError(Exception):
    """A server's refusal or a broken exchange; ``kind`` is Failed.kind when the server said what it was."""

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind


def _settle_loop(loop: asyncio.AbstractEventLoop, timeout: float = 5.0) -> None:
    """Let the loop finish what its last steps left before it is closed: the tasks that close async
    generators the GC finalized (httpx's stream iterators), then the generators still open. A task
    still pending when the loop closes makes Python print "Task was destroyed but it is pending!"."""
    for _ in range(4):
        loop.run_until_complete(asyncio.sleep(0))  # the finalizer hook creates its tasks on the next step
        tasks = asyncio.all_tasks(loop)
        if tasks:
            _, late = loop.run_until_complete(asyncio.wait(tasks, timeout=timeout))
            for task in late:
                task.cancel()
            if late:
                loop.run_until_complete(asyncio.gather(*late, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        if not tasks:
            return


def _error_parts(body: bytes) -> tuple[str, str]:
    """(the server's own message, its error code or "") from an OpenAI-style error body (or vLLM's
    older flat one: {"object": "error", "message": ...})."""
    try:
        data = json.loads(body)
        error = data["error"] if "error" in data else data
        if isinstance(error, dict):
            return str(error["message"]), str(error.get("code") or "")
        return str(error), ""
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace").strip()[:500] or "no details", ""


def _error_message(status: int, body: bytes) -> str:
    return f"the server answered {status}: {_error_parts(body)[0]}"


# a refusing server's error code -> Failed.kind (what server/translate.py answers 400 for)
REFUSAL_KINDS = {"context_length_exceeded": "context", "invalid_parameters": "params"}


def _refusal(status: int, body: bytes) -> RemoteError:
    """A generation the server refused. A 400/422 is the request's fault: it keeps the server's own words
    and a Failed.kind from its error code (the context, the parameters, else the prompt), so `glmtui serve`
    over this engine answers its client 400 with them rather than an internal error."""
    if status not in (400, 422):
        return RemoteError(_error_message(status, body))
    message, code = _error_parts(body)
    return RemoteError(message, REFUSAL_KINDS.get(code, "prompt"))


class RemoteEngine(QueuedCommands[_Command]):
    """Same interface as InferenceWorker, over HTTP."""

    def __init__(
        self,
        endpoint: str,
        api_key: Optional[str] = None,
        model: Optional[str] = None,
        listener: Optional[Listener] = None,
        *,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        autoconnect: bool = True,
    ):
        super().__init__(listener)
        self.endpoint = normalize_endpoint(endpoint)
        self.api_key = api_key if api_key is not None else (os.environ.get("GLMTUI_API_KEY") or None)
        self._model_id = model
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._autoconnect = autoconnect
        self._detached = False
        self.model_info: Optional[ModelInfo] = None
        self.state = "empty"  # empty, loading, ready, generating, stopped
        self._loop = asyncio.new_event_loop()
        self._queue: Optional[asyncio.Queue] = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="glmtui-remote", daemon=True)

    # ------------------------------------------------------------ public API (any thread)

    def start(self) -> "RemoteEngine":
        if not self._thread.is_alive():
            self._thread.start()
            self._ready.wait(10)
            if self._autoconnect:
                self.load("")
        return self

    def load(self, path: str = "", mode: str = "remote", device: str = "", sink: Optional[Listener] = None) -> int:
        """Connect and report the server's model (a remote engine cannot load one)."""
        return self._submit("load", {"path": str(path or "")}, sink)

    def connect(self, sink: Optional[Listener] = None) -> int:
        return self.load("", sink=sink)

    def cancel(self, request_id: Optional[int] = None) -> None:
        with self._lock:
            command = self._current if request_id is None else self._pending.get(request_id)
            if command is None or command.kind != "generate":
                return
            command.cancelled = True
            task = command.task
        if task is not None:
            try:
                self._loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # loop closed
                pass

    def memory_report(self) -> MemoryReport:
        """Nothing of the model is held here: the server's processes are not ours to measure."""
        return MemoryReport()

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._lock:
            pending = list(self._pending.values())
        for command in pending:
            self.cancel(command.request_id)
        if self._thread.is_alive():
            self._post(_Command("stop", 0))
            self._thread.join(timeout)
        self.state = "stopped"

    # ------------------------------------------------------------ internals

    def _post(self, command: _Command) -> None:
        queue = self._queue
        if queue is None:
            return  # not started (or stopped): nothing would take it
        try:
            self._loop.call_soon_threadsafe(queue.put_nowait, command)
        except RuntimeError:  # the loop has closed
            pass

    def _submit(self, kind: str, args: dict, sink: Optional[Listener]) -> int:
        request_id = next(self._ids)
        command = _Command(kind, request_id, args, sink)
        if not self._thread.is_alive():
            self._emit(command, Failed(request_id, "the remote engine is not running (call start())", kind))
            return request_id
        with self._lock:
            self._pending[request_id] = command
        self._post(command)
        return request_id

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            # a stream left at [DONE] leaves httpx's async generators open: close them before the loop,
            # or Python prints "Task was destroyed but it is pending!" at exit
            try:
                _settle_loop(self._loop)
            finally:
                self._loop.close()

    async def _serve(self) -> None:
        import httpx

        self._queue = asyncio.Queue()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        timeout = httpx.Timeout(self._timeout, connect=self._connect_timeout)
        async with httpx.AsyncClient(base_url=self.endpoint, headers=headers, timeout=timeout,
                                     trust_env=not _is_loopback(self.endpoint)) as client:
            self._client = client
            self._ready.set()
            while True:
                command = await self._queue.get()
                if command.kind == "stop":
                    return
                handler = getattr(self, f"_do_{command.kind}")
                with self._lock:
                    self._current = command
                    command.task = asyncio.create_task(handler(command))
                try:
                    await asyncio.wait({command.task})
                    if command.task.cancelled():  # cancelled before it ran
                        self._emit(command, cancelled(command.request_id))
                        continue
                    exc = command.task.exception()
                    if exc is not None:
                        self._emit(command, crashed(command.request_id, exc, command.kind,
                                                    "".join(traceback.format_exception(exc))))
                finally:
                    self._command_done(command, self.model_info is not None)

    async def _served_models(self) -> list[dict]:
        import httpx

        try:
            response = await self._client.get("/models")
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot reach the server at {self.endpoint}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise RemoteError(_error_message(response.status_code, response.content))
        try:
            data = response.json()["data"]
            return [card for card in data if isinstance(card, dict) and isinstance(card.get("id"), str)]
        except (ValueError, KeyError, TypeError) as exc:
            raise RemoteError(f"{self.endpoint}/models is not an OpenAI model list") from exc

    async def _do_load(self, command: _Command) -> None:
        started = time.perf_counter()
        wanted = command.args.get("path") or self._model_id or ""
        self.state = "loading"
        self._emit(command, LoadProgress(command.request_id, f"connecting to {self.endpoint}", None))
        try:
            cards = await self._served_models()
        except RemoteError as exc:
            self.state = "ready" if self.model_info is not None else "empty"
            self._emit(command, Failed(command.request_id, str(exc), "load"))
            return
        ids = [card["id"] for card in cards]
        if wanted and wanted not in ids:
            self.state = "ready" if self.model_info is not None else "empty"
            self._emit(command, Failed(
                command.request_id,
                f"a remote engine cannot load models: {self.endpoint} serves {', '.join(ids) or 'nothing'}, "
                f"not {wanted!r}. Load models on the server, or run glmtui without --endpoint.",
                "load",
            ))
            return
        if not wanted and not ids:
            self.state = "empty"
            self._emit(command, Failed(command.request_id, f"{self.endpoint} serves no model", "load"))
            return
        model_id = wanted or ids[0]
        problem = await self._wait_until_served(command)
        if problem:
            self.state = "ready" if self.model_info is not None else "empty"
            self._emit(command, Failed(command.request_id, problem, "load"))
            return
        card = next((c for c in cards if c["id"] == model_id), {})
        context = card.get("max_model_len") or card.get("context_length") or 0
        context = int(context) if isinstance(context, (int, float)) else 0
        self._model_id = model_id
        self._detached = False
        # the server builds the prompts (and turns tool calls into OpenAI's shape)
        self.model_info = ModelInfo(model_id, self.endpoint, "remote", self.endpoint, 0, context, chat_format="remote")
        self.state = "ready"
        self._emit(command, LoadProgress(command.request_id, "connected", 1.0))
        self._emit(command, Loaded(command.request_id, model_id, self.endpoint, "remote", self.endpoint, 0,
                                   time.perf_counter() - started, context, chat_format="remote"))

    async def _wait_until_served(self, command: _Command, limit: float = 900.0) -> str:
        """A server can list its model before it can answer (glmtui serve while it loads): wait while its
        /health says "loading"; "" when it answers, else why not. Servers without /health are taken as ready."""
        import httpx

        health = self.endpoint.removesuffix("/v1") + "/health"
        started = time.monotonic()
        while True:
            try:
                response = await self._client.get(health)
            except httpx.HTTPError:
                return ""
            if response.status_code != 503:
                return ""
            try:
                status = response.json().get("status")
            except (ValueError, AttributeError):
                status = None
            if status != "loading":
                return _error_message(503, response.content) if status else ""
            waited = time.monotonic() - started
            if waited > limit:
                return f"the server at {self.endpoint} was still loading its model after {limit:.0f} s"
            self._emit(command, LoadProgress(command.request_id, f"the server is loading its model ({waited:.0f} s)"))
            await asyncio.sleep(0.5)

    async def _do_unload(self, command: _Command) -> None:
        name = self.model_info.name if self.model_info is not None else ""
        self.model_info = None
        self._detached = True
        self.state = "empty"
        self._emit(command, Unloaded(command.request_id, name, None))

    def _request_body(self, model: str, messages: Sequence[ChatMessage], params: GenerationParams,
                      tools: Optional[list], prompt_text: Optional[str] = None) -> dict:
        body: dict = {
            "model": model,
            "stream": True,
            # usage in every chunk (vLLM, SGLang, glmtui serve): a stopped reply still has exact counts
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "max_tokens": int(params.max_new_tokens),
            "temperature": float(params.temperature),
            "top_p": float(params.top_p),
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = int(params.seed)
        if params.top_k:
            body["top_k"] = int(params.top_k)
        if params.repetition_penalty != 1.0:
            body["repetition_penalty"] = float(params.repetition_penalty)
        if prompt_text is not None:  # /v1/completions: the text is continued as it is
            body["prompt"] = prompt_text
            return body
        if params.thinking is not None:  # reasoning models: vLLM, SGLang and glmtui serve pass it to the template
            body["chat_template_kwargs"] = {"enable_thinking": bool(params.thinking)}
        body["messages"] = to_openai_messages(messages)
        if tools:
            body["tools"] = [t if t.get("type") == "function" and "function" in t
                             else {"type": "function", "function": t} for t in tools if isinstance(t, dict)]
        return body

    async def _do_generate(self, command: _Command) -> None:
        import httpx

        rid = command.request_id
        refusal = refused(rid, command.cancelled, command.args["params"], not self._detached,
                          "no model is loaded — connect to the server first")
        if refusal is not None:
            self._emit(command, refusal)
            return
        started = time.perf_counter()
        text_parts: list[str] = []
        reasoning_parts: list[str] = []  # a reasoning model's <think> text (reasoning_content deltas)
        chunks = 0
        first_at: Optional[float] = None
        usage: dict = {}
        finish = "stop"
        tool_calls: dict[int, dict] = {}
        self.state = "generating"
        try:
            if self._model_id is None:
                cards = await self._served_models()
                if not cards:
                    raise RemoteError(f"{self.endpoint} serves no model")
                self._model_id = cards[0]["id"]
            prompt_text = command.args.get("prompt_text")
            body = self._request_body(self._model_id, command.args["messages"], command.args["params"],
                                      command.args.get("tools"), prompt_text)
            route = "/chat/completions" if prompt_text is None else "/completions"
            async with self._client.stream("POST", route, json=body) as response:
                if response.status_code != 200:
                    raise _refusal(response.status_code, await response.aread())
                self._emit(command, Started(rid, 0))
                lines = cast(AsyncGenerator[str, None], response.aiter_lines())  # an async generator in httpx
                async with contextlib.aclosing(lines):  # closed here at [DONE], not later by the GC
                    async for line in lines:
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        try:
                            chunk = json.loads(data)
                        except ValueError:
                            continue
                        if not isinstance(chunk, dict):
                            continue
                        if "error" in chunk:
                            error = chunk["error"]
                            message = error.get("message") if isinstance(error, dict) else str(error)
                            raise RemoteError(f"the server stopped the reply: {message}")
                        if chunk.get("usage"):
                            usage = chunk["usage"]
                        for choice in chunk.get("choices") or ():
                            delta = choice.get("delta") or {}
                            content = delta.get("content") if prompt_text is None else choice.get("text")
                            # vLLM and SGLang send the reasoning as reasoning_content (newer vLLM: reasoning)
                            thought = delta.get("reasoning_content") or delta.get("reasoning")
                            if isinstance(thought, str) and thought and prompt_text is None:
                                if first_at is None:
                                    first_at = time.perf_counter()
                                chunks += 1
                                reasoning_parts.append(thought)
                                self._emit(command, Token(rid, thought, reasoning=True))
                            if content:
                                if first_at is None:
                                    first_at = time.perf_counter()
                                chunks += 1
                                text_parts.append(content)
                                self._emit(command, Token(rid, content))
                            for call in delta.get("tool_calls") or ():
                                slot = tool_calls.setdefault(call.get("index", 0), {"name": "", "arguments": ""})
                                function = call.get("function") or {}
                                slot["name"] += function.get("name") or ""
                                slot["arguments"] += function.get("arguments") or ""
                            if choice.get("finish_reason"):
                                finish = "length" if choice["finish_reason"] == "length" else "stop"
        except asyncio.CancelledError:
            self._finish(command, started, first_at, text_parts, usage, chunks, "cancelled", reasoning_parts)
            return
        except RemoteError as exc:
            self._settle()
            self._emit(command, Failed(rid, str(exc), "generate", kind=exc.kind))
            return
        except httpx.HTTPError as exc:
            self._settle()
            self._emit(command, Failed(rid, f"lost the server at {self.endpoint}: {type(exc).__name__}: {exc}",
                                       "generate"))
            return
        for call in tool_calls.values():  # shown as ChatGLM3 writes a tool call: name, newline, arguments
            text = ("\n" if text_parts else "") + f"{call['name']}\n{call['arguments']}"
            text_parts.append(text)
            self._emit(command, Token(rid, text))
        if command.cancelled:
            finish = "cancelled"
        self._finish(command, started, first_at, text_parts, usage, chunks, finish, reasoning_parts)

    def _settle(self) -> None:
        """State after a command, set before its final event so listeners see it."""
        self.state = "ready" if self.model_info is not None else "empty"

    def _finish(self, command, started, first_at, text_parts, usage, chunks, reason, reasoning_parts=()) -> None:
        self._settle()
        finished = time.perf_counter()
        completion = int(usage.get("completion_tokens") or chunks) if isinstance(usage, dict) else chunks
        prompt = int(usage.get("prompt_tokens") or 0) if isinstance(usage, dict) else 0
        decode = finished - first_at if first_at else 0.0
        total = finished - started
        if completion > 1 and decode >= max(MIN_DECODE_SPAN, 0.25 * total):
            tps = (completion - 1) / decode
        elif completion > 1 and total > 0:
            # the tokens came in a burst after a stall (network, server queue): the time between them says
            # nothing, so the rate is taken over the whole reply (a lower bound) rather than shown as thousands
            tps = completion / total
        else:
            tps = None
        self._emit(command, Finished(
            command.request_id, "".join(text_parts), prompt, completion,
            (first_at - started) if first_at else None, tps, finished - started, reason,
            reasoning="".join(reasoning_parts),
        ))


def to_openai_messages(messages: Sequence[ChatMessage]) -> list[dict]:
    """ChatGLM3-style turns -> OpenAI messages (observation -> tool, tool-call turns -> tool_calls)."""
    out: list[dict] = []
    last_call_id: Optional[str] = None
    for index, message in enumerate(messages):
        if message.role == "observation":
            out.append({"role": "tool", "content": message.content, "tool_call_id": last_call_id or f"call_{index}"})
        elif message.role == "assistant" and message.metadata.strip():
            arguments = _call_arguments(message.content)
            if arguments is None:
                out.append({"role": "assistant", "content": message.content})
                continue
            last_call_id = f"call_{index}"
            out.append({"role": "assistant", "content": None, "tool_calls": [{
                "id": last_call_id, "type": "function",
                "function": {"name": message.metadata.strip(), "arguments": json.dumps(arguments, ensure_ascii=False)},
            }]})
        else:
            out.append({"role": message.role, "content": message.content})
    return out


def _call_arguments(content: str) -> Optional[dict]:
    from .tools import call_arguments  # the ChatGLM3 codec: no eval

    return call_arguments(content)
