"""OpenAI-compatible HTTP API over one engine (``glmtui serve``, the TUI's ``--api``).

Rooms: schemas.py (wire shapes and limits), translate.py (requests -> engine
messages and parameters; engine failures -> HTTP errors), streaming.py (engine
events onto the event loop; SSE), routes.py (the routes and ``create_app``),
guard.py (Host check, API key, body cap), run.py (``ServerThread``, log
plumbing, ``glmtui serve``). The ChatGLM3 tool-call codec is glmtui.engine.tools.

Tool calls follow ChatGLM3's PROMPT.md: OpenAI ``tools`` become the function
list of the system prompt, role ``tool`` messages become ``observation``
turns, and a reply ``tool_name\\n```python\\ntool_call(k=v)\\n```` `` (or
``tool_name\\n{json}``) is returned as ``tool_calls``; model output is never
evaluated as code.
"""

from ..engine.tools import (
    TOOL_SYSTEM_PROMPT,
    format_tool_call,
    format_tool_value,
    parse_tool_arguments,
    parse_tool_call,
)
from .guard import HostPolicy, RequestGuard, error_body, key_matches
from .routes import create_app
from .run import ServerThread, bind_problem, listen_socket, log_off_the_loop, run_server
from .schemas import CHARS_PER_TOKEN_BOUND, DEFAULT_MAX_QUEUE, MAX_BODY_BYTES, MAX_TOKENS_LIMIT
from .translate import (
    ApiError,
    check_request_text,
    completion_body,
    generation_params,
    reply_text,
    to_chat_messages,
    tool_call_object,
)

__all__ = [
    "TOOL_SYSTEM_PROMPT", "format_tool_call", "format_tool_value", "parse_tool_arguments", "parse_tool_call",
    "HostPolicy", "RequestGuard", "error_body", "key_matches", "create_app", "ServerThread", "bind_problem",
    "listen_socket", "log_off_the_loop", "run_server", "CHARS_PER_TOKEN_BOUND", "DEFAULT_MAX_QUEUE",
    "MAX_BODY_BYTES", "MAX_TOKENS_LIMIT", "ApiError", "check_request_text", "completion_body",
    "generation_params", "reply_text", "to_chat_messages", "tool_call_object",
]
