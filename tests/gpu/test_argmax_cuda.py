"""eet::argmax_rows on the GPU (csrc/argmax.cu) against torch.argmax on fresh random inputs, outputs poisoned first:
vocabulary-sized rows (GPT-2's 50257, Llama 3's 128256), odd widths (the scalar path), ties (the first index wins),
NaN (the first NaN wins) and all -inf rows, row strides wider than the row (a slice of a wider buffer)."""

from __future__ import annotations

import pytest
import torch

from eet_hf import ops

from .conftest import poison_next_alloc

DTYPES = [torch.float16, torch.bfloat16, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols", [(1, 128256), (8, 50257), (16, 1000), (3, 7), (5, 8200), (1, 1)])
def test_argmax_rows_is_torch_argmax(cuda_ops, dtype, rows, cols):
    x = (torch.randn(rows, cols, device="cuda") * 4).to(dtype)
    # Ties: a copy of each row's maximum placed before and after it, so only "the first index" decides.
    peak = x.max(-1).values
    where = torch.randint(0, cols, (rows, 2), device="cuda")
    x.scatter_(1, where, peak.view(-1, 1).expand(rows, 2))
    poison_next_alloc(rows, torch.int64)
    got = ops.argmax_rows(x)
    torch.cuda.synchronize()
    assert got.dtype == torch.int64 and torch.equal(got, torch.argmax(x, -1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_minus_inf_rows(cuda_ops, dtype):
    x = torch.randn(4, 5000, device="cuda").to(dtype)
    x[0, 4321] = float("nan")
    x[0, 4000] = float("nan")  # the first NaN wins
    x[1] = float("-inf")  # all -inf: index 0
    x[2, 17] = float("inf")
    x[2, 4999] = float("inf")
    got = ops.argmax_rows(x)
    assert got.tolist() == torch.argmax(x, -1).tolist() == [4000, 0, 17, got[3].item()]


def test_rows_of_a_wider_buffer(cuda_ops):
    wide = torch.randn(6, 40000, device="cuda", dtype=torch.float16)
    x = wide[:, :32000]  # row stride 40000
    assert torch.equal(ops.argmax_rows(x), torch.argmax(x, -1))
    odd = wide[:, 3:32003]  # misaligned start: the scalar path
    assert torch.equal(ops.argmax_rows(odd), torch.argmax(odd, -1))


def test_rejects_what_it_cannot_take(cuda_ops):
    with pytest.raises(RuntimeError, match="2-D"):
        torch.ops.eet.argmax_rows(torch.randn(3, device="cuda"))
    with pytest.raises(RuntimeError, match="2-D"):
        torch.ops.eet.argmax_rows(torch.randn(3, 0, device="cuda"))


def test_the_engine_takes_the_kernel_once_it_agreed(cuda_ops):
    from eet_hf.engine import token_argmax

    assert token_argmax.probe_refusal(torch.device("cuda", torch.cuda.current_device())) is None
    assert token_argmax.for_device(torch.device("cuda", torch.cuda.current_device())) is token_argmax._eet_argmax
