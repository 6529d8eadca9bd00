"""ChatGLM3 agent turns without a model: replies scripted as text, streamed token by token through the real
tokenizer, and the prompt layout and payloads the tests compare against."""

from __future__ import annotations

import json
import struct
import zlib

from glmtui.engine.prompts import ChatGLM3Format, IncrementalDetokenizer


class ScriptedModel:
    """A generation source whose replies are given; records the prompt ids it was sent."""

    def __init__(self, fmt: ChatGLM3Format, replies):
        self.fmt = fmt
        self.replies = list(replies)
        self.prompts: list[list[int]] = []

    def __call__(self, messages, tools):
        self.prompts.append(self.fmt.encode_conversation(messages, tools=tools))
        text = self.replies.pop(0)
        if isinstance(text, Exception):
            raise text
        ids: list[int] = []
        for index, part in enumerate(text.split("<|assistant|>")):
            if index:
                ids.append(self.fmt.special_ids["<|assistant|>"])
            ids += self.fmt.encode_text(part)
        detok = IncrementalDetokenizer(lambda x: self.fmt.decode(x, keep_roles=True))
        for token in ids:  # one token at a time, as the engine streams
            piece = detok.push([token])
            if piece:
                yield piece
        tail = detok.flush()
        if tail:
            yield tail


def call(name, **arguments) -> str:
    """A ChatGLM3 tool call as the model writes it."""
    kwargs = ", ".join(f"{k}={json.dumps(v)}" for k, v in arguments.items())
    return f"{name}\n```python\ntool_call({kwargs})\n```"


def block(code: str) -> str:
    """A ChatGLM3 code-interpreter turn as the model writes it."""
    return f"interpreter\n```python\n{code}\n```"


def chatglm3_prompt(fmt, turns, tools=None):
    """ChatGLM3's layout by hand: [gMASK] sop, then <|role|> + enc(metadata + "\\n") + enc(content)."""
    s, enc = fmt.special_ids, fmt.encode_text
    ids = [s["[gMASK]"], s["sop"]]
    for role, metadata, content in turns:
        if role == "system" and tools:
            content += "\n" + json.dumps(tools, indent=4, ensure_ascii=False)
        ids += [s[f"<|{role}|>"]] + enc(metadata + "\n") + enc(content)
    return ids + [s["<|assistant|>"]]


def tiny_png(width: int = 3, height: int = 2) -> bytes:
    """A valid RGB PNG built by hand (no imaging library in the kernel or here)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes([200, 30, 30]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
