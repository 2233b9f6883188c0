"""eet::decode_linear / eet::decode_qkv_rope CUDA kernels (csrc/decode_linear.cu) against their references
(qkv_rope_append: test_qkv_rope_append_cuda.py).

Outputs are poisoned before every launch (NaN bytes in the block the op allocates, NaN caches outside the written
slots). Tolerance: the kernel's error against an fp64 evaluation of the same formula is at most twice the error of
torch's own fp16/bf16 path (cuBLAS, torch's layer_norm) against it, plus one storage-type ulp of slack for the
roundings both take. Only the (norm, epilogue) pairs in KERNEL_PAIRS have a kernel; the others must be refused by the
op and run the reference through the wrapper. Epilogues that only round (ReLU, OPT's q scale) are checked bit for bit
against the kernel's own output without them.
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
# decode_linear's (norm kind, epilogue) pairs with a kernel ('rotary_kv' is decode_qkv_rope's, tested below).
PAIRS = sorted(pair for pair in D.KERNEL_PAIRS if pair[1] != "rotary_kv")
# The kernel's work splits (warps per 16-row tile), each forced, and 0: the one the kernel picks for the shape.
SPLITS = [0, 8, 16]
UNBUILT = [(n, e) for n in ("none", "rms", "layer") for e in D.EPILOGUES if (n, e) not in D.KERNEL_PAIRS]


def _fp64_linear(x, weight, bias, norm_weight, eps, residual, epilogue, norm_bias=None, norm="rms"):
    """The op's formula without intermediate roundings, in float64 (the oracle both paths are measured against)."""
    h = x.double()
    if norm_weight is not None and norm == "layer":
        centered = h - h.mean(-1, keepdim=True)
        h = centered * torch.rsqrt(centered.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.double()
        h = h + (0 if norm_bias is None else norm_bias.double())
    elif norm_weight is not None:
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.double()
    y = h @ weight.double().t() + (0 if bias is None else bias.double())
    if epilogue == "residual":
        return residual.double() + y
    if epilogue == "relu":
        return y.clamp_min(0)
    if epilogue == "gelu_new":
        return 0.5 * y * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (y + 0.044715 * y**3)))
    if epilogue in D.GATED:
        gate, up = y.chunk(2, dim=-1)
        act = torch.nn.functional.silu(gate) if epilogue == "silu_mul" else torch.nn.functional.gelu(
            gate, approximate="tanh")
        return act * up
    return y


def _linear_inputs(dtype, shape, norm, epilogue, with_bias):
    """x, weight, bias, norm_weight, norm_bias, residual for one case; fresh random values each call. LayerNorm's x
    has a per-row offset (OPT's hidden states are far from centered), so the kernel's mean matters."""
    rows, k, n = shape
    if epilogue in D.GATED:
        n = 2 * n  # [gate; up]
    x = torch.randn(rows, k, device="cuda", dtype=dtype)
    if norm == "layer":
        x = x + 4 * torch.randn(rows, 1, device="cuda", dtype=dtype)
    weight = torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5
    bias = torch.randn(n, device="cuda", dtype=dtype) if with_bias else None
    norm_weight = (1 + 0.1 * torch.randn(k, device="cuda", dtype=dtype)) if norm != "none" else None
    norm_bias = 0.5 * torch.randn(k, device="cuda", dtype=dtype) if norm == "layer" else None
    out_cols = n // 2 if epilogue in D.GATED else n
    residual = torch.randn(rows, out_cols, device="cuda", dtype=dtype) if epilogue == "residual" else None
    return x, weight, bias, norm_weight, norm_bias, residual


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("norm,epilogue", PAIRS)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("split", SPLITS)
def test_decode_linear_matches_reference(cuda_ops, dtype, shape, norm, epilogue, with_bias, split):
    x, weight, bias, norm_weight, norm_bias, residual = _linear_inputs(dtype, shape, norm, epilogue, with_bias)
    rows, out_cols = x.shape[0], weight.shape[0] // (2 if epilogue in D.GATED else 1)
    args = (x, weight, bias, norm_weight, 1e-5, residual, epilogue, norm_bias, "rms" if norm == "none" else norm)
    poison_next_alloc(rows * out_cols, dtype)
    got = torch.ops.eet.decode_linear(*args, split)
    torch.cuda.synchronize()
    assert got.shape == (rows, out_cols)
    assert torch.isfinite(got).all(), "an output element was not written (NaN poison left)"
    expected = D.decode_linear_reference(*args)
    exact = _fp64_linear(*args)
    ulp = 2.0 ** (-8 if dtype == torch.bfloat16 else -11)
    assert rel_err(got, exact) <= 2 * rel_err(expected, exact) + ulp, (rel_err(got, exact), rel_err(expected, exact))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", ["rms", "layer"])
