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

A step where every sequence decodes (one query token each, the common step) makes one sdpa call
for the whole batch instead: each sequence's keys and values gathered into one padded
``[sequences, kv heads, longest, dim]`` tensor with a key-padding mask (``decode_sdpa``), unless the
padding would more than double the keys attended (lengths far apart) or there is one sequence (the
gather would only copy its keys): the per-sequence calls then.

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
decode_calls = 0  # of those, the ones made as one padded call (decode_sdpa)
PAD_LIMIT = 2.0  # the padded call only while the padded keys are at most this many times the real ones
_gather: tuple = ((), None)  # (key bounds, (index, mask, longest)): one step's layers share it


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
    if tokens > 1 and bounds_q == list(range(tokens + 1)) and _pads_little(bounds_k):  # all decoding
        return decode_sdpa(query, key, value, bounds_k, scaling, gqa), None
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


def _pads_little(bounds_k: list) -> bool:
    lengths = [end - start for start, end in zip(bounds_k, bounds_k[1:], strict=False)]
    return bool(lengths) and min(lengths) > 0 and len(lengths) * max(lengths) <= PAD_LIMIT * sum(lengths)


def _padded_gather(bounds_k: list, device) -> tuple:
    """For key bounds [0, e1, e2, ...]: the packed positions of each sequence's keys, padded to the longest
    (a pad repeats the sequence's first key) as one flat index, and the mask of the real ones."""
    global _gather
    cached_bounds, cached = _gather
    if cached_bounds == tuple(bounds_k) and cached[0].device == device:
        return cached
    bounds = torch.tensor(bounds_k, device=device)
    starts, lengths = bounds[:-1], bounds[1:] - bounds[:-1]
    longest = int(lengths.max())
    offsets = torch.arange(longest, device=device)
    real = offsets.unsqueeze(0) < lengths.unsqueeze(1)  # [sequences, longest]
    index = torch.where(real, starts.unsqueeze(1) + offsets, starts.unsqueeze(1)).reshape(-1)
    cached = (index, real[:, None, None, :], longest)
    _gather = (tuple(bounds_k), cached)
    return cached


def decode_sdpa(query, key, value, bounds_k: list, scaling: Optional[float], gqa: bool):
    """One query token per sequence (query (1, heads, sequences, dim)), each sequence's keys packed one after
    another in key/value (1, kv heads, keys, dim) as ``bounds_k`` says: one sdpa call over the keys gathered
    into a padded batch, the pads masked out. Returns (1, sequences, heads, dim)."""
    global decode_calls
    decode_calls += 1
    index, real, longest = _padded_gather(bounds_k, query.device)
    sequences, heads, kv_heads = query.shape[2], query.shape[1], key.shape[1]

    def padded(states):  # (1, kv heads, keys, dim) -> (sequences, kv heads, longest, dim)
        rows = states[0].transpose(0, 1).index_select(0, index)  # (sequences * longest, kv heads, dim)
        return rows.view(sequences, longest, kv_heads, states.shape[-1]).transpose(1, 2)

    attended = torch.nn.functional.scaled_dot_product_attention(
        query[0].transpose(0, 1).unsqueeze(2), padded(key), padded(value), attn_mask=real, scale=scaling,
        enable_gqa=gqa)  # (sequences, heads, 1, dim)
    return attended.reshape(1, sequences, heads, value.shape[-1])
