"""The chat template a model folder ships, read as text (no tokenizer, no torch).

For front ends that must know what a model's template does without loading it: the settings
dialog and `glmtui chat --think/--no-think` offer the thinking switch only where the template
reads ``enable_thinking`` (engine/reasoning.py applies it). Where transformers keeps the
template: ``chat_template.jinja`` (5.x), ``chat_template.json``, or ``chat_template`` in
``tokenizer_config.json`` (a string, or a list of named templates; "default" is the one used).
"""

from __future__ import annotations

import json
from pathlib import Path

from .reasoning import SWITCH


def _from_config_value(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"name": ..., "template": ...}]: the default one
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        found = named.get("default")
        return found if isinstance(found, str) else ""
    return ""


def chat_template_text(folder: str | Path) -> str:
    """The folder's default chat template, or "" when it has none (ChatGLM3, base models) or it is unreadable."""
    folder = Path(folder)
    try:
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        pass
    for name in ("chat_template.json", "tokenizer_config.json"):
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        text = _from_config_value(data.get("chat_template")) if isinstance(data, dict) else ""
        if text:
            return text
    return ""


def has_thinking_switch(folder: str | Path) -> bool:
    """The folder's template reads ``enable_thinking`` (GLM-4.5+; GLM-Z1-0414 always reasons: no switch)."""
    return SWITCH in chat_template_text(folder)
