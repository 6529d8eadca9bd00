"""What the chat shows and sends, as plain text and values (no Textual): control characters made
visible, titles, generation parameters to and from a conversation's stored dict, a reply's stats line
and status labels."""

from __future__ import annotations

import re
from typing import Optional

from glmtui.engine.events import GenerationParams

PARAM_KEYS = ("temperature", "top_p", "max_new_tokens", "repetition_penalty")

# Control characters (a random or broken model emits them) would drive the
# terminal: C0 controls are shown as Unicode control pictures (tabs and
# newlines stay), C1 controls as U+FFFD; invisible format characters (bidi
# overrides, zero-width marks) that make the terminal and the layout disagree
# about widths are dropped; line/paragraph separators become newlines.
_CONTROL_PICTURES: dict[int, Optional[int]] = {c: 0x2400 + c for c in range(32) if c not in (9, 10)}
_CONTROL_PICTURES[0x7F] = 0x2421
_CONTROL_PICTURES.update({c: 0xFFFD for c in range(0x80, 0xA0)})
_CONTROL_PICTURES.update({c: None for c in (0xAD, 0x061C, 0x180E, 0xFEFF, *range(0x200B, 0x2010),
                                             *range(0x202A, 0x202F), *range(0x2060, 0x2070))})
_CONTROL_PICTURES.update({0x2028: 0x0A, 0x2029: 0x0A})




def visible(text: str) -> str:
    return text.translate(_CONTROL_PICTURES)


def make_title(prompt: str, limit: int = 40) -> str:
    line = re.sub(r"\s+", " ", prompt).strip()
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def params_from_dict(values: Optional[dict], base: GenerationParams = GenerationParams()) -> GenerationParams:
    values = values or {}

    def pick(key: str, cast):
        try:
            return cast(values[key])
        except (KeyError, TypeError, ValueError):
            return getattr(base, key)

    return GenerationParams(
        max_new_tokens=pick("max_new_tokens", int),
        temperature=pick("temperature", float),
        top_p=pick("top_p", float),
        top_k=base.top_k,
        repetition_penalty=pick("repetition_penalty", float),
        stop=base.stop,
        seed=base.seed,
        # a reasoning model's thinking switch (the settings dialog): True/False, else the template's default
        thinking=values["thinking"] if isinstance(values.get("thinking"), bool) else base.thinking,
    )


def params_to_dict(params: GenerationParams) -> dict:
    return {k: getattr(params, k) for k in PARAM_KEYS}


def format_stats(stats: Optional[dict]) -> str:
    if not stats:
        return ""
    parts = []
    if stats.get("completion_tokens") is not None:
        parts.append(f"{stats['completion_tokens']} tokens")
    if isinstance(stats.get("ttft"), (int, float)):
        parts.append(f"TTFT {stats['ttft']:.2f} s")
    if isinstance(stats.get("tokens_per_s"), (int, float)):
        parts.append(f"{stats['tokens_per_s']:.1f} tok/s")
    if stats.get("prompt_tokens") is not None:
        cached = stats.get("cached_tokens")
        parts.append(f"prompt {stats['prompt_tokens']}" + (f" ({cached} reused)" if cached else ""))
    if stats.get("finish_reason") == "length":
        if stats.get("context_limit"):
            parts.append(f"reached the model's context ({stats['context_limit']:,} tokens)")
        else:
            parts.append("hit max new tokens")
    where = " ".join(str(stats[k]) for k in ("model", "mode", "device") if stats.get(k))
    if where:
        parts.append(where)
    return " · ".join(parts)


EMPTY_TEXT = {
    "stopped": "*(stopped before any text)*",
    "interrupted": "*(interrupted before any text)*",
    "complete": "*(empty reply)*",
}


def shown_text(text: str, status: str) -> str:
    """What a reply's body shows: its text made safe, or a note when it has none."""
    shown = visible(text)
    if not shown.strip():
        return EMPTY_TEXT.get(status, shown)
    return shown


STATUS_LABELS = {
    "streaming": "streaming…",
    "stopped": "■ stopped",
    "interrupted": "⚠ interrupted (glmtui closed while writing)",
    "error": "✗ error",
}
ENGINE_INTERRUPTED_LABEL = "⚠ interrupted (the engine process ended)"
