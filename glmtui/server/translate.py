"""Requests -> what the engine takes (messages, tools, parameters), engine failures -> HTTP errors.

Nothing here touches the engine or the web framework: plain functions of the
request, the loaded model's ``ModelInfo`` facts and the events.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from typing import Optional

from ..engine.events import ChatMessage, Failed, Finished, GenerationParams
from ..engine.tools import TOOL_SYSTEM_PROMPT, format_tool_call, parse_tool_call
from .guard import error_body
from .schemas import (
    CHARS_PER_TOKEN_BOUND,
    MIN_TEMPERATURE,
    ChatCompletionRequest,
    CompletionRequest,
    Message,
    ToolCall,
)

log = logging.getLogger("glmtui.server")

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
CANCELLED = "the request was cancelled on the server"


def no_model(load_error: Optional[str] = None) -> ApiError:
    """503 while nothing is loaded; ``load_error`` only for a caller allowed to read it (it names paths)."""
    detail = f": {load_error}" if load_error else ""
    return ApiError(503, f"no model is loaded{detail}", "server_error", None, "model_not_loaded")


def cancelled() -> ApiError:
    return ApiError(503, CANCELLED, "server_error", None, "cancelled")


def _internal(event: Failed) -> ApiError:
    """An unexpected failure: a generic 500 for the client, the details for the server's log only."""
    log.error("request %s failed: %s%s", event.request_id, event.message,
              f"\n{event.detail}" if event.detail else "")
    return ApiError(500, INTERNAL_ERROR, "server_error", None, "internal_error")


def failed_to_error(event: Failed, model_loaded: bool, param: str = "messages") -> ApiError:
    """A Failed event that came before generation started: the request's fault, no model, or a server fault.

    Matched on ``event.kind``: only failures glmtui wrote for the user reach the
    client; anything else (an exception from a library) is a generic 500.
    """
    if event.kind == "no_model" or not model_loaded:
        return no_model()
    if event.kind == "params":
        return ApiError(400, event.message, "invalid_request_error", None, "invalid_parameters")
    if event.kind == "context":
        return ApiError(400, event.message, "invalid_request_error", param, "context_length_exceeded")
    if event.kind == "prompt":
        return ApiError(400, event.message, "invalid_request_error", param, None)
    return during_generation(event)


def during_generation(event: Failed) -> ApiError:
    """A Failed event once generation ran: out of memory is 503 (retry later), anything else a generic 500."""
    if event.kind == "out_of_memory":
        return ApiError(503, event.message, "server_error", None, "out_of_memory")
    return _internal(event)


# ----------------------------------------------------------------- chat requests -> engine


def tool_call_object(name: str, arguments: dict) -> dict:
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


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


def engine_tools(request: ChatCompletionRequest, chatglm3: bool) -> Optional[list]:
    """The tool list in the shape the loaded model's format expects (None when no tools)."""
    if not request.tools or request.tool_choice == "none":
        return None
    if chatglm3:  # PROMPT.md: a plain list of function definitions
        return [t.function.model_dump(exclude_none=True, exclude={"strict"}) for t in request.tools]
    return [t.model_dump(exclude_none=True) for t in request.tools]


def with_tool_system_prompt(messages: list[ChatMessage], tools: Optional[list], chatglm3: bool):
    """ChatGLM3 lists tools in the system turn: add one when the request has none."""
    if tools and chatglm3 and (not messages or messages[0].role != "system"):
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


def check_request_text(request, context_length: int, fields: tuple = ("messages", "tools", "stop"),
                       what: str = "the conversation", param: str = "messages") -> None:
    """Refuse text the prompt cannot be built from, before any tokenizing (400 either way).

    * Invalid Unicode: a lone surrogate (``"\\ud800"`` in JSON) cannot be encoded
      by any tokenizer.
    * Size: the characters the prompt takes (contents, tool calls and tool
      definitions, counting the indentation tool JSON is written with) above
      ``context_length * CHARS_PER_TOKEN_BOUND`` cannot fit the context: say so
      now rather than tokenizing megabytes to find out.
    """
    parts = request.model_dump(include=set(fields), exclude_none=True)
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
        raise ApiError(400, f"{what} is {chars:,} characters: it cannot fit the model's context of "
                            f"{context_length:,} tokens (at most {limit:,} characters are accepted, "
                            f"{CHARS_PER_TOKEN_BOUND} per token); shorten it",
                       param=param, code="context_length_exceeded")


