"""OpenAI-compatible HTTP API over one inference worker (``glmtui serve``).

Routes: ``GET /health`` (always open), ``GET /v1/models``, ``GET /v1/models/{id}``
and ``POST /v1/chat/completions`` (JSON, or SSE ``chat.completion.chunk``s ending
in ``data: [DONE]``). All requests share one worker: they run one at a time in
arrival order (the worker's FIFO queue). A client that goes away — mid-stream,
mid non-streaming request, or while still queued — cancels its generation.

Errors always carry OpenAI's body ``{"error": {"message", "type", "param", "code"}}``:
400 for bad input (malformed JSON, bad parameters, invalid Unicode, a conversation
the model's format or context cannot take, a Host header not answered), 401 for a
missing/wrong API key, 404 for an unknown model, 413 for a body over the cap, 429
(type ``rate_limit_error``, with ``Retry-After``) when too many requests are queued,
503 while no model is loaded. Anything unexpected is a 500 with a generic message;
its details go to the ``glmtui.server`` log only. Host, key and body cap are
checked before FastAPI sees the request (``server_guard``).

Tool calls follow ChatGLM3's PROMPT.md: OpenAI ``tools`` become the function list
appended to the system prompt, role ``tool`` messages become ``observation``
turns, and a reply of the shape ``tool_name\\n```python\\ntool_call(k=v)\\n```` ``
(or ``tool_name\\n{json}``) is returned as ``tool_calls``. Model output is parsed
with ``json.loads`` and ``ast.literal_eval`` on single literal nodes — never
evaluated as code.

``create_app`` serves tests and the TUI's ``--api`` mode; ``run_server`` is the
``glmtui serve`` command. FastAPI and uvicorn are imported only when used.
"""

import ast
import asyncio
import json
import logging
import logging.handlers
import os
import queue
import re
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from .engine.events import ChatMessage, Failed, Finished, GenerationParams, Loaded, Started, Token, Unloaded
from .server_guard import HostPolicy, RequestGuard, error_body, key_matches

log = logging.getLogger("glmtui.server")

# ----------------------------------------------------------------- limits

MAX_TOKENS_LIMIT = 1 << 20  # anything above is absurd for any GLM context
MAX_BODY_BYTES = 32 * 1024 * 1024
# A token never covers more characters than this (the longest pieces in GLM vocabularies are runs of
# whitespace or punctuation): a longer conversation cannot fit the context and is refused before tokenizing.
CHARS_PER_TOKEN_BOUND = 64
MIN_TEMPERATURE = 1e-5  # below this, sampling overflows: treated as greedy
DEFAULT_MAX_QUEUE = 64
TOOL_SYSTEM_PROMPT = "Answer the following questions as best as you can. You have access to the following tools:"
_TOOL_NAME = r"^[a-zA-Z0-9_-]{1,64}$"
_MAX_TOOL_CALL_CHARS = 100_000

# ----------------------------------------------------------------- request / response models


class _Model(BaseModel):
    # strict: JSON types as documented (no "1" for 1, no false for 0); unknown fields are ignored
    model_config = ConfigDict(extra="ignore", strict=True)


