"""The API's routes (a FastAPI ``APIRouter``) and ``create_app``, which puts them over one engine.
Kept whole past 400 lines: every route over one engine.

Routes: ``GET /health`` (always open), ``GET /v1/models``, ``GET /v1/models/{id}``,
``POST /v1/chat/completions`` (JSON, or SSE ``chat.completion.chunk``s ending
in ``data: [DONE]``) and ``POST /v1/completions`` (the legacy text completions:
the prompt continued as it is, for base models). All requests share one engine: they run one at a time in
arrival order (its FIFO queue). A client that goes away — mid-stream, mid
non-streaming request, or while still queued — cancels its generation.

Errors always carry OpenAI's body ``{"error": {"message", "type", "param", "code"}}``:
400 for bad input, 401 for a missing/wrong API key, 404 for an unknown model,
413 for a body over the cap, 429 (``rate_limit_error``, with ``Retry-After``)
when too many requests are queued, 503 while no model is loaded. Anything
unexpected is a 500 with a generic message; its details go to the
``glmtui.server`` log only. Host, key and body cap are checked before FastAPI
sees the request (guard.py).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine.api import Engine
from ..engine.events import Failed, Finished, GenerationParams, Loaded, Started, Unloaded
from .guard import HostPolicy, RequestGuard, error_body, key_matches
from .schemas import (
    DEFAULT_MAX_QUEUE,
    MAX_BODY_BYTES,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
)
from .streaming import ClientGone, Pipe, chat_stream, completion_stream
from .translate import (
    INTERNAL_ERROR,
    ApiError,
    cancelled,
    check_prompt_text,
    check_request_text,
    completion_body,
    during_generation,
    engine_tools,
    failed_to_error,
    generation_params,
    no_model,
    text_completion_body,
    to_chat_messages,
    with_tool_system_prompt,
)


@dataclass
class ServerState:
    """What the routes share: the engine, the served name, and what its events told."""

    engine: Engine
    model_name: str
    api_key: Optional[str]
    max_queue: int
    created_at: int = field(default_factory=lambda: int(time.time()))
    load_error: Optional[str] = None
    service_seconds: Optional[float] = None  # moving mean of how long one generation holds the engine
    _started: dict = field(default_factory=dict)

    def track(self, event) -> None:  # the engine's thread
        if isinstance(event, Failed) and event.during == "load":
            self.load_error = event.message
        elif isinstance(event, (Loaded, Unloaded)):
            self.load_error = None
        elif isinstance(event, Started):
            self._started[event.request_id] = time.monotonic()
        elif isinstance(event, (Finished, Failed)) and event.request_id in self._started:
            took = time.monotonic() - self._started.pop(event.request_id)
            mean = self.service_seconds
            self.service_seconds = took if mean is None else 0.8 * mean + 0.2 * took

    def names(self) -> list[str]:
        out = [self.model_name]
        info = self.engine.model_info
        if info is not None and info.name not in out:
            out.append(info.name)
        return out

    def context_length(self) -> int:
        info = self.engine.model_info
        return int(info.context_length or 0) if info is not None else 0

    def chatglm3(self) -> bool:
        info = self.engine.model_info
        return info is not None and info.chatglm3

    def require_model(self, requested: str) -> None:
        if requested not in self.names():
            raise ApiError(404, f"the model {requested!r} does not exist; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")
        if self.engine.model_info is None:
            if self.engine.state == "loading":
                raise ApiError(503, "the model is still loading; retry shortly", "server_error", None,
                               "model_loading")
            # Why a load failed names the server's paths: only a server with a key (every caller here
            # has proved it) tells it, as /health does.
            if self.load_error and self.api_key:
                raise no_model(self.load_error)
            raise no_model("the last load failed" if self.load_error else None)

    def check_queue(self, adding: int = 1) -> None:
        """429 with Retry-After (about when one generation ends and frees a place, 1-60 s) when
        ``adding`` more generations would queue more than ``max_queue``."""
        if self.engine.queue_length() + adding <= self.max_queue:
            return
        mean = self.service_seconds
        retry = min(60, max(1, int(-(-mean // 1)))) if mean else 1
        raise ApiError(429, f"{self.max_queue} requests are already queued; retry in about {retry} s",
                       "rate_limit_error", None, "queue_full", {"Retry-After": str(retry)})


def server_state(request: Request) -> ServerState:
    return request.app.state.glmtui


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 429, 503)}
_GENERATED: dict[int | str, dict[str, Any]] = {**_ERRORS, 200: {"content": {"text/event-stream": {}}}}  # JSON or SSE
open_router = APIRouter()  # no key needed
router = APIRouter()  # the /v1 routes: the key, when the server has one


@open_router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(request: Request):
    state = server_state(request)
    engine = state.engine
    if engine.model_info is not None:
        status, code = "ok", 200
    elif engine.state == "loading":
        status, code = "loading", 503
    else:
        status, code = ("load_failed" if state.load_error else "no_model"), 503
    # /health needs no key: why a load failed (file paths) is only told to a caller with the key
    keyed = key_matches(request.headers.get("authorization", ""), state.api_key)
    body = Health(status=status, model=state.model_name, state=str(engine.state),
                  queue=int(engine.queue_length()), detail=state.load_error if keyed else None)
    return JSONResponse(body.model_dump(), status_code=code)


def _card(state: ServerState, name: str) -> ModelCard:
    return ModelCard(id=name, created=state.created_at, max_model_len=state.context_length() or None)


@router.get("/v1/models", response_model=ModelList, responses=_ERRORS)
async def list_models(request: Request):
    state = server_state(request)
    return ModelList(data=[_card(state, name) for name in state.names()])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=_ERRORS)
async def get_model(model_id: str, request: Request):
    state = server_state(request)
    if model_id not in state.names():
        raise ApiError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")
    return _card(state, model_id)


def admit(body: ChatCompletionRequest | CompletionRequest, request: Request,
          check_text: Callable[[Any, int], None]) -> tuple[ServerState, GenerationParams]:
    """What a generation route checks first: the model named is the one served, the text fits its context;
    the server's state and the request's sampling as the engine's parameters."""
    state = server_state(request)
    state.require_model(body.model)
    context = state.context_length()
    check_text(body, context)
    return state, generation_params(body, context)


