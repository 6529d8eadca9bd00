"""Exact memory prediction for any architecture transformers knows, from ``config.json`` alone.
Kept whole past 400 lines: one meta build and everything counted from it.

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

from . import exact_cache, memory
from .count_facts import CountFacts, KvFacts, ModeFacts, predictions
from .exact_cache import ExactResult
from .memory import MODES, MemoryPrediction

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


#: The dtype the one meta build uses: no checkpoint stores float64 and no module asks for it, so
#: a float64 tensor is one that takes the loading dtype, and any other dtype was set explicitly
#: (rotary ``inv_freq``, a router's bias) and is kept whatever the mode.
BUILD_DTYPE = torch.float64


def meta_model(config, dtype: torch.dtype = BUILD_DTYPE):
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


def _linears(model) -> tuple[dict[str, int], set[str]]:
    """({weight name: out_features} of the Linear layers bitsandbytes converts, the names of those
    loading keeps in 16-bit for the CPU int4 kernel: widths it cannot run, checks.int4_cpu_16bit_layers)."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = _not_converted(model)
    chosen: dict[str, int] = {}
    odd: set[str] = set()
    for name, module in model.named_modules():
        if type(module) is not torch.nn.Linear or not should_convert_module(name, skip):
            continue
        n_in, n_out = int(module.in_features), int(module.out_features)
        chosen[f"{name}.weight"] = n_out
        if n_in % INT4_CPU_IN_MULTIPLE or n_out % INT4_CPU_OUT_MULTIPLE:
            odd.add(f"{name}.weight")
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


class MetaCount:
    """One meta-device build of a config, and what each mode stores, derived from it.

    Per tensor: its element count, whether it takes the loading dtype (built as BUILD_DTYPE) or
    keeps its own, and whether it is the weight of a Linear bitsandbytes converts.  Every mode and
    device is answered from this one build (a build per dtype cost most of the count's time)."""

    def __init__(self, model) -> None:
        self.model = model
        self.architecture = type(model).__name__
        self.params = sum(p.numel() for p in model.parameters())
        self.tensors: list[tuple[str, int, Optional[int]]] = []  # (name, numel, fixed bytes per element or None)
        seen: set[int] = set()
        for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers()):
            if id(t) in seen:
                continue
            seen.add(id(t))
            self.tensors.append((name, t.numel(), None if t.dtype == BUILD_DTYPE else t.element_size()))
        self.quantizable, self.cpu_odd = _linears(model)
        self._fp32: dict[torch.dtype, set[str]] = {}
        three_d = sum(p.numel() for p in model.parameters() if p.dim() >= 3 and p.is_floating_point())
        self.expert_share = three_d / max(1, self.params)
        self._kv: Optional[tuple[tuple[int, int], tuple[int, int], Optional[int]]] = None

    def fp32_names(self, dtype: torch.dtype) -> set[str]:
        if dtype not in self._fp32:
            self._fp32[dtype] = _fp32_names(self.model, dtype)
        return self._fp32[dtype]

    def weight_bytes(self, mode: str, device: str, double_quant: bool = False) -> tuple[int, list[str]]:
        """(bytes the loaded model holds in ``mode`` on ``device``, notes)."""
        dtype = _compute_dtype(mode, device)
        size = dtype.itemsize
        fp32 = self.fp32_names(dtype)
        quantized: dict[str, int] = {}
        odd = 0
        if mode in ("int8", "int4"):
            quantized = dict(self.quantizable)
            if mode == "int4" and device == "cpu":
                odd = sum(1 for w in self.cpu_odd if w in quantized)
                for w in self.cpu_odd:
                    quantized.pop(w, None)
        repacked = mode == "int4" and device == "cpu" and bool(quantized) and cpu_int4_repacks()
        total = 0
        for name, n, fixed in self.tensors:
            if name in quantized:
                total += n + quantized[name] * 4 if mode == "int8" else _nf4_bytes(n, double_quant, repacked)
            elif fixed is not None:
                total += n * fixed
            elif name in fp32:
                total += n * 4
            else:
                total += n * size
        notes = []
        if mode in ("int8", "int4"):
            if self.expert_share:
                notes.append(f"{mode}: bitsandbytes quantizes only nn.Linear layers: the experts' 3-D weight tensors "
                             f"({self.expert_share:.0%} of the parameters) stay 16-bit")
            if odd:
                notes.append(f"{mode} on CPU: {odd} Linear layers stay 16-bit (widths bitsandbytes' CPU kernel "
                             "cannot run)")
        return int(total), notes

    def kv(self) -> tuple[tuple[int, int], tuple[int, int], Optional[int]]:
        """Per token: (full-attention layers, sliding-window layers) as (elements in the compute dtype,
        bytes of a fixed dtype), and the window; measured once (see :func:`kv_per_token`)."""
        if self._kv is None:
            self._kv = kv_per_token(self.model)
        return self._kv


