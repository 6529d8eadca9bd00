"""`--engine vllm`: a ManagedServer whose plans start vLLM's OpenAI server (front-end safe: no torch)."""

from __future__ import annotations

from typing import Optional

from .managed import ManagedServer, ServerPlan
from .vllm import plan_vllm, vllm_python


def gpu_total_bytes(device: str) -> Optional[int]:
    """Total memory of the GPU ``device`` names (cuda, cuda:N, auto), from NVML; None without one."""
    if device == "cpu":
        return None
    index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
    try:
        import pynvml
    except ImportError:  # no nvidia-ml-py: vLLM then runs its CPU build's way
        return None
    try:
        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).total)
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:  # no driver, no such GPU: vLLM then runs its CPU build's way
        return None


def make_vllm_engine(listener=None, *, python: Optional[str] = None, context: Optional[int] = None) -> ManagedServer:
    """The managed vLLM engine; ``python`` defaults to ``[vllm] python`` in config.toml, else this interpreter."""
    from ..config import default_paths, read_table

    paths = default_paths()
    settings = read_table(paths.config_file, "vllm")
    configured = python or settings.get("python") or None
    context = context or settings.get("max_model_len") or None

    def planner(path: str, mode: str, device: str) -> ServerPlan:
        interpreter, why = vllm_python(configured)
        if interpreter is None:
            raise ValueError(why)
        return plan_vllm(path, mode, device, python=interpreter, cache_dir=paths.cache_dir / "vllm",
                         gpu_total_bytes=gpu_total_bytes(device), context=int(context) if context else None)

    return ManagedServer(planner, listener)
