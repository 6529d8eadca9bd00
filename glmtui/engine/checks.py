"""Checks that a checkpoint and its config.json agree, before the model is built.

``from_pretrained`` only logs missing, unexpected and mis-shaped tensors (and
glmtui silences those logs), filling the gaps with random weights; a config
that describes a far larger model than the files hold allocates until memory
runs out. So, before anything is allocated:

* the parameter count predicted from config.json is compared with the number
  of values the weight files hold, and the weights' predicted size with the
  machine's memory (arithmetic only: a million layers fail at once);
* the model is built on the meta device (no memory) and its tensor names and
  shapes are compared with the files';

and after loading, transformers' own loading report is checked as a net for
what the first comparison cannot see (checkpoint conversions it applies).
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Mapping, Optional

import torch

Display = Callable[[str], str]

# bitsandbytes' int4 CPU kernel (packed weights, AVX512-BF16 path) reshapes the
# absmax per 64-value block of each row and packs rows in blocks of 32: widths
# that do not divide fail at the first generation, not at load.
INT4_CPU_IN_MULTIPLE = 64
INT4_CPU_OUT_MULTIPLE = 32
SHOWN = 3  # names shown per kind of problem


class CheckFailed(ValueError):
    """config.json and the weights disagree (or cannot fit); the message is for the user."""


# ---------------------------------------------------------------- sizes, before anything is built


def _count(n: float) -> str:
    for size, word in ((1e9, "billion"), (1e6, "million"), (1e3, "thousand")):
        if n >= size:
            return f"{n / size:.1f} {word}"
    return str(int(n))


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_size_against_files(config: Mapping, held_values: int) -> None:
    """Refuse a config that describes far more parameters than the weight files hold."""
    from .memory import arch_from_config

    if "quantization_config" in config:
        return  # packed values: the count says nothing about parameters
    try:
        predicted = arch_from_config(config).params
    except Exception:  # noqa: BLE001 - an architecture the predictor cannot read: the meta build decides
        return
    if predicted > 2 * held_values:
        raise CheckFailed(
            f"config.json describes a model of {_count(predicted)} parameters but the weight files hold "
            f"only {_count(held_values)} values: config.json does not match the weights "
            f"(edited, or from another model?)"
        )


def device_memory_bytes(device: str) -> Optional[int]:
    """All the memory the device has (GPU memory, or RAM plus swap), or None when unknown."""
    try:
        if device.startswith("cuda"):
            index = torch.device(device).index
            index = torch.cuda.current_device() if index is None else index
            return int(torch.cuda.get_device_properties(index).total_memory)
        import psutil

        return int(psutil.virtual_memory().total + psutil.swap_memory().total)
    except Exception:  # noqa: BLE001 - torch/psutil failing here means unknown
        return None


def gpu_free_bytes() -> list[int]:
    """Free memory of each visible GPU now (the driver's figure: what other processes use is not free)."""
    try:
        return [int(torch.cuda.mem_get_info(i)[0]) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA: no GPU figures
        return []


def predicted_weight_bytes(config: Mapping, mode: str, device: str, capacity: Optional[int] = None) -> tuple[int, bool]:
    """(bytes the weights take in ``mode``, exact): the meta-device count (engine/predict.py; through the
    prediction cache the UI and ``glmtui fit`` fill), else the hand formula.

    Counting on the meta device takes seconds for a large model, so it is skipped (the formula's
    figure is then used as exact) where the formula is exact for the architecture (GLM, GLM-4,
    ChatGLM, no experts) and more than 10 % away from ``capacity``: the verdict cannot change."""
    from . import memory

    dev = "cuda" if device.startswith("cuda") or device == "auto" else "cpu"
    hit = memory.cached_exact(config, dev, None)
    if hit is not None and mode in hit.predictions:
        return hit.predictions[mode].weight_bytes, True
    formula = None
    try:
        arch = memory.arch_from_config(config)
        formula = memory.predict(arch, mode, device=dev).weight_bytes
        if arch.exact and not arch.moe and capacity and abs(formula - capacity) > 0.10 * capacity:
            return formula, True
    except Exception:  # noqa: BLE001 - the formula cannot read this config: the meta count decides
        pass
    try:
        from .predict import predict_config

        return predict_config(config, (mode,), device=dev)[mode].weight_bytes, True
    except Exception:  # an architecture transformers lacks, an odd config: the formula's figure
        if formula is None:
            raise
        return formula, False


def check_fits_machine(config: Mapping, mode: str, device: str, total_bytes: Optional[int] = None, *,
                       gpu_free: Optional[list[int]] = None, host_bytes: Optional[int] = None) -> None:
    """Refuse when the weights alone would need more memory than the load can have.

    On the CPU: RAM and swap (``total_bytes`` overrides).  On GPUs, the free memory of those the load
    may use (``gpu_free`` overrides the driver's figures): ``cuda:N`` that one; ``cuda``/``auto``
    all of them (loading resolves ``auto`` to ``cuda`` and spreads the layers over every GPU), plus
    with several GPUs, for 16-bit modes, the host RAM accelerate may spill layers to
    (``host_bytes``, default 80 % of available RAM, as loading._spread_over_gpus allows)."""
    auto_on_gpu = device == "auto" and bool(gpu_free if gpu_free is not None else gpu_free_bytes())
    on_gpu = device.startswith("cuda") or auto_on_gpu
    spill = 0
    if total_bytes is not None or not on_gpu:
        capacity = device_memory_bytes("cpu") if total_bytes is None else total_bytes
        where = "GPU memory" if on_gpu else "RAM and swap"
        held = f"the {_gib(capacity or 0)} of {where} this machine has"
    else:
        free = list(gpu_free if gpu_free is not None else gpu_free_bytes())
        index = device.partition(":")[2]
        if index.isdigit():
            free = free[int(index):int(index) + 1]
        if not free:
            return
        capacity = sum(free)
        if len(free) >= 2 and mode in ("bf16", "fp16", "fp32"):
            if host_bytes is None:
                try:
                    import psutil

                    host_bytes = int(psutil.virtual_memory().available * 0.8)
                except Exception:  # noqa: BLE001 - no host figure: no spill counted
                    host_bytes = 0
            spill = max(0, int(host_bytes))
        gpus = f"GPU {index}" if index.isdigit() else ("the GPU" if len(free) == 1 else f"the {len(free)} GPUs")
        held = f"the {_gib(capacity)} free on {gpus}" + (f" and {_gib(spill)} of host RAM they may spill to"
                                                           if spill else "")
        capacity += spill
    if not capacity:
        return
    try:
        needed, exact = predicted_weight_bytes(config, mode, device, capacity)
    except Exception:  # noqa: BLE001 - no prediction for this config: the load itself decides
        return
    if needed > capacity:
        smaller = " Try int8 or int4." if mode not in ("int8", "int4") else ""
        estimate = "" if exact else " (a hand-formula estimate: transformers could not count this model)"
        raise CheckFailed(f"in {mode} the weights alone need {_gib(needed)}, more than {held}.{smaller}{estimate}")


# ---------------------------------------------------------------- names and shapes


def build_on_meta(build: Callable[[], object]):
    """The model built on the meta device: names and shapes, no memory."""
    with torch.device("meta"):
        return build()


def _natural(name: str):
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


_LAYER_INDEX = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")


def _layer_count(names: Iterable[str]) -> int:
    indices = [int(m.group(1)) for m in map(_LAYER_INDEX.search, names) if m]
    return max(indices) + 1 if indices else 0


def _shape(shape) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def mismatch_message(
    missing: Iterable[str],
    unexpected: Iterable[str],
    mismatched: Iterable[tuple[str, tuple, tuple]],
    display: Display = lambda name: name,
    file_names: Iterable[str] = (),
    model_names: Iterable[str] = (),
) -> Optional[str]:
    """One line naming the first missing, unexpected and mis-shaped tensors; None when all agree."""

    def shown(names: Iterable[str]) -> list[str]:
        out: list[str] = []
        for name in sorted(names, key=_natural):
            label = display(name)
            if label not in out:
                out.append(label)
        return out

    missing, unexpected = shown(missing), shown(unexpected)
    mismatched = sorted(mismatched, key=lambda item: _natural(item[0]))
    if not (missing or unexpected or mismatched):
        return None
    parts = []
    in_files, in_config = _layer_count(file_names), _layer_count(model_names)
    if in_files and in_config and in_files != in_config:
        parts.append(f"config.json says {in_config} layers, the weight files hold {in_files}")
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing from the weight files: {_names(missing)}")
    if unexpected:
        parts.append(
            f"{len(unexpected)} tensor(s) in the weight files that config.json has no place for: {_names(unexpected)}"
        )
    for name, in_file, in_model in mismatched[:SHOWN]:
        parts.append(f"{display(name)} is {_shape(in_file)} in the weight files but {_shape(in_model)} per config.json")
    if len(mismatched) > SHOWN:
        parts.append(f"{len(mismatched) - SHOWN} more tensor(s) differ in shape")
    return "the weights do not match config.json: " + "; ".join(parts) + ". Nothing was loaded."


def _patterns_match(patterns, name: str) -> bool:
    return any(re.search(pattern, name) for pattern in patterns or ())


def can_compare_names(meta_model) -> bool:
    """False when transformers renames or fuses this architecture's tensors while loading (MoE experts...)."""
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    except ImportError:
        return False
    if getattr(meta_model, "_checkpoint_conversion_mapping", None):
        return False
    for key in (type(meta_model).__name__, getattr(meta_model.config, "model_type", None)):
        if key and get_checkpoint_conversion_mapping(key) is not None:
            return False
    return True


def compare_with_model(file_shapes: Mapping[str, tuple], meta_model, display: Display = lambda name: name) -> None:
    """Refuse when the files' tensor names or shapes differ from the model config.json describes."""
    expected = {name: tuple(t.shape) for name, t in meta_model.state_dict().items()}
    prefix = getattr(meta_model, "base_model_prefix", "") or ""
    optional = set(getattr(meta_model, "all_tied_weights_keys", None) or {})  # tied copies (lm_head = embeddings)
    ignore_missing = getattr(meta_model, "_keys_to_ignore_on_load_missing", None)
    ignore_unexpected = set(getattr(meta_model, "_keys_to_ignore_on_load_unexpected", None) or ())
    # Buffers older checkpoints saved and transformers drops as it loads (it makes the same exceptions).
    buffers = [name for name, _ in meta_model.named_buffers()]
    if any(name.endswith("rotary_emb.inv_freq") for name in buffers):
        ignore_unexpected.add(r"rotary_emb\.inv_freq")
    if any(name.endswith("position_ids") for name in buffers):
        ignore_unexpected.add(r"(^|\.)position_ids$")

    found: dict[str, tuple] = {}
    origin: dict[str, str] = {}
    unexpected = []
    for name, shape in file_shapes.items():
        target = name
        if name not in expected and prefix:
            # A checkpoint saved from the base model (or with it), as transformers accepts.
            if f"{prefix}.{name}" in expected:
                target = f"{prefix}.{name}"
            elif name.startswith(prefix + ".") and name[len(prefix) + 1 :] in expected:
                target = name[len(prefix) + 1 :]
        if target in expected:
            found[target], origin[target] = tuple(shape), name
        elif not _patterns_match(ignore_unexpected, name):
            unexpected.append(name)
    missing = [
        name
        for name in expected
        if name not in found and name not in optional and not _patterns_match(ignore_missing, name)
    ]
    mismatched = [(origin[n], found[n], expected[n]) for n in found if found[n] != expected[n]]
    message = mismatch_message(missing, unexpected, mismatched, display, file_shapes.keys(), expected.keys())
    if message:
        raise CheckFailed(message)


def check_loading_info(info: Mapping, display: Display = lambda name: name) -> None:
    """transformers' loading report (``output_loading_info=True``) as a net: anything left is refused."""
    mismatched = [(name, tuple(a), tuple(b)) for name, a, b in info.get("mismatched_keys") or ()]
    message = mismatch_message(info.get("missing_keys") or (), info.get("unexpected_keys") or (), mismatched, display)
    if message:
        raise CheckFailed(message)
    errors = info.get("error_msgs") or []
    if errors:
        raise CheckFailed(f"the weights could not be loaded: {plain_error(str(errors[0]))}")


# ---------------------------------------------------------------- int4 on CPU


def int4_cpu_16bit_layers(meta_model) -> tuple[list[str], int]:
    """(Linear layers bitsandbytes' int4 CPU kernel cannot run, how many Linears int4 would quantize)."""
    try:
        from transformers.quantizers.base import get_keys_to_not_convert

        skipped = set(get_keys_to_not_convert(meta_model))
    except Exception:  # noqa: BLE001 - transformers internals moved or refused this model: its default
        skipped = {"lm_head"}
    odd, quantized = [], 0
    for name, module in meta_model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name in skipped:
            continue
        quantized += 1
        if module.in_features % INT4_CPU_IN_MULTIPLE or module.out_features % INT4_CPU_OUT_MULTIPLE:
            odd.append(name)
    return odd, quantized


def skip_modules(meta_model, extra: list[str]) -> list[str]:
    """bitsandbytes' skip list: transformers' defaults (lm_head, tied) plus ``extra``, matched exactly."""
    try:
        from transformers.quantizers.base import get_keys_to_not_convert

        defaults = list(get_keys_to_not_convert(meta_model))
    except Exception:  # noqa: BLE001 - transformers internals moved or refused this model: its default
        defaults = ["lm_head"]
    return defaults + [re.escape(name) for name in extra]


def describe_16bit_layers(names: list[str], quantized: int, dtype_name: str) -> str:
    """One line: which Linears int4 leaves in 16-bit on CPU, grouped by their place in a layer."""
    groups: dict[str, list[str]] = {}
    for name in names:
        match = _LAYER_INDEX.search(name)
        groups.setdefault(name[match.end() :] if match else name, []).append(name)
    listed = ", ".join(full[0] if len(full) == 1 else f"{key} in {len(full)} layers" for key, full in groups.items())
    return (
        f"int4 on CPU: {len(names)} of {quantized} Linear layers stay {dtype_name} (bitsandbytes' CPU kernel needs "
        f"input widths divisible by {INT4_CPU_IN_MULTIPLE} and output widths by {INT4_CPU_OUT_MULTIPLE}): {listed}"
    )


# ---------------------------------------------------------------- library messages


def plain_error(text: str) -> str:
    """A library error without advice that does not apply to glmtui (options it does not have)."""
    if "trust_remote_code" in text:
        return (
            "this model needs its own Python code (auto_map in its config), which glmtui never runs. "
            "glmtui loads ChatGLM3 checkpoints (model_type \"chatglm\") and architectures built into transformers."
        )
    if "look at the above report" in text or "ignore_mismatched_sizes" in text:
        return "the weights do not match config.json (tensor shapes differ)"
    if "weights_only" in text:
        return "a weight file holds pickled objects other than tensors and was refused for safety"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else text
