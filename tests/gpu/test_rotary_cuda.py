"""eet::rotary on the GPU against the reference (HF's apply_rotary_pos_emb formula), bit for bit in every dtype:
random shapes, HF's transposed q/k layout, partial rotary (GPT-NeoX), cos broadcast over the batch, odd sizes,
with the allocator's free memory poisoned with NaN before each call so an unwritten output element fails."""

from __future__ import annotations

import random

import pytest
import torch
import transformers.models.gpt_neox.modeling_gpt_neox as neox
import transformers.models.llama.modeling_llama as llama

from eet_hf import ops

from .conftest import QUICK, quick_sample

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _cases(count: int) -> list[tuple]:
    rng = random.Random(7)
    cases = []
    for i in range(count):
        head_dim = rng.choice([2, 6, 32, 64, 80, 96, 128, 256])
        rot = rng.choice([head_dim, head_dim // 2 - (head_dim // 2) % 2 or 2, 2])
        heads_q = rng.choice([1, 3, 8, 32])
        heads_k = rng.choice([1, heads_q])
        batch = rng.choice([1, 2, 5])
        seq = rng.choice([1, 1, 7, 128] if QUICK else [1, 1, 7, 129, 1000])
        cases.append((DTYPES[i % 3], batch, heads_q, heads_k, seq, head_dim, rot, rng.random() < 0.3))
    return cases


def _poison_free_memory(numel: int) -> None:
    # The op allocates its outputs; NaN in the blocks the caching allocator will hand out next makes an element
    # the kernel never writes fail the comparison.
    block = torch.full((numel,), float("nan"), device="cuda")
    del block


@pytest.mark.parametrize("case", quick_sample(_cases(120), 12))
def test_rotary_matches_reference_bitwise(cuda_ops, case):
    dtype, batch, heads_q, heads_k, seq, head_dim, rot, broadcast = case
    # HF's layout: projections [batch, seq, heads, head_dim] viewed as [batch, heads, seq, head_dim].
    q = torch.randn(batch, seq, heads_q, head_dim, device="cuda").to(dtype).transpose(1, 2)
    k = torch.randn(batch, seq, heads_k, head_dim, device="cuda").to(dtype).transpose(1, 2)
    angles = torch.rand(1 if broadcast else batch, seq, rot, device="cuda") * 50
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    _poison_free_memory(4 * (q.numel() + k.numel()) + 1024)
    got_q, got_k = torch.ops.eet.rotary(q, k, cos, sin)
    want_q, want_k = ops.reference.rotary(q, k, cos, sin)
    assert got_q.shape == q.shape and got_k.shape == k.shape
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k), case


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_equals_hf_functions(cuda_ops, dtype):
    q = torch.randn(2, 9, 8, 64, device="cuda").to(dtype).transpose(1, 2)
    k = torch.randn(2, 9, 2, 64, device="cuda").to(dtype).transpose(1, 2)
    angles = torch.rand(2, 9, 64, device="cuda") * 100
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    for hf, (c, s) in ((llama.apply_rotary_pos_emb, (cos, sin)), (neox.apply_rotary_pos_emb, (cos[..., :16], sin[..., :16]))):
        got, want = ops.rotary(q, k, c, s), hf(q, k, c, s)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), hf.__module__

# Bad arguments: test_embedding_kv_cuda.py::test_raw_op_argument_error_raises_without_crashing[rotary].