def _json_int(value):
    """JSON Schema's integer: 3 and 3.0, never 3.5, "3" or true."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _false_only(value):
    if value:
        raise ValueError("not supported: only false is accepted")
    return value


def json_int(**constraints):
    return Annotated[int, Field(**constraints), BeforeValidator(_json_int)]
Unsupported = Annotated[bool, AfterValidator(_false_only), Field(json_schema_extra={"const": False})]


class ContentPart(_Model):
    type: Literal["text"] = Field(description="only text parts are supported")
    text: str


class FunctionCall(_Model):
    name: str
    arguments: str = ""


class ToolCall(_Model):
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Model):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Union[str, list[ContentPart], None] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None
    tool_call_id: Optional[str] = None


class FunctionDefinition(_Model):
    name: str = Field(pattern=_TOOL_NAME)
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


class Tool(_Model):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Model):
    name: str


class NamedToolChoice(_Model):
    type: Literal["function"] = "function"
    function: NamedFunction


class StreamOptions(_Model):
    include_usage: Optional[bool] = None


class ResponseFormat(_Model):
    type: Literal["text"] = Field("text", description="only text is supported")


_FLOAT = dict(allow_inf_nan=False)


class ChatCompletionRequest(_Model):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: Optional[json_int(ge=1, le=MAX_TOKENS_LIMIT)] = Field(None)
    max_completion_tokens: Optional[json_int(ge=1, le=MAX_TOKENS_LIMIT)] = Field(None)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0, **_FLOAT)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0, **_FLOAT)
    top_k: Optional[json_int(ge=-1, le=1_000_000)] = Field(None, description="vLLM extension; 0 or -1 disables")
    repetition_penalty: Optional[float] = Field(None, ge=0.01, le=100.0, description="vLLM extension", **_FLOAT)
    n: Optional[json_int(ge=1, le=1)] = Field(1, description="only 1 is supported")
    stop: Union[str, Annotated[list[str], Field(max_length=16)], None] = None
    seed: Optional[json_int()] = Field(None, description="any integer; used modulo 2**64")
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    tools: Optional[list[Tool]] = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: Optional[bool] = None
    frequency_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0, description="accepted, ignored", **_FLOAT)
    presence_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0, description="accepted, ignored", **_FLOAT)
    logprobs: Optional[Unsupported] = Field(None, description="not supported")
    top_logprobs: Optional[json_int(ge=0, le=0)] = Field(None, description="not supported")
    logit_bias: Optional[dict[str, float]] = Field(None, max_length=0, description="not supported")
    response_format: Optional[ResponseFormat] = None
    user: Optional[str] = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length", "tool_calls"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: Optional[str] = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "glmtui"
    max_model_len: Optional[int] = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok", "loading", "no_model", "load_failed"]
    server: str = "glmtui"
    model: Optional[str] = None
    state: str
    queue: int
    detail: Optional[str] = None


# ----------------------------------------------------------------- errors


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


INTERNAL_ERROR = "internal error: the server could not process this request (details are in the server's log)"


def _internal(event: Failed) -> ApiError:
    """An unexpected failure: a generic 500 for the client, the details for the server's log only."""
    log.error("request %s failed: %s%s", event.request_id, event.message,
              f"\n{event.detail}" if event.detail else "")
    return ApiError(500, INTERNAL_ERROR, "server_error", None, "internal_error")


def _failed_to_error(event: Failed, model_loaded: bool) -> ApiError:
    """A Failed event that came before generation started: the request's fault, no model, or a server fault.

    Only failures whose text glmtui wrote for the user reach the client;
    anything else (an exception from a library) is a generic 500.
    """
    message = event.message
    if not model_loaded or "no model is loaded" in message:
        return ApiError(503, "no model is loaded", "server_error", None, "model_not_loaded")
    if event.during == "params":
        return ApiError(400, message, "invalid_request_error", None, "invalid_parameters")
    if "longer than the model's context" in message:
        return ApiError(400, message, "invalid_request_error", "messages", "context_length_exceeded")
    if message.startswith("cannot build the prompt:"):
        return ApiError(400, message, "invalid_request_error", "messages", None)
    return _during_generation(event)


def _during_generation(event: Failed) -> ApiError:
    """A Failed event once generation ran: out of memory is 503 (retry later), anything else a generic 500."""
    if event.message.startswith("out of memory"):
        return ApiError(503, event.message, "server_error", None, "out_of_memory")
    return _internal(event)


# ----------------------------------------------------------------- tool calls (no eval)


def format_tool_value(value: Any) -> str:
    """A JSON value written as a Python literal (for ``tool_call(k=...)`` in history)."""
    if value is None:
        return "None"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(format_tool_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)}: {format_tool_value(v)}"
                               for k, v in value.items()) + "}"
    return json.dumps(str(value), ensure_ascii=False)


def format_tool_call(arguments: dict) -> str:
    """ChatGLM3's code-style tool call body for an assistant turn (metadata = tool name)."""
    kwargs = ", ".join(
        f"{k}={format_tool_value(v)}" for k, v in arguments.items() if isinstance(k, str) and k.isidentifier()
    )
    return f"```python\ntool_call({kwargs})\n```"


