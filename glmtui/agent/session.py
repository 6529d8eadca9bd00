"""The tool / code-interpreter conversation loop, without a UI.

One user message can take several model turns: the model answers, or calls a
tool (``<|assistant|>tool_name`` + a ```python tool_call(...)``` block) or
writes an interpreter block (``<|assistant|>interpreter`` + a fenced block).
``parse_reply`` decides which; a call is shown to ``confirm`` (built-ins may be
auto-run when the user allowed it; interpreter blocks may be allowed for the
session), run, and its result goes back as an ``<|observation|>`` turn; then the
model continues. Malformed calls are never run: their observation says why.
Every message is handed to ``on_message`` as it is added, so a front end can
save the conversation as it goes.

The model is a *source*: ``source(messages, tools) -> iterable of text pieces``
(``EngineSource`` over an Engine, or a scripted one in tests).
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Literal, Optional, Sequence, Union

from ..engine.events import ChatMessage, Failed, Finished, GenerationParams, Token
from .interpreter import InterpreterError
from .toolbox import TOOL_NAME, Toolbox, ToolResult

if TYPE_CHECKING:
    from .interpreter import CodeInterpreter

try:  # the ChatGLM3 tool-call codec (no eval): moving from glmtui/server.py to glmtui/engine/tools.py
    from ..engine.tools import TOOL_SYSTEM_PROMPT, parse_tool_arguments
except ImportError:  # pragma: no cover - until the move lands
    from ..server import TOOL_SYSTEM_PROMPT, parse_tool_arguments

ROLE_MARK = "<|assistant|>"
# PROMPT.md's code-execution system prompt, with glmtui's working folder for the files.
INTERPRETER_SYSTEM_PROMPT = (
    "You are an intelligent AI assistant, named ChatGLM3. You are connected to a computer, but please note "
    "that you cannot connect to the internet. When using Python to solve tasks, you can run the code and get "
    "the results. If there are errors in the running results, you need to improve the code as much as "
    "possible. You can process files uploaded by users to your computer, and the default storage path for "
    "files is {folder}."
)
IMAGE_MARK = "【image】"  # how PROMPT.md shows an image in an interpreter result

ReplyKind = Literal["answer", "tool_call", "interpreter", "malformed"]
_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)


@dataclass(frozen=True)
class Reply:
    """What one assistant reply is.

    ``preamble``: text the model said before opening the tool/interpreter segment.
    ``metadata``/``content``: the action turn as ChatGLM3 writes it (tool name or
    "interpreter", and the body); for an answer, metadata is "" and content the text.
    """

    kind: ReplyKind
    content: str
    metadata: str = ""
    preamble: str = ""
    arguments: Optional[dict] = None
    code: str = ""
    problem: str = ""

    @property
    def name(self) -> str:
        return self.metadata

    def messages(self) -> list[ChatMessage]:
        """The assistant turns to keep in the conversation."""
        out = [ChatMessage("assistant", self.preamble)] if self.preamble else []
        out.append(ChatMessage("assistant", self.content, self.metadata))
        return out


def _looks_like_call(name: str, body: str, tool_names: set, own_segment: bool) -> bool:
    """Whether "name\nbody" is an attempt at a tool call (then it is run or shown as malformed)
    rather than an answer that happens to start with one word on its own line."""
    head = body.strip()
    if own_segment or "tool_call(" in head[:200]:
        return True
    if head.startswith("{") and head.endswith("}"):
        return True
    return name in tool_names and head.startswith("```")


def _code_of(body: str) -> Optional[str]:
    """The last fenced block of an interpreter body (what ChatGLM3's demo runs)."""
    blocks = _FENCE.findall(body)
    return blocks[-1].strip("\n") if blocks else None


def _strip_fence(body: str) -> str:
    code = _code_of(body)
    return code if code is not None else body.strip()


def parse_reply(text: str, tool_names: Optional[set] = None, interpreter: bool = True) -> Reply:
    """Decide what a streamed assistant reply is.

    The reply is "metadata\\ncontent" after the prompt's ``<|assistant|>`` (metadata
    is empty for an answer, and engines usually drop that first newline), and it
    may open later segments with ``<|assistant|>`` (kept as text by
    ``ChatGLM3Format.decode(keep_roles=True)``); the last segment decides.
    ``tool_names``: the tools of this chat (None: tools are off).
    """
    segments = text.split(ROLE_MARK)
    last = segments[-1]
    preamble = ROLE_MARK.join(segments[:-1]).strip()
    head, newline, body = last.partition("\n")
    name = head.strip()
    answer = Reply("answer", text.replace(ROLE_MARK, "\n").strip())
    if not newline:
        return answer
    if name == "interpreter":
        if not interpreter:
            return Reply("malformed", body.strip(), name, preamble,
                         problem="the code interpreter is not on in this chat")
        code = _code_of(body)
        if code is None or not code.strip():
            return Reply("malformed", body.strip(), name, preamble, problem="no code block to run")
        return Reply("interpreter", body.strip(), name, preamble, code=code)
    if not (TOOL_NAME.match(name) and _looks_like_call(name, body, tool_names or set(), len(segments) > 1)):
        return answer
    if tool_names is None:
        return Reply("malformed", body.strip(), name, preamble, problem="tools are not on in this chat")
    arguments = parse_tool_arguments(_strip_fence(body))
    if arguments is None:
        return Reply("malformed", body.strip(), name, preamble,
                     problem="the arguments are neither a JSON object nor tool_call(...) with literal values")
    return Reply("tool_call", body.strip(), name, preamble, arguments=arguments)


def interpreter_observation(text: str, images: Sequence = ()) -> str:
    """An interpreter result as PROMPT.md feeds it back: a ```result block, 【image】 per image."""
    parts = [text] if text else []
    parts += [IMAGE_MARK] * len(images)
    return "```result\n" + "\n".join(parts) + "\n```"


def is_loopback(host: str) -> bool:
    """Whether a served session's host is this machine only (tools may run then)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------ the loop


@dataclass
class Action:
    """A call waiting for the user's decision (what ``confirm`` is shown)."""

    kind: Literal["tool_call", "interpreter"]
    name: str
    arguments: Optional[dict] = None
    code: str = ""
    builtin: bool = False
    declared_only: bool = False  # the user types the result


Decision = Union[bool, Literal["run", "decline", "always"]]


@dataclass
class Step:
    """One model turn and what came of it (for the UI to show)."""

    reply: Reply
    outcome: str = ""  # "answer", "ran", "malformed", "declined", "blocked", "unavailable" (no kernel), "error"
    observation: Optional[str] = None
    result: object = None  # ToolResult or interpreter RunResult


class GenerationFailed(RuntimeError):
    """The model could not produce a reply (the engine's message)."""


Source = Callable[[list, Optional[list]], Iterable[str]]


@dataclass
class AgentSession:
    source: Source
    toolbox: Optional[Toolbox] = None
    interpreter: Optional[CodeInterpreter] = None
    confirm: Callable[[Action], Decision] = lambda action: False
    ask_result: Optional[Callable[[Action], Optional[str]]] = None
    auto_run_builtins: bool = False
    allow_interpreter: bool = False  # the user allowed every block of this session
    execution_allowed: bool = True  # False when served to a non-loopback host
    max_steps: int = 8
    on_message: Callable[[ChatMessage], None] = lambda message: None
    on_text: Callable[[str], None] = lambda piece: None
    on_step: Callable[[Step], None] = lambda step: None
    system: Optional[str] = None
    messages: list = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        if not self.messages:
            prompt = self.system if self.system is not None else self._default_system()
            if prompt:
                self._add(ChatMessage("system", prompt))

    def _default_system(self) -> str:
        if self.interpreter is not None and self.toolbox is None:
            return INTERPRETER_SYSTEM_PROMPT.format(folder=getattr(self.interpreter, "workdir", "the working folder"))
        return TOOL_SYSTEM_PROMPT if self.toolbox is not None else ""

    @property
    def tools(self) -> Optional[list]:
        return self.toolbox.schemas() if self.toolbox is not None else None

    def _add(self, message: ChatMessage) -> None:
        self.messages.append(message)
        self.on_message(message)

    def stop(self) -> None:
        """Stop after the current step (an interpreter block is interrupted too)."""
        self._stop.set()
        if self.interpreter is not None:
            self.interpreter.cancel()

    def send(self, text: str) -> list[Step]:
        self._add(ChatMessage("user", text))
        return self.resume()

    def resume(self) -> list[Step]:
        """Model turns until an answer, a stop, or ``max_steps``."""
        self._stop.clear()
        steps: list[Step] = []
        for _ in range(self.max_steps):
            if self._stop.is_set():
                break
            try:
                reply_text = "".join(self._stream())
            except GenerationFailed as exc:
                step = Step(Reply("answer", ""), "error", None, str(exc))
                steps.append(step)
                self.on_step(step)
                break
            names = set(self.toolbox.tools) if self.toolbox is not None else None
            reply = parse_reply(reply_text, names, self.interpreter is not None)
            for message in reply.messages():
                self._add(message)
            step = self._act(reply)
            steps.append(step)
            self.on_step(step)
            if step.observation is None:
                break
            self._add(ChatMessage("observation", step.observation))
        return steps

    def _stream(self) -> Iterable[str]:
        for piece in self.source(list(self.messages), self.tools):
            self.on_text(piece)
            yield piece

    # -------------------------------------------------------------- acting

    def _act(self, reply: Reply) -> Step:
        if reply.kind == "answer":
            return Step(reply, "answer")
        if reply.kind == "malformed":
            note = f"malformed {'code block' if reply.name == 'interpreter' else 'call to ' + reply.name}: " \
                   f"{reply.problem}; it was not run"
            return Step(reply, "malformed", note)
        toolbox, interpreter = self.toolbox, self.interpreter  # (a reply names only what the session has)
        if reply.kind == "tool_call":
            assert toolbox is not None
            bad = toolbox.check(reply.name, reply.arguments)
            if bad:
                return Step(reply, "malformed", bad.text, bad)
            tool = toolbox.tools[reply.name]
            action = Action("tool_call", reply.name, reply.arguments, builtin=tool.builtin,
                            declared_only=not tool.runnable)
        else:
            action = Action("interpreter", "interpreter", code=reply.code)
        if not self.execution_allowed:
            return Step(reply, "blocked", "running tools and code is turned off for this session "
                                          "(it is served over the network); the call was not run")
        if not self._confirmed(action):
            return Step(reply, "declined", "the user declined to run this; it was not run")
        if action.kind == "interpreter":
            assert interpreter is not None
            try:
                ran = interpreter.run(action.code)
            except InterpreterError as exc:  # no kernel (ipykernel missing, a broken Python): the model is told
                return Step(reply, "unavailable", f"the code was not run: {exc}")
            return Step(reply, "ran", interpreter_observation(ran.text, ran.images), ran)
        if action.declared_only:
            typed = self.ask_result(action) if self.ask_result is not None else None
            if typed is None:
                return Step(reply, "declined", "no result was given for this call; it was not run")
            return Step(reply, "ran", typed, ToolResult("result", typed, reply.name))
        assert toolbox is not None
        result = toolbox.run(reply.name, reply.arguments)
        return Step(reply, "ran" if result.kind in ("result", "error") else result.kind, result.text, result)

    def _confirmed(self, action: Action) -> bool:
        if action.kind == "tool_call" and action.builtin and self.auto_run_builtins:
            return True
        if action.kind == "interpreter" and self.allow_interpreter:
            return True
        decision = self.confirm(action)
        if decision == "always":
            if action.kind == "interpreter":
                self.allow_interpreter = True
            elif action.builtin:
                self.auto_run_builtins = True
            return True
        return decision is True or decision == "run"


# ------------------------------------------------------------------ an engine as the source


class EngineSource:
    """Generation through an ``engine.api.Engine``: text pieces as Token events arrive."""

    def __init__(self, engine, params: GenerationParams = GenerationParams(), timeout: Optional[float] = None):
        self.engine = engine
        self.params = params
        self.timeout = timeout

    def __call__(self, messages: list, tools: Optional[list]) -> Iterable[str]:
        import queue

        events: "queue.Queue" = queue.Queue()
        request = self.engine.generate(messages, self.params, sink=events.put, tools=tools)
        while True:
            try:
                event = events.get(timeout=self.timeout)
            except queue.Empty:
                self.engine.cancel(request)
                raise GenerationFailed("no reply from the model in time") from None
            if getattr(event, "request_id", request) != request:
                continue
            if isinstance(event, Token):
                yield event.text
            elif isinstance(event, Finished):
                return
            elif isinstance(event, Failed):
                raise GenerationFailed(event.message)


def tool_call_summary(action: Action) -> str:
    """One line for a confirmation prompt: ``weather(city="Paris")`` or the code's first line."""
    if action.kind == "interpreter":
        first = action.code.strip().splitlines()[0] if action.code.strip() else ""
        return f"run code: {first}" + (" …" if "\n" in action.code.strip() else "")
    args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in (action.arguments or {}).items())
    return f"{action.name}({args})"
