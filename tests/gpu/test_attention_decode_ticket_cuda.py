"""Decode attention with the ticket merge (csrc/attention_decode_ticket.cuh): the splits of a group are plain blocks
that write partials to the workspace, and the block that takes the group's last ticket merges them.

The path is forced with EET_HF_DECODE_SPLITS=t<s> (read per call). Every case goes through test_attention_cuda's
_check (NaN-poisoned outputs, float64 reference at flash-attention's tolerance, rows that see no key exactly zero,
two runs bit-identical). The counters must be back at zero after every launch: the mixed-split sequence and the
graph replays below would merge too early (a wrong output) or never (a poisoned one) otherwise.
"""

from __future__ import annotations

import random

import pytest
import torch

from .conftest import poison_next_alloc, quick_sample
from .test_attention_cuda import DTYPES, SEED, _check
from .test_attention_decode_cuda import HEAD_DIMS, _case, _case_id, _inputs

SPLITS = [2, 3, 5, 8, 10, 16, 25, 32]


def _ticket_cases() -> list[tuple[int, dict]]:
    """Per split count: every head dim and dtype in turn (the tensor-core and the CUDA-core kernel), GQA, q_len up to
    8 (several query chunks, so several groups per kv head), left padding, a fully padded row, a key count that
    leaves the last splits empty, the scalar load path now and then."""
    rng = random.Random(11)
    dtypes = list(DTYPES)
    out = []
    for i, s in enumerate(SPLITS):
        d = HEAD_DIMS[i % len(HEAD_DIMS)]
        out.append((s, _case(dtypes[i % 3], (1, 25, 25, 1, 64 * s + 3, d), rng=rng, tag="full")))
        out.append((s, _case(dtypes[(i + 1) % 3], (3, 8, 2, 1 + i % 8, rng.randrange(8, 4096), d), rng=rng,
                             left_pad=rng.randrange(500), dead_row=2, tag="gqa-leftpad-dead",
                             layout_q="misaligned" if i % 4 == 3 else "hf")))
        out.append((s, _case(dtypes[(i + 2) % 3], (2, 4, 4, 1, s - 1 if s > 1 else 1, d), rng=rng,
                             tag="fewer-keys-than-splits")))
    return out


@pytest.mark.parametrize("splits,case", [pytest.param(s, c, id=f"t{s}-{_case_id(c)}")
                                         for s, c in quick_sample(_ticket_cases(), 6)])
def test_ticket_merge_matches_reference(cuda_ops, monkeypatch, splits, case):
    monkeypatch.setenv("EET_HF_DECODE_SPLITS", f"t{splits}")
    _check(cuda_ops, case)


def test_counters_reset_across_mixed_split_counts(cuda_ops, monkeypatch):
    """Shapes with different group counts and split counts in turn, each compared with the cluster path's output:
    a counter left non-zero by one launch would make a later launch of another split count merge early."""
    shapes = [(1, 25, 25, 1, 2048, 64), (2, 32, 8, 1, 1000, 128), (1, 12, 12, 1, 300, 64), (4, 8, 8, 2, 777, 64)]
    inputs = [_inputs(*s, seed=SEED + i) for i, s in enumerate(shapes)]
    want = [cuda_ops.attention(q, k, v, *b, True, 0.125) for q, k, v, b in inputs]
    for rnd in range(3):
        for i, (q, k, v, b) in enumerate(inputs):
            monkeypatch.setenv("EET_HF_DECODE_SPLITS", f"t{SPLITS[(i + rnd) % len(SPLITS)]}")
            poison_next_alloc(q.numel(), q.dtype)
            got = cuda_ops.attention(q, k, v, *b, True, 0.125)
            torch.cuda.synchronize()
            assert torch.isfinite(got).all(), f"round {rnd} shape {shapes[i]}: unwritten output"
            torch.testing.assert_close(got, want[i], atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_graph_replays_reset_their_counters(cuda_ops, monkeypatch, dtype):
    """Ten replays of one captured step, the bounds changed between them: each replay is right, so each leaves its
    counters at zero for the next."""
    monkeypatch.setenv("EET_HF_DECODE_SPLITS", "t10")
    q, k, v, (ks, ke, qo) = _inputs(1, 25, 25, 1, 2048, 64, dtype=dtype, seed=SEED)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        cuda_ops.attention(q, k, v, ks, ke, qo, True, 0.125)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = cuda_ops.attention(q, k, v, ks, ke, qo, True, 0.125)
    for r in range(10):
        ke.fill_(2048 - 97 * r)
        qo.fill_(2048 - 97 * r - 1)
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        monkeypatch.setenv("EET_HF_DECODE_SPLITS", "1")
        want = cuda_ops.attention(q, k, v, ks, ke, qo, True, 0.125)
        monkeypatch.setenv("EET_HF_DECODE_SPLITS", "t10")
        assert torch.isfinite(out).all(), f"replay {r}: unwritten output"
        torch.testing.assert_close(out, want, atol=2e-3, rtol=2e-3)


def test_bit_identical_whichever_block_merges(cuda_ops, monkeypatch):
    monkeypatch.setenv("EET_HF_DECODE_SPLITS", "t16")
    q, k, v, (ks, ke, qo) = _inputs(1, 8, 2, 4, 4000, 128, seed=SEED)
    outs = []
    for _ in range(6):
        poison_next_alloc(q.numel(), q.dtype)
        outs.append(cuda_ops.attention(q, k, v, ks, ke, qo, True, 0.1))
    torch.cuda.synchronize()
    for i, o in enumerate(outs[1:], 1):
        assert torch.equal(o, outs[0]), f"run {i} differs from run 0"
