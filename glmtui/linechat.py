"""``glmtui chat``: line-mode chat for terminals, scripts and pipes.

Interactive (stdin is a terminal), it works like ChatGLM3's ``cli_demo.py``:
replies stream as they are generated, ``clear`` forgets the conversation,
``stop`` (or Ctrl-D) exits, and Ctrl-C during a reply stops that reply.

Piped (``echo question | glmtui chat --model X``), the whole of stdin is one
question and stdout carries only the answer; loading and progress messages go
to stderr. The exit status is 0 on success, 1 when loading or generation
failed, 2 for bad usage.

``--model`` runs the model in an engine process of its own (glmtui.engine.process:
this process never imports torch; if the engine dies, the reply is marked and the
model is loaded again); ``--endpoint URL`` uses an OpenAI-compatible server
(glmtui serve, vLLM, SGLang) through RemoteEngine instead.
"""

from __future__ import annotations

import queue
import signal
import sys
import threading
from typing import Any, Optional, TextIO

from .engine.events import ChatMessage, Failed, Finished, GenerationParams, Loaded, LoadProgress, Token, reached_context

CLEAR, STOP = "clear", "stop"


class _Events:
    """Events of the engine, moved from its thread to the main thread."""

    def __init__(self):
        self.queue: "queue.Queue" = queue.Queue()

    def __call__(self, event) -> None:  # engine thread: never blocks
        self.queue.put(event)

    def next(self, request_id: int, wake: Optional[threading.Event] = None):
        """The next event of ``request_id``; None as soon as ``wake`` is set (short waits, so Ctrl-C is
        handled within 0.1 s)."""
        while True:
            if wake is not None and wake.is_set():
                return None
            try:
                event = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if getattr(event, "request_id", None) == request_id:
                return event


class _CtrlC:
    """While a reply streams, Ctrl-C sets a flag instead of raising KeyboardInterrupt wherever the main
    thread happens to be (an interrupt inside Queue.get could lose the event it had just taken, and the
    reply's end with it)."""

    def __init__(self) -> None:
        self.pressed = threading.Event()
        self._previous: Any = None  # the handler before ours

    def __enter__(self) -> "_CtrlC":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, lambda _sig, _frame: self.pressed.set())
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _context_length(engine):
    """The loaded model's context in tokens, or None (a remote server may not say)."""
    info = getattr(engine, "model_info", None)
    return getattr(info, "context_length", None) or None


def _open_engine(args, events: _Events, log: TextIO):
    """(engine, model name) or (None, error message)."""
    endpoint = getattr(args, "endpoint", None)
    if endpoint:
        from .engine.remote import RemoteEngine

        engine = RemoteEngine(endpoint, api_key=getattr(args, "api_key", None), autoconnect=False).start()
    else:
        if not getattr(args, "model", None):
            return None, "give --model PATH (a model folder or downloaded catalogue model) or --endpoint URL"
        from .engine.choose import local_engine

        # A one-shot chat never switches models: no spare process waiting in the background.
        engine = local_engine(getattr(args, "engine", None) or "transformers", keep_spare=False).start()
    loaded = _load(engine, args, events, log)
    if isinstance(loaded, str):
        engine.shutdown()
        return None, loaded
    return engine, loaded.model_name


