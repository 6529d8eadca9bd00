"""What the inference worker reports, and what it is asked to do.

Plain dataclasses with no torch in them, so the UI, the API server and tests
can all consume them without importing the engine's heavy dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

Role = Literal["system", "user", "assistant", "observation"]
FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str
    # ChatGLM3 metadata (tool name for tool calls/observations); usually empty.
    metadata: str = ""


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 512
    temperature: float = 0.8
    top_p: float = 0.8
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: Optional[int] = None
    # Keep the conversation's KV cache between replies and prefill only what is new (off: prefill it all).
    kv_reuse: bool = True
    # Reasoning models (a chat template with <think>): False asks the template to skip the reasoning
    # (its ``enable_thinking`` variable; templates without it always reason); None: the template's default.
    thinking: Optional[bool] = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def problems(self) -> list[str]:
        """Why these parameters cannot be used (empty when they can).

        Extreme values do not fail loudly in ``generate``: a repetition
        penalty near zero divides logits into infinities and sampling then
        raises on NaN probabilities, so the limits are checked up front.
        """
        import math

        found = []
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            found.append("max_new_tokens must be a whole number >= 1")
        if not (math.isfinite(self.temperature) and 0.0 <= self.temperature <= 100.0):
            found.append("temperature must be between 0 and 100")
        if not (math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            found.append("top_p must be above 0 and at most 1")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            found.append("top_k must be a whole number >= 0 (0 disables it)")
        if not (math.isfinite(self.repetition_penalty) and 0.01 <= self.repetition_penalty <= 100.0):
            found.append("repetition_penalty must be between 0.01 and 100")
        return found


@dataclass(frozen=True)
class LoadProgress:
    request_id: int
    stage: str
    fraction: Optional[float] = None
    elapsed: Optional[float] = None  # seconds spent in this stage so far (compiling shows it)


@dataclass(frozen=True)
class Loaded:
    request_id: int
    model_name: str
    model_path: str
    mode: str
    device: str
    footprint_bytes: int
    load_seconds: float
    context_length: int
    notes: tuple[str, ...] = ()  # what the load changed on its own (e.g. layers kept in 16-bit)
    #: where the layers went, one line (engine/placement.py): "all 40 layers on cuda:0", or runs
    #: per device with "OFFLOADED: ..." when some sit on the CPU or disk while a GPU is used
    placement: str = ""
    #: the same as data: (device, first layer, last layer) runs, and the devices holding weights
    layer_devices: tuple[tuple[str, int, int], ...] = ()
    offloaded: tuple[str, ...] = ()
    device_bytes: tuple[tuple[str, int], ...] = ()  # bytes of weights per device ("cuda:1", "cpu")
    chat_format: str = ""  # ModelInfo.chat_format: "chatglm3", "chat_template", "remote"
    concurrency: str = ""  # ModelInfo.concurrency: "continuous batching" or "one at a time"
    concurrency_reason: str = ""


@dataclass(frozen=True)
class Unloaded:
    request_id: int
    model_name: str
    # Memory still held afterwards on the device the model used (CUDA: reserved
    # bytes from torch; CPU: None) — shown so users see what stayed behind.
    device_bytes_after: Optional[int] = None


@dataclass(frozen=True)
class Started:
    """A generation began: the prompt was tokenized."""

    request_id: int
    prompt_tokens: int
    cached_tokens: int = 0  # of the prompt's tokens, those whose KV came from the previous turn's cache


@dataclass(frozen=True)
class Token:
    """New text of a streaming reply (one or more tokens' worth)."""

    request_id: int
    text: str
    # Text of the reply's <think> block (reasoning models), not of its answer: such tokens come first,
    # and only the answer's tokens add up to Finished.text.
    reasoning: bool = False


@dataclass(frozen=True)
class Finished:
    request_id: int
    text: str
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token: Optional[float]
    tokens_per_second: Optional[float]
    total_seconds: float
    finish_reason: FinishReason
    # Prompt tokens taken from the KV cache kept since the previous reply (not prefilled again):
    # prompt_tokens - cached_tokens were prefilled for this reply.
    cached_tokens: int = 0
    # The reasoning (the <think> block's text) of a reasoning model's reply; ``text`` is the answer alone.
    reasoning: str = ""


@dataclass(frozen=True)
class Failed:
    request_id: int
    message: str
    # "load", "generate", "unload"
    during: str = ""
    detail: str = ""
    # The engine process ended under this request: a reply keeps its partial text, marked interrupted.
    interrupted: bool = False
    # What failed, for code to match on (never the message's words): "params" (invalid parameters),
    # "no_model", "prompt" (the format cannot express the conversation), "context" (the prompt does not
    # fit), "out_of_memory"; "" for anything else (a bug, a library's exception, a lost process).
    kind: str = ""


@dataclass(frozen=True)
class EngineExited:
    """The engine process ended without being asked to (killed, crashed, exited).

    Sent once to the listeners, after a Failed for each request it had in
    hand. Nothing is loaded any more; the next load starts a fresh process.
    """

    request_id: int  # always 0: about the engine, not a request
    message: str  # one line, with the cause
    cause: str  # "SIGKILL", "SIGSEGV", "exit code 3", ...
    log_tail: str = ""  # the last lines of the engine's log
    log_path: str = ""


@dataclass(frozen=True)
class EngineUnresponsive:
    """The engine process has not answered a ping for ``seconds`` (0.0: it answers again)."""

    request_id: int  # always 0
    seconds: float
    message: str


Event = Union[LoadProgress, Loaded, Unloaded, Started, Token, Finished, Failed, EngineExited, EngineUnresponsive]


def reached_context(prompt_tokens: Optional[int], completion_tokens: Optional[int],
                    context_length: Optional[int]) -> bool:
    """A reply cut at "length" whose prompt and reply fill the whole context: the model's context,
    not max new tokens, ended it (the engine lowers max new tokens to what the context has left)."""
    if not context_length or prompt_tokens is None or completion_tokens is None:
        return False
    return prompt_tokens + completion_tokens >= context_length
