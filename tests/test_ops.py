"""Each eet op against an independent PyTorch/HF formulation, over odd shapes and every CPU dtype.

On a CPU machine the ops dispatch to eet_hf/ops/reference.py; these tests pin that specification to what HF
computes. tests/gpu/ holds the same checks for the CUDA kernels.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN
from transformers.masking_utils import bidirectional_mask_function, causal_mask_function, sdpa_mask

from eet_hf import ops
from eet_hf.ops import _library

from .helpers import assert_close

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Tolerance vs a float64 computation: fp32 rounding, or one rounding of the output in half precision.
TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}
HIDDEN = [1, 7, 768, 769, 1000, 1600, 4096]
ROWS = [1, 7, 83]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("rows", ROWS)
def test_layer_norm(rows, hidden, dtype):
    x = torch.randn(rows, hidden).to(dtype) * 3 + 1
    w, b = torch.randn(hidden).to(dtype), torch.randn(hidden).to(dtype)
    out = ops.layer_norm(x, w, b, 1e-5)
    expected = F.layer_norm(x.double(), (hidden,), w.double(), b.double(), 1e-5)
    assert out.dtype == dtype and out.shape == x.shape
    assert_close(out, expected, TOL[dtype] * max(1.0, expected.abs().max().item()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [1, 7, 769, 1600])
def test_add_layer_norm_sum_is_rounded_like_hf(hidden, dtype):
    x, r = torch.randn(7, hidden).to(dtype), torch.randn(7, hidden).to(dtype)
    w = torch.randn(hidden).to(dtype)
    normed, summed = ops.add_layer_norm(x, r, w, None, 1e-5)
    assert torch.equal(summed, x + r), "the residual sum must equal HF's `x + residual` in the same dtype"
    expected = F.layer_norm((x + r).double(), (hidden,), w.double(), None, 1e-5)
    assert_close(normed, expected, TOL[dtype] * max(1.0, expected.abs().max().item()))


def test_layer_norm_strided_input():
    x = torch.randn(16, 40).t()  # [40, 16], not contiguous
    w, b = torch.randn(16), torch.randn(16)
    assert_close(ops.layer_norm(x, w, b, 1e-6), F.layer_norm(x, (16,), w, b, 1e-6), 1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["gelu_new", "gelu_pytorch_tanh", "gelu"])
@pytest.mark.parametrize("cols", [1, 7, 769, 3072])
def test_bias_gelu_matches_hf_activation(cols, act, dtype):
    approximate = "none" if act == "gelu" else "tanh"
    x, b = (torch.randn(5, cols) * 4).to(dtype), torch.randn(cols).to(dtype)
    out = ops.bias_gelu(x, b, approximate)
    expected = ACT2FN[act](x.double() + b.double())
    assert_close(out, expected, TOL[dtype] * max(1.0, expected.abs().max().item()))


def test_bias_gelu_rejects_unknown_flavour():
    with pytest.raises(Exception, match="approximate"):
        ops.bias_gelu(torch.randn(2, 3), None, "sigmoid")


def test_linear_gelu_matches_linear_then_gelu():
    x, w, b = torch.randn(2, 3, 16), torch.randn(32, 16), torch.randn(32)
    out = ops.linear_gelu(x, w.t(), b, "tanh")
    assert_close(out, F.gelu(F.linear(x, w, b), approximate="tanh"), 1e-5)


def _hf_attention(q, k, v, mask4d, scale):
    """HF's own formulation: sdpa over the boolean mask HF builds, rows that see nothing zeroed."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    out = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask4d, scale=scale)
    out = torch.where(mask4d.any(-1, keepdim=True), out, 0.0)
    return out.transpose(1, 2)


def _padding(batch, kv_len, lengths, side):
    mask = torch.zeros(batch, kv_len, dtype=torch.bool)
    for b, n in enumerate(lengths):
        if side == "left":
            mask[b, kv_len - n :] = True
        else:
            mask[b, :n] = True
    return mask