def _jsonable(value: Any) -> Any:
    """Literal -> JSON-able value; tuples become lists. Raises ValueError otherwise."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("non-finite number")
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise ValueError("bad key")
            out[k if isinstance(k, str) else json.dumps(k)] = _jsonable(v)
        return out
    raise ValueError(f"{type(value).__name__} is not a JSON value")


def parse_tool_arguments(code: str) -> Optional[dict]:
    """Arguments of ``tool_call(a=1, b="x")`` or a JSON object; None when it is anything else.

    Only literal keyword values are accepted; each is read with ``ast.literal_eval``
    on its own AST node (numbers, strings, lists, dicts, True/False/None), so names,
    calls, attribute access, lambdas and comprehensions are rejected, never run.
    """
    code = code.strip()
    if not code or len(code) > _MAX_TOOL_CALL_CHARS:
        return None
    if code.startswith("{"):
        try:
            value = json.loads(code)
        except (ValueError, RecursionError):
            return None
        return value if isinstance(value, dict) else None
    try:
        tree = ast.parse(code, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "tool_call"):
        return None
    if call.args:
        return None
    arguments: dict = {}
    for keyword in call.keywords:
        if keyword.arg is None:  # **kwargs
            return None
        try:
            arguments[keyword.arg] = _jsonable(ast.literal_eval(keyword.value))
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            return None
    return arguments


def _strip_fences(body: str) -> str:
    lines = body.strip().split("\n")
    if lines and lines[0].strip().startswith("```"):
        lines = lines[1:]
    if lines and lines[-1].strip().startswith("```"):
        lines = lines[:-1]
    return "\n".join(lines)


def parse_tool_call(text: str, tool_names: Optional[set[str]] = None) -> Optional[tuple[str, dict]]:
    """(name, arguments) when ``text`` is a ChatGLM3 tool call, else None.

    The reply's first line is ChatGLM3's metadata (the tool name; empty for a plain
    answer); the rest is a ```python tool_call(...)``` block or a JSON object.
    """
    head, sep, body = text.partition("\n")
    name = head.strip()
    if not sep or not re.match(_TOOL_NAME, name):
        return None
    if tool_names is not None and name not in tool_names:
        return None
    arguments = parse_tool_arguments(_strip_fences(body))
    if arguments is None:
        return None
    return name, arguments


def tool_call_object(name: str, arguments: dict) -> dict:
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


# ----------------------------------------------------------------- request -> engine


def _content_text(message: Message) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


def _tool_call_turn(call: ToolCall) -> ChatMessage:
    """An earlier tool call as ChatGLM3 wrote it: metadata = tool name, content = the call.

    Arguments that are not a JSON object are kept as they came.
    """
    raw = call.function.arguments or "{}"
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        value = None
    content = format_tool_call(value) if isinstance(value, dict) else raw
    return ChatMessage("assistant", content, call.function.name)


def to_chat_messages(messages: list[Message]) -> list[ChatMessage]:
    """OpenAI messages -> ChatGLM3-style turns (tool -> observation, tool calls -> metadata)."""
    out: list[ChatMessage] = []
    for message in messages:
        role = message.role
        text = _content_text(message)
        if role in ("system", "developer"):
            out.append(ChatMessage("system", text))
        elif role == "user":
            out.append(ChatMessage("user", text))
        elif role in ("tool", "function"):
            out.append(ChatMessage("observation", text))
        else:  # assistant
            if text or not message.tool_calls:
                out.append(ChatMessage("assistant", text))
            for call in message.tool_calls or ():
                out.append(_tool_call_turn(call))
    return out


def _chat_format_name(worker) -> Optional[str]:
    loaded = getattr(worker, "_loaded", None)
    fmt = getattr(loaded, "chat_format", None)
    return getattr(fmt, "name", None)


def engine_tools(request: ChatCompletionRequest, chat_format: Optional[str]) -> Optional[list]:
    """The tool list in the shape the loaded model's format expects (None when no tools)."""
    if not request.tools or request.tool_choice == "none":
        return None
    if chat_format == "chatglm3":  # PROMPT.md: a plain list of function definitions
        return [t.function.model_dump(exclude_none=True, exclude={"strict"}) for t in request.tools]
    return [t.model_dump(exclude_none=True) for t in request.tools]


def with_tool_system_prompt(messages: list[ChatMessage], tools: Optional[list], chat_format: Optional[str]):
    """ChatGLM3 lists tools in the system turn: add one when the request has none."""
    if tools and chat_format == "chatglm3" and (not messages or messages[0].role != "system"):
        return [ChatMessage("system", TOOL_SYSTEM_PROMPT)] + list(messages)
    return messages


_SURROGATE = re.compile("[\ud800-\udfff]")


