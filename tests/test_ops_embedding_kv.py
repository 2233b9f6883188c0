"""eet::embedding and eet::kv_append (reference implementations on CPU) against HF GPT-2's own formulation.

embedding must equal `wte(input_ids) + wpe(position_ids)` computed by torch in the dtype (one fp32 add, one
rounding), with NaN rows for out-of-range indices. kv_append must equal GPT-2's `(qkv + bias).split(...)`
followed by `view(B, S, H, D).transpose(1, 2)`, with the k / v rows landing in the cache slots write_pos + s
and nothing else in the cache touched. tests/gpu/test_embedding_kv_cuda.py holds the same checks for the kernels.
"""

from __future__ import annotations

import pytest
import torch

from eet_hf import ops

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SENTINEL = -7.25  # exactly representable in every dtype; any cache element left at it was not written


def _gpt2_split(qkv: torch.Tensor, bias: torch.Tensor | None, heads_q: int, heads_kv: int):
    """HF GPT-2 attention's split, generalized to heads_kv: (q, k, v) as [batch, heads, seq, head_dim]."""
    x = qkv if bias is None else qkv + bias  # torch: fp32 add, one rounding to the dtype
    d = qkv.shape[-1] // (heads_q + 2 * heads_kv)
    q, k, v = x.split([heads_q * d, heads_kv * d, heads_kv * d], dim=2)
    return tuple(t.view(*t.shape[:2], -1, d).transpose(1, 2) for t in (q, k, v))


def _expected_cache(cache: torch.Tensor, new: torch.Tensor, write_pos: list[int]) -> torch.Tensor:
    """cache with new[b, :, s] stored at slot write_pos[b] + s where that slot exists."""
    out = cache.clone()
    for b, start in enumerate(write_pos):
        for s in range(new.shape[2]):
            if 0 <= start + s < cache.shape[2]:
                out[b, :, start + s] = new[b, :, s]
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [1, 7, 768, 769])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_embedding_matches_hf_sum(dtype, hidden, index_dtype):
    vocab, positions, batch, seq = 50, 40, 3, 9
    wte = torch.randn(vocab, hidden).to(dtype)
    wpe = torch.randn(positions, hidden).to(dtype)
    ids = torch.randint(0, vocab, (batch, seq), dtype=index_dtype)
    pos = torch.randint(0, positions, (batch, seq), dtype=index_dtype)
    out = ops.embedding(ids, pos, wte, wpe)
    expected = torch.nn.functional.embedding(ids.long(), wte) + torch.nn.functional.embedding(pos.long(), wpe)
    assert out.shape == (batch, seq, hidden) and out.dtype == dtype
    assert torch.equal(out, expected)
    assert torch.equal(ops.embedding(ids, pos, wte, None), wte[ids.long()])


