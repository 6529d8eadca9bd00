"""Which Engine a front end runs a local model on: `--engine transformers` (glmtui's own) or `--engine vllm`.

No torch here. ``in_process`` is for `glmtui serve` (already its clients' engine process) and fast tests.
"""

from __future__ import annotations

ENGINES = ("transformers", "vllm")


def local_engine(kind: str = "transformers", *, in_process: bool = False, keep_spare: bool = True, listener=None):
    """A not yet started engine for running models on this machine."""
    if kind == "vllm":
        from .vllm_engine import make_vllm_engine

        return make_vllm_engine(listener)
    if kind != "transformers":
        raise ValueError(f"unknown engine {kind!r}; choose from {', '.join(ENGINES)}")
    if in_process:
        from .worker import InferenceWorker

        return InferenceWorker(listener)
    from .process import EngineProcess

    return EngineProcess(listener, keep_spare=keep_spare)