def _text_items(value, path: tuple = ()):
    """(path, depth, text) for every string and scalar in a JSON value, dict keys included; no recursion."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                yield where, len(where), str(key)
                stack.append((child, where + (key,)))
        elif isinstance(item, (list, tuple)):
            stack.extend((child, where + (i,)) for i, child in enumerate(item))
        elif isinstance(item, str):
            yield where, len(where), item
        elif item is not None:
            yield where, len(where), str(item)


def check_request_text(request: ChatCompletionRequest, context_length: int) -> None:
    """Refuse text the prompt cannot be built from, before any tokenizing (400 either way).

    * Invalid Unicode: a lone surrogate (``"\ud800"`` in JSON) cannot be encoded
      by any tokenizer.
    * Size: the characters the prompt takes (contents, tool calls and tool
      definitions, counting the indentation tool JSON is written with) above
      ``context_length * CHARS_PER_TOKEN_BOUND`` cannot fit the context: say so
      now rather than tokenizing megabytes to find out.
    """
    parts = request.model_dump(include={"messages", "tools", "stop"}, exclude_none=True)
    chars = 0
    for where, depth, text in _text_items(parts):
        bad = _SURROGATE.search(text)
        if bad is not None:
            name = ".".join(str(x) for x in where) or "body"
            raise ApiError(400, f"{name}: the text is not valid Unicode (a lone surrogate, "
                                f"\\u{ord(bad.group()):04x}, at character {bad.start()})",
                           param=name, code="invalid_text")
        chars += len(text) + 4 * depth + 4
    limit = context_length * CHARS_PER_TOKEN_BOUND
    if context_length and chars > limit:
        raise ApiError(400, f"the conversation is {chars:,} characters: it cannot fit the model's context of "
                            f"{context_length:,} tokens (at most {limit:,} characters are accepted, "
                            f"{CHARS_PER_TOKEN_BOUND} per token); shorten it",
                       param="messages", code="context_length_exceeded")


def generation_params(request: ChatCompletionRequest, context_length: int) -> GenerationParams:
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    max_tokens = request.max_completion_tokens or request.max_tokens
    param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
    if max_tokens is None:
        max_tokens = context_length or 2048
    elif context_length and max_tokens > context_length:
        raise ApiError(400, f"{param} is {max_tokens}, more than the model's context of {context_length} tokens",
                       param=param, code="context_length_exceeded")
    defaults = GenerationParams()
    temperature = defaults.temperature if request.temperature is None else request.temperature
    if temperature < MIN_TEMPERATURE:
        temperature = 0.0
    return GenerationParams(
        max_new_tokens=int(max_tokens),
        temperature=float(temperature),
        top_p=defaults.top_p if request.top_p is None else float(request.top_p),
        top_k=max(0, request.top_k or 0),
        repetition_penalty=request.repetition_penalty or 1.0,
        stop=tuple(s for s in stops if s),
        seed=None if request.seed is None else request.seed % (1 << 64),
    )


def reply_text(text: str, chatglm3: bool) -> str:
    """A ChatGLM3 reply starts with its metadata line, empty for a plain answer: drop that newline
    (as ChatGLM3's own ``chat()`` does)."""
    return text[1:] if chatglm3 and text.startswith("\n") else text


def completion_body(completion_id: str, created: int, model: str, finished: Finished,
                    tool_names: Optional[set[str]], chatglm3: bool = False) -> dict:
    """The non-streaming response for a finished (not cancelled) generation."""
    message: dict = {"role": "assistant", "content": reply_text(finished.text, chatglm3)}
    reason = "length" if finished.finish_reason == "length" else "stop"
    call = parse_tool_call(finished.text, tool_names) if tool_names else None
    if call is not None:
        message = {"role": "assistant", "content": None, "tool_calls": [tool_call_object(*call)]}
        reason = "tool_calls"
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reason}],
        "usage": _usage(finished),
        "system_fingerprint": None,
    }


def _usage(finished: Finished) -> dict:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


# ----------------------------------------------------------------- the app


class _ClientGone(Exception):
    pass


