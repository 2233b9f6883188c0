"""eet::decode_linear / eet::decode_qkv_rope CUDA kernels (csrc/decode_linear.cu) against their references.

Outputs are poisoned before every launch (NaN bytes in the block the op allocates, NaN caches outside the written
slots). Tolerance: the kernel's error against an fp64 evaluation of the same formula is at most twice the error of
torch's own fp16/bf16 path (cuBLAS) against it, plus one storage-type ulp of slack for the roundings both take.
"""

from __future__ import annotations

import pytest
import torch

from eet_hf.ops import decode as D

from .conftest import poison_next_alloc, quick_sample, rel_err

DTYPES = [torch.float16, torch.bfloat16]
# (rows of x, in_features, out_features): decode batches 1-16, odd K chunks, a vocab-sized N, K not a multiple of 32.
SHAPES = quick_sample([(1, 64, 16), (1, 2048, 3072), (3, 2048, 2048), (8, 8192, 2048), (9, 1024, 512),
                       (16, 2048, 4096), (5, 136, 48), (1, 2048, 32768), (2, 4104, 256)], 4)
EPILOGUES = ["none", "residual", "silu_mul", "gelu_tanh_mul"]


def _fp64_linear(x, weight, bias, norm_weight, eps, residual, epilogue):
    """The op's formula without intermediate roundings, in float64 (the oracle both paths are measured against)."""
    h = x.double()
    if norm_weight is not None:
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.double()
    y = h @ weight.double().t() + (0 if bias is None else bias.double())
    if epilogue == "residual":
        return residual.double() + y
    if epilogue in ("silu_mul", "gelu_tanh_mul"):
        gate, up = y.chunk(2, dim=-1)
        act = torch.nn.functional.silu(gate) if epilogue == "silu_mul" else torch.nn.functional.gelu(
            gate, approximate="tanh")
        return act * up
    return y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("epilogue", EPILOGUES)
@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_decode_linear_matches_reference(cuda_ops, dtype, shape, epilogue, norm, with_bias):
    rows, k, n = shape
    if epilogue in ("silu_mul", "gelu_tanh_mul"):
        n = 2 * n  # [gate; up]
    x = torch.randn(rows, k, device="cuda", dtype=dtype)
    weight = torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5
    bias = torch.randn(n, device="cuda", dtype=dtype) if with_bias else None
    norm_weight = (1 + 0.1 * torch.randn(k, device="cuda", dtype=dtype)) if norm else None
    out_cols = n // 2 if epilogue in ("silu_mul", "gelu_tanh_mul") else n
    residual = torch.randn(rows, out_cols, device="cuda", dtype=dtype) if epilogue == "residual" else None
    poison_next_alloc(rows * out_cols, dtype)
    got = torch.ops.eet.decode_linear(x, weight, bias, norm_weight, 1e-6, residual, epilogue)
    torch.cuda.synchronize()
    assert got.shape == (rows, out_cols)
    assert torch.isfinite(got).all(), "an output element was not written (NaN poison left)"
    expected = D.decode_linear_reference(x, weight, bias, norm_weight, 1e-6, residual, epilogue)
    exact = _fp64_linear(x, weight, bias, norm_weight, 1e-6, residual, epilogue)
    ulp = 2.0 ** (-8 if dtype == torch.bfloat16 else -11)
    assert rel_err(got, exact) <= 2 * rel_err(expected, exact) + ulp, (rel_err(got, exact), rel_err(expected, exact))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(4, 4, 64), (32, 8, 64), (12, 2, 128), (3, 1, 16)])
