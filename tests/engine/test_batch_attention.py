"""The continuous batch's attention (engine/batch_attention.py): each packed sequence attends to its
own keys only, with the same result as transformers' sdpa over the batch's block-diagonal mask."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from glmtui.engine import batch_attention  # noqa: E402 - after the importorskip


class GroupedAttention(torch.nn.Module):
    """What transformers' sdpa reads from an attention layer: 4 query heads over 2 key/value heads."""

    num_key_value_groups = 2
    is_causal = True


def packed_batch(seed: int = 0, dtype=torch.float32):
    """A batch step as the manager packs it: a decoding sequence (1 query, 7 keys), a whole prompt
    (5 and 5) and a prompt's chunk after cached tokens (3 and 9); keys per sequence, queries last.
    The mask is the manager's: additive, block-diagonal, each block bottom-right causal."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(1, 7), (5, 5), (3, 9)]
    q_tokens, k_tokens = sum(q for q, _ in shapes), sum(k for _, k in shapes)
    query = torch.randn(1, 4, q_tokens, 16, generator=gen).to(dtype)
    key = torch.randn(1, 2, k_tokens, 16, generator=gen).to(dtype)
    value = torch.randn(1, 2, k_tokens, 16, generator=gen).to(dtype)
    mask = torch.full((1, 1, q_tokens, k_tokens), torch.finfo(dtype).min, dtype=dtype)
    cu_q, cu_k = [0], [0]
    for q, k in shapes:
        qs, ks = cu_q[-1], cu_k[-1]
        for row in range(q):
            mask[0, 0, qs + row, ks:ks + k - q + row + 1] = 0
        cu_q.append(qs + q)
        cu_k.append(ks + k)
    bounds = {"cu_seq_lens_q": torch.tensor(cu_q, dtype=torch.int32),
              "cu_seq_lens_k": torch.tensor(cu_k, dtype=torch.int32)}
    return query, key, value, mask, bounds


@pytest.fixture
def installed():
    was = batch_attention.installed()
    batch_attention.install()
    yield
    if not was:
        batch_attention.uninstall()


def test_per_sequence_attention_equals_sdpa_over_the_joined_keys(installed):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = GroupedAttention()
    query, key, value, mask, bounds = packed_batch()
    want, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    before = batch_attention.packed_calls
    got, weights = batch_attention.packed_sdpa(module, query, key, value, mask, scaling=0.25, **bounds)
    assert batch_attention.packed_calls == before + 1  # it went per sequence, not to transformers' sdpa
    assert weights is None and got.shape == want.shape == (1, query.shape[2], 4, 16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # Without the batch's mask, a chunk after cached keys is still bottom-right causal.
    unmasked, _ = batch_attention.packed_sdpa(module, query, key, value, None, scaling=0.25, **bounds)
    torch.testing.assert_close(unmasked, want, rtol=1e-5, atol=1e-5)


def test_calls_without_sequence_bounds_are_transformers_sdpa_unchanged(installed):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = GroupedAttention()
    query, key, value, mask, _ = packed_batch(seed=1)
    before = batch_attention.packed_calls
    for attention_mask in (mask, None):
        want, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=0.25)
        got, _ = batch_attention.packed_sdpa(module, query, key, value, attention_mask, scaling=0.25)
        assert torch.equal(got, want)
    assert batch_attention.packed_calls == before


def test_install_registers_it_as_sdpa_and_uninstall_puts_transformers_back():
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    was = batch_attention.installed()
    try:
        batch_attention.install()
        assert AttentionInterface()["sdpa"] is batch_attention.packed_sdpa
        batch_attention.uninstall()
        assert AttentionInterface()["sdpa"] is sdpa_attention_forward
    finally:
        if was:
            batch_attention.install()


def decoding_batch(lengths, seed: int = 2, dtype=torch.float32):
    """A decode step as the manager packs it: one query token per sequence, each sequence's keys
    (``lengths``) one after another; 4 query heads over 2 key/value heads."""
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(1, 4, len(lengths), 16, generator=gen).to(dtype)
    key = torch.randn(1, 2, sum(lengths), 16, generator=gen).to(dtype)
    value = torch.randn(1, 2, sum(lengths), 16, generator=gen).to(dtype)
    ends = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
    bounds = {"cu_seq_lens_q": torch.arange(len(lengths) + 1, dtype=torch.int32), "cu_seq_lens_k": ends}
    return query, key, value, bounds


def per_sequence(query, key, value, bounds, scaling):
    """The reference: each sequence's query against its own keys, one sdpa call each."""
    ends = bounds["cu_seq_lens_k"].tolist()
    rows = [torch.nn.functional.scaled_dot_product_attention(
        query[:, :, i:i + 1], key[:, :, ends[i]:ends[i + 1]], value[:, :, ends[i]:ends[i + 1]], scale=scaling,
        enable_gqa=True) for i in range(len(ends) - 1)]
    return torch.cat(rows, dim=2).transpose(1, 2)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_a_decode_step_is_one_padded_call_equal_to_per_sequence_attention(installed, dtype, tolerance):
    module = GroupedAttention()
    query, key, value, bounds = decoding_batch([7, 12, 9, 16, 10], dtype=dtype)
    before, decoded = batch_attention.packed_calls, batch_attention.decode_calls
    got, _ = batch_attention.packed_sdpa(module, query, key, value, None, scaling=0.25, **bounds)
    assert (batch_attention.packed_calls, batch_attention.decode_calls) == (before + 1, decoded + 1)
    want = per_sequence(query, key, value, bounds, 0.25)
    assert got.shape == want.shape == (1, 5, 4, 16)
    torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)
    # The next layer of the same step (same bounds, new keys) reuses the gather index and still matches.
    query2, key2, value2, _ = decoding_batch([7, 12, 9, 16, 10], seed=3, dtype=dtype)
    again, _ = batch_attention.packed_sdpa(module, query2, key2, value2, None, scaling=0.25, **bounds)
    torch.testing.assert_close(again, per_sequence(query2, key2, value2, bounds, 0.25), rtol=tolerance,
                               atol=tolerance)


@pytest.mark.parametrize("lengths", [[40, 2, 3, 2], [9]], ids=["lengths far apart", "one sequence"])
def test_decode_steps_that_padding_would_not_pay_for_stay_per_sequence(installed, lengths):
    """Padding to the longest would more than double the keys attended, or there is one sequence
    (nothing to batch; the gather would only copy its keys): the per-sequence calls, same result."""
    module = GroupedAttention()
    query, key, value, bounds = decoding_batch(lengths)
    decoded = batch_attention.decode_calls
    got, _ = batch_attention.packed_sdpa(module, query, key, value, None, scaling=0.25, **bounds)
    assert batch_attention.decode_calls == decoded
    torch.testing.assert_close(got, per_sequence(query, key, value, bounds, 0.25), rtol=1e-5, atol=1e-5)