def test_embedding_out_of_range_rows_are_nan_and_only_those():
    wte, wpe = torch.randn(10, 6), torch.randn(8, 6)
    ids = torch.tensor([[0, 10, 3], [-1, 9, 2]])
    pos = torch.tensor([[0, 1, 8], [3, -2, 7]])
    out = ops.embedding(ids, pos, wte, wpe)
    bad = torch.tensor([[False, True, True], [True, True, False]])
    assert out[bad].isnan().all()
    assert torch.equal(out[~bad], (wte[ids.clamp(0, 9)] + wpe[pos.clamp(0, 7)])[~bad])
    # Without wpe, positions are ignored: only the out-of-range ids are NaN.
    no_pos = ops.embedding(ids, pos, wte, None)
    assert no_pos[0, 1].isnan().all() and no_pos[1, 0].isnan().all()
    assert not no_pos[0, 2].isnan().any() and not no_pos[1, 1].isnan().any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads_q, heads_kv, head_dim", [(12, 12, 64), (4, 2, 7), (3, 1, 1), (8, 8, 5)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_kv_append_matches_gpt2_split(dtype, heads_q, heads_kv, head_dim, with_bias):
    batch, seq, cache_len = 4, 5, 12
    width = (heads_q + 2 * heads_kv) * head_dim
    qkv = torch.randn(batch, seq, width).to(dtype)
    bias = torch.randn(width).to(dtype) if with_bias else None
    k_cache = torch.full((batch, heads_kv, cache_len, head_dim), SENTINEL, dtype=dtype)
    v_cache = torch.full_like(k_cache, SENTINEL)
    # Fully inside, crossing the end, starting before 0, entirely past the end.
    write_pos = [0, cache_len - 2, -3, cache_len]
    q_ref, k_ref, v_ref = _gpt2_split(qkv, bias, heads_q, heads_kv)
    k_expected = _expected_cache(k_cache, k_ref, write_pos)
    v_expected = _expected_cache(v_cache, v_ref, write_pos)
    q = ops.kv_append(qkv, bias, k_cache, v_cache, torch.tensor(write_pos, dtype=torch.int32), heads_q, heads_kv)
    assert q.shape == (batch, heads_q, seq, head_dim) and q.dtype == dtype and q.is_contiguous()
    assert torch.equal(q, q_ref)
    assert torch.equal(k_cache, k_expected) and torch.equal(v_cache, v_expected)


def test_kv_append_writes_through_strided_cache_views():
    """The caches are slices of one [layers, 2, batch, heads, cache_len, head_dim] buffer: only the slice's
    written slots change."""
    layers, batch, heads, cache_len, head_dim, seq = 3, 2, 4, 16, 8, 3
    buffer = torch.full((layers, 2, batch, heads, cache_len, head_dim), SENTINEL)
    before = buffer.clone()
    k_cache, v_cache = buffer[1, 0], buffer[1, 1]
    qkv = torch.randn(batch, seq, 3 * heads * head_dim)
    write_pos = torch.tensor([5, 14], dtype=torch.int32)
    ops.kv_append(qkv, None, k_cache, v_cache, write_pos, heads, heads)
    _, k_ref, v_ref = _gpt2_split(qkv, None, heads, heads)
    before[1, 0] = _expected_cache(before[1, 0], k_ref, [5, 14])
    before[1, 1] = _expected_cache(before[1, 1], v_ref, [5, 14])
    assert torch.equal(buffer, before)


def test_kv_append_rejects_bad_widths_and_caches():
    qkv = torch.randn(1, 2, 3 * 4 * 8)
    cache = torch.zeros(1, 4, 6, 8)
    pos = torch.zeros(1, dtype=torch.int32)
    with pytest.raises(ValueError, match="heads_q \\+ 2 \\* heads_kv"):
        ops.kv_append(qkv, None, cache, cache.clone(), pos, 5, 4)
    with pytest.raises(ValueError, match="caches must be"):
        ops.kv_append(qkv, None, torch.zeros(1, 4, 6, 7), torch.zeros(1, 4, 6, 7), pos, 4, 4)


OPCHECK_CASES = {
    "embedding": lambda: (
        torch.randint(0, 11, (2, 3)), torch.randint(0, 5, (2, 3)), torch.randn(11, 6), torch.randn(5, 6)
    ),
    "embedding-int32-nowpe": lambda: (
        torch.randint(0, 11, (2, 3), dtype=torch.int32), torch.zeros(2, 3, dtype=torch.int32),
        torch.randn(11, 6), None,
    ),
    "kv_append": lambda: (
        torch.randn(2, 3, (4 + 2 * 2) * 8), torch.randn(64), torch.zeros(2, 2, 5, 8), torch.zeros(2, 2, 5, 8),
        torch.tensor([0, 3], dtype=torch.int32), 4, 2,
    ),
}


@pytest.mark.parametrize("case", sorted(OPCHECK_CASES))
def test_opcheck(case):
    """Schema (including the declared cache mutation), fake and reference agree."""
    op = getattr(torch.ops.eet, case.split("-")[0]).default
    torch.library.opcheck(op, OPCHECK_CASES[case]())