@pytest.mark.parametrize("batch", [1, 5, 16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_decode_qkv_rope_matches_reference(cuda_ops, dtype, heads, kv_heads, head_dim, batch, with_bias):
    hidden = 256
    rows = (heads + 2 * kv_heads) * head_dim
    capacity = 40
    x = torch.randn(batch, 1, hidden, device="cuda", dtype=dtype)
    weight = torch.randn(rows, hidden, device="cuda", dtype=dtype) / hidden**0.5
    bias = torch.randn(rows, device="cuda", dtype=dtype) if with_bias else None
    norm_weight = 1 + 0.1 * torch.randn(hidden, device="cuda", dtype=dtype)
    angles = torch.rand(batch, 1, head_dim // 2, device="cuda") * 100
    cos = torch.cat([angles.cos()] * 2, -1).to(dtype)
    sin = torch.cat([angles.sin()] * 2, -1).to(dtype)
    # Slots: inside, the last one, and outside the cache (skipped, never written).
    write_pos = torch.tensor([[3, capacity - 1, capacity, -1][i % 4] for i in range(batch)], device="cuda",
                             dtype=torch.int32)
    caches = [torch.full((batch, kv_heads, capacity, head_dim), float("nan"), device="cuda", dtype=dtype)
              for _ in range(4)]
    poison_next_alloc(batch * heads * head_dim, dtype)
    q = torch.ops.eet.decode_qkv_rope(x, weight, bias, norm_weight, 1e-5, cos, sin, caches[0], caches[1], write_pos,
                                      heads, kv_heads)
    q_ref = D.decode_qkv_rope_reference(x, weight, bias, norm_weight, 1e-5, cos, sin, caches[2], caches[3],
                                        write_pos, heads, kv_heads)
    torch.cuda.synchronize()
    assert q.shape == (batch, heads, 1, head_dim) and torch.isfinite(q).all()
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    assert rel_err(q, q_ref) <= tol
    for got, ref in ((caches[0], caches[2]), (caches[1], caches[3])):
        assert torch.equal(torch.isnan(got), torch.isnan(ref)), "a slot outside write_pos was written or skipped"
        written = ~torch.isnan(ref)
        assert rel_err(got[written], ref[written]) <= tol


def test_decode_linear_rejects_what_the_kernel_cannot_take(cuda_ops):
    x = torch.randn(17, 64, device="cuda", dtype=torch.float16)
    w = torch.randn(32, 64, device="cuda", dtype=torch.float16)
    with pytest.raises(RuntimeError, match="1 to 16 are supported"):
        torch.ops.eet.decode_linear(x, w, None, None, 0.0, None, "none")
    with pytest.raises(RuntimeError, match="epilogue must be"):
        torch.ops.eet.decode_linear(x[:2], w, None, None, 0.0, None, "relu")
    with pytest.raises(RuntimeError, match="float16 or bfloat16"):
        torch.ops.eet.decode_linear(x[:2].float(), w.float(), None, None, 0.0, None, "none")


def test_decode_linear_wrapper_routes_large_batches_to_torch(cuda_ops):
    """Prompts (> 16 rows) and fp32 take the reference (cuBLAS) path and give HF's arithmetic exactly."""
    x = torch.randn(40, 64, device="cuda", dtype=torch.float16)
    w = torch.randn(32, 64, device="cuda", dtype=torch.float16)
    assert torch.equal(D.decode_linear(x, w), torch.nn.functional.linear(x, w))
    assert torch.equal(D.decode_linear(x.float(), w.float()), torch.nn.functional.linear(x.float(), w.float()))


@pytest.mark.parametrize("dtype", DTYPES + [torch.float32])
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(16, 8, 128), (4, 1, 64), (2, 2, 256), (3, 1, 40)])
@pytest.mark.parametrize("batch,seq", [(1, 1), (5, 1), (2, 7)])
@pytest.mark.parametrize("norm", [True, False])
def test_qkv_rope_append_matches_reference(cuda_ops, dtype, heads, kv_heads, head_dim, batch, seq, norm):
    capacity = 12
    qkv = torch.randn(batch, seq, (heads + 2 * kv_heads) * head_dim, device="cuda", dtype=dtype)
    q_norm = 1 + 0.1 * torch.randn(head_dim, device="cuda", dtype=dtype) if norm else None
    k_norm = 1 + 0.1 * torch.randn(head_dim, device="cuda", dtype=dtype) if norm else None
    angles = torch.rand(batch, seq, head_dim // 2, device="cuda") * 100
    cos = torch.cat([angles.cos()] * 2, -1).to(dtype)
    sin = torch.cat([angles.sin()] * 2, -1).to(dtype)
    write_pos = torch.tensor([[0, capacity - seq, capacity - 1, -2, 4][i % 5] for i in range(batch)], device="cuda",
                             dtype=torch.int32)
    caches = [torch.full((batch, kv_heads, capacity, head_dim), float("nan"), device="cuda", dtype=dtype)
              for _ in range(4)]
    poison_next_alloc(batch * heads * seq * head_dim, dtype)
    q = torch.ops.eet.qkv_rope_append(qkv, q_norm, k_norm, 1e-6, cos, sin, caches[0], caches[1], write_pos, heads,
                                   kv_heads)
    q_ref = D.qkv_rope_append_reference(qkv, q_norm, k_norm, 1e-6, cos, sin, caches[2], caches[3], write_pos, heads,
                                     kv_heads)
    torch.cuda.synchronize()
    # Same roundings as the reference; the only difference is the order of the head_dim-long sum of squares.
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 1e-6}[dtype]
    assert torch.isfinite(q).all() and rel_err(q, q_ref) <= tol
    for got, ref in ((caches[0], caches[2]), (caches[1], caches[3])):
        assert torch.equal(torch.isnan(got), torch.isnan(ref))
        written = ~torch.isnan(ref)
        assert rel_err(got[written], ref[written]) <= tol


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_decoder_kernel_check_passes_and_catches_a_wrong_kernel(cuda_ops, dtype, monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    from eet_hf.engine import fused_decoder

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1024)
    model = LlamaForCausalLM(config).to("cuda", dtype).eval()
    view = fused_decoder._build(model)
    assert fused_decoder.kernel_check(view) is None
    real = torch.ops.eet.decode_linear

    def off_by_a_bit(*args):
        out = real(*args)
        return out * 1.25

    monkeypatch.setattr(torch.ops.eet, "decode_linear", off_by_a_bit)
    reason = fused_decoder.kernel_check(view)
    assert reason is not None and "differ" in reason