@pytest.mark.parametrize("split", [8, 16])
# (x rows, in_features): the norm prologue spreads 256-column chunks over the warps while rows x chunks <= 2 per warp
# (1 x 4104 and 2 x 1032: a last chunk of 8 columns; 2 x 2048 with 8 warps and 4 x 2048 with 16: exactly 2 per warp;
# 3 x 2048 with 8 warps and 9 x 1024: one past it, the per-row loop).
@pytest.mark.parametrize("rows,k", [(1, 4104), (2, 1032), (2, 2048), (4, 2048), (3, 2048), (9, 1024), (1, 8192),
                                    (1, 8200)])
def test_norm_prologue_both_forms_match_reference(cuda_ops, dtype, norm, split, rows, k):
    x, weight, bias, norm_weight, norm_bias, _ = _linear_inputs(dtype, (rows, k, 96), norm, "none", True)
    args = (x, weight, bias, norm_weight, 1e-5, None, "none", norm_bias, norm)
    poison_next_alloc(rows * 96, dtype)
    got = torch.ops.eet.decode_linear(*args, split)
    torch.cuda.synchronize()
    assert torch.isfinite(got).all(), "an output element was not written (NaN poison left)"
    exact = _fp64_linear(*args)
    ulp = 2.0 ** (-8 if dtype == torch.bfloat16 else -11)
    assert rel_err(got, exact) <= 2 * rel_err(D.decode_linear_reference(*args), exact) + ulp


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", quick_sample([(1, 2048, 8192), (7, 136, 48), (16, 1024, 512)], 2))
def test_layer_norm_prologue_without_bias_and_relu_bit_for_bit(cuda_ops, dtype, shape):
    """LayerNorm without a bias (nn.LayerNorm(bias=False)) against the reference; ReLU is exactly relu() of the same
    kernel's plain output (HF: relu(round(fc1(x))), so the epilogue adds no rounding of its own), NaN poison gone."""
    x, weight, bias, norm_weight, _, _ = _linear_inputs(dtype, shape, "layer", "relu", True)
    plain = torch.ops.eet.decode_linear(x, weight, bias, norm_weight, 1e-5, None, "none", None, "layer")
    expected = D.decode_linear_reference(x, weight, bias, norm_weight, 1e-5, None, "none", None, "layer")
    exact = _fp64_linear(x, weight, bias, norm_weight, 1e-5, None, "none", None, "layer")
    ulp = 2.0 ** (-8 if dtype == torch.bfloat16 else -11)
    assert rel_err(plain, exact) <= 2 * rel_err(expected, exact) + ulp
    poison_next_alloc(plain.numel(), dtype)
    relu = torch.ops.eet.decode_linear(x, weight, bias, norm_weight, 1e-5, None, "relu", None, "layer")
    torch.cuda.synchronize()
    assert torch.equal(relu, torch.relu(plain)) and bool((relu == 0).any()) and bool((relu > 0).any())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 768, 50257), (5, 136, 1000), (16, 64, 7)])
@pytest.mark.parametrize("norm,epilogue", [p for p in PAIRS if p[1] not in D.GATED])
@pytest.mark.parametrize("split", SPLITS)
def test_output_rows_not_a_multiple_of_16(cuda_ops, dtype, shape, norm, epilogue, split):
    """A partial last 16-row tile (GPT-2's vocabulary of 50257): every output written (NaN poison gone), values as the
    full-tile rule above (writes past the last row are compute-sanitizer's to catch: tests/gpu/sanitize.sh)."""
    x, weight, bias, norm_weight, norm_bias, residual = _linear_inputs(dtype, shape, norm, epilogue, True)
    rows, n = x.shape[0], weight.shape[0]
    args = (x, weight, bias, norm_weight, 1e-5, residual, epilogue, norm_bias, "rms" if norm == "none" else norm)
    assert D._kernel_takes(x, weight, norm_weight, norm_bias, args[-1], epilogue)
    poison_next_alloc(rows * n, dtype)
    got = torch.ops.eet.decode_linear(*args, split)
    torch.cuda.synchronize()
    assert got.shape == (rows, n) and torch.isfinite(got).all()
    ulp = 2.0 ** (-8 if dtype == torch.bfloat16 else -11)
    exact = _fp64_linear(*args)
    assert rel_err(got, exact) <= 2 * rel_err(D.decode_linear_reference(*args), exact) + ulp


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", quick_sample([(1, 768, 3072), (8, 1600, 6400), (3, 136, 1000)], 2))
def test_gelu_new_is_hf_gelu_new_of_the_plain_output_bit_for_bit(cuda_ops, dtype, shape):
    """GPT-2's c_fc + gelu_new: exactly HF's NewGELUActivation (eet's staged reference) applied to the same kernel's
    plain LayerNorm + linear output, since HF applies it to the rounded Conv1D output."""
    x, weight, bias, norm_weight, norm_bias, _ = _linear_inputs(dtype, shape, "layer", "gelu_new", True)
    plain = torch.ops.eet.decode_linear(x, weight, bias, norm_weight, 1e-5, None, "none", norm_bias, "layer")
    poison_next_alloc(plain.numel(), dtype)
    gelu = torch.ops.eet.decode_linear(x, weight, bias, norm_weight, 1e-5, None, "gelu_new", norm_bias, "layer")
    torch.cuda.synchronize()
    from eet_hf.ops import reference

    assert torch.equal(gelu, reference.bias_gelu(plain, None, "tanh_staged"))