class _Pipe:
    """Events of one request, moved from the worker thread onto the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self._checked = time.monotonic()
        self._getter: Optional[asyncio.Future] = None

    def __call__(self, event) -> None:  # worker thread: never blocks
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is gone
            pass

    async def next(self, request=None, poll: float = 0.1):
        """The next event; raises _ClientGone when ``request``'s client disconnected meanwhile.

        The client is checked at least every ``poll`` seconds, whether or not
        events keep arriving. One ``queue.get()`` stays pending across polls:
        ``asyncio.wait_for`` on it would cancel it at each timeout, and on
        Python < 3.12 a get that completed as the timeout fired was lost —
        a lost Started/Finished left a client waiting forever under load.
        """
        while True:
            if request is None:
                if self._getter is not None:  # a get left pending by an earlier poll holds the next event
                    return await self._take(None)
                return await self.queue.get()  # cancelled with its caller: nothing left pending
            now = time.monotonic()
            if now - self._checked >= poll:
                self._checked = now
                if await request.is_disconnected():
                    if self._getter is not None:
                        self._getter.cancel()
                        self._getter = None
                    raise _ClientGone()
            event = await self._take(max(0.0, poll - (now - self._checked)) or poll)
            if event is not _NOTHING:
                return event

    async def _take(self, timeout: Optional[float]):
        if self._getter is None:
            self._getter = asyncio.ensure_future(self.queue.get())
        done, _ = await asyncio.wait({self._getter}, timeout=timeout)
        if not done:
            return _NOTHING
        getter, self._getter = self._getter, None
        return getter.result()


_NOTHING = object()


def _union_tag(item) -> bool:
    """pydantic puts union members' names in error locations (``stop.str``, ``tool_choice.NamedToolChoice``)."""
    if isinstance(item, int):
        return False
    item = str(item)
    return "[" in item or item[:1].isupper() or item in ("str", "int", "float", "bool", "list", "dict", "none")


_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 429, 503)}