def _load(engine, args, events: _Events, log: TextIO):
    """Load (or connect); the Loaded event, or an error message."""
    endpoint = getattr(args, "endpoint", None)
    if endpoint:
        rid = engine.load(getattr(args, "model", None) or "", sink=events)
        what = endpoint
    else:
        from .resolve import resolve_model

        resolved = resolve_model(args.model)
        if resolved.folder is None:
            return f"cannot use {args.model}: {resolved.problem}"
        path = resolved.folder
        device = getattr(args, "device", None) or "auto"
        mode = getattr(args, "mode", None) or "auto"  # the engine picks: bf16 on a GPU, fp32 on the CPU
        shown = "default mode" if mode == "auto" else mode
        print(f"Loading {path} ({shown}, device {device})…", file=log, flush=True)
        rid = engine.load(path, mode, device, sink=events)
        what = path
    last_stage = None
    while True:
        event = events.next(rid)
        if isinstance(event, LoadProgress):
            if event.stage != last_stage and endpoint:
                print(f"{event.stage}…", file=log, flush=True)
            last_stage = event.stage
        elif isinstance(event, Loaded):
            where = f"{event.mode} on {event.device}" if not endpoint else f"served by {endpoint}"
            print(f"Loaded {event.model_name} ({where}) in {event.load_seconds:.1f} s.", file=log, flush=True)
            _note_thinking_switch(args, None if endpoint else what, log)
            return event
        elif isinstance(event, Failed):
            return f"cannot use {what}: {event.message}"


def _note_thinking_switch(args, folder, log: TextIO) -> None:
    """--think/--no-think on a local model whose template has no switch: say it changes nothing.
    (A server's template is not visible from here: the switch is sent, and a template without it ignores it.)"""
    from .engine.template_files import has_thinking_switch

    think = getattr(args, "think", None)
    if think is not None and folder is not None and not has_thinking_switch(folder):
        flag = "--think" if think else "--no-think"
        print(f"({flag} has no effect: this model's chat template has no thinking switch)", file=log, flush=True)


DIM, PLAIN = "\x1b[2m", "\x1b[0m"


def _reply(engine, events: _Events, messages: list[ChatMessage], params: GenerationParams, out: TextIO,
           show_reasoning: bool = False):
    """Stream one reply to ``out``; returns the Finished or Failed event. Ctrl-C stops the reply.
    A reasoning model's <think> text is written before the answer, dimmed on a terminal, when
    ``show_reasoning`` (interactive); otherwise only the answer is written (a pipe)."""
    with _CtrlC() as ctrl_c:
        return _stream(engine, events, engine.generate(messages, params, sink=events), out, show_reasoning, ctrl_c)


def _stream(engine, events: _Events, rid: int, out: TextIO, show_reasoning: bool, ctrl_c: _CtrlC):
    started = False
    interrupted = False
    dim = DIM if out.isatty() else ""
    reasoning = False  # between the reasoning's first token and the answer's
    while True:
        try:
            event = events.next(rid, None if interrupted else ctrl_c.pressed)
            if event is None:  # Ctrl-C: stop the reply; its Finished (cancelled) still comes
                interrupted = True
                engine.cancel(rid)
                continue
            if isinstance(event, Token) and event.reasoning:
                if show_reasoning and event.text:
                    if not reasoning:
                        out.write(dim)
                        reasoning = True
                    out.write(event.text)
                    out.flush()
                continue
            if reasoning and (isinstance(event, (Finished, Failed)) or (isinstance(event, Token) and event.text)):
                out.write((PLAIN if dim else "") + ("\n\n" if isinstance(event, Token) else ""))
                reasoning = False
            if isinstance(event, Token):
                text = event.text
                if not started:
                    text = text.lstrip("\n")  # ChatGLM3's empty metadata line
                    started = bool(text)
                if text:
                    out.write(text)
                    out.flush()
            elif isinstance(event, (Finished, Failed)):
                return event
        except KeyboardInterrupt:
            if not interrupted:
                interrupted = True
                engine.cancel(rid)


def _params(args) -> GenerationParams:
    return GenerationParams(
        max_new_tokens=int(getattr(args, "max_new_tokens", 512) or 512),
        temperature=float(getattr(args, "temperature", 0.8)),
        top_p=float(getattr(args, "top_p", 0.8)),
        thinking=getattr(args, "think", None),  # --think / --no-think; None: the template's default
    )


def _system(args) -> list[ChatMessage]:
    system = getattr(args, "system", "") or ""
    return [ChatMessage("system", system)] if system else []


