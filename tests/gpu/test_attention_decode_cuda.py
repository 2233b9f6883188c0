"""Decode attention as one kernel (csrc/attention_decode*.cu): cluster split-K merge, its split rule, the combine
fallback for long contexts, and programmatic dependent launch.

`decode_plan` below mirrors decode_plan in csrc/attention_decode.cu (constants from attention_decode.cuh): keep the
two in step. The cases are built so that the mirror lands on every cluster size 1..8 and 16 and on the combine path
(asserted per case), and test_attention_decode_launch_cuda checks the mirror against what really launched (grid y =
splits, a combine kernel or none, which of the two decode kernels) from profiler traces. Every case goes through
test_attention_cuda's _check: outputs allocated over NaN-poisoned memory, compared with a float64 reference at
flash-attention's tolerance, rows that see no key exactly zero, two runs bit-identical.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from .conftest import QUICK, poison_next_alloc, quick_sample, rel_err
from .test_attention_cuda import DTYPES, SEED, _check, _ref64, _torch_baseline

# ------------------------------------------------------------------------------------------------
# Mirror of decode_plan (csrc/attention_decode.cu).

Q_PER_BLOCK = 4  # kQPerBlock
BLOCKS_PER_SM = 2  # kBlocksPerSm
MIN_CHUNK = 64  # kMinChunk
MAX_CLUSTER_SPLITS = 16  # kMaxClusterSplits
MAX_SPLITS = 128  # kMaxSplits
COMBINE_MIN_SPLIT_ELEMS = 65536  # kCombineMinSplitElems


def _keys_per_round(head_dim: int, elem_bytes: int = 2) -> int:
    """decode_keys_per_round: 4 warps x (32 / lanes per row) rows x 4 unrolled rows."""
    vectors = head_dim * elem_bytes // 16
    lanes = min(1 << (vectors - 1).bit_length(), 32)
    return 4 * (32 // lanes) * 4


def _min_chunk(head_dim: int) -> int:
    return max(MIN_CHUNK, _keys_per_round(head_dim))


def _num_sms() -> int:
    return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count


def decode_plan(batch: int, heads_q: int, heads_kv: int, q_len: int, kv_len: int, head_dim: int) -> tuple[int, bool]:
    """(splits, combine) as decode_plan computes them on this GPU, before the launcher's cluster-fit trim."""
    q_chunks = -(-(heads_q // heads_kv) * q_len // Q_PER_BLOCK)
    base = q_chunks * heads_kv * batch
    want = BLOCKS_PER_SM * _num_sms() // base
    want = max(1, min(want, -(-kv_len // _min_chunk(head_dim)), MAX_SPLITS))
    if want <= MAX_CLUSTER_SPLITS:
        return want, False
    if want < 2 * MAX_CLUSTER_SPLITS or -(-kv_len // MAX_CLUSTER_SPLITS) * head_dim < COMBINE_MIN_SPLIT_ELEMS:
        return MAX_CLUSTER_SPLITS, False
    return want, True


# ------------------------------------------------------------------------------------------------
# Cases


SHAPE_KEYS = ("batch", "heads_q", "heads_kv", "q_len", "kv_len", "head_dim")


def _case(dtype: str, shape: tuple, *, rng, left_pad=0, dead_row=None, tag="", **extra) -> dict:
    """A case dict for test_attention_cuda._check. shape: (batch, heads_q, heads_kv, q_len, kv_len, head_dim).
    Decode rows at the end of the cache (q_offset = kv_len - q_len), row 0 left-padded by `left_pad` keys, row
    `dead_row` (if any) fully padded; extra overrides causal / layout_q / layout_kv."""
    c = dict(zip(SHAPE_KEYS, shape), dtype=dtype, padding=tag, seed=rng.randrange(1 << 31))
    batch, kv_len, q_len = c["batch"], c["kv_len"], c["q_len"]
    ks, ke, qo = [0] * batch, [kv_len] * batch, [kv_len - q_len] * batch
    ks[0] = min(left_pad, kv_len)
    if dead_row is not None:
        ks[dead_row] = ke[dead_row] = kv_len // 2
    c.update(causal=True, layout_q="hf", layout_kv="contig", scale=1 / math.sqrt(c["head_dim"]))
    c.update(kv_start=ks, kv_end=ke, q_offset=qo, **extra)
    return c


def _plan_of(c: dict) -> tuple[int, bool]:
    return decode_plan(*(c[k] for k in SHAPE_KEYS))


def _case_id(c: dict) -> str:
    return (
        f"{c['dtype']}-b{c['batch']}-h{c['heads_q']}x{c['heads_kv']}-q{c['q_len']}-kv{c['kv_len']}-d{c['head_dim']}"
        f"-{'causal' if c['causal'] else 'full'}-{c['padding']}-{c['layout_q']}/{c['layout_kv']}"
    )


HEAD_DIMS = [32, 64, 80, 96, 128, 256]
CLUSTER_SIZES = [1, 2, 3, 4, 5, 6, 7, 8, 16]


def _cluster_size_cases() -> list[tuple[int, dict]]:
    """Per cluster size s: the plan's s splits from the key count (one kv head, <= 2 sequences: the wave allows
    far more); a full last chunk and a last chunk of one key; GQA, q_len 2..8, left padding, a fully padded row,
    every head dim and dtype, the scalar load path now and then."""
    rng = random.Random(1)
    dtypes = list(DTYPES)
    out = []
    for i, s in enumerate(CLUSTER_SIZES):
        head_dim = HEAD_DIMS[i % len(HEAD_DIMS)]
        chunk = _min_chunk(head_dim)
        # Query vectors per (batch, kv head) <= 4: one query chunk.
        heads_q, q_len = [(1, 1), (4, 1), (2, 2), (1, 3), (1, 4)][i % 5]
        full = _case(dtypes[i % 3], (1, heads_q, 1, q_len, chunk * s, head_dim), rng=rng, tag="full")
        padded = _case(
            dtypes[(i + 1) % 3],
            (2, 2 * heads_q, 2, q_len, chunk * (s - 1) + 1, head_dim),
            rng=rng,
            left_pad=rng.randrange(chunk),
            dead_row=1,
            tag="leftpad-dead",
            causal=i % 2 == 0,
            layout_q="misaligned" if i % 4 == 3 else "hf",
        )
        # q_len 2..8 with GQA 2: up to 4 query chunks, so as many clusters per kv head.
        long_q = _case(
            dtypes[(i + 2) % 3],
            (1, 2, 1, 2 + i % 7, chunk * s - 1, head_dim),
            rng=rng,
            left_pad=1,
            tag="leftpad1",
            layout_kv="hf",
        )
        out += [(s, full), (s, padded), (s, long_q)]
    return out


def _context_cases() -> list[dict]:
    """Short to long contexts on the shapes that matter (GPT-2 h12 d64, h25 d64, h32 d128, GQA 8x2 d128 with
    q_len 3), with left padding and a fully padded row in the batched ones. Quick mode (the sanitizer) keeps the
    smaller ones (at most 2^18 query-key pairs; 2^22 otherwise): under racecheck one pass of 32 fp32 heads over 16K
    keys outlasted the tool's 45 s limit per file (sanitizer-h200.md, 2026-12-02)."""
    rng = random.Random(2)
    limit = 1 << (18 if QUICK else 22)
    shapes = [  # batch, heads_q, heads_kv, q_len, head_dim
        (1, 12, 12, 1, 64),
        (1, 25, 25, 1, 64),
        (1, 32, 32, 1, 128),
        (2, 8, 2, 3, 128),
        (1, 8, 1, 2, 128),  # one kv head: the combine path from 8K keys
        (3, 12, 12, 1, 64),
    ]
    out = []
    for ctx in (1, 63, 64, 65, 127, 200, 2047, 4096, 16384, 16385, 32768):
        for j, (batch, hq, hkv, q_len, d) in enumerate(shapes):
            if batch * hq * q_len * ctx > limit:  # keep the float64 reference (and the sanitizer's run) small
                continue
            dead = batch - 1 if batch > 1 and j % 2 else None
            pad = rng.randrange(ctx) if batch > 1 else 0
            shape = (batch, hq, hkv, min(q_len, ctx), ctx, d)
            out.append(_case(list(DTYPES)[(j + ctx) % 3], shape, rng=rng, left_pad=pad, dead_row=dead, tag=f"ctx{ctx}"))
    return out


def _combine_cases() -> list[tuple[bool, dict]]:
    """Around the combine threshold: one kv head (so the wave wants every split), key elements per capped split
    just under and at kCombineMinSplitElems."""
    rng = random.Random(3)
    out = []
    for dtype, d, kv_len, want_combine in (
        ("fp16", 64, 16368, False),  # ceil(16368 / 16) * 64 = 65472
        ("bf16", 64, 16384, True),  # 1024 * 64 = 65536
        ("fp32", 128, 8176, False),
        ("fp16", 128, 8192, True),
        ("bf16", 256, 65536, True),  # the kMaxSplits cap
    ):
        out.append((want_combine, _case(dtype, (1, 4, 1, 1, kv_len, d), rng=rng, tag="combine-edge")))
        pad = rng.randrange(kv_len)
        padded = _case(dtype, (2, 2, 1, 2, kv_len, d), rng=rng, left_pad=pad, dead_row=1, tag="combine-pad")
        out.append((want_combine, padded))
    return out


# ------------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize(
    "size,case", [pytest.param(s, c, id=f"s{s}-{_case_id(c)}") for s, c in quick_sample(_cluster_size_cases(), 6)]
)
def test_every_cluster_size(cuda_ops, size, case):
    plan = _plan_of(case)
    assert plan == (size, False), f"the case meant for cluster size {size} plans {plan}: fix the case table"
    _check(cuda_ops, case)


@pytest.mark.parametrize("case", [pytest.param(c, id=_case_id(c)) for c in quick_sample(_context_cases(), 6)])
def test_context_lengths(cuda_ops, case):
    _check(cuda_ops, case)


@pytest.mark.parametrize(
    "want_combine,case", [pytest.param(w, c, id=_case_id(c)) for w, c in quick_sample(_combine_cases(), 2)]
)
def test_combine_threshold(cuda_ops, want_combine, case):
    plan = _plan_of(case)
    assert plan[1] == want_combine, f"plan {plan}: the case is on the wrong side of the combine threshold"
    _check(cuda_ops, case)


def _inputs(batch, heads_q, heads_kv, q_len, kv_len, head_dim, dtype=torch.float16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(batch, q_len, heads_q, head_dim, generator=g, device="cuda").to(dtype).transpose(1, 2)
    k = torch.randn(batch, heads_kv, kv_len, head_dim, generator=g, device="cuda").to(dtype)
    v = torch.randn(batch, heads_kv, kv_len, head_dim, generator=g, device="cuda").to(dtype)
    i32 = dict(dtype=torch.int32, device="cuda")
    bounds = (
        torch.zeros(batch, **i32),
        torch.full((batch,), kv_len, **i32),
        torch.full((batch,), kv_len - q_len, **i32),
    )
    return q, k, v, bounds


@pytest.mark.parametrize(
    "shape",
    [(1, 4, 1, 1, 1024, 256), (1, 8, 1, 8, 64 * 3, 128), (2, 16, 2, 2, 64 * 8 - 5, 64), (1, 4, 1, 1, 16384, 64)],
    ids=["cluster16-d256", "cluster3-q8-gqa8", "cluster8-b2", "combine"],
)
def test_bit_identical_over_runs(cuda_ops, shape):
    """The splits merge in a fixed order whatever order the blocks finish in: every run gives the same bits.
    d256 with 4 query vectors spreads the merge over several ranks of the cluster."""
    q, k, v, (ks, ke, qo) = _inputs(*shape, seed=SEED)
    ks[0] = 7  # a left-padded row
    outs = []
    for _ in range(4):
        poison_next_alloc(q.numel(), q.dtype)
        outs.append(cuda_ops.attention(q, k, v, ks, ke, qo, True, 0.125))
    torch.cuda.synchronize()
    assert torch.isfinite(outs[0]).all()
    for i, o in enumerate(outs[1:], 1):
        assert torch.equal(o, outs[0]), f"run {i} differs from run 0"


# (heads_q, heads_kv, kv_len, head_dim): a cluster of 4 (GPT-2 step), a cluster of 16, the combine path.
GRAPH_SHAPES = [(12, 12, 256, 64), (4, 1, 1000, 128), (4, 1, 16384, 64)]


@pytest.mark.parametrize("heads_q,heads_kv,kv_len,head_dim", GRAPH_SHAPES)
def test_graph_replay_with_new_bounds(cuda_ops, heads_q, heads_kv, kv_len, head_dim):
    """Captured once with k, v and q written by kernels inside the graph (the decode kernel reads them after its
    PDL wait); replayed with new bounds and new keys: each replay equals an eager call on the same inputs, and
    matches the float64 reference."""
    g = torch.Generator(device="cuda").manual_seed(SEED)
    batch, q_len, scale = 2, 1, 1 / math.sqrt(head_dim)
    q_src, k_src, v_src, (ks, ke, qo) = _inputs(batch, heads_q, heads_kv, q_len, kv_len, head_dim, seed=SEED)
    k, v = torch.empty_like(k_src), torch.empty_like(v_src)

    def step():
        k.copy_(k_src), v.copy_(v_src)
        return cuda_ops.attention(q_src * 1, k, v, ks, ke, qo, True, scale)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()
    n = kv_len
    for starts, ends in (([0, 0], [n, n]), ([n // 3, n - 1], [n, n]), ([5, n // 2], [n // 2 + 7, n // 2])):
        ks.copy_(torch.tensor(starts, dtype=torch.int32)), ke.copy_(torch.tensor(ends, dtype=torch.int32))
        k_src.normal_(generator=g)
        graph.replay()
        torch.cuda.synchronize()
        got = static_out.clone()
        want = step()
        torch.cuda.synchronize()
        assert torch.isfinite(got).all(), (starts, ends)
        assert torch.equal(got, want), f"replay differs from eager with bounds {starts, ends}"
        if starts[1] == ends[1]:
            assert (got[1] == 0).all(), "a fully padded row must be zero"
        ref = _ref64(q_src, k, v, ks, ke, qo, True, scale)
        base = _torch_baseline(q_src, k, v, ks, ke, qo, True, scale)
        assert rel_err(got, ref) <= 2 * rel_err(base, ref) + 1e-4, (starts, ends)


@pytest.mark.parametrize("heads_q,heads_kv,cache_len", [(12, 12, 1024), (4, 1, 16384)], ids=["cluster", "combine"])
def test_pdl_chain_in_graph_equals_synchronized_chain(cuda_ops, heads_q, heads_kv, cache_len):
    """kv_append writes this step's key into the cache, attention reads it at once (PDL-launched: it may start
    before kv_append ends and must wait for it), an elementwise kernel consumes the output: the graph's replays
    give the bits of the same chain run with a device synchronization after every kernel."""
    head_dim = 64
    g = torch.Generator(device="cuda").manual_seed(SEED)
    f16 = dict(device="cuda", dtype=torch.float16)
    i32 = dict(device="cuda", dtype=torch.int32)
    k0 = torch.randn(1, heads_kv, cache_len, head_dim, generator=g, device="cuda").half()
    v0 = torch.randn(1, heads_kv, cache_len, head_dim, generator=g, device="cuda").half()
    k_cache, v_cache = k0.clone(), v0.clone()
    qkv = torch.zeros(1, 1, (heads_q + 2 * heads_kv) * head_dim, **f16)
    write_pos, ks, ke, qo = (torch.zeros(1, **i32) for _ in range(4))

    def chain(sync):
        def step(value):
            if sync:
                torch.cuda.synchronize()
            return value

        q = step(cuda_ops.kv_append(qkv, None, k_cache, v_cache, write_pos, heads_q, heads_kv))
        out = step(cuda_ops.attention(q, k_cache, v_cache, ks, ke, qo, True, 0.125))
        return out * 2

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        chain(sync=False)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = chain(sync=False)
    for pos, start in ((5, 0), (cache_len // 2, 3), (cache_len - 1, cache_len - 1)):
        qkv.normal_(generator=g)
        write_pos.fill_(pos), ks.fill_(start), ke.fill_(pos + 1), qo.fill_(pos)
        k_cache.copy_(k0), v_cache.copy_(v0)
        graph.replay()
        got = static_out.clone()
        k_cache.copy_(k0), v_cache.copy_(v0)
        want = chain(sync=True)
        torch.cuda.synchronize()
        assert torch.isfinite(got).all(), pos
        assert torch.equal(got, want), f"write position {pos}: the graph's PDL chain differs from the synchronized one"
