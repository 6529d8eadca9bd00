"""Chat prompt formats and streaming detokenization.

Two formats cover the GLM family:

* ``ChatGLM3Format`` — ChatGLM3's own SentencePiece tokenizer with its special
  role tokens, implemented here directly on ``sentencepiece`` because the
  published remote tokenizer code no longer runs on current transformers.
* ``ChatTemplateFormat`` — any Hugging Face tokenizer with a chat template
  (GLM-4 ``-hf`` models, GLM-Edge, and other causal LMs).

Both expose the same small interface the worker needs: turn a conversation
into prompt ids, decode ids, and name the token ids that end a reply.
``encode_completion`` builds a raw-text prompt (base models, completion mode):
no role tokens, only the prefix the model's tokenizer puts before any text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, Sequence

from .events import ChatMessage

CHATGLM3_SPECIAL_TOKENS = (
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "sop",
    "eop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
)


class PromptError(ValueError):
    """A conversation the model's format cannot express."""


class ChatFormat(Protocol):
    name: str
    stop_token_ids: list[int]
    reply_prefix: str  # text a reply always starts with that is not content

    def encode_conversation(self, messages: Sequence[ChatMessage]) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    def encode_completion(self, text: str) -> list[int]: ...


def encode_completion(chat_format: ChatFormat, text: str) -> list[int]:
    """Prompt ids for continuing ``text`` as it is (completion mode, no roles)."""
    return chat_format.encode_completion(text)


def validate_conversation(messages: Sequence[ChatMessage]) -> None:
    """Reject conversations no chat format can turn into a sensible prompt."""
    if not messages:
        raise PromptError("the conversation is empty")
    for message in messages:
        if message.role not in ("system", "user", "assistant", "observation"):
            raise PromptError(f"unknown role {message.role!r}")
    for message in messages[1:]:
        if message.role == "system":
            raise PromptError("a system message may only come first")
    if messages[-1].role not in ("user", "observation"):
        raise PromptError("the last message must come from the user (or be a tool observation)")


class ChatGLM3Format:
    """ChatGLM3-6B / -Base / -32K prompt format over its ``tokenizer.model``.

    Special ids follow the SentencePiece vocabulary: for the real model the
    piece count is 64789, so ``[gMASK]`` is 64790 and ``<|user|>`` 64795.
    A prompt is ``[gMASK] sop``, then per turn ``<|role|>`` + encode(metadata
    + "\\n") + encode(content), then ``<|assistant|>``.
    """

    name = "chatglm3"
    # A reply is "<metadata>\n<content>"; plain replies have empty metadata,
    # so they start with a newline that ChatGLM3's own chat() drops too.
    reply_prefix = "\n"

    def __init__(self, tokenizer_model: Path):
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer_model))
        self.piece_count = self.sp.get_piece_size()
        self.special_ids = {
            token: self.piece_count + index for index, token in enumerate(CHATGLM3_SPECIAL_TOKENS)
        }
        self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else 2
        self.stop_token_ids = [
            self.eos_id,
            self.special_ids["<|user|>"],
            self.special_ids["<|observation|>"],
        ]
        self.vocab_size = self.piece_count + len(CHATGLM3_SPECIAL_TOKENS)

    def encode_text(self, text: str) -> list[int]:
        return list(self.sp.encode(text)) if text else []

    def count_tokens(self, text: str) -> int:
        return len(self.encode_text(text))

    @property
    def prefix_ids(self) -> list[int]:
        """``[gMASK] sop``: the original tokenizer's ``get_prefix_tokens``, put before any text."""
        return [self.special_ids["[gMASK]"], self.special_ids["sop"]]

    @property
    def completion_stop_token_ids(self) -> list[int]:
        # A raw continuation ends at eos only: role tokens belong to chat prompts.
        return [self.eos_id]

    def encode_completion(self, text: str) -> list[int]:
        """``[gMASK] sop`` + encode(text), as ``tokenizer(text)`` builds it for ChatGLM3-6B-Base
        (``build_inputs_with_special_tokens``): no role tokens, no trailing eos."""
        return self.prefix_ids + self.encode_text(text)

    def _role_ids(self, role: str, metadata: str) -> list[int]:
        return [self.special_ids[f"<|{role}|>"]] + self.encode_text(f"{metadata}\n")

    def encode_conversation(self, messages: Sequence[ChatMessage], tools: list | None = None) -> list[int]:
        validate_conversation(messages)
        ids = self.prefix_ids
        for index, message in enumerate(messages):
            content = message.content
            if index == 0 and message.role == "system" and tools:
                content += "\n" + json.dumps(tools, indent=4, ensure_ascii=False)
            ids += self._role_ids(message.role, message.metadata)
            ids += self.encode_text(content)
        ids.append(self.special_ids["<|assistant|>"])
        return ids

    def decode(self, ids: Sequence[int], keep_roles: bool = False) -> str:
        """Text of ``ids``. Special tokens are dropped, or with ``keep_roles`` a role token
        is written as its name: in tool and interpreter modes ChatGLM3 may start a new
        ``<|assistant|>tool_name`` segment inside one reply, and its own decode keeps it."""
        if not keep_roles:
            return self.sp.decode([i for i in ids if 0 <= i < self.piece_count])
        names = {v: k for k, v in self.special_ids.items() if k.startswith("<|")}
        text, run = "", []
        for i in ids:
            if 0 <= i < self.piece_count:
                run.append(i)
            elif i in names:
                text += self.sp.decode(run) + names[i]
                run = []
        return text + self.sp.decode(run)


