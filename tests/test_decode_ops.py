"""The decode ops' references (eet_hf/ops/decode.py) on CPU: HF's arithmetic for every epilogue and norm, the KV
write's slots, fake (meta) implementations and torch.library's opcheck for every (norm, epilogue) pair the fused
decoder step runs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from eet_hf.ops import decode as D


@pytest.mark.parametrize("norm", ["rms", "layer"])
@pytest.mark.parametrize("epilogue", D.EPILOGUES)
def test_decode_linear_reference_is_hf_arithmetic(epilogue, norm):
    x = torch.randn(5, 32)
    weight, norm_weight, norm_bias = torch.randn(48, 32), torch.randn(32), torch.randn(32)
    bias = torch.randn(48)
    out_cols = 24 if epilogue in D.GATED else 48
    residual = torch.randn(5, out_cols) if epilogue == "residual" else None
    got = D.decode_linear(x, weight, bias, norm_weight, 1e-5, residual, epilogue,
                          norm_bias if norm == "layer" else None, norm)
    if norm == "layer":
        mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        xf = (x - mean) * torch.rsqrt(var + 1e-5) * norm_weight + norm_bias
    else:
        xf = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm_weight
    y = F.linear(xf, weight, bias)
    if epilogue == "residual":
        y = residual + y
    elif epilogue == "relu":
        y = y.clamp_min(0)
    elif epilogue == "gelu_new":  # HF's NewGELUActivation
        y = 0.5 * y * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (y + 0.044715 * torch.pow(y, 3.0))))
    elif epilogue != "none":
        gate, up = y[:, :24], y[:, 24:]
        y = (F.silu(gate) if epilogue == "silu_mul" else F.gelu(gate, approximate="tanh")) * up
    torch.testing.assert_close(got, y, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="epilogue must be"):
        D.decode_linear(x, weight, epilogue="gelu")
    with pytest.raises(ValueError, match="norm must be"):
        D.decode_linear(x, weight, None, norm_weight, 1e-5, norm="layernorm")
    with pytest.raises(ValueError, match="norm_bias goes with"):
        D.decode_linear(x, weight, None, norm_weight, 1e-5, norm_bias=norm_bias, norm="rms")


def test_decode_qkv_rope_reference_writes_only_its_slots():
    batch, seq, heads, kv_heads, head_dim, capacity = 3, 2, 4, 2, 8, 6
    x = torch.randn(batch, seq, 16)
    weight = torch.randn((heads + 2 * kv_heads) * head_dim, 16)
    angle = torch.rand(batch, seq, head_dim // 2)
    cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
    k_cache = torch.full((batch, kv_heads, capacity, head_dim), float("nan"))
    v_cache = k_cache.clone()
    write_pos = torch.tensor([0, 4, 5], dtype=torch.int32)  # the last row's second token is outside the cache
    q = D.decode_qkv_rope(x, weight, None, None, 0.0, cos, sin, k_cache, v_cache, write_pos, heads, kv_heads)
    assert q.shape == (batch, heads, seq, head_dim)
    written = ~torch.isnan(k_cache[..., 0])
    expected = torch.zeros(batch, kv_heads, capacity, dtype=torch.bool)
    expected[0, :, 0:2] = expected[1, :, 4:6] = expected[2, :, 5] = True
    assert torch.equal(written, expected) and torch.equal(~torch.isnan(v_cache[..., 0]), expected)
    qkv = torch.nn.functional.linear(x, weight).view(batch, seq, heads + 2 * kv_heads, head_dim).transpose(1, 2)
    torch.testing.assert_close(v_cache[1, :, 4:6], qkv[1, heads + kv_heads:])


def test_decode_ops_have_fakes():
    for name in ("decode_linear", "decode_qkv_rope", "qkv_rope_append"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"eet::{name}", "Meta"), name
    x = torch.randn(2, 16, device="meta")
    w = torch.randn(32, 16, device="meta")
    assert torch.ops.eet.decode_linear(x, w, None, None, 0.0, None, "silu_mul").shape == (2, 16)
    norm = torch.randn(16, device="meta")
    assert torch.ops.eet.decode_linear(x, w, None, norm, 0.0, None, "relu", norm, "layer").shape == (2, 32)
    cache = torch.randn(2, 2, 4, 4, device="meta")
    q = torch.ops.eet.decode_qkv_rope(x.view(2, 1, 16), torch.randn(24, 16, device="meta"), None, norm, 1e-5, None,
                                      None, cache, cache.clone(), torch.zeros(2, dtype=torch.int32, device="meta"), 2,
                                      2, norm, "layer", 0.5)
    assert q.shape == (2, 2, 1, 4)


def _opcheck_cases() -> dict[str, tuple]:
    """(op, args) per case: every (norm, epilogue) pair the fused step runs, rotary and not."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    x, w, b, nw, nb = rand(3, 16), rand(32, 16), rand(32), rand(16), rand(16)
    batch, seq, heads, kv_heads, head_dim, capacity = 2, 3, 2, 1, 8, 6
    qkv_w = rand((heads + 2 * kv_heads) * head_dim, 16)
    angle = rand(batch, seq, head_dim // 2)
    cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)

    def caches():
        return rand(batch, kv_heads, capacity, head_dim), rand(batch, kv_heads, capacity, head_dim)

    pos = torch.tensor([0, 2], dtype=torch.int32)
    xs = rand(batch, seq, 16)
    qkv = rand(batch, seq, (heads + 2 * kv_heads) * head_dim)
    ops = torch.ops.eet
    return {
        "linear-none-residual": (ops.decode_linear, (x, w, b, None, 0.0, rand(3, 32), "residual", None, "rms")),
        "linear-rms-silu": (ops.decode_linear, (x, w, b, nw, 1e-5, None, "silu_mul", None, "rms")),
        "linear-layer-relu": (ops.decode_linear, (x, w, b, nw, 1e-5, None, "relu", nb, "layer")),
        "linear-layer-none": (ops.decode_linear, (x, w, None, nw, 1e-5, None, "none", nb, "layer")),
        "linear-layer-gelu_new": (ops.decode_linear, (x, w, b, nw, 1e-5, None, "gelu_new", nb, "layer")),
        "qkv-rms-rotary": (ops.decode_qkv_rope, (xs, qkv_w, None, nw, 1e-5, cos, sin, *caches(), pos, heads,
                                                 kv_heads, None, "rms", 1.0)),
        "qkv-layer-scaled": (ops.decode_qkv_rope, (xs, qkv_w, rand(qkv_w.shape[0]), nw, 1e-5, None, None, *caches(),
                                                   pos, heads, kv_heads, nb, "layer", 0.35)),
        "append-rotary": (ops.qkv_rope_append, (qkv, None, None, 0.0, cos, sin, *caches(), pos, heads, kv_heads,
                                                1.0)),
        "append-scaled": (ops.qkv_rope_append, (qkv, None, None, 0.0, None, None, *caches(), pos, heads, kv_heads,
                                                0.35)),
    }


