"""Predicted memory per quantization mode, from a model folder's ``config.json`` only.
Kept whole past 400 lines: the prediction's types and the fallback formulas they share.

The exact figures come from engine/predict.py (the model built on the meta device; needs
torch): front ends ask for them through :func:`predict_exact_subprocess` and the shared
cache (exact_cache.py).  The hand formulas in this module are the fallback where the exact count
cannot be had (no torch, a failure), and their results say ``source == "formula"``: the UI
marks them "(estimate)".

No weights are read and torch is not imported.

Architectures
-------------
* native transformers GLM configs, ``model_type`` ``"glm"`` (GLM-4-9B "-hf") and
  ``"glm4"`` (GLM-4-0414: two extra RMSNorms per layer);
* ChatGLM's own config, ``model_type`` ``"chatglm"`` (ChatGLM2/3-6B, GLM-4-9B-chat in
  the original layout).  The engine loads these into ``GlmForCausalLM``; the count is
  identical (q/k/v split out of ``query_key_value`` changes nothing);
* anything llama-like as a fallback (``exact=False`` on the result; MoE not modelled).

Modes and bytes
---------------
``bf16``/``fp16``: 2 bytes per parameter; ``fp32``: 4.
``int8``: bitsandbytes LLM.int8: every decoder-layer ``nn.Linear`` weight 1 byte plus a
float32 scale per output row (``SCB``); embeddings, norms, biases and ``lm_head``
(skipped by bitsandbytes by default) stay in ``nonquant_dtype``.
``int4``: bitsandbytes nf4: Linear weights 0.5 byte plus an absmax per 64-element block
(float32, or uint8 + a float32 per 256 blocks when ``double_quant``), 16-entry code
table per tensor; the rest in ``nonquant_dtype``.  On CPU bitsandbytes keeps the
non-quantized parts in the compute dtype: pass ``nonquant_dtype="fp32"`` if that is
float32.  Small buffers (rotary ``inv_freq``) are ignored.

KV cache
--------
``2 * layers * kv_heads * head_dim * context_len * batch * kv_bytes`` (kv_bytes: 4 for
fp32, else the 16-bit compute dtype).  ``context_len`` defaults to the model's context
capped at :data:`DEFAULT_CONTEXT_CAP`; a prediction keeps the model's own context
(``model_context``) so that what it assumes can be said (``kv_bytes_at`` the whole context).

Overhead (an estimate, stated)
------------------------------
* ``device="cuda"``: :data:`CUDA_CONTEXT_BYTES` (700 MiB): the CUDA context plus
  cuBLAS/bitsandbytes workspaces.  Measured on an H100 (torch 2.11, CUDA 13, lazy
  module loading): 612 MiB context + ~75 MiB after the first matmuls; smaller cards
  usually need less.  ``"cpu"``: 0 (the process's own RSS is outside "available").
* Activations of one prefill chunk of ``min(context_len, 2048)`` tokens x batch in the
  compute dtype: residual/normed/attention-output copies (4 x hidden), q/k/v, k/v
  repeated to every head (GQA), the fused gate_up output, the activated gate and the
  product (4 x ffn); plus fp32 logits for the last token only (``generate``).
* ``int8``: LLM.int8's int32 accumulator and fp16 result of the widest Linear for that
  chunk and the int8 + fp16 copies of its input, times 2.5: on the H100 these buffers
  took 0.47 GB allocated but left 0.77 GB more reserved-and-unused by the caching
  allocator at the peak.  ``int4``: one dequantized copy of the largest Linear weight.
Not modelled: the peak while loading (a pickled ``.bin`` shard is materialised in RAM),
memory that unloading fails to give back.  (``torch.cuda.empty_cache()`` right after an
int8 load gave back only 0.22 GB and did not lower the generation peak.)

What a loaded model really holds is measured by footprint.py; the exact results reach the
front ends through exact_cache.py (both names stay importable from here).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from .api import MODES

if TYPE_CHECKING:
    from .exact_cache import (
        ExactResult,
        cache_key,
        cached_exact,
        predict_exact_subprocess,
        prediction_from_dict,
        result_to_json,
        store_count,
    )
    from .footprint import measured_footprint_bytes

__all__ = [
    "MODES",
    "DTYPE_BYTES",
    "CUDA_CONTEXT_BYTES",
    "DEFAULT_CONTEXT_CAP",
    "PREFILL_CHUNK",
    "ModelArch",
    "MemoryPrediction",
    "FitVerdict",
    "read_config",
    "arch_from_config",
    "count_params",
    "predict",
    "predict_all",
    "predict_for_dir",
    "fit",
    "measured_footprint_bytes",
    "ExactResult",
    "prediction_from_dict",
    "cache_key",
    "cached_exact",
    "store_count",
    "predict_exact_subprocess",
    "result_to_json",
]

DTYPE_BYTES: dict[str, int] = {"bf16": 2, "fp16": 2, "fp32": 4}
CUDA_CONTEXT_BYTES = 700 * 1024 * 1024
DEFAULT_CONTEXT_CAP = 8192
PREFILL_CHUNK = 2048
NF4_BLOCK = 64
NESTED_BLOCK = 256
TIGHT_MARGIN = 0.10


# --------------------------------------------------------------------------- architecture


@dataclass(frozen=True)
class ModelArch:
    family: str  # "glm" | "glm4" | "chatglm" | "generic"
    model_type: str
    hidden_size: int
    num_layers: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    linear_bias: bool = False  # bias on o_proj / MLP (ChatGLM add_bias_linear, llama mlp_bias)
    norms_per_layer: int = 2
    final_norm: bool = True
    max_context: int | None = None
    exact: bool = True  # False: generic fallback, count is an estimate
    moe: bool = False  # experts present: not modelled (the count covers one dense MLP)

    def layer_linears(self) -> tuple[tuple[int, int, bool], ...]:
        """(in_features, out_features, has_bias) of each quantizable Linear in one layer."""
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return (
            (h, q, self.qkv_bias),  # q_proj
            (h, kv, self.qkv_bias),  # k_proj
            (h, kv, self.qkv_bias),  # v_proj
            (q, h, self.linear_bias),  # o_proj
            (h, 2 * self.intermediate_size, self.linear_bias),  # gate_up_proj
            (self.intermediate_size, h, self.linear_bias),  # down_proj
        )

    # parameter groups --------------------------------------------------------------
    @property
    def embed_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def norm_params(self) -> int:
        return self.hidden_size * (self.num_layers * self.norms_per_layer + (1 if self.final_norm else 0))

    @property
    def linear_weight_params(self) -> int:
        return self.num_layers * sum(i * o for i, o, _ in self.layer_linears())

    @property
    def bias_params(self) -> int:
        return self.num_layers * sum(o for _, o, b in self.layer_linears() if b)

    @property
    def params(self) -> int:
        return self.embed_params + self.lm_head_params + self.norm_params + self.linear_weight_params + self.bias_params


def read_config(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    with open(os.path.join(os.fspath(model_dir), "config.json"), encoding="utf-8") as f:
        return json.load(f)


def _first(cfg: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        v = cfg.get(k)
        if v is not None:
            return v
    return default


def arch_from_config(cfg: Mapping[str, Any] | Any) -> ModelArch:
    """Accepts a config dict (``config.json``) or a transformers config object."""
    if not isinstance(cfg, Mapping):
        to_dict = getattr(cfg, "to_dict", None)
        cfg = to_dict() if callable(to_dict) else dict(vars(cfg))
    mt = str(cfg.get("model_type") or "").lower()
    if mt == "chatglm":
        h = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        mqa = bool(cfg.get("multi_query_attention", "multi_query_group_num" in cfg))
        kv = int(cfg.get("multi_query_group_num") or heads) if mqa else heads
        add_bias_linear = bool(cfg.get("add_bias_linear", False))
        return ModelArch(
            family="chatglm",
            model_type=mt,
            hidden_size=h,
            num_layers=int(cfg["num_layers"]),
            intermediate_size=int(cfg["ffn_hidden_size"]),
            num_heads=heads,
            num_kv_heads=kv,
            head_dim=int(cfg.get("kv_channels") or h // heads),
            vocab_size=int(_first(cfg, "padded_vocab_size", "vocab_size")),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bool(cfg.get("add_qkv_bias", False)) or add_bias_linear,
            linear_bias=add_bias_linear,
            norms_per_layer=2,
            final_norm=bool(cfg.get("post_layer_norm", True)),
            max_context=_first(cfg, "seq_length", "max_sequence_length"),
        )
    if "text_config" in cfg and "hidden_size" not in cfg and isinstance(cfg["text_config"], Mapping):
        inner = dict(cfg["text_config"])
        inner.setdefault("model_type", mt)
        return arch_from_config(inner)
    h = int(_first(cfg, "hidden_size", "n_embd", "d_model"))
    heads = int(_first(cfg, "num_attention_heads", "n_head"))
    kv = int(_first(cfg, "num_key_value_heads", default=heads))
    hd = int(_first(cfg, "head_dim", default=h // heads))
    common = dict(
        model_type=mt,
        hidden_size=h,
        num_layers=int(_first(cfg, "num_hidden_layers", "num_layers", "n_layer")),
        intermediate_size=int(_first(cfg, "intermediate_size", "ffn_hidden_size", default=4 * h)),
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=hd,
        vocab_size=int(_first(cfg, "vocab_size", "padded_vocab_size")),
        max_context=_first(cfg, "max_position_embeddings", "seq_length"),
    )
    if mt in ("glm", "glm4"):
        return ModelArch(
            family=mt,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bool(cfg.get("attention_bias", True)),  # GlmConfig default: True
            norms_per_layer=4 if mt == "glm4" else 2,
            **common,
        )
    moe = any(k in cfg for k in ("n_routed_experts", "num_experts", "num_local_experts"))
    return ModelArch(
        family="generic",
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=bool(cfg.get("attention_bias", cfg.get("qkv_bias", False))),
        linear_bias=bool(cfg.get("mlp_bias", False)),
        exact=False,
        moe=moe,
        **common,
    )


def count_params(arch_or_config: ModelArch | Mapping[str, Any]) -> int:
    arch = arch_or_config if isinstance(arch_or_config, ModelArch) else arch_from_config(arch_or_config)
    return arch.params


# --------------------------------------------------------------------------- prediction


@dataclass(frozen=True)
class MemoryPrediction:
    mode: str
    params: int
    weight_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    total_bytes: int
    context_len: int
    batch: int
    device: str
    exact: bool  # parameter count exact (known architecture) or estimated
    notes: tuple[str, ...] = field(default=())
    model_context: int | None = None  # the model's own context (config.json), when it says
    #: "meta": weights counted on a meta-device model and the KV cache from the attention
    #: transformers runs (engine/predict.py); "formula": the hand formula below (an estimate
    #: the UI marks as such, used only when the exact figure cannot be had)
    source: str = "formula"
    kv_bytes_per_token: int | None = None
    architecture: str | None = None  # the transformers class counted ("meta" only)

    def kv_bytes_at(self, tokens: int) -> int:
        """The KV cache at ``tokens`` of context (it grows linearly with the context)."""
        return self.kv_cache_bytes * int(tokens) // max(1, self.context_len)

    @property
    def fixed_dominate(self) -> bool:
        """KV cache and overhead (which quantization does not shrink) outweigh the weights."""
        return self.kv_cache_bytes + self.overhead_bytes > self.weight_bytes


def _dtype_bytes(name: str) -> int:
    try:
        return DTYPE_BYTES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPE_BYTES)}") from None


def _weight_bytes(arch: ModelArch, mode: str, nonquant: int, double_quant: bool) -> int:
    if mode in DTYPE_BYTES:
        return arch.params * DTYPE_BYTES[mode]
    rest = (arch.embed_params + arch.lm_head_params + arch.norm_params + arch.bias_params) * nonquant
    linears = arch.layer_linears()
    L = arch.num_layers
    if mode == "int8":
        weights = L * sum(i * o for i, o, _ in linears)
        scales = L * sum(o for _, o, _ in linears) * 4  # SCB: float32 per output row
        return rest + weights + scales
    if mode == "int4":
        total = 0
        for i, o, _ in linears:
            n = i * o
            blocks = math.ceil(n / NF4_BLOCK)
            packed = math.ceil(n / 2)
            if double_quant:
                stats = blocks + math.ceil(blocks / NESTED_BLOCK) * 4 + 4 + 256 * 4  # + offset, int8 code
            else:
                stats = blocks * 4
            total += packed + stats + 16 * 4  # + nf4 code table
        return rest + L * total
    raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")


def predict(
    arch: ModelArch | Mapping[str, Any],
    mode: str,
    *,
    context_len: int | None = None,
    batch: int = 1,
    device: str = "cuda",
    nonquant_dtype: str = "bf16",
    double_quant: bool = False,
) -> MemoryPrediction:
    """Predicted footprint of ``arch`` loaded in ``mode`` on ``device`` ("cuda"/"cpu")."""
    if not isinstance(arch, ModelArch):
        arch = arch_from_config(arch)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    dev = "cuda" if str(device).startswith("cuda") else "cpu"
    nonquant = _dtype_bytes(nonquant_dtype)
    act = DTYPE_BYTES[mode] if mode in DTYPE_BYTES else nonquant  # compute dtype
    if context_len is None:
        context_len = min(int(arch.max_context or PREFILL_CHUNK), DEFAULT_CONTEXT_CAP)
    context_len = max(1, int(context_len))
    batch = max(1, int(batch))

    weights = _weight_bytes(arch, mode, nonquant, double_quant)
    kv = 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * context_len * batch * act

    h, ffn = arch.hidden_size, arch.intermediate_size
    tokens = min(context_len, PREFILL_CHUNK) * batch
    qkv = (arch.num_heads + 2 * arch.num_kv_heads) * arch.head_dim
    kv_expanded = 2 * arch.num_heads * arch.head_dim  # GQA: k/v repeated to all heads
    activations = tokens * act * (4 * h + 4 * ffn + qkv + kv_expanded) + batch * arch.vocab_size * 4
    linears = arch.layer_linears()
    workspace = 0
    if mode == "int8":  # int32 accumulator + fp16 result, int8 + fp16 copies of the input,
        # x2.5 for the caching allocator's fragmentation around these odd-sized buffers
        workspace = tokens * max(o for _, o, _ in linears) * (4 + 2) + tokens * max(i for i, _, _ in linears) * (1 + 2)
        workspace = workspace * 5 // 2
    elif mode == "int4":  # one dequantized weight
        workspace = max(i * o for i, o, _ in linears) * act
    context = CUDA_CONTEXT_BYTES if dev == "cuda" else 0
    overhead = context + activations + workspace

    notes = []
    if not arch.exact:
        notes.append(f"unknown architecture {arch.model_type or '?'}: llama-like estimate")
    if arch.moe:
        notes.append("mixture-of-experts not modelled: real size is much larger")
    return MemoryPrediction(
        mode=mode,
        params=arch.params,
        weight_bytes=int(weights),
        kv_cache_bytes=int(kv),
        overhead_bytes=int(overhead),
        total_bytes=int(weights + kv + overhead),
        context_len=context_len,
        batch=batch,
        device=dev,
        exact=arch.exact,
        notes=tuple(notes),
        model_context=int(arch.max_context) if arch.max_context else None,
    )


def predict_all(arch: ModelArch | Mapping[str, Any], modes: tuple[str, ...] = MODES,
                **kw: Any) -> dict[str, MemoryPrediction]:
    if not isinstance(arch, ModelArch):
        arch = arch_from_config(arch)
    return {m: predict(arch, m, **kw) for m in modes}


def predict_for_dir(model_dir: str | os.PathLike[str], modes: tuple[str, ...] = MODES,
                    **kw: Any) -> dict[str, MemoryPrediction]:
    """Read ``model_dir/config.json`` and predict every mode (keyword args as :func:`predict`)."""
    return predict_all(arch_from_config(read_config(model_dir)), modes, **kw)


# --------------------------------------------------------------------------- fit


@dataclass(frozen=True)
class FitVerdict:
    verdict: str  # "fits" | "tight" | "won't fit" | "CPU only" | "unknown"
    reason: str
    predicted_bytes: int
    free_bytes: int | None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def fit(predicted_total: int, free_bytes: int | None, device: str = "cuda", *, mode: str | None = None) -> FitVerdict:
    """Compare a prediction with free memory on ``device``.

    ``device="cuda"``: ``free_bytes`` is free VRAM -> "fits" / "tight" (predicted within
    10% of free) / "won't fit".  ``device="cpu"`` (no GPU): ``free_bytes`` is available
    RAM -> "CPU only" when it fits there (runs, slowly), else "won't fit".
    ``free_bytes=None`` -> "unknown".
    """
    what = f"{mode} needs" if mode else "needs"
    p = int(predicted_total)
    on_gpu = str(device).startswith("cuda")
    where = "GPU" if on_gpu else "RAM"
    if free_bytes is None:
        return FitVerdict("unknown", f"{what} ~{_gib(p)}; free {where} unknown", p, None)
    free = int(free_bytes)
    if p > free:
        return FitVerdict(
            "won't fit", f"{what} ~{_gib(p)}, only {_gib(max(free, 0))} free {where} (short {_gib(p - free)})", p, free
        )
    if not on_gpu:
        return FitVerdict(
            "CPU only", f"no CUDA GPU: runs on CPU (slow); {what} ~{_gib(p)} of {_gib(free)} available RAM", p, free
        )
    if p > (1.0 - TIGHT_MARGIN) * free:
        return FitVerdict("tight", f"{what} ~{_gib(p)} of {_gib(free)} free: under 10% headroom", p, free)
    return FitVerdict("fits", f"{what} ~{_gib(p)} of {_gib(free)} free", p, free)


# --------------------------------------------------------------------------- moved, still importable from here
# measured_footprint_bytes lives in footprint.py; the exact results' cache and subprocess in exact_cache.py
# (which imports this module: hence loaded on first use rather than imported above).

_MOVED = {
    "measured_footprint_bytes": "footprint",
    "ExactResult": "exact_cache",
    "prediction_from_dict": "exact_cache",
    "cache_key": "exact_cache",
    "cached_exact": "exact_cache",
    "store_count": "exact_cache",
    "result_to_json": "exact_cache",
    "predict_exact_subprocess": "exact_cache",
}


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __package__), name)
