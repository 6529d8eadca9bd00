"""The status line's text."""

from __future__ import annotations

from typing import Any, Optional

from rich.text import Text

from glmtui.engine.api import MODES

from .model_controller import ModelController
from .monitor import offload_warning


def status_text(model: ModelController, endpoint: Optional[str], chat: Any, in_memory: bool,
            mouse_released: bool, decode_tok_s: Optional[float] = None) -> Text:
    """The model (loaded, loading or none), the chat's state or title, and what needs saying
    (``decode_tok_s``: the replies' measured decode speed, said with an offload)."""
    text = Text()
    if mouse_released:
        text.append("mouse released: terminal selection, F12 ends", style="bold reverse")
        text.append("  │  ", style="dim")
    if model.loaded is not None:
        text.append("● ", style="green")
        text.append(model.loaded.model_name, style="bold")
        if model.loaded.mode in MODES:
            text.append(f" {model.loaded.mode} {model.loaded.device}")
        if offload_warning(model.loaded):  # layers on the CPU/disk: said for as long as it is loaded
            loud = offload_warning(model.loaded, short=True, decode_tok_s=decode_tok_s)
            text.append(f"  {loud}", style="bold reverse red")
    elif model.load_stage is not None:
        text.append("◌ loading ", style="yellow")
        text.append(model.loading_label or "")
        stage = model.load_stage
        frac = model.load_fraction
        text.append(f" · {stage}" + (f" {frac * 100:.0f}%" if frac is not None else ""), style="dim")
    else:
        text.append("○ no model", style="dim")
    if endpoint:
        text.append(f" @ {endpoint}", style="dim")
    text.append("  │  ", style="dim")
    if chat.streaming:
        text.append("writing… (Esc stops)", style="bold yellow")
    else:
        text.append(chat.title)
    if in_memory:
        text.append("  │  history in memory only", style="red")
    return text