def weight_bytes(model, mode: str, device: str = "cuda", double_quant: bool = False) -> tuple[int, list[str]]:
    """(bytes the loaded model holds in ``mode``, notes) for a meta model built at BUILD_DTYPE."""
    return MetaCount(model).weight_bytes(mode, device, double_quant)


# --------------------------------------------------------------------------- KV cache


def kv_per_token(model) -> tuple[tuple[int, int], tuple[int, int], Optional[int]]:
    """Cache per token: ((elements, fixed bytes) over the full-attention layers, the same over the
    sliding-window layers, the window or None), measured by running attention on one meta token with a
    real transformers cache: once per kind of layer (attention class, layer type, weight shapes).
    Elements are those stored in the compute dtype (built as BUILD_DTYPE); fixed bytes, any other."""
    from transformers import DynamicCache

    config = model.config
    inner = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    layers = getattr(inner, "layers", None)
    rotary = getattr(inner, "rotary_emb", None)
    if layers is None:
        raise ValueError("no decoder layers found")
    hidden = torch.zeros((1, 1, config.hidden_size), device="meta", dtype=BUILD_DTYPE)
    positions = torch.zeros((1, 1), device="meta", dtype=torch.long)
    pos_emb = rotary(hidden, positions) if rotary is not None else None
    layer_types = getattr(config, "layer_types", None) or [None] * len(layers)
    cache = DynamicCache(config=config)
    measured: dict[tuple, tuple[int, int, bool, Optional[int]]] = {}
    full, sliding = [0, 0], [0, 0]
    window = None
    for index, layer in enumerate(layers):
        attn = getattr(layer, "self_attn", None) or getattr(layer, "attention", None)
        if attn is None:
            raise ValueError(f"layer {index} has no attention module")
        kind = (type(attn), layer_types[index] if index < len(layer_types) else None,
                tuple((n, tuple(p.shape)) for n, p in attn.named_parameters()))
        if kind not in measured:
            kwargs = {"hidden_states": hidden, "attention_mask": None, "cache": cache}
            if pos_emb is not None:
                kwargs["position_embeddings"] = pos_emb
            with torch.no_grad():
                attn(**kwargs)
            cl = cache.layers[getattr(attn, "layer_idx", index)]
            stored = [t for t in (getattr(cl, "keys", None), getattr(cl, "values", None)) if t is not None]
            elems = sum(t.numel() for t in stored if t.dtype == BUILD_DTYPE)
            fixed = sum(t.numel() * t.element_size() for t in stored if t.dtype != BUILD_DTYPE)
            is_sliding = bool(getattr(cl, "is_sliding", False))
            measured[kind] = (elems, fixed, is_sliding, getattr(cl, "sliding_window", None) if is_sliding else None)
        elems, fixed, is_sliding, layer_window = measured[kind]
        target = sliding if is_sliding else full
        target[0] += elems
        target[1] += fixed
        if is_sliding:
            window = layer_window or getattr(config, "sliding_window", None)
    return (full[0], full[1]), (sliding[0], sliding[1]), window


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


def _arch_for_overhead(cfg: Mapping[str, Any], config) -> Optional[memory.ModelArch]:
    try:
        return memory.arch_from_config(cfg if cfg.get("model_type") == "chatglm" else config.to_dict())
    except Exception:  # noqa: BLE001 - an odd config the hand formula cannot read
        return None


def count_facts(
    count: MetaCount,
    arch: Optional[memory.ModelArch],
    device: str = "cuda",
    modes: tuple[str, ...] = MODES,
    double_quant: bool = False,
) -> CountFacts:
    """What does not depend on the context, from one meta build: each mode's weights and compute dtype,
    the KV cache's elements per token (``arch``: the hand formula's view of the config, kept for the
    overhead estimate).  Predictions for any context come from these (count_facts.predictions)."""
    dev = "cuda" if str(device).startswith("cuda") else "cpu"
    config = count.model.config
    kv: Optional[KvFacts] = None
    kv_note = None
    try:
        full, sliding, window = count.kv()
        kv = KvFacts(full, sliding, window)
    except Exception as exc:  # noqa: BLE001 - an attention that does not run on meta
        kv_note = f"KV cache not measured ({type(exc).__name__}); hand formula used"
    per_mode = {}
    for mode in modes:
        weights, notes = count.weight_bytes(mode, dev, double_quant)
        per_mode[mode] = ModeFacts(weights, _compute_dtype(mode, dev).itemsize, tuple(notes))
    model_context = getattr(config, "max_position_embeddings", None) or (arch.max_context if arch else None)
    return CountFacts(dev, int(count.params), count.architecture, int(model_context) if model_context else None,
                      per_mode, kv, kv_note, arch)


