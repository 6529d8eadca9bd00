"""Which library quantizes an int8/int4 mode, and its transformers quantization config.

On CUDA, torchao's weight-only int8/int4 (transformers' ``TorchAoConfig``) compiled with the static
cache is the fast path; bitsandbytes (LLM.int8, nf4) stays where it is the better or the only choice:
the CPU, GPUs older than the kernels torchao's int4 layout needs (sm_80), and machines without
torchao. ``GLMTUI_QUANT_BACKEND=bitsandbytes|torchao`` overrides the choice. The hardware and the
installed packages come in as arguments, so the choice is testable without either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

TORCHAO = "torchao"
BITSANDBYTES = "bitsandbytes"
INT4_MIN_CAPABILITY = (8, 0)  # the tile-packed int4 matmul (tinygemm) needs Ampere or newer


@dataclass(frozen=True)
class Choice:
    backend: str  # "torchao" or "bitsandbytes"
    reason: str  # one line for the UI: why this library runs this mode here

    @property
    def label(self) -> str:
        return self.backend


def torchao_version() -> Optional[str]:
    """The installed torchao's version, without importing it (None: not installed)."""
    from importlib import metadata

    try:
        return metadata.version("torchao")
    except metadata.PackageNotFoundError:
        return None


def choose(mode: str, device: str, *, torchao: Optional[str], capability: Optional[tuple[int, int]],
           override: Optional[str] = None) -> Optional[Choice]:
    """The backend for ``mode`` on ``device`` (None: not a quantized mode).

    ``torchao``: its installed version or None; ``capability``: the CUDA device's compute capability."""
    if mode not in ("int8", "int4"):
        return None
    override = (override if override is not None else os.environ.get("GLMTUI_QUANT_BACKEND", "")).strip().lower()
    on_cuda = str(device).startswith("cuda")
    if override == BITSANDBYTES:
        return Choice(BITSANDBYTES, "bitsandbytes (GLMTUI_QUANT_BACKEND)")
    if not on_cuda:
        return Choice(BITSANDBYTES, "bitsandbytes: torchao's fast kernels are CUDA kernels")
    if torchao is None:
        return Choice(BITSANDBYTES, "bitsandbytes: torchao is not installed (pip install torchao for faster decoding)")
    if override != TORCHAO and mode == "int4" and capability is not None and tuple(capability) < INT4_MIN_CAPABILITY:
        return Choice(BITSANDBYTES, f"bitsandbytes: torchao's int4 kernel needs sm_80 or newer, this GPU is "
                                    f"sm_{capability[0]}{capability[1]}")
    return Choice(TORCHAO, f"torchao {torchao} weight-only {mode}, compiled")


def quantization_config(choice: Choice, mode: str, compute_dtype, skip: Optional[list[str]] = None):
    """transformers' quantization config for ``choice`` (``skip``: modules kept in 16-bit)."""
    if choice.backend == TORCHAO:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        if mode == "int8":
            quant = Int8WeightOnlyConfig()
        else:
            quant = Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d")
        return TorchAoConfig(quant, modules_to_not_convert=skip)
    from transformers import BitsAndBytesConfig

    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
                              llm_int8_skip_modules=skip)
