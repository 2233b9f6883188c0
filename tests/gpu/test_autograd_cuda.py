"""Gradients through eet's CUDA kernels: the forward is the kernel, the backward the reference's (ops/autograd.py).
An accelerated model's gradients on the GPU equal the plain model's there; ops' gradients equal autograd through
the reference on the same inputs."""

from __future__ import annotations

import warnings

import pytest
import torch

from eet_hf.ops import reference

from ..test_autograd import FUNCTIONAL, MISSING_AUTOGRAD, MODELS, check_model_gradients
from ..test_ops import OPCHECK_INPUTS

# Attention at head_dim 64, which eet's kernels take (test_ops' head_dim 8 would run the SDPA fallback).
CUDA_INPUTS = {
    "attention": lambda: (
        torch.randn(2, 4, 3, 64), torch.randn(2, 2, 5, 64), torch.randn(2, 2, 5, 64),
        torch.tensor([0, 2], dtype=torch.int32), torch.tensor([5, 5], dtype=torch.int32),
        torch.tensor([2, 2], dtype=torch.int32), True, 0.125,
    ),
    "attention_varlen": lambda: (
        torch.randn(9, 4, 64), torch.randn(9, 2, 64), torch.randn(9, 2, 64),
        torch.tensor([0, 4, 4, 9], dtype=torch.int32), 5, False, 0.125,
    ),
}
# Tiny configs with head_dim 64 for the same reason.
HEAD_DIM_64 = {
    "gpt2": dict(n_embd=128, n_head=2),
    "bert": dict(hidden_size=128, num_attention_heads=2),
    "llama": dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=1),
}


def _cuda_args(name: str) -> list:
    return [a.cuda().requires_grad_(a.is_floating_point()) if isinstance(a, torch.Tensor) else a
            for a in CUDA_INPUTS.get(name, OPCHECK_INPUTS[name])()]


@pytest.mark.parametrize("name", FUNCTIONAL)
def test_opcheck_with_grad_on_cuda(cuda_ops, name):
    torch.library.opcheck(getattr(torch.ops.eet, name).default, _cuda_args(name))


@pytest.mark.parametrize("name", FUNCTIONAL)
def test_op_gradient_on_cuda_is_the_reference_gradient(cuda_ops, name):
    args = _cuda_args(name)
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = getattr(torch.ops.eet, name)(*args)
        outs = out if isinstance(out, tuple) else (out,)
        weights = [torch.randn_like(o) for o in outs]
        got = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, weights)), leaves)
    assert not [w for w in caught if MISSING_AUTOGRAD in str(w.message)]
    ref_args = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.requires_grad else a for a in args]
    ref_outs = getattr(reference, name)(*ref_args)
    ref_outs = ref_outs if isinstance(ref_outs, tuple) else (ref_outs,)
    expected = torch.autograd.grad(sum((o * w).sum() for o, w in zip(ref_outs, weights)),
                                   [a for a in ref_args if isinstance(a, torch.Tensor) and a.requires_grad])
    for g, e in zip(got, expected):
        # The same fp32 backward on the same inputs (the kernel's forward output is not used by it): fp32 rounding.
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5 * e.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_linear_gelu_tanh_with_grad_avoids_the_underivable_epilogue(cuda_ops, dtype):
    """fp16/bf16 'tanh' linear_gelu uses cuBLASLt's GELU epilogue (torch._addmm_activation, no derivative) only
    without grad; with grad it must take a differentiable path whose gradients match fp32 autograd."""
    x = torch.randn(5, 32, device="cuda").to(dtype).requires_grad_()
    w = torch.randn(32, 48, device="cuda").to(dtype).requires_grad_()
    b = torch.randn(48, device="cuda").to(dtype).requires_grad_()
    cuda_ops.linear_gelu(x, w, b, "tanh").float().sum().backward()
    xf, wf, bf = (t.detach().float().requires_grad_() for t in (x, w, b))
    torch.nn.functional.gelu(xf @ wf + bf, approximate="tanh").sum().backward()
    tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]  # one rounding of the GEMM output in half precision
    for got, ref in ((x.grad, xf.grad), (w.grad, wf.grad), (b.grad, bf.grad)):
        torch.testing.assert_close(got.float(), ref, rtol=tol, atol=tol * ref.abs().max().item())


@pytest.mark.parametrize("mode", ["eval_enable_grad", "train_dropout0"])
@pytest.mark.parametrize("family", sorted(MODELS))
def test_model_gradients_on_cuda_equal_hf(cuda_ops, family, mode):
    check_model_gradients(family, mode, torch.float32, "cuda", **HEAD_DIM_64[family])