@pytest.mark.parametrize("case", sorted(_opcheck_cases()))
def test_decode_ops_opcheck(case):
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op.default, args)


def test_staged_rows_rule_mirrors_the_kernel_header(monkeypatch):
    """eet_hf.ops.decode decides which norm shapes the kernel takes from the shared memory they need
    (decode_linear_norm_min_smem in csrc/decode_linear.h): the staged rows, the partial tiles, the statistics and the
    ring's smallest slots. Its constants must be the header's, and its rule must refuse exactly past that sum."""
    import re
    from pathlib import Path

    header = (Path(__file__).resolve().parents[1] / "csrc" / "decode_linear.h").read_text()

    def const(name):
        return eval(re.search(rf"constexpr int(?:64_t)? {name} = ([0-9 *]+);", header).group(1))  # noqa: S307

    assert D._STATIC_SMEM == const("kDecodeLinearStaticSmem16")
    assert D._NORM_STATS == 2 * 16 * const("kNormMaxChunks") * 4
    assert D._MIN_RING == const("kDecodeLinearMinRing") * 2 * 16 * 16 * 32  # slots x W fragments x 16 B x 512 threads
    monkeypatch.setattr(D, "_smem_per_block", lambda index: 232448)  # an H100's opt-in shared memory per block
    cpu = torch.device("cpu", 0)
    need = lambda m, k: m * ((k + 63) // 64 * 64 + 8) * 2 + D._NORM_STATS + D._STATIC_SMEM + D._MIN_RING  # noqa: E731
    for m, k in [(1, 2048), (8, 10240), (16, 5440), (16, 5504), (16, 10240), (9, 8192)]:
        assert D._staged_rows_fit(m, k, cpu) == (need(m, k) <= 232448), (m, k)
    assert D._staged_rows_fit(8, 10240, cpu) and not D._staged_rows_fit(16, 10240, cpu)
