"""What one meta-device count of a config found, as plain data, and the exact predictions for any
context and batch worked out from it without torch.

The expensive part of an exact prediction (engine/predict.py: torch and transformers imports, the
meta-device build) answers only what does not depend on the context: the bytes each mode's weights
take (which Linear layers a quantizer converts, which stay 16-bit), the dtype the rest computes in,
and the KV cache's elements per token for each kind of attention layer (GQA heads, MLA's latent,
sliding windows).  Those facts are stored per config (exact_cache.py); the KV cache at N tokens and
the overhead estimate are arithmetic on them, so another ``--context`` is answered at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Optional

from . import memory
from .memory import MemoryPrediction, ModelArch

__all__ = ["KvFacts", "ModeFacts", "CountFacts", "predictions"]


@dataclass(frozen=True)
class ModeFacts:
    weight_bytes: int  # what the loaded model holds in this mode
    compute_bytes: int  # bytes per element of the compute dtype (what the KV cache is stored in)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class KvFacts:
    """Per token: (elements in the compute dtype, bytes of a fixed dtype) summed over the full-attention
    layers, the same over the sliding-window layers, and the window those keep."""

    full: tuple[int, int]
    sliding: tuple[int, int]
    window: Optional[int]


@dataclass(frozen=True)
class CountFacts:
    device: str  # "cuda" | "cpu"
    params: int
    architecture: str  # the transformers class counted
    model_context: Optional[int]
    modes: dict[str, ModeFacts]
    kv: Optional[KvFacts]  # None: the attention did not run on meta (kv_note says why)
    kv_note: Optional[str] = None
    arch: Optional[ModelArch] = None  # the hand formula's view of the config: the overhead estimate only

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "CountFacts":
        kv = data.get("kv")
        arch = data.get("arch")
        arch_names = {f.name for f in fields(ModelArch)}
        return cls(
            device=str(data["device"]),
            params=int(data["params"]),
            architecture=str(data["architecture"]),
            model_context=int(data["model_context"]) if data.get("model_context") else None,
            modes={m: ModeFacts(int(f["weight_bytes"]), int(f["compute_bytes"]), tuple(f.get("notes") or ()))
                   for m, f in data["modes"].items()},
            kv=None if kv is None else KvFacts((int(kv["full"][0]), int(kv["full"][1])),
                                               (int(kv["sliding"][0]), int(kv["sliding"][1])),
                                               int(kv["window"]) if kv.get("window") else None),
            kv_note=data.get("kv_note"),
            arch=None if arch is None else ModelArch(**{k: v for k, v in arch.items() if k in arch_names}),
        )


def predictions(facts: CountFacts, context_len: Optional[int] = None, batch: int = 1,
                modes: Optional[tuple[str, ...]] = None) -> dict[str, MemoryPrediction]:
    """{mode: exact prediction} at ``context_len`` tokens (default: the model's, capped as memory.py
    caps it) for ``batch`` sequences: the KV cache from the counted bytes per token, the overhead from
    memory.py's stated estimate."""
    arch = facts.arch
    out = {}
    for mode in modes or tuple(facts.modes):
        mf = facts.modes[mode]
        notes = list(mf.notes)
        base = memory.predict(arch, mode, context_len=context_len, batch=batch, device=facts.device) if arch else None
        ctx = base.context_len if base else max(1, int(context_len or memory.PREFILL_CHUNK))
        if facts.kv is None:
            notes.append(facts.kv_note or "KV cache not measured")
            kv = base.kv_cache_bytes if base else 0
            per_token = kv // max(1, ctx * batch)
        else:
            (full_e, full_b), (slide_e, slide_b), window = facts.kv.full, facts.kv.sliding, facts.kv.window
            full, sliding = full_e * mf.compute_bytes + full_b, slide_e * mf.compute_bytes + slide_b
            kv = (full * ctx + sliding * min(ctx, window or ctx)) * batch
            per_token = full + sliding
            if window:
                notes.append(f"sliding-window layers keep {window:,} tokens")
        overhead = base.overhead_bytes if base else 0
        out[mode] = MemoryPrediction(
            mode=mode,
            params=facts.params,
            weight_bytes=mf.weight_bytes,
            kv_cache_bytes=int(kv),
            overhead_bytes=int(overhead),
            total_bytes=int(mf.weight_bytes + kv + overhead),
            context_len=ctx,
            batch=batch,
            device=facts.device,
            exact=True,
            notes=tuple(notes) + (() if base else ("overhead not estimated",)),
            model_context=facts.model_context,
            source="meta",
            kv_bytes_per_token=int(per_token),
            architecture=facts.architecture,
        )
    return out