async def wait_started(engine, pipe: Pipe, request: Request, param: str = "messages"):
    """Events until generation starts: errors before that are proper HTTP errors (raised)."""
    while True:
        event = await pipe.next(request)
        if isinstance(event, Started):
            return event
        if isinstance(event, Failed):
            raise failed_to_error(event, engine.model_info is not None, param)
        if isinstance(event, Finished):
            raise cancelled()


async def wait_finished(pipe: Pipe, request: Request) -> Finished:
    """The Finished event of a generation that started (not cancelled); raises on anything else."""
    while True:
        event = await pipe.next(request)
        if isinstance(event, Finished):
            if event.finish_reason == "cancelled":
                raise cancelled()
            return event
        if isinstance(event, Failed):
            raise during_generation(event)


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=_GENERATED)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state, params = admit(body, request, check_request_text)
    engine = state.engine
    chatglm3 = state.chatglm3()
    messages = to_chat_messages(body.messages)
    tools = engine_tools(body, chatglm3)
    messages = with_tool_system_prompt(messages, tools, chatglm3)
    from ..engine.prompts import PromptError, validate_conversation

    try:
        validate_conversation(messages)
    except PromptError as exc:
        raise ApiError(400, f"cannot build the prompt: {exc}", param="messages") from exc
    state.check_queue()
    tool_names = {t.function.name for t in body.tools or ()} if tools else None

    pipe = Pipe(asyncio.get_running_loop())
    rid = engine.generate(messages, params, sink=pipe, tools=tools)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    done = False
    try:
        try:
            await wait_started(engine, pipe, request)
            if body.stream:
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                stream = chat_stream(engine, pipe, rid, completion_id, created, body.model, include_usage,
                                     tool_names, chatglm3)
                done = True  # the stream owns the request from here on
                return EventSourceResponse(stream, sep="\n", ping=15)
            finished = await wait_finished(pipe, request)
        except ApiError:
            done = True  # the request ended (failed or cancelled): nothing to cancel
            raise
        done = True
        return JSONResponse(completion_body(completion_id, created, body.model, finished, tool_names, chatglm3))
    except ClientGone:
        return Response(status_code=499)
    finally:
        if not done:
            engine.cancel(rid)


@router.post("/v1/completions", response_model=Completion, responses=_GENERATED)
async def completions(body: CompletionRequest, request: Request):
    state, params = admit(body, request, check_prompt_text)
    engine = state.engine
    prompts = body.prompts
    state.check_queue(len(prompts))

    loop = asyncio.get_running_loop()
    pipes = [Pipe(loop) for _ in prompts]  # one per prompt: each is read in turn
    rids = [engine.generate([], params, sink=pipe, prompt_text=prompt)
            for pipe, prompt in zip(pipes, prompts, strict=True)]
    completion_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    open_ids = set(rids)
    current = rids[0]
    try:
        try:
            await wait_started(engine, pipes[0], request, "prompt")
            if body.stream:
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                stream = completion_stream(engine, pipes, rids, completion_id, created, body.model, prompts,
                                           bool(body.echo), include_usage)
                open_ids = set()  # the stream owns the requests from here on
                return EventSourceResponse(stream, sep="\n", ping=15)
            finished = []
            for index, (pipe, current) in enumerate(zip(pipes, rids, strict=True)):
                if index:
                    await wait_started(engine, pipe, request, f"prompt.{index}")
                finished.append(await wait_finished(pipe, request))
                open_ids.discard(current)
        except ApiError:
            open_ids.discard(current)  # it ended (failed or was cancelled); the others are cancelled below
            raise
        return JSONResponse(text_completion_body(completion_id, created, body.model, prompts, finished,
                                                 bool(body.echo)))
    except ClientGone:
        return Response(status_code=499)
    finally:
        for rid in open_ids:  # the client went away, or a prompt failed: the rest need not run
            engine.cancel(rid)