def create_app(worker, model_name: str, api_key: Optional[str] = None, *, max_queue: int = DEFAULT_MAX_QUEUE,
               max_body: int = MAX_BODY_BYTES, host: str = "127.0.0.1", allow_hosts: tuple = ()):
    """The FastAPI app over ``worker`` (an InferenceWorker or anything with its interface).

    ``model_name`` is the id clients pass as ``model``; the loaded model's own
    name is accepted too. With ``api_key``, every route except /health needs
    ``Authorization: Bearer <api_key>``. ``host`` is the address the server is
    bound to; with ``allow_hosts`` it decides which ``Host`` headers are
    answered (``server_guard.HostPolicy``).
    """
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from fastapi.security import HTTPBearer
    from sse_starlette.sse import EventSourceResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from . import __version__

    api_key = api_key or None
    bearer = [Depends(HTTPBearer(auto_error=False))] if api_key else []
    app = FastAPI(title="glmtui OpenAI-compatible API", version=__version__)
    app.add_middleware(RequestGuard, api_key=api_key, max_body=max_body, hosts=HostPolicy(host, allow_hosts))
    app.state.worker = worker
    app.state.model_name = model_name
    app.state.load_error = None
    created_at = int(time.time())

    started: dict[int, float] = {}
    app.state.service_seconds = None  # moving mean of how long one generation holds the worker

    def track(event) -> None:  # worker thread
        if isinstance(event, Failed) and event.during == "load":
            app.state.load_error = event.message
        elif isinstance(event, (Loaded, Unloaded)):
            app.state.load_error = None
        elif isinstance(event, Started):
            started[event.request_id] = time.monotonic()
        elif isinstance(event, (Finished, Failed)) and event.request_id in started:
            took = time.monotonic() - started.pop(event.request_id)
            mean = app.state.service_seconds
            app.state.service_seconds = took if mean is None else 0.8 * mean + 0.2 * took

    worker.add_listener(track)

    def openapi() -> dict:
        # Built per call, for the model loaded now: its id is the example ``model`` (so generated
        # requests reach real work) and its context bounds max_tokens, as the handler enforces.
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        request_schema = schema.get("components", {}).get("schemas", {}).get("ChatCompletionRequest", {})
        properties = request_schema.get("properties", {})
        if "model" in properties:
            properties["model"]["examples"] = names()
            request_schema["examples"] = [{"model": app.state.model_name, "max_tokens": 16,
                                           "messages": [{"role": "user", "content": "hi"}]}]
        limit = context_length()
        for field in ("max_tokens", "max_completion_tokens"):
            for option in properties.get(field, {}).get("anyOf", []):
                if limit and option.get("type") == "integer":
                    option["maximum"] = limit
        return schema

    app.openapi = openapi

    # -------------------------------------------------------- error bodies

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        errors = exc.errors()
        # the most specific problem (union members each report one; the deepest is the useful one)
        first = max(errors, key=lambda e: len(e.get("loc", ()))) if errors else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body" and not _union_tag(x)]
        kind = first.get("type", "")
        if kind == "json_invalid":
            message = f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".rstrip(": ")
            loc = []
        elif kind == "missing" and not loc:
            message = "the request needs a JSON body"
        else:
            message = f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid value')}"
            if len(errors) > 1:
                message += f" (and {len(errors) - 1} more problem(s))"
        return JSONResponse(error_body(message, "invalid_request_error", ".".join(loc) or None, kind or None),
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request, exc: Exception):  # starlette logs the traceback after this answer
        return JSONResponse(error_body(INTERNAL_ERROR, "server_error", None, "internal_error"), status_code=500)

    # -------------------------------------------------------- helpers

    def names() -> list[str]:
        out = [app.state.model_name]
        info = worker.model_info
        if info is not None and info.name not in out:
            out.append(info.name)
        return out

    def context_length() -> int:
        info = worker.model_info
        return int(info.context_length or 0) if info is not None else 0

    def require_model(requested: str) -> None:
        if requested not in names():
            raise ApiError(404, f"the model {requested!r} does not exist; this server serves {app.state.model_name!r}",
                           param="model", code="model_not_found")
        if worker.model_info is None:
            if worker.state == "loading":
                raise ApiError(503, "the model is still loading; retry shortly", "server_error", None,
                               "model_loading")
            detail = f": {app.state.load_error}" if app.state.load_error else ""
            raise ApiError(503, f"no model is loaded{detail}", "server_error", None, "model_not_loaded")

    def queue_full() -> ApiError:
        """429 with Retry-After: about when one generation ends and frees a place (1-60 s)."""
        mean = app.state.service_seconds
        retry = min(60, max(1, int(-(-mean // 1)))) if mean else 1
        return ApiError(429, f"{max_queue} requests are already queued; retry in about {retry} s",
                        "rate_limit_error", None, "queue_full", {"Retry-After": str(retry)})

    # -------------------------------------------------------- routes

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health(request: Request):
        info = worker.model_info
        if info is not None:
            status, code = "ok", 200
        elif worker.state == "loading":
            status, code = "loading", 503
        else:
            status, code = ("load_failed" if app.state.load_error else "no_model"), 503
        # /health needs no key: why a load failed (file paths) is only told to a caller with the key
        keyed = key_matches(request.headers.get("authorization", ""), api_key)
        body = Health(status=status, model=app.state.model_name, state=str(worker.state),
                      queue=int(worker.queue_length()), detail=app.state.load_error if keyed else None)
        return JSONResponse(body.model_dump(), status_code=code)

    def card(name: str) -> ModelCard:
        return ModelCard(id=name, created=created_at, max_model_len=context_length() or None)

    @app.get("/v1/models", response_model=ModelList, dependencies=bearer, responses=_ERRORS)
    async def list_models():
        return ModelList(data=[card(name) for name in names()])

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard, dependencies=bearer, responses=_ERRORS)
    async def get_model(model_id: str):
        if model_id not in names():
            raise ApiError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")
        return card(model_id)

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        dependencies=bearer,
        responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}},
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        require_model(body.model)
        check_request_text(body, context_length())
        params = generation_params(body, context_length())
        chat_format = _chat_format_name(worker)
        messages = to_chat_messages(body.messages)
        tools = engine_tools(body, chat_format)
        messages = with_tool_system_prompt(messages, tools, chat_format)
        from .engine.prompts import PromptError, validate_conversation

        try:
            validate_conversation(messages)
        except PromptError as exc:
            raise ApiError(400, f"cannot build the prompt: {exc}", param="messages")
        if worker.queue_length() >= max_queue:
            raise queue_full()
        tool_names = {t.function.name for t in body.tools} if tools else None

        pipe = _Pipe(asyncio.get_running_loop())
        rid = worker.generate(messages, params, sink=pipe, tools=tools)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        done = False
        try:
            while True:  # until generation starts: errors here are proper HTTP errors
                event = await pipe.next(request)
                if isinstance(event, Started):
                    break
                if isinstance(event, Failed):
                    done = True
                    raise _failed_to_error(event, worker.model_info is not None)
                if isinstance(event, Finished):
                    done = True
                    raise ApiError(503, "the request was cancelled on the server", "server_error", None,
                                   "cancelled")
            if body.stream:
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                stream = _stream(pipe, rid, completion_id, created, body.model, include_usage, tool_names,
                                 chat_format == "chatglm3")
                done = True  # the stream owns the request from here on
                return EventSourceResponse(stream, sep="\n", ping=15)
            while True:
                event = await pipe.next(request)
                if isinstance(event, Finished):
                    done = True
                    if event.finish_reason == "cancelled":
                        raise ApiError(503, "the request was cancelled on the server", "server_error", None,
                                       "cancelled")
                    return JSONResponse(completion_body(completion_id, created, body.model, event, tool_names,
                                                        chat_format == "chatglm3"))
                if isinstance(event, Failed):
                    done = True
                    raise _during_generation(event)
        except _ClientGone:
            return Response(status_code=499)
        finally:
            if not done:
                worker.cancel(rid)

    def chunk(completion_id, created, model, delta, finish_reason=None, include_usage=False) -> str:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if include_usage:
            body["usage"] = None
        return json.dumps(body, ensure_ascii=False)

    async def _stream(pipe: _Pipe, rid: int, completion_id: str, created: int, model: str, include_usage: bool,
                      tool_names: Optional[set[str]], chatglm3: bool):
        finished = False
        text = ""
        first = [True]

        def content(piece: str) -> str:
            if first[0] and piece:
                first[0] = False
                return reply_text(piece, chatglm3)
            return piece

        held = tool_names is not None  # with tools, the first line decides: tool name or plain text
        tool_mode = False
        try:
            yield chunk(completion_id, created, model, {"role": "assistant", "content": ""}, None, include_usage)
            while True:
                event = await pipe.next()
                if isinstance(event, Token):
                    text += event.text
                    if held:
                        if "\n" not in text:
                            continue
                        held = False
                        tool_mode = text.partition("\n")[0].strip() in tool_names
                        piece = "" if tool_mode else content(text)
                    elif not tool_mode:
                        piece = content(event.text)
                    else:
                        piece = ""
                    if piece:
                        yield chunk(completion_id, created, model, {"content": piece}, None, include_usage)
                elif isinstance(event, Finished):
                    finished = True
                    if event.finish_reason == "cancelled":
                        yield json.dumps(error_body("the request was cancelled on the server", "server_error",
                                                    None, "cancelled"))
                        return
                    reason = "length" if event.finish_reason == "length" else "stop"
                    if held or tool_mode:
                        call = parse_tool_call(event.text, tool_names) if tool_mode else None
                        if call is not None:
                            tool = tool_call_object(*call)
                            delta = {"tool_calls": [{"index": 0, **tool}]}
                            yield chunk(completion_id, created, model, delta, None, include_usage)
                            reason = "tool_calls"
                        elif content(event.text):
                            yield chunk(completion_id, created, model, {"content": reply_text(event.text, chatglm3)},
                                        None, include_usage)
                    yield chunk(completion_id, created, model, {}, reason, include_usage)
                    if include_usage:
                        yield json.dumps({
                            "id": completion_id, "object": "chat.completion.chunk", "created": created,
                            "model": model, "system_fingerprint": None, "choices": [], "usage": _usage(event),
                        })
                    yield "[DONE]"
                    return
                elif isinstance(event, Failed):
                    finished = True
                    yield json.dumps(_during_generation(event).body())
                    return
        finally:
            if not finished:  # the client went away (or the server is stopping)
                worker.cancel(rid)

    return app


# ----------------------------------------------------------------- running it


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), ready for uvicorn; raises OSError (errno EADDRINUSE when taken).

    Bound before anything slow happens, so a taken port is reported at once
    and nobody can take it between the check and the server's start.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not a taken port: only TIME_WAIT leftovers
        # Accepted connections inherit this (Linux). Served from a socket of our own, asyncio does not set it
        # per connection, and Nagle + delayed ACK then held every keep-alive response ~40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def bind_problem(host: str, port: int, exc: OSError) -> str:
    """One line saying why (host, port) cannot be served."""
    import errno

    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} is already in use on {host}: stop what uses it or pick another with --port"
    if exc.errno == errno.EACCES:
        return f"not allowed to listen on {where} (ports below 1024 need privileges): pick another with --port"
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return f"cannot listen on {where}: {host} is not an address of this machine"
    return f"cannot listen on {where}: {exc.strerror or exc}"


