"""CUDA kernels of layer_norm, add_layer_norm and bias_gelu against the reference, on fresh random shapes.

Every run draws new shapes (set EET_TEST_SEED to replay one; the seed is in each case's id). Each kernel
output is compared with the same function computed in float64 on the same (already rounded) inputs, and
must be no worse than twice the error of eet_hf.ops.reference run in the tensor's dtype, plus a slack;
an elementwise bound catches a few wrong elements that a norm would average away. Outputs are allocated
over NaN-poisoned memory, so an element the kernel never writes fails.
"""

from __future__ import annotations

import os
import random

import pytest
import torch
import torch.nn.functional as F

from eet_hf.ops import reference

from .conftest import QUICK, poison_next_alloc, quick_sample, rel_err

SEED = int(os.environ.get("EET_TEST_SEED", random.randrange(1 << 31)))
_rng = random.Random(SEED)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Norm-wise slack on top of 2x the reference's own error in the dtype. That reference is fp32 math with
# one rounding to the dtype, which the kernels also do, so the slack absorbs fp32 summation order: with
# an input offset of 30 the fp32 mean alone is off by ~1e-6 relative to the spread, and torch can be
# luckier than that on a given row.
SLACK = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-3}
# Elementwise: |out - ref| <= TOL * (|ref| + 1). About 2 ulps of the dtype (fp32: a few ulps of fp32
# statistics over 65536 elements); a wrongly computed element is off by far more.
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
EPS = 1e-5

# Sizes the kernels special-case (1, below a warp, vector multiples or not, rows held in registers up
# to 16384 elements, streamed above) plus random ones. Rows are capped to keep each case a few million
# elements.
FIXED_HIDDENS = [1, 7, 8, 768, 769, 1000, 1600, 4096, 5125, 12288, 16384, 16392, 65536]
HIDDENS = FIXED_HIDDENS + [_rng.randint(2, 20000) for _ in range(3)]
MAX_ELEMS = 1 << (18 if QUICK else 22)


def _rows(hidden: int) -> int:
    rows = _rng.choice([1, 7, 83, _rng.randint(1, 4096)])
    return max(1, min(rows, MAX_ELEMS // hidden))


def _ln_cases():
    cases = []
    for name, dtype in DTYPES.items():
        for hidden in HIDDENS:
            for residual in (False, True):
                rows, bias, seed = _rows(hidden), _rng.random() < 0.7, _rng.randrange(1 << 31)
                case_id = (
                    f"{name}-r{rows}-h{hidden}-{'res' if residual else 'nores'}-{'bias' if bias else 'nobias'}-s{seed}"
                )
                cases.append(pytest.param(dtype, rows, hidden, residual, bias, seed, id=case_id))
    return cases


def _gelu_cases():
    cases = []
    for name, dtype in DTYPES.items():
        for cols in HIDDENS:
            for approximate in ("tanh", "none"):
                rows, bias, seed = _rows(cols), _rng.random() < 0.8, _rng.randrange(1 << 31)
                case_id = f"{name}-r{rows}-c{cols}-{approximate}-{'bias' if bias else 'nobias'}-s{seed}"
                cases.append(pytest.param(dtype, rows, cols, approximate, bias, seed, id=case_id))
    return cases


# The float64 truth. Not eet_hf.ops.reference on float64 copies: that computes in float32 internally
# (x.float()), which would make the fp32 "truth" just torch's fp32 result.
def _ln64(x, w, b):
    return F.layer_norm(x.double(), (x.shape[-1],), w.double(), None if b is None else b.double(), EPS)


def _gelu64(x, b, approximate):
    h = x.double() if b is None else x.double() + b.double()
    return F.gelu(h, approximate=approximate)


def _randn(shape, dtype, gen, scale=1.0, offset=0.0):
    return (torch.randn(shape, generator=gen, device="cuda", dtype=torch.float32) * scale + offset).to(dtype)


def _poison(numel: int, dtype: torch.dtype, count: int) -> None:
    """poison_next_alloc for an op with `count` outputs of the same size: hold all blocks while filling,
    so the allocator hands each of them to one output."""
    if count == 1:
        poison_next_alloc(numel, dtype)
        return
    blocks = [torch.empty(numel, dtype=dtype, device="cuda") for _ in range(count)]
    for b in blocks:
        b.view(torch.uint8).fill_(0xFF)
    del b, blocks


def _check(out: torch.Tensor, same_dtype: torch.Tensor, ref64: torch.Tensor, what: str) -> None:
    dtype = out.dtype
    err, err_torch = rel_err(out, ref64), rel_err(same_dtype, ref64)
    assert err <= 2 * err_torch + SLACK[dtype], (
        f"{what}: rel err {err:.3g} vs torch in {dtype} {err_torch:.3g} (seed {SEED})"
    )
    bad = (out.double() - ref64).abs() > TOL[dtype] * (ref64.abs() + 1)
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} elements off, first at {bad.nonzero()[0].tolist()}: "
        f"{out[bad][0].item()} vs {ref64[bad][0].item()} (seed {SEED})"
    )


