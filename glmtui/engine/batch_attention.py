"""Attention for the continuous batch: each sequence attends to its own keys only.

transformers' sdpa runs a batch step as one packed sequence: every query token against all the
sequences' keys joined, under a block-diagonal mask (with n sequences about n times the work of
attending each one alone), and for grouped-query models only after copying the keys and values to
every query head (``repeat_kv``: torch's native GQA is not used once there is a mask). The batch
passes each attention call its packed sequences' bounds (``cu_seq_lens_q`` / ``cu_seq_lens_k``,
transformers' public ``FlashAttentionKwargs``); given them, ``packed_sdpa`` runs torch's sdpa per
sequence on its own slices, reading the grouped key/value heads as they are (``enable_gqa``):
a single query token sees all its sequence's keys (no mask), a whole prompt is plain causal, a
chunk after cached tokens takes its block of the batch's mask.

``install()`` registers it through transformers' public ``AttentionInterface`` under "sdpa" (the batch
accepts no other name but eager's and flash's); it wraps ``sdpa_attention_forward`` as transformers'
attention-interface guide does. Any other call (``generate``: no bounds, or a device other than
the CPU, a sliding window, training) goes to transformers' own sdpa unchanged.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

_sdpa: Optional[Callable] = None  # transformers' sdpa_attention_forward, set by install()
packed_calls = 0  # attention calls that went per sequence (tests and logs)


def install() -> None:
    """Register ``packed_sdpa`` as "sdpa" (idempotent; calls without bounds behave as before)."""
    global _sdpa
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    _sdpa = sdpa_attention_forward
    AttentionInterface.register("sdpa", packed_sdpa)


def installed() -> bool:
    from transformers import AttentionInterface

    return AttentionInterface()["sdpa"] is packed_sdpa


def uninstall() -> None:
    """transformers' own sdpa back in the registry (tests and A/B measurements)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register("sdpa", sdpa_attention_forward)


def _applies(module, query, attention_mask, dropout: float, kwargs: dict) -> bool:
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    return (cu_q is not None and cu_k is not None and hasattr(cu_q, "tolist") and hasattr(cu_k, "tolist")
            and query.device.type == "cpu" and query.shape[0] == 1 and dropout == 0.0
            and getattr(module, "sliding_window", None) is None and not hasattr(module, "sinks")
            and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
            and not kwargs.get("output_attentions", False)
            and (attention_mask is None or attention_mask.dim() == 4))


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: Optional[float] = None,
                **kwargs: Any):
    """transformers' attention-function signature: query (1, heads, tokens, dim), key/value (1, kv heads,
    keys, dim); returns (1, tokens, heads, dim) and no weights."""
    if _sdpa is None or not _applies(module, query, attention_mask, dropout, kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return (_sdpa or sdpa_attention_forward)(module, query, key, value, attention_mask, dropout=dropout,
                                                 scaling=scaling, **kwargs)
    global packed_calls
    packed_calls += 1
    bounds_q = kwargs["cu_seq_lens_q"].tolist()
    bounds_k = kwargs["cu_seq_lens_k"].tolist()
    gqa = query.shape[1] != key.shape[1]
    tokens = query.shape[2]
    out = query.new_empty((1, tokens, query.shape[1], value.shape[-1]))
    if bounds_q[-1] != tokens:  # padded rows (static shapes): defined, never read
        out.zero_()
    for i in range(len(bounds_q) - 1):
        qs, qe, ks, ke = bounds_q[i], bounds_q[i + 1], bounds_k[i], bounds_k[i + 1]
        if qe <= qs:
            continue
        mask, causal = None, False
        if qe - qs > 1:
            if qe - qs == ke - ks:
                causal = True
            elif attention_mask is not None:
                mask = attention_mask[..., qs:qe, ks:ke]
            else:  # queries after cached keys with no mask to slice: bottom-right causal
                mask = torch.ones(qe - qs, ke - ks, dtype=torch.bool, device=query.device).tril(ke - ks - (qe - qs))
        attended = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, qs:qe], key[:, :, ks:ke], value[:, :, ks:ke], attn_mask=mask, is_causal=causal,
            scale=scaling, enable_gqa=gqa)
        out[:, qs:qe] = attended.transpose(1, 2)
    return out, None