class ServerThread:
    """uvicorn serving an app on a background thread (tests, and the TUI's --api mode).

    ``port=0`` picks a free port; ``url`` tells which.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.host = host
        self._socket = listen_socket(host, port)
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=3, lifespan="off")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="glmtui-api", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _run(self) -> None:
        self.server.run(sockets=[self._socket])

    def start(self, timeout: float = 15.0) -> "ServerThread":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        try:
            self._socket.close()
        except OSError:
            pass


def resolve_model(spec: str) -> tuple[str, str]:
    """(folder, name) for what the user typed: a folder, or a downloaded catalogue model."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return str(path), path.resolve().name
    try:
        from . import catalog
        from .config import default_paths

        entry = catalog.resolve(spec)
        status = catalog.local_status(entry, default_paths().models_dir)
        if status.path is not None and status.present:
            return str(status.path), entry.key
    except Exception:  # an unknown name: loading reports the missing folder
        pass
    return str(path), path.name or spec


def default_mode(device: str) -> str:
    """bf16 on CUDA, fp32 on CPU."""
    if device.startswith("cuda"):
        return "bf16"
    if device == "auto":
        import torch

        return "bf16" if torch.cuda.is_available() else "fp32"
    return "fp32"


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """Hands records to a log thread; when its queue is full the record is dropped: never blocks."""

    def prepare(self, record):
        return record  # same process: the listener's handlers format it (uvicorn's formatters need args)

    def enqueue(self, record) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            pass