def _assert_within_one_ulp(a: torch.Tensor, b: torch.Tensor) -> None:
    """Same values, or neighbours in the dtype's encoding (same sign: adjacent bit patterns)."""
    if torch.equal(a, b):
        return
    int_type = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[a.dtype]
    diff = (a.contiguous().view(int_type).long() - b.contiguous().view(int_type).long()).abs()
    assert (torch.sign(a) == torch.sign(b)).all() and diff.max() <= 1, f"sum differs by {int(diff.max())} ulps"


@pytest.mark.parametrize("dtype, rows, hidden, residual, with_bias, seed", quick_sample(_ln_cases(), 10))
def test_layer_norm(cuda_ops, dtype, rows, hidden, residual, with_bias, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    # An offset larger than the spread: the variance must be computed centered.
    x = _randn((rows, hidden), dtype, gen, scale=2.0, offset=random.Random(seed).choice([0.0, 3.0, 30.0]))
    w = _randn((hidden,), dtype, gen, scale=0.5, offset=1.0)
    b = _randn((hidden,), dtype, gen, scale=0.2) if with_bias else None
    if residual:
        r = _randn((rows, hidden), dtype, gen)
        # The kernel normalizes x + r rounded to dtype (as HF's fp16 `a + b`): that rounded sum is the
        # float64 reference's input, so the reference does not charge the kernel for the spec's rounding.
        summed = x + r
        ref64 = _ln64(summed, w, b)
        same_dtype, _ = reference.add_layer_norm(x, r, w, b, EPS)
        _poison(x.numel(), dtype, 2)
        out, sum_out = cuda_ops.add_layer_norm(x, r, w, b, EPS)
        _assert_within_one_ulp(sum_out, summed)
    else:
        ref64 = _ln64(x, w, b)
        same_dtype = reference.layer_norm(x, w, b, EPS)
        _poison(x.numel(), dtype, 1)
        out = cuda_ops.layer_norm(x, w, b, EPS)
    assert out.shape == x.shape and out.dtype == dtype
    _check(out, same_dtype, ref64, "add_layer_norm" if residual else "layer_norm")


@pytest.mark.parametrize("dtype, rows, cols, approximate, with_bias, seed", quick_sample(_gelu_cases(), 10))
def test_bias_gelu(cuda_ops, dtype, rows, cols, approximate, with_bias, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = _randn((rows, cols), dtype, gen, scale=3.0)  # reaches both tails, where the forms lose accuracy
    b = _randn((cols,), dtype, gen) if with_bias else None
    ref64 = _gelu64(x, b, approximate)
    same_dtype = reference.bias_gelu(x, b, approximate)
    _poison(x.numel(), dtype, 1)
    out = cuda_ops.bias_gelu(x, b, approximate)
    assert out.shape == x.shape and out.dtype == dtype
    _check(out, same_dtype, ref64, f"bias_gelu[{approximate}]")


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_non_contiguous_inputs_match_contiguous(cuda_ops, dtype):
    gen = torch.Generator(device="cuda").manual_seed(SEED)
    rows, hidden = 37, 1024
    x = _randn((hidden, rows), dtype, gen).t()  # transposed view
    r = _randn((rows, hidden + 5), dtype, gen)[:, :hidden]  # sliced rows
    w, b = _randn((hidden,), dtype, gen), _randn((hidden,), dtype, gen)
    assert not x.is_contiguous() and not r.is_contiguous()
    assert torch.equal(cuda_ops.layer_norm(x, w, b, EPS), cuda_ops.layer_norm(x.contiguous(), w, b, EPS))
    out, s = cuda_ops.add_layer_norm(x, r, w, b, EPS)
    out_c, s_c = cuda_ops.add_layer_norm(x.contiguous(), r.contiguous(), w, b, EPS)
    assert torch.equal(out, out_c) and torch.equal(s, s_c)
    x3 = _randn((hidden, 3, 5), dtype, gen).permute(1, 2, 0)  # [3, 5, hidden], last dim strided
    for approximate in ("tanh", "none"):
        assert torch.equal(cuda_ops.bias_gelu(x3, b, approximate), cuda_ops.bias_gelu(x3.contiguous(), b, approximate))


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_misaligned_pointers_take_the_scalar_path(cuda_ops, dtype):
    """Contiguous tensors starting one element into their storage: not 16-byte aligned although hidden
    is a multiple of the vector width. The result must still be right."""
    gen = torch.Generator(device="cuda").manual_seed(SEED)
    rows, hidden = 19, 768
    x = _randn((rows * hidden + 1,), dtype, gen)[1:].view(rows, hidden)
    r = _randn((rows * hidden + 1,), dtype, gen)[1:].view(rows, hidden)
    w = _randn((hidden + 1,), dtype, gen, offset=1.0)[1:]
    b = _randn((hidden + 1,), dtype, gen)[1:]
    assert x.data_ptr() % 16 != 0 and w.data_ptr() % 16 != 0
    _check(
        cuda_ops.layer_norm(x, w, b, EPS),
        reference.layer_norm(x, w, b, EPS),
        _ln64(x, w, b),
        "layer_norm misaligned",
    )
    out, s = cuda_ops.add_layer_norm(x, r, w, b, EPS)
    _assert_within_one_ulp(s, x + r)
    _check(
        out,
        reference.add_layer_norm(x, r, w, b, EPS)[0],
        _ln64(x + r, w, b),
        "add_layer_norm misaligned",
    )
    _check(
        cuda_ops.bias_gelu(x, b, "tanh"),
        reference.bias_gelu(x, b, "tanh"),
        _gelu64(x, b, "tanh"),
        "bias_gelu misaligned",
    )


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_odd_sizes_all_finite(cuda_ops, dtype):
    gen = torch.Generator(device="cuda").manual_seed(SEED)
    for rows, hidden in ((1, 1), (7, 7), (3, 5125), (2, 40001)):
        x = _randn((rows, hidden), dtype, gen, scale=20.0)
        w, b = _randn((hidden,), dtype, gen), _randn((hidden,), dtype, gen)
        poison_next_alloc(x.numel(), dtype)
        assert torch.isfinite(cuda_ops.layer_norm(x, w, b, EPS)).all(), (rows, hidden)
        _poison(x.numel(), dtype, 2)
        out, s = cuda_ops.add_layer_norm(x, x, w, None, EPS)
        assert torch.isfinite(out).all() and torch.isfinite(s).all(), (rows, hidden)
        poison_next_alloc(x.numel(), dtype)
        assert torch.isfinite(cuda_ops.bias_gelu(x, b, "none")).all(), (rows, hidden)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_opcheck(cuda_ops, dtype):
    gen = torch.Generator(device="cuda").manual_seed(SEED)
    x, r = _randn((4, 33), dtype, gen), _randn((4, 33), dtype, gen)
    w, b = _randn((33,), dtype, gen), _randn((33,), dtype, gen)
    torch.library.opcheck(torch.ops.eet.layer_norm.default, (x, w, b, EPS))
    torch.library.opcheck(torch.ops.eet.layer_norm.default, (x, w, None, EPS))
    torch.library.opcheck(torch.ops.eet.add_layer_norm.default, (x, r, w, b, EPS))
    torch.library.opcheck(torch.ops.eet.bias_gelu.default, (x, b, "tanh"))
    torch.library.opcheck(torch.ops.eet.bias_gelu.default, (x, None, "none"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cols", [7, 768, 1000, 3200])
def test_tanh_staged_gelu_matches_hf_gelu_new_on_gpu(cuda_ops, dtype, cols):
    """The kernel's 'tanh_staged' against HF's NewGELUActivation run by torch on the same GPU tensor (what HF's
    GPT-2 / GPT-Neo MLP computes there), output poisoned first: equal except where tanhf's last bit differs."""
    from transformers.activations import NewGELUActivation

    x = (torch.randn(37, cols, device="cuda") * 4).to(dtype)
    expected = NewGELUActivation()(x)
    poison_next_alloc(x.numel(), dtype)
    out = cuda_ops.bias_gelu(x, None, "tanh_staged")
    assert torch.isfinite(out).all()
    same = (out == expected).float().mean().item()
    worst = ((out.float() - expected.float()).abs() / expected.float().abs().clamp_min(1e-3)).max().item()
    assert same >= 0.999 and worst <= {torch.float32: 2**-20, torch.float16: 2**-9, torch.bfloat16: 2**-6}[dtype], (
        same, worst)


def _ordered(t: torch.Tensor) -> torch.Tensor:
    """16-bit floats as integers in value order (-0 and +0 both 0), so adjacent values differ by 1."""
    bits = t.contiguous().view(torch.int16).long() & 0xFFFF
    return torch.where(bits >= 0x8000, -(bits - 0x8000), bits)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_exact_gelu_within_one_ulp_over_every_input(cuda_ops, dtype):
    """The 16-bit erf form (csrc/gelu_erf_fast.cuh) on every representable input in [-12, 12], poisoned output: at
    most one unit in the last place from the exact gelu rounded to the dtype, tails included. "Exact" is
    0.5 * x * erfc(-x / sqrt(2)) in float64: the textbook 1 + erf(x / sqrt(2)) cancels, to 0 from x ~ -8.3 even in
    float64 (and from x ~ -5.5 in torch's fp32, which bf16 outputs can tell). Below -12 the kernel's fp32 result
    nears the subnormal range, where its hardware exp2 flushes to zero."""
    every = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32, device="cuda").to(torch.int16).view(dtype)
    x = every[torch.isfinite(every) & (every.float().abs() <= 12.0)]
    poison_next_alloc(x.numel(), dtype)
    out = cuda_ops.bias_gelu(x, None, "none")
    x64 = x.double()
    truth = (0.5 * x64 * torch.special.erfc(-x64 / 2**0.5)).to(dtype)
    off = (_ordered(out) - _ordered(truth)).abs()
    worst = int(off.argmax())
    assert torch.isfinite(out).all() and off.max() <= 1, (
        f"gelu({x[worst].item()}) = {out[worst].item()}, exact {truth[worst].item()} ({int(off.max())} units)"
    )


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_bias_gelu_rows_past_the_grid_limit(cuda_ops, dtype, approximate):
    """More row groups than grid y holds (65535): blocks stride over the rest, and every row is written."""
    gen = torch.Generator(device="cuda").manual_seed(SEED)
    rows, cols = 65535 * 2 + 7, 24
    x = _randn((rows, cols), dtype, gen, scale=3.0)
    b = _randn((cols,), dtype, gen)
    poison_next_alloc(x.numel(), dtype)
    out = cuda_ops.bias_gelu(x, b, approximate)
    _check(out, reference.bias_gelu(x, b, approximate), _gelu64(x, b, approximate), f"bias_gelu[{approximate}] rows")
