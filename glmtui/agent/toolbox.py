"""The tools a model may call: built-ins plus the user's ``<config>/tools/*.json``.

A user tool file holds an OpenAI function schema (``{"type": "function",
"function": {...}}`` or the bare function object, or a list of them) and, to
make the tool runnable, ``"command": [argv...]`` with an optional ``"timeout"``
in seconds. Why running such a command is acceptable: the user wrote the command
line, not the model. The model only supplies arguments; they are checked against
the schema and handed to the program as one JSON object on its stdin, never put
into argv and never through a shell, so no model output becomes a command. The
program runs with a timeout (its whole process group is killed) and its output
is capped. Every user tool call still waits for the user's confirmation (only
built-ins may be auto-run). A tool without ``command`` is declared only: its
result is typed by the user.

Files that cannot be read are reported in ``Toolbox.problems``, never fatal.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, cast

from .builtin_tools import BUILTINS, ToolError
from .capture import DEFAULT_LIMIT, CappedText

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 600.0
MAX_TOOL_FILE_BYTES = 256 * 1024


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict
    builtin: bool = False
    command: Optional[tuple[str, ...]] = None
    timeout: float = DEFAULT_TIMEOUT
    source: Optional[Path] = None

    @property
    def origin(self) -> str:
        """Where the tool is defined, in words."""
        if self.builtin:
            return "a built-in tool"
        return self.source.name if self.source is not None else self.name

    @property
    def runnable(self) -> bool:
        return self.builtin or self.command is not None

    def schema(self) -> dict:
        """The function object ChatGLM3 lists in its system turn."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


@dataclass(frozen=True)
class ToolResult:
    """What a call came to. ``kind``: "result", "error" (the tool ran and failed, or
    could not start), "malformed" (never run), "declined" (the user said no)."""

    kind: str
    text: str
    name: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == "result"


def malformed(name: str, why: str) -> ToolResult:
    return ToolResult("malformed", f"malformed call to {name or '(no name)'}: {why}; it was not run", name)


# ------------------------------------------------------------------ schema checks

_JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def schema_problem(value: Any, schema: dict, where: str = "arguments") -> Optional[str]:
    """Why ``value`` does not fit the JSON schema (types, required keys, enum, extra keys
    when ``additionalProperties`` is false, array items); None when it fits."""
    if not isinstance(schema, dict):
        return None
    expected = schema.get("type")
    if expected is not None:
        types = expected if isinstance(expected, list) else [expected]
        known = [t for t in types if t in _JSON_TYPES]
        if known and not any(_JSON_TYPES[t](value) for t in known):
            return f"{where} should be {' or '.join(known)}, not {type(value).__name__}"
    if "enum" in schema and isinstance(schema["enum"], list) and value not in schema["enum"]:
        return f"{where} should be one of {schema['enum']}"
    if isinstance(value, dict):
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            properties = {}
        for key in schema.get("required") or ():
            if key not in value:
                return f"{where} lacks the required {key!r}"
        if schema.get("additionalProperties") is False:
            extra = sorted(set(value) - set(properties))
            if extra:
                return f"{where} has unknown keys {extra}"
        for key, sub in properties.items():
            if key in value:
                problem = schema_problem(value[key], sub, f"{key!r}" if where == "arguments" else f"{where}.{key}")
                if problem:
                    return problem
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            problem = schema_problem(item, schema["items"], f"{where}[{index}]")
            if problem:
                return problem
    return None


# ------------------------------------------------------------------ user tool files


def _tool_from_json(obj: Any, source: Path) -> Tool:
    if not isinstance(obj, dict):
        raise ValueError("a tool is a JSON object")
    function = obj.get("function") if obj.get("type") == "function" else obj
    if not isinstance(function, dict):
        raise ValueError('"function" should be an object')
    name = function.get("name")
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise ValueError(f"the tool name {name!r} is not 1-64 letters, digits, _ or -")
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise ValueError(f"{name}: parameters should be a JSON schema of type object")
    description = function.get("description", "")
    if not isinstance(description, str):
        raise ValueError(f"{name}: description should be a string")
    command = obj.get("command", function.get("command"))
    if command is not None:
        if not (isinstance(command, list) and command and all(isinstance(a, str) and a for a in command)):
            raise ValueError(f'{name}: "command" should be a list of strings (the program and its arguments)')
        command = tuple(command)
    timeout = obj.get("timeout", function.get("timeout", DEFAULT_TIMEOUT))
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT:
        raise ValueError(f'{name}: "timeout" should be seconds between 0 and {MAX_TIMEOUT:g}')
    return Tool(name, description, parameters, False, command, float(timeout), source)


def tools_dir(config_dir: Optional[Path] = None) -> Path:
    if config_dir is None:
        from ..config import default_paths

        config_dir = default_paths().config_dir
    return Path(config_dir) / "tools"