@pytest.mark.parametrize("norm,epilogue", UNBUILT)
def test_pairs_without_a_kernel_are_refused_and_run_the_reference(cuda_ops, norm, epilogue):
    x, weight, bias, norm_weight, norm_bias, residual = _linear_inputs(torch.float16, (3, 256, 128), norm, epilogue,
                                                                       True)
    args = (x, weight, bias, norm_weight, 1e-5, residual, epilogue, norm_bias, "rms" if norm == "none" else norm)
    with pytest.raises(RuntimeError, match="no kernel is built"):
        torch.ops.eet.decode_linear(*args)
    assert torch.equal(D.decode_linear(*args), D.decode_linear_reference(*args))


@pytest.mark.parametrize("dtype", DTYPES)
# (64, 8, 128): 640 tiles, more than the persistent grid's blocks, so blocks walk several tiles and each loads its
# next tile's rotary entries and cache slots while finishing the current one.
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(4, 4, 64), (32, 8, 64), (12, 2, 128), (3, 1, 16), (4, 4, 80),
                                                     (64, 8, 128)])
@pytest.mark.parametrize("batch", [1, 5, 16])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("mode", ["rms-rotary", "layer-q-scale"])
@pytest.mark.parametrize("split", SPLITS)
def test_decode_qkv_rope_matches_reference(cuda_ops, dtype, heads, kv_heads, head_dim, batch, with_bias, mode, split):
    """Llama's prologue (RMSNorm, rotary) and OPT's (LayerNorm, no rotary, q * head_dim**-0.5: 1/sqrt(80) is not a
    power of two, so its rounding shows)."""
    hidden = 256
    rows = (heads + 2 * kv_heads) * head_dim
    capacity = 40
    x = torch.randn(batch, 1, hidden, device="cuda", dtype=dtype)
    weight = torch.randn(rows, hidden, device="cuda", dtype=dtype) / hidden**0.5
    bias = torch.randn(rows, device="cuda", dtype=dtype) if with_bias else None
    norm_weight = 1 + 0.1 * torch.randn(hidden, device="cuda", dtype=dtype)
    if mode == "rms-rotary":
        angles = torch.rand(batch, 1, head_dim // 2, device="cuda") * 100
        cos = torch.cat([angles.cos()] * 2, -1).to(dtype)
        sin = torch.cat([angles.sin()] * 2, -1).to(dtype)
        extra = (None, "rms", 1.0)
    else:
        x = x + 4 * torch.randn(batch, 1, 1, device="cuda", dtype=dtype)
        cos = sin = None
        extra = (0.5 * torch.randn(hidden, device="cuda", dtype=dtype), "layer", head_dim**-0.5)
    # Slots: inside, the last one, and outside the cache (skipped, never written).
    write_pos = torch.tensor([[3, capacity - 1, capacity, -1][i % 4] for i in range(batch)], device="cuda",
                             dtype=torch.int32)
    caches = [torch.full((batch, kv_heads, capacity, head_dim), float("nan"), device="cuda", dtype=dtype)
              for _ in range(4)]
    poison_next_alloc(batch * heads * head_dim, dtype)
    q = torch.ops.eet.decode_qkv_rope(x, weight, bias, norm_weight, 1e-5, cos, sin, caches[0], caches[1], write_pos,
                                      heads, kv_heads, *extra, split)
    q_ref = D.decode_qkv_rope_reference(x, weight, bias, norm_weight, 1e-5, cos, sin, caches[2], caches[3],
                                        write_pos, heads, kv_heads, *extra)
    torch.cuda.synchronize()
    assert q.shape == (batch, heads, 1, head_dim) and torch.isfinite(q).all()
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    assert rel_err(q, q_ref) <= tol
    for got, ref in ((caches[0], caches[2]), (caches[1], caches[3])):
        assert torch.equal(torch.isnan(got), torch.isnan(ref)), "a slot outside write_pos was written or skipped"
        written = ~torch.isnan(ref)
        assert rel_err(got[written], ref[written]) <= tol


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 9])
def test_q_scale_is_hf_rounding_of_the_kernels_q(cuda_ops, dtype, batch):
    """q_scale multiplies the kernel's rounded q in fp32 and rounds, as HF OPT's `q_proj(x) * scaling` does on the
    rounded projection: bit for bit against the same kernel without the scale; k and v are not scaled."""
    heads, head_dim, hidden, capacity = 4, 80, 320, 8
    x = torch.randn(batch, 1, hidden, device="cuda", dtype=dtype) + 2
    weight = torch.randn(3 * heads * head_dim, hidden, device="cuda", dtype=dtype) / hidden**0.5
    bias = torch.randn(3 * heads * head_dim, device="cuda", dtype=dtype)
    norm_weight, norm_bias = torch.randn(hidden, device="cuda", dtype=dtype), torch.randn(hidden, device="cuda",
                                                                                         dtype=dtype)
    write_pos = torch.full((batch,), 2, device="cuda", dtype=torch.int32)
    caches = [torch.full((batch, heads, capacity, head_dim), float("nan"), device="cuda", dtype=dtype)
              for _ in range(4)]
    scale = head_dim**-0.5
    plain = torch.ops.eet.decode_qkv_rope(x, weight, bias, norm_weight, 1e-5, None, None, caches[0], caches[1],
                                          write_pos, heads, heads, norm_bias, "layer", 1.0)
    scaled = torch.ops.eet.decode_qkv_rope(x, weight, bias, norm_weight, 1e-5, None, None, caches[2], caches[3],
                                           write_pos, heads, heads, norm_bias, "layer", scale)
    torch.cuda.synchronize()
    assert torch.equal(scaled, plain * scale)  # a half tensor times a float: fp32 product, one rounding (HF's)
    written = ~torch.isnan(caches[0])
    assert bool(written[:, :, 2].all()) and not bool(written[:, :, 3:].any())
    for got, want in ((caches[2], caches[0]), (caches[3], caches[1])):  # k and v as without the scale
        assert torch.equal(torch.isnan(got), ~written) and torch.equal(got[written], want[written])


