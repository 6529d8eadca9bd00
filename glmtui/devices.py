"""Which devices glmtui can load a model on, checked without importing torch.

The device reaches transformers as ``device_map`` (engine/loading.py): "auto"
picks the first CUDA GPU when torch sees one, else the CPU. The command line
(``--device``) and the load dialog (Ctrl+L) both check a device here, so a
typo is refused at once with one line instead of failing inside the load.
"""

from __future__ import annotations

import re
from typing import Optional

DEVICES = "auto, cpu, cuda or cuda:N (N = the GPU's index, 0 for the first)"
_VALID = re.compile(r"auto|cpu|cuda(:\d{1,3})?")


def normalize_device(text: Optional[str]) -> str:
    """The device as glmtui passes it on: trimmed, lower case; empty means auto."""
    value = (text or "").strip().lower()
    return value or "auto"


def device_problem(text: Optional[str]) -> Optional[str]:
    """Why ``text`` is not a device glmtui can use, or None when it is."""
    value = normalize_device(text)
    if _VALID.fullmatch(value):
        return None
    hint = ""
    if value in ("gpu", "nvidia") or value.isdigit():
        hint = f" — for a GPU write cuda:{value if value.isdigit() else 0}"
    elif value.startswith("cuda"):
        hint = " — cuda takes a GPU index after a colon, e.g. cuda:1"
    elif value == "mps":
        hint = " — Apple's mps is not supported"
    return f"unknown device {(text or '').strip()!r}: use {DEVICES}{hint}"
