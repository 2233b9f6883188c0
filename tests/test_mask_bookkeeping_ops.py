"""eet::padding_runs and eet::in_place_packing (the attention-mask bookkeeping of eet's mask function and the
encoder's packing) on the CPU: their reference against the per-row loops that define them, for every mask kind and
dtype; the GPU kernels are checked against the same loops in tests/gpu/test_mask_bookkeeping_cuda.py."""

from __future__ import annotations

import pytest
import torch

from eet_hf import ops
from eet_hf.bounds import from_padding_mask, inspect_padding

from .mask_cases import KINDS, in_place_by_loop, random_mask, runs_by_loop

DTYPES = [torch.int64, torch.int32, torch.uint8, torch.bool, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 7), (8, 128), (40, 33), (0, 5), (2, 0)])
def test_padding_runs_is_the_per_row_definition(kind, dtype, rows, cols):
    g = torch.Generator().manual_seed(rows * 1000 + cols)
    mask = random_mask(kind, rows, cols, g).to(dtype)
    start, end, flags = ops.padding_runs(mask)
    assert (start.dtype, end.dtype, flags.dtype) == (torch.int32,) * 3
    assert (start.tolist(), end.tolist(), flags.tolist()) == runs_by_loop(mask)


def test_padding_runs_flags_tell_the_padding_kinds_apart():
    assert ops.padding_runs(torch.tensor([[1, 1, 0], [1, 0, 0]]))[2].tolist() == [1, 0, 1]  # right
    assert ops.padding_runs(torch.tensor([[0, 1, 1], [1, 1, 1]]))[2].tolist() == [1, 0, 0]  # left
    assert ops.padding_runs(torch.tensor([[1, 1], [1, 1]]))[2].tolist() == [1, 1, 1]  # none
    assert ops.padding_runs(torch.tensor([[1, 0, 1]]))[2].tolist() == [0, 0, 0]  # a hole
    assert ops.padding_runs(torch.tensor([[0, 0], [1, 0]]))[2].tolist() == [1, 0, 1]  # an empty row counts as right


def test_padding_runs_rejects_a_mask_that_is_not_2d():
    with pytest.raises(ValueError, match="mask must be 2-D"):
        ops.padding_runs(torch.ones(2, 3, 4))


@pytest.mark.parametrize("seq_len", [1, 5, 16])
def test_in_place_packing_is_the_per_row_definition(seq_len):
    g = torch.Generator().manual_seed(seq_len)
    start = torch.randint(-3, seq_len + 4, (9,), generator=g, dtype=torch.int32)  # out-of-row bounds are clamped
    end = torch.randint(-3, seq_len + 4, (9,), generator=g, dtype=torch.int32)
    cu, real = ops.in_place_packing(start, end, seq_len)
    want_cu, want_real = in_place_by_loop(start.tolist(), end.tolist(), seq_len)
    assert cu.dtype == torch.int32 and real.dtype == torch.bool
    assert cu.tolist() == want_cu and real.tolist() == want_real


def test_in_place_packing_of_an_empty_batch():
    cu, real = ops.in_place_packing(torch.zeros(0, dtype=torch.int32), torch.zeros(0, dtype=torch.int32), 8)
    assert cu.tolist() == [0] and real.shape == (0, 8)


def test_inspect_padding_hands_its_runs_to_from_padding_mask():
    """eet's mask function reads the runs once: the bounds made from inspect_padding's runs are those
    from_padding_mask computes itself."""
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    contiguous, full, runs = inspect_padding(mask)
    assert (contiguous, full) == (True, False)
    given = from_padding_mask(mask, 3, 5, 5, 0, 0, True, torch.device("cpu"), runs=runs)
    computed = from_padding_mask(mask, 3, 5, 5, 0, 0, True, torch.device("cpu"))
    for name in ("kv_start", "kv_end", "q_offset"):
        assert torch.equal(getattr(given, name), getattr(computed, name))
    assert given.kv_start.tolist() == [2, 0, 0] and given.kv_end.tolist() == [5, 5, 0]