def test_decode_linear_rejects_what_the_kernel_cannot_take(cuda_ops):
    x = torch.randn(17, 64, device="cuda", dtype=torch.float16)
    w = torch.randn(32, 64, device="cuda", dtype=torch.float16)
    n = torch.randn(64, device="cuda", dtype=torch.float16)
    with pytest.raises(RuntimeError, match="1 to 16 are supported"):
        torch.ops.eet.decode_linear(x, w, None, None, 0.0, None, "none")
    with pytest.raises(RuntimeError, match="epilogue must be"):
        torch.ops.eet.decode_linear(x[:2], w, None, None, 0.0, None, "gelu")
    with pytest.raises(RuntimeError, match="float16 or bfloat16"):
        torch.ops.eet.decode_linear(x[:2].float(), w.float(), None, None, 0.0, None, "none")
    with pytest.raises(RuntimeError, match="norm must be 'rms' or 'layer'"):
        torch.ops.eet.decode_linear(x[:2], w, None, n, 0.0, None, "none", None, "layernorm")
    with pytest.raises(RuntimeError, match="norm_bias goes with"):
        torch.ops.eet.decode_linear(x[:2], w, None, n, 0.0, None, "none", n, "rms")
    with pytest.raises(RuntimeError, match="no kernel is built for norm 'none' with epilogue 'relu'"):
        torch.ops.eet.decode_linear(x[:2], w, None, None, 0.0, None, "relu")
    with pytest.raises(RuntimeError, match="warps_per_tile must be 0"):
        torch.ops.eet.decode_linear(x[:2], w, None, None, 0.0, None, "none", None, "rms", 2)