def check_prompt_text(request: CompletionRequest, context_length: int) -> None:
    """check_request_text for a completions request: valid Unicode everywhere, each prompt within the
    characters its context can take (each prompt is a generation of its own)."""
    check_request_text(request, 0, fields=("prompt", "stop"), param="prompt")
    limit = context_length * CHARS_PER_TOKEN_BOUND
    for index, text in enumerate(request.prompts):
        if context_length and len(text) > limit:
            name = "prompt" if isinstance(request.prompt, str) else f"prompt.{index}"
            raise ApiError(400, f"{name} is {len(text):,} characters: it cannot fit the model's context of "
                                f"{context_length:,} tokens (at most {limit:,} characters are accepted, "
                                f"{CHARS_PER_TOKEN_BOUND} per token); shorten it",
                           param=name, code="context_length_exceeded")


def generation_params(request, context_length: int) -> GenerationParams:
    """The engine's parameters for a chat or completion request (400 for a max_tokens over the context)."""
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    completion_max = getattr(request, "max_completion_tokens", None)
    max_tokens = completion_max or request.max_tokens
    param = "max_completion_tokens" if completion_max else "max_tokens"
    if max_tokens is None:
        max_tokens = context_length or 2048
    elif context_length and max_tokens > context_length:
        raise ApiError(400, f"{param} is {max_tokens}, more than the model's context of {context_length} tokens",
                       param=param, code="context_length_exceeded")
    defaults = GenerationParams()
    template_kwargs = getattr(request, "chat_template_kwargs", None) or {}
    thinking = template_kwargs.get("enable_thinking")  # vLLM's switch for reasoning models
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
        thinking=thinking if isinstance(thinking, bool) else None,
    )


# ----------------------------------------------------------------- engine -> responses


def reply_text(text: str, chatglm3: bool) -> str:
    """A ChatGLM3 reply starts with its metadata line, empty for a plain answer: drop that newline
    (as ChatGLM3's own ``chat()`` does)."""
    return text[1:] if chatglm3 and text.startswith("\n") else text


def finish_reason(finished: Finished) -> str:
    return "length" if finished.finish_reason == "length" else "stop"


def usage(finished: Finished) -> dict:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


def text_completion_body(completion_id: str, created: int, model: str, prompts: list[str],
                         finished: list[Finished], echo: bool) -> dict:
    """The non-streaming /v1/completions response: one choice per prompt, usage summed."""
    choices = [{"index": index, "text": (prompt if echo else "") + done.text, "logprobs": None,
                "finish_reason": finish_reason(done)}
               for index, (prompt, done) in enumerate(zip(prompts, finished, strict=True))]
    prompt_tokens = sum(done.prompt_tokens for done in finished)
    completion_tokens = sum(done.completion_tokens for done in finished)
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        "system_fingerprint": None,
    }


def completion_body(completion_id: str, created: int, model: str, finished: Finished,
                    tool_names: Optional[set[str]], chatglm3: bool = False) -> dict:
    """The non-streaming chat response for a finished (not cancelled) generation."""
    message: dict = {"role": "assistant", "content": reply_text(finished.text, chatglm3)}
    reason = finish_reason(finished)
    call = parse_tool_call(finished.text, tool_names) if tool_names else None
    if call is not None:
        message = {"role": "assistant", "content": None, "tool_calls": [tool_call_object(*call)]}
        reason = "tool_calls"
    if finished.reasoning:  # a reasoning model's <think> text, apart from the answer (vLLM, SGLang)
        message["reasoning_content"] = finished.reasoning
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reason}],
        "usage": usage(finished),
        "system_fingerprint": None,
    }
