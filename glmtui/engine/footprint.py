"""What a loaded model really holds: the bytes of its parameters, buffers and quantization state,
each underlying storage counted once (the "measured" side of predicted / measured).

torch is imported inside the function: only the engine calls it, on a model it has loaded."""

from __future__ import annotations

from typing import Any

__all__ = ["measured_footprint_bytes"]


def measured_footprint_bytes(model: Any) -> int:
    """Bytes held by ``model``'s parameters, buffers and quantization state, counting each
    underlying storage once (``get_memory_footprint()`` double-counts tied weights' views and
    over-reports tensor-subclass quantizers, and misses bitsandbytes' scales/absmax)."""
    import torch  # lazy: only the engine calls this, with a model already loaded

    seen: dict[tuple[str, int], int] = {}

    def add_tensor(t: Any, depth: int = 0) -> None:
        if not isinstance(t, torch.Tensor) or depth > 4:
            return
        flatten = getattr(t, "__tensor_flatten__", None)
        if flatten is not None and type(t) not in (torch.Tensor, torch.nn.Parameter):
            try:
                names, _ = flatten()
            except Exception:  # noqa: BLE001 - a tensor subclass that cannot flatten is counted whole
                names = None
            if names is not None:  # wrapper subclass (torchao, quanto): count the inner tensors
                for n in names:
                    add_tensor(getattr(t, n, None), depth + 1)
                add_attrs(t, depth + 1)
                return
        if t.device.type == "meta":
            return
        try:
            st = t.untyped_storage()
            key, nbytes = (str(t.device), st.data_ptr()), st.nbytes()
        except Exception:  # noqa: BLE001 - no readable storage: count its elements
            key, nbytes = (str(t.device), id(t)), t.numel() * t.element_size()
        if nbytes and key not in seen:
            seen[key] = nbytes
        add_attrs(t, depth + 1)

    def add_attrs(obj: Any, depth: int) -> None:
        # bitsandbytes keeps scales on the parameter: Int8Params.SCB, Params4bit.quant_state
        d = getattr(obj, "__dict__", None)
        if not d or depth > 4:
            return
        for v in list(d.values()):
            if isinstance(v, torch.Tensor):
                add_tensor(v, depth)
            elif type(v).__name__ == "QuantState":
                add_attrs(v, depth + 1)

    for p in model.parameters():
        add_tensor(p)
    for b in model.buffers():
        add_tensor(b)
    # bitsandbytes' LLM.int8 moves the weight's CB/SCB to the module's MatmulLtState after the
    # first forward (the parameter's SCB is then None): count the state's tensors too
    for module in model.modules():
        state = getattr(module, "state", None)
        if state is not None and type(state).__name__ == "MatmulLtState":
            for v in list(vars(state).values()):
                add_tensor(v)
    return int(sum(seen.values()))
