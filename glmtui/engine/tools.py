"""ChatGLM3's tool-call codec (PROMPT.md of THUDM/ChatGLM3), without eval.

A ChatGLM3 tool call is a reply whose first line (its metadata) names the
tool and whose body is a ```python tool_call(k=v)``` block or a JSON object.
Model output is read with ``json.loads`` and ``ast.literal_eval`` on single
literal nodes: names, calls, attribute access and the like are refused, never
run. Used by the API server (tool calls out), the remote engine (tool calls
back into ChatGLM3 turns) and the agent. No torch, no web imports.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any, Optional

TOOL_SYSTEM_PROMPT = "Answer the following questions as best as you can. You have access to the following tools:"
TOOL_NAME = r"^[a-zA-Z0-9_-]{1,64}$"
MAX_TOOL_CALL_CHARS = 100_000


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
    if not code or len(code) > MAX_TOOL_CALL_CHARS:
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


def strip_fences(body: str) -> str:
    """The code inside a fenced block (the fences' lines dropped); the text as it is without fences."""
    lines = body.strip().split("\n")
    if lines and lines[0].strip().startswith("```"):
        lines = lines[1:]
    if lines and lines[-1].strip().startswith("```"):
        lines = lines[:-1]
    return "\n".join(lines)



def call_arguments(body: str) -> Optional[dict]:
    """Arguments of a tool-call turn's content (fenced ``tool_call(...)`` or JSON); None otherwise."""
    return parse_tool_arguments(strip_fences(body))


def parse_tool_call(text: str, tool_names: Optional[set[str]] = None) -> Optional[tuple[str, dict]]:
    """(name, arguments) when ``text`` is a ChatGLM3 tool call, else None.

    The reply's first line is ChatGLM3's metadata (the tool name; empty for a plain
    answer); the rest is a ```python tool_call(...)``` block or a JSON object.
    """
    head, sep, body = text.partition("\n")
    name = head.strip()
    if not sep or not re.match(TOOL_NAME, name):
        return None
    if tool_names is not None and name not in tool_names:
        return None
    arguments = call_arguments(body)
    if arguments is None:
        return None
    return name, arguments
