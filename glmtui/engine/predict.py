"""Exact memory prediction for any architecture transformers knows, from ``config.json`` alone.

The model is built on the meta device (shapes and dtypes, no memory) the way
``from_pretrained`` would build it for each mode, and its tensors are counted:

* 16/32-bit modes: every parameter and buffer at the dtype loading gives it: the
  requested dtype, except what the class keeps in float32 (``_keep_in_fp32_modules``
  for fp16, ``_keep_in_fp32_modules_strict`` for fp16/bf16: MoE routers) and tensors
  created with an explicit dtype (rotary ``inv_freq``, router bias), which keep theirs.
* int8 / int4 (bitsandbytes, as glmtui's loader configures it): the Linear layers
  transformers' quantizer converts (``type(module) is nn.Linear``, minus
  ``get_keys_to_not_convert``: lm_head, tied and last modules, minus the class's
  fp32 modules; on CPU int4 also minus the widths bitsandbytes' CPU kernel cannot run)
  hold int8 weights + one float32 scale per output row, or nf4 (two values a byte)
  + a float32 absmax per 64 values (or the nested form with double quantization);
  everything else stays in the compute dtype.  MoE experts stored as 3-D tensors are
  not ``nn.Linear``: bitsandbytes leaves them in 16-bit, and the count says so.

KV cache per token: one attention layer of each kind is run on meta tensors with a
real transformers cache, so what is counted is what that cache stores: GQA keys and
values (kv heads x head_dim x 2), MLA's compressed latent (``kv_lora_rank +
qk_rope_head_dim``, one "head"), sliding-window layers capped at their window.
Overhead (activations, workspaces, CUDA context) stays memory.py's stated estimate.

Imports torch and transformers: only the engine process, ``glmtui fit`` and benches
use this module.  The UI runs ``python -m glmtui.engine.predict FOLDER --json`` in a
short-lived subprocess (memory.predict_exact_subprocess).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Mapping, Optional

import torch

from . import memory
from .memory import MODES, ExactResult, MemoryPrediction

NF4_BLOCK = memory.NF4_BLOCK
NESTED_BLOCK = memory.NESTED_BLOCK
INT4_CPU_IN_MULTIPLE = 64  # bitsandbytes' CPU int4 kernel (engine/checks.py)
INT4_CPU_OUT_MULTIPLE = 32
FLOAT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class UnknownArchitecture(ValueError):
    """config.json names an architecture transformers has no built-in model for."""


# --------------------------------------------------------------------------- config -> meta model


def hf_config(cfg: Mapping[str, Any]):
    """The transformers config for a ``config.json`` dict (ChatGLM3's as glmtui loads it)."""
    import transformers
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = cfg.get("model_type")
    if model_type == "chatglm":
        from .loading import chatglm3_to_glm_config

        return chatglm3_to_glm_config(dict(cfg))
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        hint = " (it ships its own code, which glmtui never runs)" if "auto_map" in cfg else ""
        raise UnknownArchitecture(
            f"unknown architecture {model_type!r}: transformers {transformers.__version__} has no built-in model "
            f"for it{hint}; no prediction"
        )
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UnknownArchitecture(f"architecture {model_type!r} is not a text generation model in transformers; "
                                  "no prediction")
    data = {k: v for k, v in cfg.items() if k != "model_type"}
    data.pop("quantization_config", None)  # a pre-quantized checkpoint: counted as the modes glmtui loads
    return CONFIG_MAPPING[model_type].from_dict(data)


def meta_model(config, dtype: torch.dtype):
    """``config``'s causal LM on the meta device, built at ``dtype`` as ``from_pretrained`` builds it."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def _fp32_names(model, dtype: torch.dtype) -> set[str]:
    """Names of the tensors loading keeps in float32 for ``dtype`` (the class's keep-in-fp32 plan)."""
    plan = model._get_dtype_plan(dtype) if hasattr(model, "_get_dtype_plan") else {}
    if not plan:
        return set()
    from transformers.core_model_loading import build_glob_alternation

    pattern = build_glob_alternation(list(plan))[0]
    return {name for name, _ in model.state_dict(keep_vars=True).items() if pattern.search(name)}


def _not_converted(model) -> list[str]:
    """transformers' default skip list for bitsandbytes (output embeddings, tied and last modules)
    plus the class's ``_keep_in_fp32_modules``."""
    from transformers.quantizers.base import get_keys_to_not_convert

    skip = list(get_keys_to_not_convert(model))
    skip += list(getattr(model, "_keep_in_fp32_modules", None) or [])
    return skip


def _quantized_linears(model, mode: str, device: str) -> tuple[dict[str, torch.nn.Module], list[str]]:
    """({name: Linear} bitsandbytes converts in ``mode``, names left 16-bit for the CPU int4 kernel)."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = _not_converted(model)
    chosen, odd = {}, []
    for name, module in model.named_modules():
        if type(module) is not torch.nn.Linear or not should_convert_module(name, skip):
            continue
        if mode == "int4" and device == "cpu" and (
            module.in_features % INT4_CPU_IN_MULTIPLE or module.out_features % INT4_CPU_OUT_MULTIPLE
        ):
            odd.append(name)  # loading.py keeps these in 16-bit (checks.int4_cpu_16bit_layers)
            continue
        chosen[name] = module
    return chosen, odd


def cpu_int4_repacks() -> bool:
    """Whether bitsandbytes repacks int4 weights for its AVX512-BF16 CPU kernel at the first forward
    (then absmax becomes bfloat16 and double quantization is undone)."""
    try:  # the CPU flag bitsandbytes asks for, without importing it (seconds)
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512_bf16" in line.split()
    except OSError:
        pass
    try:
        from bitsandbytes.functional import has_avx512bf16

        return bool(has_avx512bf16())
    except Exception:  # noqa: BLE001 - no bitsandbytes: int4 does not load here anyway
        return False


def _nf4_bytes(n: int, double_quant: bool, cpu_repacked: bool = False) -> int:
    blocks = math.ceil(n / NF4_BLOCK)
    if cpu_repacked:
        stats = blocks * 2  # bfloat16 absmax
    elif double_quant:
        stats = blocks + math.ceil(blocks / NESTED_BLOCK) * 4 + 4 + 256 * 4  # uint8 absmax, nested absmax, offset, code
    else:
        stats = blocks * 4  # float32 absmax
    return math.ceil(n / 2) + stats + 16 * 4  # packed values + absmax + the nf4 code table


def weight_bytes(model_for_dtype, mode: str, device: str = "cuda", double_quant: bool = False) -> tuple[int, list[str]]:
    """(bytes the loaded model holds in ``mode``, notes) for a meta model built at the mode's dtype."""
    model = model_for_dtype
    dtype = FLOAT_DTYPES.get(mode) or next(p.dtype for p in model.parameters() if p.is_floating_point())
    fp32 = _fp32_names(model, dtype)
    quantized: dict[str, torch.nn.Module] = {}
    odd: list[str] = []
    if mode in ("int8", "int4"):
        quantized, odd = _quantized_linears(model, mode, device)
    quant_weights = {id(m.weight): m for m in quantized.values()}
    repacked = mode == "int4" and device == "cpu" and bool(quantized) and cpu_int4_repacks()
    total, seen = 0, set()
    for name, tensor in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        n = tensor.numel()
        if id(tensor) in quant_weights:
            lin = quant_weights[id(tensor)]
            total += n + lin.out_features * 4 if mode == "int8" else _nf4_bytes(n, double_quant, repacked)
        elif name in fp32:
            total += n * 4
        else:
            total += n * tensor.element_size()
    notes = []
    if mode in ("int8", "int4"):
        left = [n for n, p in model.named_parameters() if p.dim() >= 3 and p.is_floating_point()]
        if left:
            share = sum(model.get_parameter(n).numel() for n in left) / max(1, sum(p.numel() for p in model.parameters()))
            notes.append(f"{mode}: bitsandbytes quantizes only nn.Linear layers: the experts' 3-D weight tensors "
                         f"({share:.0%} of the parameters) stay 16-bit")
        if odd:
            notes.append(f"{mode} on CPU: {len(odd)} Linear layers stay 16-bit (widths bitsandbytes' CPU kernel "
                         "cannot run)")
    return int(total), notes


# --------------------------------------------------------------------------- KV cache


def kv_bytes_per_token(model, dtype: torch.dtype) -> tuple[int, Optional[int], int]:
    """(cache bytes per token over all full-attention layers, sliding window or None, bytes per token
    over the sliding-window layers), measured by running attention on one meta token with a real
    transformers cache: once per kind of layer (attention class, layer type, weight shapes)."""
    from transformers import DynamicCache

    config = model.config
    inner = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    layers = getattr(inner, "layers", None)
    rotary = getattr(inner, "rotary_emb", None)
    if layers is None:
        raise ValueError("no decoder layers found")
    hidden = torch.zeros((1, 1, config.hidden_size), device="meta", dtype=dtype)
    positions = torch.zeros((1, 1), device="meta", dtype=torch.long)
    pos_emb = rotary(hidden, positions) if rotary is not None else None
    layer_types = getattr(config, "layer_types", None) or [None] * len(layers)
    cache = DynamicCache(config=config)
    measured: dict[tuple, tuple[int, bool, Optional[int]]] = {}
    full = sliding = 0
    window = None
    for index, layer in enumerate(layers):
        attn = getattr(layer, "self_attn", None) or getattr(layer, "attention", None)
        kind = (type(attn), layer_types[index] if index < len(layer_types) else None,
                tuple((n, tuple(p.shape)) for n, p in attn.named_parameters()))
        if kind not in measured:
            kwargs = {"hidden_states": hidden, "attention_mask": None, "cache": cache}
            if pos_emb is not None:
                kwargs["position_embeddings"] = pos_emb
            with torch.no_grad():
                attn(**kwargs)
            cl = cache.layers[getattr(attn, "layer_idx", index)]
            stored = sum(t.numel() * t.element_size() for t in (cl.keys, cl.values) if t is not None)
            is_sliding = bool(getattr(cl, "is_sliding", False))
            measured[kind] = (stored, is_sliding, getattr(cl, "sliding_window", None) if is_sliding else None)
        stored, is_sliding, layer_window = measured[kind]
        if is_sliding:
            window = layer_window or getattr(config, "sliding_window", None)
            sliding += stored
        else:
            full += stored
    return int(full), window, int(sliding)


# --------------------------------------------------------------------------- prediction


def _compute_dtype(mode: str, device: str) -> torch.dtype:
    """The dtype of what is not quantized (loading._load_kwargs)."""
    if mode in FLOAT_DTYPES:
        return FLOAT_DTYPES[mode]
    if mode == "int8":
        return torch.float16  # LLM.int8 computes in fp16
    if device == "cuda" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def predict_config(
    cfg: Mapping[str, Any],
    modes: tuple[str, ...] = MODES,
    *,
    context_len: Optional[int] = None,
    batch: int = 1,
    device: str = "cuda",
    double_quant: bool = False,
) -> dict[str, MemoryPrediction]:
    """{mode: exact prediction} for a ``config.json`` dict; UnknownArchitecture if transformers lacks it."""
    dev = "cuda" if str(device).startswith("cuda") else "cpu"
    config = hf_config(cfg)
    try:
        arch = memory.arch_from_config(cfg if cfg.get("model_type") == "chatglm" else config.to_dict())  # overhead only
    except Exception:  # noqa: BLE001 - an odd config the hand formula cannot read
        arch = None
    models: dict[torch.dtype, Any] = {}
    kv_cache: dict[torch.dtype, tuple[int, Optional[int], int]] = {}
    params = None
    out = {}
    for mode in modes:
        dtype = _compute_dtype(mode, dev)
        if dtype not in models:
            models[dtype] = meta_model(config, dtype)
        model = models[dtype]
        if params is None:
            params = sum(p.numel() for p in model.parameters())
        weights, notes = weight_bytes(model, mode, dev, double_quant)
        if dtype not in kv_cache:
            try:
                kv_cache[dtype] = kv_bytes_per_token(model, dtype)
            except Exception as exc:  # noqa: BLE001 - an attention that does not run on meta
                kv_cache[dtype] = (-1, None, 0)
                notes.append(f"KV cache not measured ({type(exc).__name__}); hand formula used")
        per_token, window, sliding = kv_cache[dtype]
        base = memory.predict(arch, mode, context_len=context_len, batch=batch, device=dev) if arch else None
        ctx = base.context_len if base else max(1, int(context_len or memory.PREFILL_CHUNK))
        if per_token < 0:
            kv = base.kv_cache_bytes if base else 0
            per_token = kv // max(1, ctx * batch)
        else:
            kv = (per_token * ctx + sliding * min(ctx, window or ctx)) * batch
            if window:
                notes.append(f"sliding-window layers keep {window:,} tokens")
        overhead = base.overhead_bytes if base else 0
        model_context = getattr(config, "max_position_embeddings", None) or (base.model_context if base else None)
        out[mode] = MemoryPrediction(
            mode=mode,
            params=int(params),
            weight_bytes=weights,
            kv_cache_bytes=int(kv),
            overhead_bytes=int(overhead),
            total_bytes=int(weights + kv + overhead),
            context_len=ctx,
            batch=batch,
            device=dev,
            exact=True,
            notes=tuple(notes) + (() if base else ("overhead not estimated",)),
            model_context=int(model_context) if model_context else None,
            source="meta",
            kv_bytes_per_token=int(per_token + sliding),
            architecture=type(models[dtype]).__name__,
        )
    return out


def predict_dir(model_dir: str | os.PathLike[str], modes: tuple[str, ...] = MODES, **kw: Any) -> dict[str, MemoryPrediction]:
    """:func:`predict_config` for a folder's ``config.json``."""
    return predict_config(memory.read_config(model_dir), modes, **kw)


def exact_result(cfg: Mapping[str, Any], device: str = "cuda", context_len: Optional[int] = None,
                 use_cache: bool = True) -> ExactResult:
    """:func:`predict_config` as an :class:`memory.ExactResult` (never raises), through the cache."""
    if use_cache:
        hit = memory.cached_exact(cfg, device, context_len)
        if hit is not None:
            return hit
    try:
        result = ExactResult(predict_config(cfg, device=device, context_len=context_len))
    except UnknownArchitecture as exc:
        result = ExactResult({}, str(exc), unknown_architecture=True)
    except Exception as exc:  # noqa: BLE001 - any failure is one line for the caller
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        result = ExactResult({}, f"exact count failed: {type(exc).__name__}: {first}")
    if use_cache:
        memory.store_exact(cfg, device, context_len, result)
    return result


def _quiet() -> None:
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m glmtui.engine.predict FOLDER [--device cuda|cpu] [--context N] [--json]``."""
    parser = argparse.ArgumentParser(prog="python -m glmtui.engine.predict", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a model folder (its config.json is read) or a config.json file")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--context", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-cache", action="store_true", help="count again even if a stored result exists")
    args = parser.parse_args(argv)
    _quiet()
    path = args.folder
    try:
        with open(path if os.path.isfile(path) else os.path.join(path, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        if not isinstance(cfg, dict):
            raise ValueError("config.json is not a JSON object")
    except (OSError, ValueError) as exc:
        result = ExactResult({}, f"config.json cannot be read: {exc}")
    else:
        result = exact_result(cfg, args.device, args.context, use_cache=not args.no_cache)
    if args.json:
        print(json.dumps(memory.result_to_json(result)))
    elif not result.predictions:
        print(result.error, file=sys.stderr)
    else:
        for m, p in result.predictions.items():
            print(f"{m:5} weights {p.weight_bytes:>15,} kv {p.kv_cache_bytes:>13,} overhead {p.overhead_bytes:>13,}")
    return 0 if result.predictions else 1


if __name__ == "__main__":
    sys.exit(main())