def predict_count(
    count: MetaCount,
    arch: Optional[memory.ModelArch],
    modes: tuple[str, ...] = MODES,
    *,
    context_len: Optional[int] = None,
    batch: int = 1,
    device: str = "cuda",
    double_quant: bool = False,
) -> dict[str, MemoryPrediction]:
    """{mode: exact prediction} on ``device`` from one meta build (``arch``: the hand formula's view of
    the config, for the overhead estimate only)."""
    return predictions(count_facts(count, arch, device, modes, double_quant), context_len, batch)


def _facts_for_devices(cfg: Mapping[str, Any], devices: tuple[str, ...]) -> dict[str, CountFacts]:
    """{device: every mode's facts} from one meta build; UnknownArchitecture if transformers lacks it."""
    config = hf_config(cfg)
    count = MetaCount(meta_model(config))
    arch = _arch_for_overhead(cfg, config)
    return {dev: count_facts(count, arch, dev) for dev in devices}


def predict_devices(
    cfg: Mapping[str, Any],
    devices: tuple[str, ...] = ("cuda", "cpu"),
    modes: tuple[str, ...] = MODES,
    **kw: Any,
) -> dict[str, dict[str, MemoryPrediction]]:
    """{device: {mode: exact prediction}} for a ``config.json`` dict from one meta build;
    UnknownArchitecture if transformers lacks it (keyword args as :func:`predict_count`).  Nothing is
    stored: :func:`exact_results` is the path through the store."""
    double_quant = bool(kw.pop("double_quant", False))
    if double_quant:  # not what glmtui loads: not in the facts
        config = hf_config(cfg)
        count = MetaCount(meta_model(config))
        arch = _arch_for_overhead(cfg, config)
        return {dev: predict_count(count, arch, modes, device=dev, double_quant=True, **kw) for dev in devices}
    facts = _facts_for_devices(cfg, devices)
    return {dev: predictions(found, modes=modes, **kw) for dev, found in facts.items()}


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
    return predict_devices(cfg, (dev,), modes, context_len=context_len, batch=batch, double_quant=double_quant)[dev]


def predict_dir(model_dir: str | os.PathLike[str], modes: tuple[str, ...] = MODES,
                **kw: Any) -> dict[str, MemoryPrediction]:
    """:func:`predict_config` for a folder's ``config.json``."""
    return predict_config(memory.read_config(model_dir), modes, **kw)


def exact_results(cfg: Mapping[str, Any], devices: tuple[str, ...], context_len: Optional[int] = None,
                  use_cache: bool = True, batch: int = 1) -> dict[str, ExactResult]:
    """{device: :func:`predict_config` as an :class:`ExactResult`} (never raises), through the
    cache of counts; the devices the cache lacks are counted from one meta build, and stored."""
    devs = tuple(dict.fromkeys("cuda" if str(d).startswith("cuda") else "cpu" for d in devices))
    out: dict[str, ExactResult] = {}
    for dev in devs:
        hit = exact_cache.cached_exact(cfg, dev, context_len, batch) if use_cache else None
        if hit is not None:
            out[dev] = hit
    missing = tuple(d for d in devs if d not in out)
    if not missing:
        return out
    try:
        facts = _facts_for_devices(cfg, missing)
        for dev in missing:
            if use_cache:
                exact_cache.store_count(cfg, dev, facts[dev])
            out[dev] = ExactResult(predictions(facts[dev], context_len, batch))
    except UnknownArchitecture as exc:
        for dev in missing:
            out[dev] = ExactResult({}, str(exc), unknown_architecture=True)
            if use_cache:
                exact_cache.store_unknown(cfg, dev, str(exc))
    except Exception as exc:  # noqa: BLE001 - any failure is one line for the caller (not stored: may be transient)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        for dev in missing:
            out[dev] = ExactResult({}, f"exact count failed: {type(exc).__name__}: {first}")
    return out


def exact_result(cfg: Mapping[str, Any], device: str = "cuda", context_len: Optional[int] = None,
                 use_cache: bool = True) -> ExactResult:
    """:func:`predict_config` as an :class:`ExactResult` (never raises), through the cache."""
    dev = "cuda" if str(device).startswith("cuda") else "cpu"
    return exact_results(cfg, (dev,), context_len, use_cache)[dev]


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
        # both devices' counts are stored from the same build, whichever was asked (`glmtui fit` on a GPU
        # machine needs both; the pane may ask for the other device once the monitor has seen the GPU)
        result = exact_results(cfg, (args.device, "cuda", "cpu"), args.context,
                               use_cache=not args.no_cache)[args.device]
    if args.json:
        print(json.dumps(exact_cache.result_to_json(result)))
    elif not result.predictions:
        print(result.error, file=sys.stderr)
    else:
        for m, p in result.predictions.items():
            print(f"{m:5} weights {p.weight_bytes:>15,} kv {p.kv_cache_bytes:>13,} overhead {p.overhead_bytes:>13,}")
    return 0 if result.predictions else 1


if __name__ == "__main__":
    sys.exit(main())