# ----------------------------------------------------------------- error bodies


def _union_tag(item) -> bool:
    """pydantic puts union members' names in error locations (``stop.str``, ``tool_choice.NamedToolChoice``)."""
    if isinstance(item, int):
        return False
    item = str(item)
    return "[" in item or item[:1].isupper() or item in ("str", "int", "float", "bool", "list", "dict", "none")


async def _api_error(request, exc: ApiError):
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _validation_error(request, exc: RequestValidationError):
    errors = exc.errors()
    # the most specific problem (union members each report one; the deepest is the useful one)
    first = max(errors, key=lambda e: len(e.get("loc", ()))) if errors else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body" and not _union_tag(x)]
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        message = f"{'.'.join(loc) or 'body'}: not supported by this server"
    elif kind == "json_invalid":
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


async def _http_error(request, exc: StarletteHTTPException):
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _internal_error(request, exc: Exception):  # starlette logs the traceback after this answer
    return JSONResponse(error_body(INTERNAL_ERROR, "server_error", None, "internal_error"), status_code=500)


# ----------------------------------------------------------------- the app


def _openapi(app: FastAPI, state: ServerState):
    def openapi() -> dict:
        # Built per call, for the model loaded now: its id is the example ``model`` (so generated
        # requests reach real work) and its context bounds max_tokens, as the handlers enforce.
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schemas = schema.get("components", {}).get("schemas", {})
        limit = state.context_length()
        examples = {
            "ChatCompletionRequest": {"model": state.model_name, "max_tokens": 16,
                                      "messages": [{"role": "user", "content": "hi"}]},
            "CompletionRequest": {"model": state.model_name, "max_tokens": 16, "prompt": "Once upon a time"},
        }
        for name, example in examples.items():
            request_schema = schemas.get(name, {})
            properties = request_schema.get("properties", {})
            if "model" in properties:
                properties["model"]["examples"] = state.names()
                request_schema["examples"] = [example]
            for field_name in ("max_tokens", "max_completion_tokens"):
                for option in properties.get(field_name, {}).get("anyOf", []):
                    if limit and option.get("type") == "integer":
                        option["maximum"] = limit
        return schema

    return openapi


def create_app(engine, model_name: str, api_key: Optional[str] = None, *, max_queue: int = DEFAULT_MAX_QUEUE,
               max_body: int = MAX_BODY_BYTES, host: str = "127.0.0.1", allow_hosts: tuple = ()):
    """The FastAPI app over ``engine`` (any glmtui.engine.api.Engine: a worker, an engine process...).

    ``model_name`` is the id clients pass as ``model``; the loaded model's own
    name is accepted too. With ``api_key``, every route except /health needs
    ``Authorization: Bearer <api_key>``. ``host`` is the address the server is
    bound to; with ``allow_hosts`` it decides which ``Host`` headers are
    answered (``guard.HostPolicy``).
    """
    from .. import __version__

    api_key = api_key or None
    app = FastAPI(title="glmtui OpenAI-compatible API", version=__version__)
    app.add_middleware(RequestGuard, api_key=api_key, max_body=max_body, hosts=HostPolicy(host, allow_hosts))
    state = ServerState(engine, model_name, api_key, max_queue)
    app.state.glmtui = state
    engine.add_listener(state.track)
    # With a key, the /v1 routes document the bearer scheme (RequestGuard checks the key itself).
    bearer = [Depends(HTTPBearer(auto_error=False))] if api_key else []
    app.include_router(open_router)
    app.include_router(router, dependencies=bearer)
    app.openapi = _openapi(app, state)  # type: ignore[method-assign]  # FastAPI's way to customise the schema
    # the decorator form: add_exception_handler's type takes only handlers of any Exception
    app.exception_handler(ApiError)(_api_error)
    app.exception_handler(RequestValidationError)(_validation_error)
    app.exception_handler(StarletteHTTPException)(_http_error)
    app.add_exception_handler(Exception, _internal_error)
    return app
