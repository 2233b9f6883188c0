"""eet::padding_runs and eet::in_place_packing on the GPU (csrc/padding_runs.cu) against the per-row loops that
define them (tests/mask_cases.py), on fresh random masks, outputs poisoned first: every mask kind and dtype, more
rows than the block has warps, rows wider than a warp's unrolled sweep, masks that are column slices or expands of
another tensor, and replays of a CUDA graph with new mask contents."""

from __future__ import annotations

import pytest
import torch

from eet_hf import ops

from ..mask_cases import KINDS, in_place_by_loop, random_mask, runs_by_loop
from .conftest import poison_next_alloc, quick_sample

DTYPES = [torch.int64, torch.int32, torch.uint8, torch.bool, torch.float16]
SHAPES = [(1, 128), (3, 7), (64, 512), (70, 300), (1, 4099), (0, 9), (5, 0)]
CASES = quick_sample([(kind, dtype, rows, cols) for kind in KINDS for dtype in DTYPES for rows, cols in SHAPES], 40)


@pytest.mark.parametrize("kind,dtype,rows,cols", CASES)
def test_padding_runs_is_the_per_row_definition(cuda_ops, kind, dtype, rows, cols):
    g = torch.Generator().manual_seed(rows * 7919 + cols)
    mask = random_mask(kind, rows, cols, g).to(dtype).cuda()
    poison_next_alloc(2 * rows + 3, torch.int32)
    start, end, flags = ops.padding_runs(mask)
    torch.cuda.synchronize()
    assert (start.tolist(), end.tolist(), flags.tolist()) == runs_by_loop(mask.cpu())


@pytest.mark.parametrize("view", ["column_slice", "expand", "transposed"])
def test_padding_runs_of_views(cuda_ops, view):
    g = torch.Generator().manual_seed(3)
    base = random_mask("mixed", 12, 40, g).cuda()
    mask = {"column_slice": base[:, 5:33], "expand": base[3:4].expand(6, -1), "transposed": base[:, :12].t()}[view]
    start, end, flags = ops.padding_runs(mask)
    assert (start.tolist(), end.tolist(), flags.tolist()) == runs_by_loop(mask.cpu())


@pytest.mark.parametrize("batch,seq_len", [(1, 128), (32, 512), (3, 1), (300, 17), (0, 4)])
def test_in_place_packing_is_the_per_row_definition(cuda_ops, batch, seq_len):
    g = torch.Generator().manual_seed(batch + seq_len)
    start = torch.randint(-2, seq_len + 3, (batch,), generator=g, dtype=torch.int32)
    end = torch.randint(-2, seq_len + 3, (batch,), generator=g, dtype=torch.int32)
    poison_next_alloc(3 * batch + 1, torch.int32)
    cu, real = ops.in_place_packing(start.cuda(), end.cuda(), seq_len)
    torch.cuda.synchronize()
    want_cu, want_real = in_place_by_loop(start.tolist(), end.tolist(), seq_len)
    assert cu.tolist() == want_cu and real.tolist() == want_real


def test_both_ops_replay_in_a_cuda_graph_with_new_masks(cuda_ops):
    g = torch.Generator().manual_seed(11)
    static = random_mask("right", 8, 96, g).cuda()
    ops.padding_runs(static)  # warm-up outside the capture
    stream = torch.cuda.Stream()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        start, end, flags = ops.padding_runs(static)
        cu, real = ops.in_place_packing(start, end, 96)
    for kind in ("left", "holes", "right", "empty"):
        static.copy_(random_mask(kind, 8, 96, g))
        graph.replay()
        torch.cuda.synchronize()
        want = runs_by_loop(static.cpu())
        assert (start.tolist(), end.tolist(), flags.tolist()) == want
        assert (cu.tolist(), real.tolist()) == in_place_by_loop(want[0], want[1], 96)
