"""A reasoning model's ``<think>…</think>`` block, split from its answer while the reply streams.

GLM-Z1 / GLM-4.5+ chat templates differ in where the block opens: GLM-4.5 leaves the generation
prompt at ``<|assistant|>`` and the model writes ``<think>`` itself; GLM-Z1-0414 and GLM-4.7 end the
prompt with ``<think>``, so the reply starts inside the block. Their switch is the ``enable_thinking``
template variable: false closes an empty block in the prompt (``<think></think>``, or ``</think>``
alone). Which case a template is in is found by rendering it once per switch value (``opens_inside``).

The tags may be special tokens that decoding drops (``hidden_tags`` names them so the reply stream
can put their text back) or ordinary text split over several tokens; the splitter works on text and
holds back what could still become a tag. A reply that never closes the block is all reasoning.
No torch here: the reply stream (generation.py) feeds the splitter decoded text.
"""

from __future__ import annotations

from typing import Optional

OPEN = "<think>"
CLOSE = "</think>"
SWITCH = "enable_thinking"


def _held_tail(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is a start of ``tag`` (it may still become the tag)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class ReasoningSplitter:
    """Text in, ``(is_reasoning, text)`` pieces out, in order.

    ``inside``: the prompt already opened the block. Otherwise a block is looked for only at the
    reply's start (after whitespace): a ``<think>`` later in an answer is the answer's text (tag tokens
    that decoding drops stay dropped there, generation.py). A ``</think>`` first closes an empty block. The
    reasoning is given without the whitespace around it, the answer without what follows ``</think>``
    before its first visible character (templates strip both when they render a turn).
    """

    def __init__(self, inside: bool = False):
        self._state = "reasoning" if inside else "start"
        self._held = ""
        self._reasoning_begun = False

    @property
    def state(self) -> str:
        """"start" (nothing decided yet), "reasoning", "after" (block closed, answer not begun), "answer"."""
        return self._state

    def feed(self, text: str) -> list[tuple[bool, str]]:
        out: list[tuple[bool, str]] = []
        buffer = self._held + text
        self._held = ""
        while buffer:
            if self._state == "start":
                visible = buffer.lstrip()
                if not visible or (len(visible) < len(OPEN) and OPEN.startswith(visible)):
                    self._held = buffer
                    return out
                if visible.startswith(OPEN):
                    self._state = "reasoning"
                    buffer = visible[len(OPEN):]
                    continue
                if visible.startswith(CLOSE):  # a block closed before it opened: nothing to show of it
                    self._state = "after"
                    buffer = visible[len(CLOSE):]
                    continue
                if len(visible) < len(CLOSE) and CLOSE.startswith(visible):
                    self._held = buffer
                    return out
                self._state = "answer"
            if self._state == "answer":
                out.append((False, buffer))
                return out
            if self._state == "after":
                buffer = buffer.lstrip()
                if buffer:
                    self._state = "answer"
                continue
            # reasoning
            if not self._reasoning_begun:
                buffer = buffer.lstrip()
                if not buffer:
                    return out
                self._reasoning_begun = True
            at = buffer.find(CLOSE)
            if at >= 0:
                if buffer[:at].rstrip():
                    out.append((True, buffer[:at].rstrip()))
                self._state = "after"
                buffer = buffer[at + len(CLOSE):]
                continue
            keep = _held_tail(buffer, CLOSE)
            body = buffer[: len(buffer) - keep]
            # trailing whitespace waits: it is dropped if the block closes right after it
            stripped = body.rstrip()
            if stripped:
                out.append((True, stripped))
            self._held = body[len(stripped):] + buffer[len(buffer) - keep:]
            return out
        return out

    def flush(self) -> list[tuple[bool, str]]:
        """What is still held at the end of the reply."""
        held, self._held = self._held, ""
        if not held:
            return []
        if self._state == "start":
            return [(False, held)]
        if self._state == "reasoning":
            held = held.rstrip() if self._reasoning_begun else held.strip()
            return [(True, held)] if held else []
        return []  # whitespace after </think>


# ---------------------------------------------------------------- what a chat format supports


def _template(chat_format) -> str:
    tokenizer = getattr(chat_format, "tokenizer", None)
    template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) else ""


def supports_reasoning(chat_format) -> bool:
    """The format's chat template knows a ``<think>`` block (ChatGLM3 and plain templates do not)."""
    return CLOSE in _template(chat_format)


def supports_switch(chat_format) -> bool:
    """The template reads ``enable_thinking`` (GLM-4.5+ do; GLM-Z1-0414 always reasons)."""
    return SWITCH in _template(chat_format)


def template_kwargs(chat_format, thinking: Optional[bool]) -> dict:
    """The chat-template variables for a request's ``GenerationParams.thinking`` (None: the template's default)."""
    if thinking is None or not supports_switch(chat_format):
        return {}
    return {SWITCH: bool(thinking)}


def opens_inside(chat_format, thinking: Optional[bool]) -> bool:
    """Whether the generation prompt ends inside an open ``<think>`` block (the reply starts in it),
    found by rendering a one-message conversation with the same switch; cached per format."""
    cache = chat_format.__dict__.setdefault("_glmtui_opens_inside", {})
    key = thinking if supports_switch(chat_format) else None
    if key not in cache:
        kwargs = template_kwargs(chat_format, thinking)
        try:
            text = chat_format.tokenizer.apply_chat_template(
                [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False, **kwargs
            )
        except Exception:  # noqa: BLE001 - a template that cannot render the probe: look for the tag at the start
            text = ""
        text = text if isinstance(text, str) else ""
        cache[key] = text.rfind(OPEN) > text.rfind(CLOSE)
    return cache[key]


def hidden_tags(chat_format) -> dict[int, str]:
    """Tag tokens that the format's decode drops (special tokens), by id -> their text; cached."""
    cached = chat_format.__dict__.get("_glmtui_hidden_tags")
    if cached is not None:
        return cached
    found: dict[int, str] = {}
    tokenizer = getattr(chat_format, "tokenizer", None)
    if tokenizer is not None:
        for tag in (OPEN, CLOSE):
            ids = tokenizer.encode(tag, add_special_tokens=False)
            if len(ids) == 1 and chat_format.decode(ids) == "":
                found[int(ids[0])] = tag
    chat_format.__dict__["_glmtui_hidden_tags"] = found
    return found


def make_splitter(chat_format, thinking: Optional[bool]) -> Optional[ReasoningSplitter]:
    """A splitter for one chat reply, or None when the format has no reasoning block."""
    if not supports_reasoning(chat_format):
        return None
    return ReasoningSplitter(inside=opens_inside(chat_format, thinking))
