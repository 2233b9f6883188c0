"""eet::qkv_rope_append CUDA kernel (csrc/qkv_rope_append.cu: [per-head q/k RMSNorm +] rotary + KV write after a
packed QKV projection, the prompt path of every fused family) against its reference, outputs poisoned (NaN bytes in
the q the op allocates, NaN caches outside the written slots). Its schema is checked with the other decode ops'
(test_decode_linear_cuda.py::test_opcheck)."""

from __future__ import annotations

import pytest
import torch

from eet_hf.ops import decode as D

from .conftest import poison_next_alloc, rel_err

DTYPES = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES + [torch.float32])
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(16, 8, 128), (4, 1, 64), (2, 2, 256), (3, 1, 40)])
@pytest.mark.parametrize("batch,seq,capacity", [(1, 1, 12), (5, 1, 12), (2, 7, 12), (3, 333, 340)])
@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("rotary", [True, False])
def test_qkv_rope_append_matches_reference(cuda_ops, dtype, heads, kv_heads, head_dim, batch, seq, capacity, norm,
                                           rotary):
    """With rotary (Llama-style prompts) and without it but with OPT's q scale (OPT prompts). 3 x 333 tokens takes
    the prompt form (four units per warp, the last warp's units partly past the end)."""
    qkv = torch.randn(batch, seq, (heads + 2 * kv_heads) * head_dim, device="cuda", dtype=dtype)
    q_norm = 1 + 0.1 * torch.randn(head_dim, device="cuda", dtype=dtype) if norm else None
    k_norm = 1 + 0.1 * torch.randn(head_dim, device="cuda", dtype=dtype) if norm else None
    cos = sin = None
    if rotary:
        angles = torch.rand(batch, seq, head_dim // 2, device="cuda") * 100
        cos = torch.cat([angles.cos()] * 2, -1).to(dtype)
        sin = torch.cat([angles.sin()] * 2, -1).to(dtype)
    q_scale = 1.0 if rotary else head_dim**-0.5
    write_pos = torch.tensor([[0, capacity - seq, capacity - 1, -2, 4][i % 5] for i in range(batch)], device="cuda",
                             dtype=torch.int32)
    caches = [torch.full((batch, kv_heads, capacity, head_dim), float("nan"), device="cuda", dtype=dtype)
              for _ in range(4)]
    poison_next_alloc(batch * heads * seq * head_dim, dtype)
    q = torch.ops.eet.qkv_rope_append(qkv, q_norm, k_norm, 1e-6, cos, sin, caches[0], caches[1], write_pos, heads,
                                   kv_heads, q_scale)
    q_ref = D.qkv_rope_append_reference(qkv, q_norm, k_norm, 1e-6, cos, sin, caches[2], caches[3], write_pos, heads,
                                     kv_heads, q_scale)
    torch.cuda.synchronize()
    # Same roundings as the reference; the only difference is the order of the head_dim-long sum of squares.
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 1e-6}[dtype]
    assert torch.isfinite(q).all() and rel_err(q, q_ref) <= tol
    if not norm and not rotary:  # OPT's prompts: q * scale rounded once, k and v copied, exactly as HF's
        assert torch.equal(q, q_ref)
    for got, ref in ((caches[0], caches[2]), (caches[1], caches[3])):
        assert torch.equal(torch.isnan(got), torch.isnan(ref))
        written = ~torch.isnan(ref)
        assert rel_err(got[written], ref[written]) <= tol


def test_qkv_rope_append_long_prompt(cuda_ops):
    """More tokens than a grid dimension's 65535 (the earlier kernel's limit): every token's q and k/v written."""
    torch.manual_seed(0)
    heads, kv_heads, head_dim, seq = 2, 1, 64, 70_000
    qkv = torch.randn(1, seq, (heads + 2 * kv_heads) * head_dim, device="cuda", dtype=torch.float16)
    angles = torch.rand(1, seq, head_dim // 2, device="cuda") * 100
    cos, sin = (torch.cat([f(angles)] * 2, -1).half() for f in (torch.cos, torch.sin))
    write_pos = torch.zeros(1, device="cuda", dtype=torch.int32)
    caches = [torch.full((1, kv_heads, seq, head_dim), float("nan"), device="cuda", dtype=torch.float16)
              for _ in range(4)]
    poison_next_alloc(heads * seq * head_dim, torch.float16)
    q = torch.ops.eet.qkv_rope_append(qkv, None, None, 1e-6, cos, sin, caches[0], caches[1], write_pos, heads,
                                      kv_heads, 1.0)
    q_ref = D.qkv_rope_append_reference(qkv, None, None, 1e-6, cos, sin, caches[2], caches[3], write_pos, heads,
                                        kv_heads, 1.0)
    torch.cuda.synchronize()
    assert torch.isfinite(q).all() and rel_err(q, q_ref) <= 2e-3
    for got, ref in ((caches[0], caches[2]), (caches[1], caches[3])):
        assert torch.isfinite(got).all() and rel_err(got, ref) <= 2e-3
