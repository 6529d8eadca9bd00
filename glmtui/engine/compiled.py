"""Compiled decode: transformers' static KV cache with ``torch.compile`` of the decode step.

``generate`` compiles the model's forward by itself when it is handed a
compileable cache (a ``StaticCache``) and the hardware qualifies (CUDA, or
any device when ``CompileConfig._compile_all_devices`` is set); the prefill
stays eager. glmtui keeps the static cache between turns (kvreuse) so the
compiled step sees the same shapes and addresses; the cache length comes
from a few buckets (2K, 8K, 32K, ... up to the model's context), so a model
is compiled once per bucket it reaches.

Failures never reach the user as a crash: the backend is wrapped so that a
compiler error runs that graph eagerly (and turns compiling off for the
model, with the reason logged); a compiled generation that raises before its
first token is retried eagerly by generation.py. Inductor's and Triton's
caches live under glmtui's cache folder (TORCHINDUCTOR_CACHE_DIR, set in the
engine's process only), so a second load of the same model skips most of the
warm-up.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Optional, Union

from .kvreuse import env_flag

log = logging.getLogger("glmtui.engine")

BUCKETS = (2048, 8192, 32768, 131072)
COMPILING_STAGE = "compiling… (first load only)"
AUTO_MODES = ("bf16", "fp16")  # bitsandbytes modes stay eager (transformers does not compile them)


def wanted(option: Optional[bool], device: str, mode: str, quant_backend: Optional[str] = None) -> bool:
    """Compile by default on CUDA in bf16/fp16, and int8/int4 quantized by torchao (quant_backends);
    ``option`` True forces it (CPU tests), False turns it off.

    ``GLMTUI_COMPILE=0`` turns it off in the engine's process when no option is given."""
    if option is not None:
        return bool(option)
    if not env_flag("GLMTUI_COMPILE", True):
        return False
    compilable = mode in AUTO_MODES or (mode in ("int8", "int4") and quant_backend == "torchao")
    return str(device).startswith("cuda") and compilable


def inductor_cache_dir() -> str:
    """Point inductor (and the Triton cache it places inside) at glmtui's cache folder, unless set already."""
    from ..config import default_paths

    folder = default_paths().cache_dir / "torchinductor"
    folder.mkdir(parents=True, exist_ok=True)
    return os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))


class _SafeBackend:
    """A torch.compile backend that runs the graph eagerly when the real backend raises."""

    __name__ = "glmtui_safe_backend"

    def __init__(self, owner: "CompiledDecode", inner: Union[str, Callable]):
        self.owner = owner
        self.inner = inner

    def __deepcopy__(self, memo):  # CompileConfig.to_dict deep-copies; the failure note must reach the owner
        return self

    def __call__(self, gm, example_inputs, mode: Optional[str] = None, options: Optional[dict] = None):
        try:
            if self.inner == "inductor":
                from torch._inductor import list_mode_options
                from torch._inductor.compile_fx import compile_fx

                patches = dict(list_mode_options(mode)) if mode and mode != "default" else {}
                patches.update(options or {})
                return compile_fx(gm, example_inputs, config_patches=patches)
            from torch._dynamo.backends.registry import lookup_backend

            return lookup_backend(self.inner)(gm, example_inputs)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: this graph runs as traced, without compiling
            self.owner.disable(f"the compiler failed: {type(exc).__name__}: {exc}")
            return gm.forward


class CompiledDecode:
    """The compile settings of one loaded model; ``enabled`` drops to False for good on a failure."""

    def __init__(self, model, context_length: int, backend: Union[str, Callable, None] = None):
        from transformers import CompileConfig

        self.context_length = int(context_length or BUCKETS[-1])
        self.enabled = True
        self.reason = ""
        self.warmup_seconds: Optional[float] = None
        on_cuda = model.device.type == "cuda"
        self.cache_dir = inductor_cache_dir()
        self.compile_config = CompileConfig(
            backend=_SafeBackend(self, backend or "inductor"),
            mode="reduce-overhead" if on_cuda else "default",  # CUDA graphs: a decode step is one launch
            fullgraph=False,
        )
        # transformers compiles on CUDA by itself; elsewhere only when asked (tests on the CPU).
        self.compile_config._compile_all_devices = not on_cuda or None  # type: ignore[assignment]  # typed None there

    def disable(self, reason: str) -> None:
        if self.enabled:
            log.warning("compiled decode turned off, eager from now on: %s", reason)
        self.enabled = False
        self.reason = self.reason or reason

    def bucket(self, needed: int) -> int:
        for size in BUCKETS:
            if size >= needed:
                return min(size, max(self.context_length, needed))
        return max(self.context_length, needed)

    def make_cache(self, model, needed: int):
        from transformers import StaticCache

        return StaticCache(config=model.config, max_cache_len=self.bucket(needed))

    @staticmethod
    def fits(cache, needed: int) -> bool:
        layers = getattr(cache, "layers", None) or []
        return bool(layers) and getattr(layers[0], "max_cache_len", 0) >= needed

    def warm_up(self, run: Callable[[], None], progress: Callable[[str, Optional[float], float], None]) -> None:
        """Run ``run`` (a short generation that compiles the decode step) with "compiling…" progress every second."""
        started = time.perf_counter()
        done = threading.Event()

        def tick() -> None:
            while not done.wait(1.0):
                progress(COMPILING_STAGE, None, time.perf_counter() - started)

        progress(COMPILING_STAGE, None, 0.0)
        ticker = threading.Thread(target=tick, name="glmtui-compile-progress", daemon=True)
        ticker.start()
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - any warm-up failure: decode runs uncompiled, with why
            self.disable(f"warm-up failed: {type(exc).__name__}: {exc}")
        finally:
            done.set()
            ticker.join()
        self.warmup_seconds = time.perf_counter() - started
        progress(COMPILING_STAGE, 1.0, self.warmup_seconds)