CASES = [
    # (batch, heads_q, heads_kv, q_len, kv_len, head_dim, causal, side, lengths)
    (3, 4, 4, 9, 9, "causal", "left", [9, 5, 1]),  # generation prefill, a length-1 prompt
    (2, 4, 4, 1, 17, "causal", "left", [17, 3]),  # decode step over a cache
    (2, 8, 2, 3, 12, "causal", "left", [12, 7]),  # grouped-query, several new tokens
    (3, 2, 2, 11, 11, "bidirectional", "right", [11, 4, 1]),  # BERT
    (2, 2, 1, 6, 6, "bidirectional", "right", [6, 0]),  # a fully padded sequence
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[5]}-{c[6]}-q{c[3]}k{c[4]}h{c[1]}/{c[2]}-{c[7]}")
def test_attention_matches_hf_mask_semantics(case, dtype):
    batch, hq, hkv, q_len, kv_len, kind, side, lengths = case
    d = 16
    q = torch.randn(batch, q_len, hq, d).to(dtype).transpose(1, 2)  # HF's layout: a transposed view
    k, v = torch.randn(batch, hkv, kv_len, d).to(dtype), torch.randn(batch, hkv, kv_len, d).to(dtype)
    padding = _padding(batch, kv_len, lengths, side)
    mask_fn = causal_mask_function if kind == "causal" else bidirectional_mask_function
    q_offset = kv_len - q_len
    hf_mask = sdpa_mask(batch_size=batch, q_length=q_len, kv_length=kv_len, q_offset=q_offset,
                        mask_function=mask_fn, attention_mask=padding, allow_is_causal_skip=False)
    from eet_hf.bounds import from_padding_mask

    bounds = from_padding_mask(padding, batch, q_len, kv_len, q_offset, 0, kind == "causal", q.device)
    assert torch.equal(bounds.dense_mask(), hf_mask), "bounds must describe exactly HF's mask"
    out = ops.attention(q, k, v, bounds.kv_start, bounds.kv_end, bounds.q_offset, bounds.causal, d**-0.5)
    expected = _hf_attention(q, k, v, hf_mask, d**-0.5)
    assert out.shape == (batch, q_len, hq, d) and out.dtype == dtype
    assert_close(out, expected, TOL[dtype] * 4)
    dead = ~hf_mask.any(-1).squeeze(1)  # [batch, q_len] rows that see no key
    assert (out[dead] == 0).all(), "rows that see no key must be exactly zero"


OPCHECK_INPUTS = {
    "layer_norm": lambda: (torch.randn(3, 8), torch.randn(8), torch.randn(8), 1e-5),
    "add_layer_norm": lambda: (torch.randn(3, 8), torch.randn(3, 8), torch.randn(8), None, 1e-5),
    "bias_gelu": lambda: (torch.randn(3, 8), torch.randn(8), "tanh"),
    "rms_norm": lambda: (torch.randn(3, 8), torch.randn(8), 1e-6),
    "attention": lambda: (
        torch.randn(2, 2, 3, 8), torch.randn(2, 1, 5, 8), torch.randn(2, 1, 5, 8),
        torch.tensor([0, 2], dtype=torch.int32), torch.tensor([5, 5], dtype=torch.int32),
        torch.tensor([2, 2], dtype=torch.int32), True, 0.35,
    ),
    "attention_varlen": lambda: (
        torch.randn(9, 2, 8), torch.randn(9, 1, 8), torch.randn(9, 1, 8),
        torch.tensor([0, 4, 4, 9], dtype=torch.int32), 5, False, 0.35,
    ),
    "embedding": lambda: (
        torch.randint(0, 11, (2, 3)), torch.randint(0, 5, (2, 3)), torch.randn(11, 6), torch.randn(5, 6),
    ),
    "kv_append": lambda: (
        torch.randn(2, 3, 64), torch.randn(64), torch.zeros(2, 2, 5, 8), torch.zeros(2, 2, 5, 8),
        torch.tensor([0, 3], dtype=torch.int32), 4, 2,
    ),
    "rotary": lambda: (
        torch.randn(2, 3, 5, 8).transpose(1, 2), torch.randn(2, 1, 3, 8), torch.randn(1, 3, 4), torch.randn(1, 3, 4),
    ),
    "small_linear": lambda: (torch.randn(3, 16), torch.randn(16, 24), torch.randn(24), "tanh_staged"),
    "argmax_rows": lambda: (torch.randn(3, 40),),
    "padding_runs": lambda: (torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]]),),
    "in_place_packing": lambda: (torch.tensor([1, 0, 2], dtype=torch.int32), torch.tensor([3, 4, 9], dtype=torch.int32), 4),
}


def test_every_op_has_a_check():
    assert set(OPCHECK_INPUTS) == set(_library.SCHEMAS)


