"""The attention op's contracts beyond its numbers (csrc/attention*.cu): CUDA-graph capture with bounds read on the
device, the fallback of head dims without a kernel, cache slots outside the bounds never read (NaN / inf there change
nothing), and torch.library's opcheck. The randomized parity against float64 is test_attention_cuda.py."""

from __future__ import annotations

import pytest
import torch

from .conftest import rel_err
from .test_attention_cuda import SEED, _ref64


@pytest.mark.parametrize("q_len", [1, 64])
def test_cuda_graph_capture(cuda_ops, q_len):
    """Capture-safe: no host sync or allocation outside the graph pool; replay matches eager."""
    gen = torch.Generator(device="cuda").manual_seed(SEED)
    b, h, lk, d = 1, 16, 4096, 128
    q = torch.randn(b, q_len, h, d, generator=gen, device="cuda").half().transpose(1, 2)
    k = torch.randn(b, h, lk, d, generator=gen, device="cuda").half()
    v = torch.randn(b, h, lk, d, generator=gen, device="cuda").half()
    i32 = dict(dtype=torch.int32, device="cuda")
    ks, ke, qo = torch.tensor([100], **i32), torch.tensor([lk], **i32), torch.tensor([lk - q_len], **i32)
    eager = cuda_ops.attention(q, k, v, ks, ke, qo, True, 0.125)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        cuda_ops.attention(q, k, v, ks, ke, qo, True, 0.125)  # warm-up on the side stream
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = cuda_ops.attention(q, k, v, ks, ke, qo, True, 0.125)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, eager)
    # The bounds are read on the device: new values change the replayed result without a re-capture.
    ks.fill_(lk - 1)
    graph.replay()
    torch.cuda.synchronize()
    expected = cuda_ops.attention(q, k, v, ks, ke, qo, True, 0.125)
    assert torch.equal(static_out, expected)


def test_unsupported_head_dim_falls_back(cuda_ops):
    q = torch.randn(2, 4, 5, 48, device="cuda", dtype=torch.float16)
    k = torch.randn(2, 2, 7, 48, device="cuda", dtype=torch.float16)
    v = torch.randn(2, 2, 7, 48, device="cuda", dtype=torch.float16)
    i32 = dict(dtype=torch.int32, device="cuda")
    ks, ke, qo = torch.tensor([0, 7], **i32), torch.tensor([7, 7], **i32), torch.tensor([2, 2], **i32)
    out = cuda_ops.attention(q, k, v, ks, ke, qo, True, 0.2)
    ref = _ref64(q, k, v, ks, ke, qo, True, 0.2)
    assert torch.isfinite(out).all() and (out[1] == 0).all()
    assert rel_err(out, ref) < 2e-3


@pytest.mark.parametrize("head_dim", [16, 48, 64, 128])  # 16 and 48: no kernel instantiation, SDPA fallback
@pytest.mark.parametrize("heads", [(4, 1), (4, 4)], ids=["gqa", "mha"])
@pytest.mark.parametrize("q_len", [1, 5])
def test_keys_outside_the_bounds_are_never_read(cuda_ops, head_dim, heads, q_len):
    """A KV cache's slots outside [kv_start, kv_end) hold anything (NaN, inf): the output must not change. The SDPA
    fallback of head dims without a kernel once multiplied them by zero weights, and 0 * NaN is NaN."""
    hq, hkv = heads
    gen = torch.Generator(device="cuda").manual_seed(head_dim * 10 + hq * hkv + q_len)
    q = torch.randn(2, hq, q_len, head_dim, device="cuda", dtype=torch.float16, generator=gen)
    k = torch.randn(2, hkv, 40, head_dim, device="cuda", dtype=torch.float16, generator=gen)
    v = torch.randn(2, hkv, 40, head_dim, device="cuda", dtype=torch.float16, generator=gen)
    i32 = dict(dtype=torch.int32, device="cuda")
    ks, ke = torch.tensor([7, 0], **i32), torch.tensor([20, 33], **i32)
    qo = ke - q_len
    poisoned_k, poisoned_v = k.clone(), v.clone()
    for row, (lo, hi, bad) in enumerate(((7, 20, float("nan")), (0, 33, float("inf")))):
        for t in (poisoned_k, poisoned_v):
            t[row, :, :lo] = bad
            t[row, :, hi:] = bad
    out = cuda_ops.attention(q, poisoned_k, poisoned_v, ks, ke, qo, True, head_dim**-0.5)
    assert torch.isfinite(out).all(), "what lies outside the bounds leaked into the output"
    assert rel_err(out, _ref64(q, k, v, ks, ke, qo, True, head_dim**-0.5)) < 2e-3


@pytest.mark.parametrize("q_len", [1, 16])
def test_opcheck(cuda_ops, q_len):
    q = torch.randn(2, q_len, 4, 64, device="cuda", dtype=torch.float16).transpose(1, 2)
    k = torch.randn(2, 2, 24, 64, device="cuda", dtype=torch.float16)
    v = torch.randn(2, 2, 24, 64, device="cuda", dtype=torch.float16)
    i32 = dict(dtype=torch.int32, device="cuda")
    args = (
        q,
        k,
        v,
        torch.tensor([0, 5], **i32),
        torch.tensor([24, 24], **i32),
        torch.tensor([24 - q_len] * 2, **i32),
        True,
        0.125,
    )
    torch.library.opcheck(torch.ops.eet.attention.default, args)