class ChatTemplateFormat:
    """Any Hugging Face tokenizer that carries a chat template.

    ``require_template=False`` accepts a tokenizer without one (a base model used
    for completion only); building a chat prompt with it then fails as a PromptError.
    """

    name = "chat_template"
    reply_prefix = ""

    def __init__(self, tokenizer, extra_stop_ids: Sequence[int] = (), require_template: bool = True):
        if require_template and not getattr(tokenizer, "chat_template", None):
            raise PromptError("the tokenizer has no chat template; this does not look like a chat model")
        self.tokenizer = tokenizer
        stops: list[int] = []
        if tokenizer.eos_token_id is not None:
            stops.append(tokenizer.eos_token_id)
        for token_id in extra_stop_ids:
            if token_id is not None and token_id not in stops:
                stops.append(int(token_id))
        self.stop_token_ids = stops
        self.vocab_size = len(tokenizer)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    @property
    def completion_stop_token_ids(self) -> list[int]:
        eos = self.tokenizer.eos_token_id
        return [eos] if eos is not None else list(self.stop_token_ids)

    def encode_completion(self, text: str) -> list[int]:
        """The text with the tokenizer's own special tokens (GLM-4's ``[gMASK]<sop>``, a bos),
        less an eos some tokenizers append: the prompt is to be continued, not ended."""
        ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        eos = self.tokenizer.eos_token_id
        if eos is not None and ids and ids[-1] == eos:
            plain = self.tokenizer.encode(text, add_special_tokens=False)
            if not plain or plain[-1] != eos:
                ids.pop()
        return ids

    def encode_conversation(self, messages: Sequence[ChatMessage], tools: list | None = None,
                            template_kwargs: dict | None = None) -> list[int]:
        """``template_kwargs``: variables for the template (``enable_thinking``, reasoning.template_kwargs)."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise PromptError("this model has no chat template: use it in completion mode")
        validate_conversation(messages)
        observation = "observation" if self._knows_observation() else "tool"
        rendered = [{"role": observation if m.role == "observation" else m.role, "content": m.content}
                    for m in messages]
        encoded = self.tokenizer.apply_chat_template(
            rendered, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=True,
            **(template_kwargs or {}),
        )
        return list(encoded["input_ids"])

    def _knows_observation(self) -> bool:
        return "observation" in (self.tokenizer.chat_template or "")

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


class IncrementalDetokenizer:
    """Turns a stream of token ids into text pieces with constant work per token.

    Decoding only a short window (from ``prefix`` to the end) and diffing it
    against the window's already-emitted part avoids re-decoding the whole
    reply per token. Keeping one earlier token in the window preserves the
    leading space SentencePiece drops at the start of a decode. Tokenizers
    whose pieces are partial UTF-8 bytes (Chinese through byte fallback or
    byte-level BPE) decode an unfinished character as U+FFFD: that last
    character is held back until a later token completes it.
    """

    # An unfinished character spans at most 4 bytes; a window stuck longer
    # than this is invalid output and is emitted as it is.
    MAX_PENDING = 24

    def __init__(self, decode):
        self._decode = decode
        self.ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # tokens up to here are fully emitted
        self._partial = 0  # characters emitted beyond decode(ids[prefix:read])

    def push(self, token_ids: Sequence[int]) -> str:
        self.ids.extend(int(t) for t in token_ids)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        done = len(before) + self._partial
        if after.endswith("\ufffd") and len(self.ids) - self._read < self.MAX_PENDING:
            stable = after.rstrip("\ufffd")  # SentencePiece gives one U+FFFD per dangling byte
            new_text = stable[done:] if len(stable) > done else ""
            self._partial += len(new_text)
            return new_text
        new_text = after[done:] if len(after) > done else ""
        self._prefix = self._read
        self._read = len(self.ids)
        self._partial = 0
        return new_text

    def flush(self) -> str:
        """Whatever is still held back at the end (e.g. a dangling byte)."""
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        done = len(before) + self._partial
        self._prefix = self._read = len(self.ids)
        self._partial = 0
        return after[done:] if len(after) > done else ""