def read_user_tools(folder: Path) -> tuple[list[Tool], list[str]]:
    """(tools, problems) from ``folder/*.json``, in file-name order."""
    tools: list[Tool] = []
    problems: list[str] = []
    if not folder.is_dir():
        return tools, problems
    for path in sorted(folder.glob("*.json")):
        try:
            if path.stat().st_size > MAX_TOOL_FILE_BYTES:
                raise ValueError(f"larger than {MAX_TOOL_FILE_BYTES // 1024} KiB")
            data = json.loads(path.read_text(encoding="utf-8"))
            items = data if isinstance(data, list) else [data]
            for item in items:
                tools.append(_tool_from_json(item, path))
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path.name}: cannot be read ({exc.strerror if isinstance(exc, OSError) else exc})")
        except json.JSONDecodeError as exc:
            problems.append(f"{path.name}: not JSON (line {exc.lineno}: {exc.msg})")
        except (ValueError, RecursionError) as exc:
            problems.append(f"{path.name}: {exc}")
    return tools, problems


# ------------------------------------------------------------------ the toolbox


@dataclass
class Toolbox:
    tools: dict[str, Tool] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    output_limit: int = DEFAULT_LIMIT

    @classmethod
    def load(cls, config_dir: Optional[Path] = None, builtins: bool = True) -> "Toolbox":
        box = cls()
        if builtins:
            for name, (_, description, parameters) in BUILTINS.items():
                box.tools[name] = Tool(name, description, parameters, builtin=True)
        user_tools, box.problems = read_user_tools(tools_dir(config_dir))
        for tool in user_tools:
            if tool.name in box.tools:
                where = box.tools[tool.name].origin
                box.problems.append(f"{tool.origin}: {tool.name!r} is already defined by {where}; skipped")
                continue
            box.tools[tool.name] = tool
        return box

    def schemas(self) -> list[dict]:
        return [tool.schema() for tool in self.tools.values()]

    def check(self, name: str, arguments: Any) -> Optional[ToolResult]:
        """A "malformed" result when the call cannot run as it is; None when it can."""
        tool = self.tools.get(name)
        if tool is None:
            known = ", ".join(self.tools) or "none"
            return malformed(name, f"there is no tool named {name!r} (tools: {known})")
        if not isinstance(arguments, dict):
            return malformed(name, "the arguments are not a JSON object")
        problem = schema_problem(arguments, tool.parameters)
        return malformed(name, problem) if problem else None

    def run(self, name: str, arguments: Any) -> ToolResult:
        """Run a checked call (a malformed one is returned as such, never run)."""
        bad = self.check(name, arguments)
        if bad:
            return bad
        tool = self.tools[name]
        if tool.builtin:
            function = BUILTINS[name][0]
            try:
                value = function(**arguments)
            except ToolError as exc:
                return ToolResult("error", f"{name}: {exc}", name)
            except TypeError as exc:  # an argument the function does not take
                return malformed(name, str(exc))
            return ToolResult("result", json.dumps(value, ensure_ascii=False), name)
        if tool.command is None:
            raise ValueError(f"{name} is declared only: its result is given by the user")
        return run_command(tool, arguments, self.output_limit)


def run_command(tool: Tool, arguments: dict, limit: int = DEFAULT_LIMIT) -> ToolResult:
    """The tool's own argv (no shell) with the arguments as JSON on stdin; output capped,
    the process group killed at the timeout."""
    if not tool.command:
        raise ValueError(f"{tool.name} has no command")
    try:
        process = subprocess.Popen(
            list(tool.command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )
    except OSError as exc:
        return ToolResult("error", f"{tool.name}: cannot start {tool.command[0]!r}: {exc.strerror or exc}", tool.name)
    output = CappedText(limit)
    stdin = process.stdin
    stdout = cast(io.BufferedReader, process.stdout)  # a PIPE in binary mode, buffered (bufsize -1)
    assert stdin is not None

    def read() -> None:
        while True:
            chunk = stdout.read1(65536)
            if not chunk:
                break
            output.add_bytes(chunk)
        output.add_bytes(b"", final=True)

    reader = threading.Thread(target=read, daemon=True, name=f"tool-{tool.name}")
    reader.start()
    try:
        stdin.write(json.dumps(arguments, ensure_ascii=False).encode("utf-8"))
        stdin.close()
    except OSError:
        pass  # the program does not read its input: fine
    timed_out = False
    try:
        code = process.wait(tool.timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(process)  # before reaping: the group id still names only this program's processes
        code = process.wait()
    # A background child of the program may keep the pipe open: stop waiting for it.
    reader.join(2)
    text = output.render()
    if timed_out:
        message = f"{tool.name}: no result within {tool.timeout:g} s (stopped)\n{text}".rstrip()
        return ToolResult("error", message, tool.name)
    if code != 0:
        why = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return ToolResult("error", f"{tool.name}: {why}\n{text}".rstrip(), tool.name)
    return ToolResult("result", text, tool.name)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
