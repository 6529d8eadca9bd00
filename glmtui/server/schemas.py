"""The API's wire shapes: request and response models (pydantic), and the limits they enforce.

Requests are strict (JSON types as documented: no "1" for 1, no false for 0)
and ignore unknown fields; unsupported OpenAI options are accepted only with
the value that means "off", so a client asking for more gets a 400.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from ..engine.tools import TOOL_NAME

MAX_TOKENS_LIMIT = 1 << 20  # anything above is absurd for any GLM context
MAX_BODY_BYTES = 32 * 1024 * 1024
# A token never covers more characters than this (the longest pieces in GLM vocabularies are runs of
# whitespace or punctuation): a longer conversation cannot fit the context and is refused before tokenizing.
CHARS_PER_TOKEN_BOUND = 64
MIN_TEMPERATURE = 1e-5  # below this, sampling overflows: treated as greedy
DEFAULT_MAX_QUEUE = 64
MAX_PROMPTS = 64  # prompts of one /v1/completions request (each is one generation, queued)


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


# JSON Schema integers (see _json_int), each with its bounds as a named type
AnyInt = Annotated[int, Field(), BeforeValidator(_json_int)]
MaxTokens = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT), BeforeValidator(_json_int)]
TopK = Annotated[int, Field(ge=-1, le=1_000_000), BeforeValidator(_json_int)]
JustOne = Annotated[int, Field(ge=1, le=1), BeforeValidator(_json_int)]
JustZero = Annotated[int, Field(ge=0, le=0), BeforeValidator(_json_int)]


def _absent(value):
    if value is not None:
        raise ValueError("not supported by this server")
    return value


def _only_one(value):
    if value is not None and value != 1:
        raise ValueError("not supported by this server: only 1 is accepted")
    return value


Unsupported = Annotated[bool, AfterValidator(_false_only), Field(json_schema_extra={"const": False})]
NotSupported = Annotated[Optional[Any], AfterValidator(_absent), Field(description="not supported: only null")]
OnlyOne = Annotated[Optional[int], BeforeValidator(_json_int), AfterValidator(_only_one),
                    Field(description="only 1 is supported")]
Stop = Union[str, Annotated[list[str], Field(max_length=16)], None]


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
    name: str = Field(pattern=TOOL_NAME)
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


class ChatCompletionRequest(_Model):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: Optional[MaxTokens] = Field(None)
    max_completion_tokens: Optional[MaxTokens] = Field(None)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: Optional[TopK] = Field(None, description="vLLM extension; 0 or -1 disables")
    repetition_penalty: Optional[float] = Field(None, ge=0.01, le=100.0, allow_inf_nan=False,
                                                description="vLLM extension")
    n: Optional[JustOne] = Field(1, description="only 1 is supported")
    stop: Stop = None
    seed: Optional[AnyInt] = Field(None, description="any integer; used modulo 2**64")
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    tools: Optional[list[Tool]] = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: Optional[bool] = None
    frequency_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0, allow_inf_nan=False,
                                               description="accepted, ignored")
    presence_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0, allow_inf_nan=False,
                                              description="accepted, ignored")
    logprobs: Optional[Unsupported] = Field(None, description="not supported")
    top_logprobs: Optional[JustZero] = Field(None, description="not supported")
    logit_bias: Optional[dict[str, float]] = Field(None, max_length=0, description="not supported")
    response_format: Optional[ResponseFormat] = None
    user: Optional[str] = None
    chat_template_kwargs: Optional[dict[str, Any]] = Field(
        None, description="vLLM extension: enable_thinking (true/false) turns a reasoning model's thinking on or "
                          "off where its template supports it; other keys are ignored")


class CompletionRequest(_Model):
    """OpenAI's legacy completions: the prompt is continued as it is (no chat roles)."""

    # an unknown field is refused (400), not ignored: this API is for tools that expect exact semantics
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    prompt: Union[str, Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]] = Field(
        description="a text, or a list of texts (one completion each, run one after another)")
    max_tokens: Optional[MaxTokens] = Field(16)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: Optional[TopK] = Field(None, description="vLLM extension; 0 or -1 disables")
    repetition_penalty: Optional[float] = Field(None, ge=0.01, le=100.0, allow_inf_nan=False,
                                                description="vLLM extension")
    n: OnlyOne = 1
    best_of: OnlyOne = None
    stop: Stop = None
    seed: Optional[AnyInt] = Field(None, description="any integer; used modulo 2**64")
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    echo: Optional[bool] = Field(False, description="the prompt is written before its completion")
    frequency_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0, allow_inf_nan=False,
                                               description="accepted, ignored")
    presence_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0, allow_inf_nan=False,
                                              description="accepted, ignored")
    logprobs: NotSupported = None
    suffix: NotSupported = None
    logit_bias: Optional[dict[str, float]] = Field(None, max_length=0, description="not supported")
    user: Optional[str] = None

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


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
    reasoning_content: Optional[str] = Field(None, description="a reasoning model's <think> text (vLLM/SGLang); "
                                                                "absent for other models")
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


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
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
