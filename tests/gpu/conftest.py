"""GPU-only tests: skipped without CUDA. Run them with tests/gpu/run.sh on a CUDA machine."""

from __future__ import annotations

import os
import random

import pytest
import torch

import eet_hf.ops as ops


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (tests/gpu/run.sh runs these on one)")
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)


# EET_GPU_TEST_QUICK=1 (tests/gpu/sanitize.sh): each kernel test file runs a small sample of its random cases
# with smaller shapes, so compute-sanitizer, which slows every kernel 10-100x, finishes in about a minute.
QUICK = os.environ.get("EET_GPU_TEST_QUICK", "") not in ("", "0")


def quick_sample(cases: list, count: int) -> list:
    """All cases normally; under EET_GPU_TEST_QUICK a fixed-seed sample of `count` of them, in their order."""
    if not QUICK or len(cases) <= count:
        return cases
    keep = sorted(random.Random(len(cases)).sample(range(len(cases)), count))
    return [cases[i] for i in keep]


@pytest.fixture(scope="session")
def cuda_ops():
    """The built extension; fails (not skips) when the build failed, since then nothing is tested."""
    assert ops.ensure_loaded(), f"CUDA extension did not build: {ops.build_info()}"
    return ops


def poison_next_alloc(numel: int, dtype: torch.dtype, device: str = "cuda") -> None:
    """Fill a block of exactly this size with NaN bytes and free it, so the caching allocator hands the same
    block to the op's next output allocation of this size: an element the kernel forgets to write stays NaN."""
    block = torch.empty(numel, dtype=dtype, device=device)
    block.view(torch.uint8).fill_(0xFF)  # 0xFF.. is NaN in fp32, fp16 and bf16
    del block


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere gives inf so it never passes."""
    if not torch.isfinite(out).all():
        return float("inf")
    o, r = out.double(), ref.double()
    return float((o - r).norm() / r.norm().clamp_min(1e-30))


def max_err(a: torch.Tensor, b: torch.Tensor, real: torch.Tensor | None) -> float:
    """max |a - b| in float64, over the positions `real` is True at (all when None)."""
    diff = (a.double() - b.double()).abs()
    return (diff[real] if real is not None else diff).max().item()


def check_outputs(got, base, truth, mask: torch.Tensor, dtype: torch.dtype, where: str, seed: int) -> None:
    """An encoder's HF output class from eet (got) against HF in the same dtype (base) and HF in fp32 (truth): every
    tensor field finite, padding rows included; fp32 within 1e-4 of HF; fp16 / bf16 error against fp32 at most twice
    HF's own plus 1e-3 (flash-attention's rule). [batch, seq, ...] fields are compared on real tokens (eet's padding
    positions are zeros, README). mask: [..., seq]; seed: the test's seed, for the message."""
    assert type(got) is type(base), (type(got), type(base), where)
    assert set(got.keys()) == set(base.keys()), (sorted(got.keys()), sorted(base.keys()), where)
    flat = mask.reshape(-1, mask.shape[-1]).bool()
    for key, value in got.items():
        assert torch.isfinite(value).all(), f"{key}: NaN/Inf ({where}, seed {seed})"
        real = flat if value.dim() >= 2 and value.shape[:2] == flat.shape else None
        if dtype == torch.float32:
            err = max_err(value, base[key], real)
            assert err <= 1e-4, f"{key}: max |eet - HF| {err:.3g} > 1e-4 ({where}, seed {seed})"
        else:
            err, hf_err = max_err(value, truth[key], real), max_err(base[key], truth[key], real)
            assert err <= 2 * hf_err + 1e-3, f"{key}: {err=:.3g} vs HF {dtype} {hf_err:.3g} ({where}, seed {seed})"


def record_decode_kernel_calls(monkeypatch) -> set[tuple]:
    """The (op, norm kind, epilogue) of every decode_linear / decode_qkv_rope CUDA call from now on (decode_qkv_rope's
    epilogue: 'rotary', or the q scale it applies), recorded by wrappers around the torch ops."""
    calls: set[tuple] = set()
    real = {name: getattr(torch.ops.eet, name) for name in ("decode_linear", "decode_qkv_rope")}

    def decode_linear(*args):  # (x, weight, bias, norm_weight, eps, residual, epilogue, norm_bias, norm)
        calls.add(("decode_linear", "none" if args[3] is None else args[8], args[6]))
        return real["decode_linear"](*args)

    def decode_qkv_rope(*args):  # (x, weight, bias, norm_weight, eps, cos, sin, ..., norm_bias, norm, q_scale)
        calls.add(("decode_qkv_rope", args[13], "rotary" if args[5] is not None else f"q_scale {args[14]:.6g}"))
        return real["decode_qkv_rope"](*args)

    monkeypatch.setattr(torch.ops.eet, "decode_linear", decode_linear)
    monkeypatch.setattr(torch.ops.eet, "decode_qkv_rope", decode_qkv_rope)
    return calls
