"""An independent forward pass in ChatGLM3's own math, straight from its tensor layout.

Written from ChatGLM3's published architecture (fused QKV with multi-query
groups, rotary on the first half of each head with interleaved pairs, RMSNorm,
SwiGLU), so the test of our name mapping does not only compare our loader
with itself.
"""

from __future__ import annotations

import torch


def _rms(x, weight, eps):
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return (x.float() * torch.rsqrt(variance + eps)) * weight


def _rope(x, positions, base):
    # x: [seq, heads, head_dim]; rotate pairs (0,1), (2,3), ... of the first half.
    rot_dim = x.shape[-1] // 2
    theta = 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.float32) / rot_dim))
    angles = torch.outer(positions.float(), theta)  # [seq, rot_dim/2]
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    rot, passthrough = x[..., :rot_dim], x[..., rot_dim:]
    pairs = rot.reshape(*rot.shape[:-1], rot_dim // 2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
    return torch.cat([out, passthrough], dim=-1)


def chatglm3_logits(tensors: dict, config: dict, input_ids: list[int]) -> torch.Tensor:
    heads = config["num_attention_heads"]
    groups = config["multi_query_group_num"]
    head_dim = config["kv_channels"]
    eps = config["layernorm_epsilon"]
    base = 10000.0 * config.get("rope_ratio", 1.0)
    t = {k: v.float() for k, v in tensors.items()}
    ids = torch.tensor(input_ids)
    seq = len(input_ids)
    positions = torch.arange(seq)
    h = t["transformer.embedding.word_embeddings.weight"][ids]
    mask = torch.full((seq, seq), float("-inf")).triu(1)
    for layer in range(config["num_layers"]):
        p = f"transformer.encoder.layers.{layer}."
        x = _rms(h, t[p + "input_layernorm.weight"], eps)
        qkv = x @ t[p + "self_attention.query_key_value.weight"].T + t[p + "self_attention.query_key_value.bias"]
        q, k, v = qkv.split([heads * head_dim, groups * head_dim, groups * head_dim], dim=-1)
        q = _rope(q.view(seq, heads, head_dim), positions, base)
        k = _rope(k.view(seq, groups, head_dim), positions, base)
        v = v.view(seq, groups, head_dim)
        k = k.repeat_interleave(heads // groups, dim=1)
        v = v.repeat_interleave(heads // groups, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / head_dim**0.5 + mask
        context = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(seq, heads * head_dim)
        h = h + context @ t[p + "self_attention.dense.weight"].T
        x = _rms(h, t[p + "post_attention_layernorm.weight"], eps)
        gate, up = (x @ t[p + "mlp.dense_h_to_4h.weight"].T).chunk(2, dim=-1)
        h = h + (torch.nn.functional.silu(gate) * up) @ t[p + "mlp.dense_4h_to_h.weight"].T
    h = _rms(h, t["transformer.encoder.final_layernorm.weight"], eps)
    return h @ t["transformer.output_layer.weight"].T