def log_off_the_loop(logger_names=("uvicorn", "uvicorn.access"), limit: int = 10_000) -> list:
    """Move these loggers' output to threads of their own; returns the listeners (``.stop()`` them at exit).

    uvicorn writes one access-log line per request from the event loop. Into a
    stdout or stderr that is not drained (``glmtui serve | less`` left on one
    page, a pipe nobody reads) that write blocks once the 64 KiB pipe buffer is
    full, and the whole server stops answering. With this only the log thread
    waits; beyond ``limit`` waiting records, new ones are dropped.
    """
    listeners = []
    for name in logger_names:
        logger = logging.getLogger(name)
        handlers = list(logger.handlers)
        if not handlers:
            continue
        records: queue.Queue = queue.Queue(limit)
        for handler in handlers:
            logger.removeHandler(handler)
        logger.addHandler(_DroppingQueueHandler(records))
        listener = logging.handlers.QueueListener(records, *handlers, respect_handler_level=True)
        listener.start()
        listeners.append(listener)
    return listeners


def _watch_parent(parent_pid: int, server) -> None:
    while not server.should_exit:
        if os.getppid() != parent_pid:
            server.should_exit = True
            return
        time.sleep(0.5)


def _log_to_stderr() -> None:
    """Server-side details (unexpected failures) go to stderr, as uvicorn's own lines do."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("glmtui serve: %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def run_server(args) -> int:
    """``glmtui serve``: load ``--model`` on one worker and serve the API until Ctrl-C."""
    import uvicorn

    from .engine.worker import InferenceWorker

    if not getattr(args, "model", None):
        print("glmtui serve: give --model (a model folder or a downloaded catalogue model)", file=sys.stderr)
        return 2
    try:  # before loading anything: a taken port is said at once, in one line
        sock = listen_socket(args.host, args.port)
    except OSError as exc:
        print(f"glmtui serve: {bind_problem(args.host, args.port, exc)}", file=sys.stderr)
        return 1
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    path, name = resolve_model(args.model)
    device = getattr(args, "device", None) or "auto"
    mode = getattr(args, "mode", None) or default_mode(device)
    api_key = getattr(args, "api_key", None) or os.environ.get("GLMTUI_API_KEY") or None
    worker = InferenceWorker().start()
    app = create_app(worker, name, api_key, host=args.host, allow_hosts=tuple(getattr(args, "allow_host", None) or ()))
    config = uvicorn.Config(app, host=args.host, port=port, log_level="info", timeout_graceful_shutdown=5)
    _log_to_stderr()
    log_listeners = log_off_the_loop(("uvicorn", "uvicorn.access", log.name))
    server = uvicorn.Server(config)
    outcome: dict = {}

    def on_load(event) -> None:
        if isinstance(event, Loaded):
            print(f"glmtui serve: {event.model_name} loaded ({event.mode} on {event.device}, "
                  f"{event.load_seconds:.1f} s); serving {name!r} on http://{host}:{port}/v1",
                  file=sys.stderr, flush=True)
        elif isinstance(event, Failed):
            print(f"glmtui serve: cannot load {args.model}: {event.message}", file=sys.stderr, flush=True)
            outcome["failed"] = True
            server.should_exit = True

    print(f"glmtui serve: loading {path} ({mode}, device {device})", file=sys.stderr, flush=True)
    worker.load(path, mode, device, sink=on_load)
    parent = getattr(args, "parent_pid", None)
    if parent:
        threading.Thread(target=_watch_parent, args=(int(parent), server), daemon=True).start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown: nothing to report
        pass
    finally:
        worker.shutdown()
        for listener in log_listeners:
            listener.stop()
        sock.close()
    return 1 if outcome.get("failed") else 0