def run_line_chat(args, stdin: Optional[TextIO] = None, stdout: Optional[TextIO] = None,
                  stderr: Optional[TextIO] = None) -> int:
    stdin = stdin or sys.stdin
    out = stdout or sys.stdout
    log = stderr or sys.stderr
    params = _params(args)
    problems = params.problems()
    if problems:
        print("glmtui chat: " + "; ".join(problems), file=log)
        return 2
    try:
        if not stdin.isatty():
            return _run_piped(args, stdin, out, log, params)
        return _run_interactive(args, stdin, out, log, params)
    except KeyboardInterrupt:  # while loading
        print("", file=log)
        return 130


def _run_piped(args, stdin: TextIO, out: TextIO, log: TextIO, params: GenerationParams) -> int:
    question = stdin.read().strip()
    if not question:
        print("glmtui chat: no question on stdin", file=log)
        return 2
    events = _Events()
    real_stdout = sys.stdout
    sys.stdout = log  # whatever a library prints while loading must not mix into the answer
    try:
        engine, name = _open_engine(args, events, log)
        if engine is None:
            print(f"glmtui chat: {name}", file=log)
            return 1
        try:
            done = _reply(engine, events, _system(args) + [ChatMessage("user", question)], params, out)
        finally:
            engine.shutdown()
    finally:
        sys.stdout = real_stdout
    if isinstance(done, Failed):
        out.flush()
        print(f"glmtui chat: {done.message}", file=log)
        return 1
    if not done.text.endswith("\n"):
        out.write("\n")
    out.flush()
    if done.finish_reason == "length":
        context = _context_length(engine)
        if reached_context(done.prompt_tokens, done.completion_tokens, context):
            print(f"(the reply reached the model's context: {context} tokens)", file=log)
        else:
            print(f"(the reply reached the {params.max_new_tokens}-token limit: --max-new-tokens)", file=log)
    return 0


def _run_interactive(args, stdin: TextIO, out: TextIO, log: TextIO, params: GenerationParams) -> int:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    events = _Events()
    engine, name = _open_engine(args, events, log)
    if engine is None:
        print(f"glmtui chat: {name}", file=log)
        return 1
    history: list[ChatMessage] = []
    out.write(f"Chatting with {name}. Type a message; '{CLEAR}' clears the history, '{STOP}' exits; "
              "Ctrl-C stops a reply.\n")
    out.flush()
    try:
        while True:
            try:
                if stdin is sys.stdin and out is sys.stdout:
                    line = input("\nUser: ") + "\n"  # with readline's line editing
                else:
                    out.write("\nUser: ")
                    out.flush()
                    line = stdin.readline()
            except (KeyboardInterrupt, EOFError):
                line = ""
            if not line:  # Ctrl-D or Ctrl-C at the prompt
                out.write("\n")
                break
            query = line.strip()
            if query == STOP:
                break
            if query == CLEAR:
                history = []
                out.write("History cleared.\n")
                continue
            if not query:
                continue
            out.write(f"\n{name}: ")
            out.flush()
            user = ChatMessage("user", query)
            done = _reply(engine, events, _system(args) + history + [user], params, out, show_reasoning=True)
            if isinstance(done, Failed):
                out.write(f"\n[error: {done.message}]\n")
                if done.interrupted:  # the engine process ended under the reply: start a fresh one
                    out.flush()
                    print("Loading the model again…", file=log, flush=True)
                    reloaded = _load(engine, args, events, log)
                    if isinstance(reloaded, str):
                        print(f"glmtui chat: {reloaded}", file=log)
                        return 1
                continue
            reply = done.text.lstrip("\n")
            if done.finish_reason == "cancelled":
                out.write(" [stopped]")
            elif done.finish_reason == "length":
                hit = reached_context(done.prompt_tokens, done.completion_tokens, _context_length(engine))
                out.write(" [context full: `clear` to start over]" if hit else " [token limit]")
            out.write("\n")
            out.flush()
            history += [user, ChatMessage("assistant", reply)]
    finally:
        engine.shutdown()
    return 0