def test_norm_rows_too_wide_for_shared_memory_take_the_reference(cuda_ops):
    """A norm kernel stages its normalized x rows in shared memory beside its W ring: 16 rows of 10240 columns
    (330 KB) do not fit a block's, so the op refuses them by name and the wrapper runs the reference; 8 rows (165 KB,
    with the ring's two smallest slots 219 KB) fit."""
    k = 10240
    x = torch.randn(16, k, device="cuda", dtype=torch.float16)
    w = torch.randn(32, k, device="cuda", dtype=torch.float16) / 128
    n = 1 + 0.1 * torch.randn(k, device="cuda", dtype=torch.float16)
    with pytest.raises(RuntimeError, match="bytes of shared memory"):
        torch.ops.eet.decode_linear(x, w, None, n, 1e-6, None, "none", None, "rms")
    assert torch.equal(D.decode_linear(x, w, None, n, 1e-6), D.decode_linear_reference(x, w, None, n, 1e-6, None, "none"))
    args = (x[:8], w, None, n, 1e-6, None, "none", None, "rms")
    poison_next_alloc(8 * 32, torch.float16)
    got = torch.ops.eet.decode_linear(*args)
    exact = _fp64_linear(*args)
    assert rel_err(got, exact) <= 2 * rel_err(D.decode_linear_reference(*args), exact) + 2.0**-11


def test_decode_linear_wrapper_routes_large_batches_to_torch(cuda_ops):
    """Prompts (> 16 rows) and fp32 take the reference (cuBLAS) path and give HF's arithmetic exactly."""
    x = torch.randn(40, 64, device="cuda", dtype=torch.float16)
    w = torch.randn(32, 64, device="cuda", dtype=torch.float16)
    assert torch.equal(D.decode_linear(x, w), torch.nn.functional.linear(x, w))
    assert torch.equal(D.decode_linear(x.float(), w.float()), torch.nn.functional.linear(x.float(), w.float()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", ["llama", "opt"])
def test_fused_decoder_kernel_check_passes_and_catches_a_wrong_kernel(cuda_ops, dtype, family, monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    from eet_hf.engine import fused_decoder, fused_decoder_refusal

    torch.manual_seed(0)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=1024))
    else:
        model = OPTForCausalLM(OPTConfig(hidden_size=256, ffn_dim=1024, num_hidden_layers=2, num_attention_heads=4,
                                         vocab_size=1024, max_position_embeddings=64))
    model = model.to("cuda", dtype).eval()
    assert fused_decoder_refusal.refusal(model) is None
    view = fused_decoder._build(model)
    assert fused_decoder.kernel_check(view) is None
    real = torch.ops.eet.decode_linear

    def off_by_a_bit(*args):
        out = real(*args)
        return out * 1.25

    monkeypatch.setattr(torch.ops.eet, "decode_linear", off_by_a_bit)
    reason = fused_decoder.kernel_check(view)
    assert reason is not None and "differ" in reason


@pytest.mark.parametrize("case", ["layer-relu", "layer-store", "none-residual", "qkv-layer-q-scale", "append-q-scale"])
def test_opcheck(cuda_ops, case):
    """The schemas (defaults, optional cos / sin, mutated caches) against the CUDA kernels."""
    dtype, dev = torch.float16, "cuda"
    x, w, b = (torch.randn(3, 64, device=dev, dtype=dtype), torch.randn(32, 64, device=dev, dtype=dtype),
               torch.randn(32, device=dev, dtype=dtype))
    nw, nb = torch.randn(64, device=dev, dtype=dtype), torch.randn(64, device=dev, dtype=dtype)
    caches = [torch.zeros(3, 2, 8, 16, device=dev, dtype=dtype) for _ in range(2)]
    pos = torch.tensor([0, 3, 7], device=dev, dtype=torch.int32)
    cases = {
        "layer-relu": (torch.ops.eet.decode_linear, (x, w, b, nw, 1e-5, None, "relu", nb, "layer")),
        "layer-store": (torch.ops.eet.decode_linear, (x, w, None, nw, 1e-5, None, "none", nb, "layer")),
        "none-residual": (torch.ops.eet.decode_linear, (x, w, b, None, 0.0, torch.randn(3, 32, device=dev,
                                                                                        dtype=dtype), "residual")),
        "qkv-layer-q-scale": (torch.ops.eet.decode_qkv_rope, (
            x.view(3, 1, 64), torch.randn(96, 64, device=dev, dtype=dtype), None, nw, 1e-5, None, None, *caches, pos,
            2, 2, nb, "layer", 0.25)),
        "append-q-scale": (torch.ops.eet.qkv_rope_append, (
            torch.randn(3, 2, 96, device=dev, dtype=dtype), None, None, 0.0, None, None, *caches, pos, 2, 2, 0.25)),
    }
    op, args = cases[case]
    torch.library.opcheck(op.default, args)