@pytest.mark.parametrize("name", sorted(_library.SCHEMAS))
def test_opcheck(name):
    """Schema, fake (meta) implementation and dispatch agree: what torch.compile relies on."""
    torch.library.opcheck(getattr(torch.ops.eet, name).default, OPCHECK_INPUTS[name]())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tanh_staged_gelu_is_hf_gelu_new_bit_for_bit(dtype):
    """'tanh_staged' reproduces HF's NewGELUActivation (gelu_new) in the storage dtype, roundings included."""
    from transformers.activations import NewGELUActivation

    x = (torch.randn(64, 257) * 3).to(dtype)
    assert torch.equal(ops.bias_gelu(x, None, "tanh_staged"), NewGELUActivation()(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rot", [16, 6])
def test_rotary_reference_is_hf_apply_rotary_pos_emb(dtype, rot):
    """eet::rotary's reference reproduces HF's Llama (full) and GPT-NeoX (partial) rotary bit for bit."""
    import transformers.models.gpt_neox.modeling_gpt_neox as neox
    import transformers.models.llama.modeling_llama as llama

    q = torch.randn(2, 7, 4, 16).to(dtype).transpose(1, 2)
    k = torch.randn(2, 7, 2, 16).to(dtype).transpose(1, 2)
    angles = torch.rand(2, 7, rot) * 30
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    hf = llama.apply_rotary_pos_emb if rot == 16 else neox.apply_rotary_pos_emb
    assert all(torch.equal(a, b) for a, b in zip(ops.rotary(q, k, cos, sin), hf(q, k, cos, sin)))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 7, 769), (8, 768, 2304), (5, 1000, 7)])
def test_small_linear_none_is_addmm_bit_for_bit_in_fp32(shape, bias):
    """small_linear(..., 'none') is HF's Conv1D, addmm(bias, x, weight): in fp32 on the CPU the same bits."""
    rows, k, n = shape
    x, w, b = torch.randn(rows, k), torch.randn(k, n), torch.randn(n) if bias else None
    out = ops.small_linear(x, w, b, "none")
    assert torch.equal(out, torch.addmm(b, x, w) if bias else x @ w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 7, 769), (8, 768, 2304), (4, 1600, 5)])
def test_small_linear_gelu_is_hf_gelu_new_of_the_rounded_linear(shape, dtype):
    """'tanh_staged' is HF's NewGELUActivation applied to the 'none' output (rounded to the dtype first, as HF's
    Conv1D output is), and that output is within one rounding of the float64 product."""
    from transformers.activations import NewGELUActivation

    rows, k, n = shape
    x, w, b = torch.randn(rows, k).to(dtype), (torch.randn(k, n) / k**0.5).to(dtype), torch.randn(n).to(dtype)
    linear = ops.small_linear(x, w, b, "none")
    expected = torch.addmm(b.double(), x.double(), w.double())
    assert linear.dtype == dtype and linear.shape == (rows, n)
    assert_close(linear, expected, TOL[dtype] * max(1.0, expected.abs().max().item()))
    assert torch.equal(ops.small_linear(x, w, b, "tanh_staged"), NewGELUActivation()(linear))
    if dtype == torch.float32:
        assert torch.equal(ops.small_linear(x, w, b, "tanh_staged"), NewGELUActivation()(torch.addmm(b, x, w)))


def test_small_linear_strided_rows():
    x = torch.randn(4, 40)[:, 3:19]  # row stride 40, last dim contiguous
    w, b = torch.randn(16, 9), torch.randn(9)
    assert torch.equal(ops.small_linear(x, w, b, "none"), torch.addmm(b, x, w))


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.randn(9, 4), torch.randn(4, 3), None, "none"), "at most 8"),
        ((torch.randn(2, 4), torch.randn(5, 3), None, "none"), "weight"),
        ((torch.randn(2, 4), torch.randn(4, 3), torch.randn(4), "none"), "bias"),
        ((torch.randn(2, 4), torch.randn(4, 3), None, "gelu"), "activation"),
        ((torch.randn(2, 4), torch.randn(4, 3).half(), None, "none"), "dtype"),
    ],
)
def test_small_linear_rejects_bad_arguments(args, match):
    with pytest.raises(Exception, match=match):
        ops.small_linear(*args)


def test_argmax_rows_is_torch_argmax_with_its_ties_and_nans():
    x = torch.tensor([[1.0, 3.0, 3.0, -1.0], [float("-inf")] * 4, [0.0, float("nan"), 5.0, float("nan")]])
    assert ops.argmax_rows(x).tolist() == [1, 0, 1] == torch.argmax(x, -1).tolist()
    with pytest.raises(ValueError, match="2-D"):
        ops.argmax_rows(torch.randn(3))


def test_engine_argmax_falls_back_to_torch_when_the_kernel_disagrees(monkeypatch):
    from eet_hf.engine import token_argmax

    assert token_argmax.disagreement(torch.device("cpu")) is None  # the reference is torch.argmax
    monkeypatch.setattr(ops, "argmax_rows", lambda x: torch.argmax(x.flip(-1), dim=-1))  # a wrong kernel
    assert "torch.argmax chose" in token_argmax.disagreement(torch.device("cpu"))
