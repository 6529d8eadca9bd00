"""unload_memory_note: what the monitor shows after an unload, against the figure from before the load."""

from __future__ import annotations

from typing import Optional

from .monitor import fmt_bytes

UNLOAD_MARGIN = 64 * 2**20


def unload_memory_note(kind: str, before: Optional[int], after: Optional[int],
                       torch_reserved: Optional[int] = None, after_imports: Optional[int] = None) -> Optional[str]:
    """What the monitor shows after an unload, against the figure taken before the load.

    ``kind`` is "GPU" (this process's memory on the GPUs, NVML) or "RAM"
    (this process's resident memory). Within UNLOAD_MARGIN counts as back.
    ``after_imports`` (RAM): the figure once the engine had imported torch and transformers,
    before it built the model. The first load imports them into this process and they stay:
    the model's own memory is compared with that figure, and the imports are named apart.
    """
    if before is None or after is None:
        return None
    imports = 0
    if kind == "RAM" and after_imports is not None and after_imports > before:
        imports, before = after_imports - before, after_imports
    delta = after - before
    libraries = (f"; torch and transformers, imported by the first load, hold {fmt_bytes(imports)} and stay loaded"
                 if imports > UNLOAD_MARGIN else "")
    if delta <= UNLOAD_MARGIN:
        since = "its figure after the engine's imports" if imports else "before the load"
        return f"{kind} back to within {fmt_bytes(UNLOAD_MARGIN)} of {since} ({fmt_bytes(after)}){libraries}"
    if kind == "GPU":
        why = "the CUDA context and cuBLAS/bitsandbytes workspaces stay resident while glmtui runs"
        if torch_reserved:
            why += f"; torch still reserves {fmt_bytes(torch_reserved)}"
    else:
        why = "freed memory the C allocator keeps for reuse (the next load reuses it)"
    return f"{fmt_bytes(delta)} of {kind} stayed behind after unload: {why}{libraries}"
