"""Which decode kernel runs (csrc/attention_decode_split.cu's choice between the CUDA-core kernel and the two
tensor-core ones, csrc/attention_decode_mma.cu and csrc/attention_decode_mma_regs.cu) and with what grid, read from
profiler traces, and every kernel on the cases that reach it: the CUDA-core kernel at the tensor-core head dims (one
split with one query vector per block, or a misaligned tensor), the register-load tensor-core kernel (head_dim 128,
splits of <= 512 keys) and the shared-memory one (head_dim 64, longer splits at 128). The split-rule mirror and the case
builders are test_attention_decode_cuda's; correctness checks are test_attention_cuda's _check (poisoned outputs,
float64 reference). Tests reading the profiler have "launched" in their names: tests/gpu/sanitize.sh leaves them out.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from .conftest import quick_sample, rel_err
from .test_attention_cuda import SEED, SLACK, _check, _ref64, _torch_baseline
from .test_attention_decode_cuda import CLUSTER_SIZES, SHAPE_KEYS, _case, _case_id, _inputs, decode_plan

MMA_HEAD_DIMS = (64, 128)  # decode_mma_kernel_for (csrc/attention_decode_mma.cu); decode_mma_regs_kernel_for: 128
REGS_MAX_CHUNK = 512  # kRegsMaxChunk (csrc/attention_decode.cuh)


def _decode_kernel_kind(name: str) -> str | None:
    """Which decode kernel a profiler event names: "mma" (tensor cores, shared-memory pipeline), "mma-regs" (tensor
    cores, register loads), "cuda-core", or None (another kernel)."""
    if "decode_mma_regs_kernel" in name:
        return "mma-regs"
    if "decode_mma_kernel" in name:
        return "mma"
    return "cuda-core" if "decode_kernel" in name else None


def _mma_kind(head_dim: int, kv_len: int, splits: int) -> str:
    """Mirror of decode_mma_regs_pays (csrc/attention_decode.cuh): which tensor-core kernel."""
    return "mma-regs" if head_dim == 128 and -(-kv_len // splits) <= REGS_MAX_CHUNK else "mma"


def _tensor_cores_pay(shape: tuple, splits: int) -> bool:
    """Mirror of the kernel choice in launch_decode_d (csrc/attention_decode_split.cu) for an aligned 16-bit decode:
    tensor cores at their head dims unless one query vector per block streams a whole context (one split)."""
    _batch, heads_q, heads_kv, q_len, _kv_len, head_dim = shape
    return head_dim in MMA_HEAD_DIMS and (splits > 1 or heads_q // heads_kv * q_len > 1)


def _expected_kind(case: dict) -> str:
    """The decode kernel a test_attention_cuda case runs on: tensor cores for aligned 16-bit tensors where they pay,
    the CUDA-core kernel otherwise (fp32, other head dims, a misaligned tensor, one vector over one split)."""
    shape = tuple(case[k] for k in SHAPE_KEYS)
    splits, _ = decode_plan(*shape)
    aligned = "misaligned" not in (case["layout_q"], case["layout_kv"])
    if case["dtype"] == "fp32" or not aligned or not _tensor_cores_pay(shape, splits):
        return "cuda-core"
    return _mma_kind(case["head_dim"], case["kv_len"], splits)


def _traced_kernels(tmp_path, fn) -> list[str]:
    """Names of the CUDA kernels fn() launched, from a profiler trace."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    trace = tmp_path / "trace.json"
    prof.export_chrome_trace(str(trace))
    names = [e["name"] for e in json.loads(trace.read_text())["traceEvents"] if e.get("cat") == "kernel"]
    assert names, "the profiler recorded no kernel (CUPTI unavailable?): cannot check the launch"
    return names


# (batch, heads_q, heads_kv, q_len, kv_len, head_dim), exact: whether grid y must equal the plan. With one
# (batch, kv head) the launcher's cluster-fit trim cannot bite (one cluster always fits); with more it may narrow
# the clusters on a GPU whose GPCs do not hold them all in one wave, so those rows only bound it (and print it).
LAUNCH_SHAPES = [((1, 1, 1, 1, 64 * s, 64), True) for s in CLUSTER_SIZES] + [
    ((1, 4, 1, 1, 128 * 5, 32), True),  # d32: 128-key rounds, 5 splits
    ((1, 4, 1, 1, 16368, 64), True),  # capped at 16 below the combine threshold
    ((1, 4, 1, 1, 16384, 64), True),  # combine, 128 splits
    ((1, 12, 12, 1, 128, 64), False),  # GPT-2 decode step: 2 splits
    ((1, 12, 12, 1, 256, 64), False),  # 4
    ((1, 25, 25, 1, 2048, 64), False),  # bench decode/bs1/h25/d64/ctx2048
    ((1, 32, 32, 1, 4096, 128), False),  # bench decode/bs1/h32/d128/ctx4096
    ((8, 32, 32, 1, 4096, 128), False),  # bs8: one split
]


@pytest.mark.parametrize("shape,exact", [pytest.param(s, e, id="-".join(map(str, s))) for s, e in LAUNCH_SHAPES])
def test_launched_grid_matches_plan(cuda_ops, tmp_path, shape, exact):
    """What really ran, from a profiler trace: decode_kernel's grid y is the split count, and a combine kernel
    follows exactly on the combine path."""
    from torch.profiler import ProfilerActivity, profile

    splits, combine = decode_plan(*shape)
    q, k, v, (ks, ke, qo) = _inputs(*shape)
    cuda_ops.attention(q, k, v, ks, ke, qo, True, 0.125)  # warm-up: build, occupancy queries
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        cuda_ops.attention(q, k, v, ks, ke, qo, True, 0.125)
        torch.cuda.synchronize()
    trace = tmp_path / "trace.json"
    prof.export_chrome_trace(str(trace))
    kernels = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("cat") == "kernel"]
    assert kernels, "the profiler recorded no kernel (CUPTI unavailable?): cannot check the launch"
    decode = [e for e in kernels if _decode_kernel_kind(e["name"])]
    combines = [e for e in kernels if "combine_kernel" in e["name"]]
    assert len(decode) == 1, [e["name"] for e in kernels]
    # _inputs is fp16 with 16-byte aligned rows: the tensor-core kernel at head_dim 64 / 128 where it pays.
    want_kind = _mma_kind(shape[5], shape[4], splits) if _tensor_cores_pay(shape, splits) else "cuda-core"
    assert _decode_kernel_kind(decode[0]["name"]) == want_kind, decode[0]["name"]
    grid = decode[0]["args"]["grid"]
    print(f"shape {shape}: plan {splits} splits{' + combine' if combine else ''}, launched grid {grid}")
    assert len(combines) == (1 if combine else 0), f"combine kernels {len(combines)}, plan {splits, combine}"
    if exact or combine:
        assert grid[1] == splits, f"grid {grid}, plan {splits} (16 needs the non-portable cluster size)"
    else:
        assert 1 <= grid[1] <= splits, f"grid {grid}, plan {splits}"


def _cuda_core_cases() -> list[dict]:
    """16-bit cases at the tensor-core kernels' head dims that run on the CUDA-core kernel: one split with one query
    vector per block (a short context, or enough sequences and heads to fill the GPU), and misaligned queries (the
    scalar load path) with GQA, q_len 1-4, left padding and a dead row."""
    rng = random.Random(4)
    out = []
    for i, (shape, pad, dead, layout_q) in enumerate(
        (
            ((2, 8, 8, 1, 60, 64), 5, 1, "hf"),
            ((3, 16, 16, 1, 64, 128), 0, 2, "hf"),
            ((1, 25, 25, 1, 2048, 64), 0, None, "misaligned"),
            ((2, 32, 8, 1, 1000, 128), 17, 1, "misaligned"),
            ((3, 8, 2, 2, 333, 64), 5, 2, "misaligned"),
            ((1, 4, 1, 4, 4097, 128), 0, None, "misaligned"),
        )
    ):
        out.append(
            _case(
                ("fp16", "bf16")[i % 2], shape, rng=rng, left_pad=pad, dead_row=dead, tag="cuda-core", layout_q=layout_q
            )
        )
    return out


@pytest.mark.parametrize("case", [pytest.param(c, id=_case_id(c)) for c in quick_sample(_cuda_core_cases(), 2)])
def test_cuda_core_kernel_at_tensor_core_head_dims(cuda_ops, case):
    """The CUDA-core kernel where it serves 16-bit decodes at head_dim 64 / 128: right (test_attention_cuda's _check:
    poisoned output, float64 reference, dead rows zero, two runs equal)."""
    assert _expected_kind(case) == "cuda-core", "the case no longer reaches the CUDA-core kernel on this GPU"
    _check(cuda_ops, case)


@pytest.mark.parametrize("head_dim", MMA_HEAD_DIMS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_launched_decode_kernel_choice(cuda_ops, tmp_path, dtype, head_dim):
    """(Profiler trace: "launched", so the sanitizer leaves it out.) Aligned 16-bit decodes with several query vectors
    per block run a tensor-core kernel, a misaligned query (scalar loads) and one query vector over one split the
    CUDA-core one: every run within its float64-checked tolerance."""
    q, k, v, (ks, ke, qo) = _inputs(1, 8, 2, 2, 777, head_dim, dtype=dtype, seed=SEED)
    ks[0] = 3
    storage = torch.empty(q.numel() + 1, dtype=dtype, device="cuda")
    q_odd = storage[1:].view(q.shape).copy_(q)  # one element off 16-byte alignment
    outs, kinds = {}, {}
    for name, query in (("aligned", q), ("misaligned", q_odd)):
        cuda_ops.attention(query, k, v, ks, ke, qo, True, 0.125)  # warm-up (occupancy queries)
        names = _traced_kernels(
            tmp_path,
            lambda name=name, query=query: outs.__setitem__(
                name, cuda_ops.attention(query, k, v, ks, ke, qo, True, 0.125)
            ),
        )
        kinds[name] = [_decode_kernel_kind(n) for n in names if _decode_kernel_kind(n)]
    splits, _ = decode_plan(1, 8, 2, 2, 777, head_dim)
    assert kinds == {"aligned": [_mma_kind(head_dim, 777, splits)], "misaligned": ["cuda-core"]}, kinds
    ref = _ref64(q, k, v, ks, ke, qo, True, 0.125)
    base_err = rel_err(_torch_baseline(q, k, v, ks, ke, qo, True, 0.125), ref)
    for name, out in outs.items():
        assert rel_err(out, ref) <= 2 * base_err + SLACK[dtype], (name, rel_err(out, ref), base_err)

    q1, k1, v1, (ks1, ke1, qo1) = _inputs(2, 8, 8, 1, 60, head_dim, dtype=dtype, seed=SEED)  # one split, one vector
    assert decode_plan(2, 8, 8, 1, 60, head_dim) == (1, False)
    names = _traced_kernels(tmp_path, lambda: cuda_ops.attention(q1, k1, v1, ks1, ke1, qo1, True, 0.125))
    assert [_decode_kernel_kind(n) for n in names if _decode_kernel_kind(n)] == ["cuda-core"], names


def _tensor_core_cases() -> list[dict]:
    """Aligned 16-bit cases on both tensor-core kernels: head_dim 128 with splits of <= 512 keys (register loads) and
    longer ones (shared-memory pipeline), head_dim 64 (shared-memory pipeline); GQA, q_len 1-4, left padding, a dead
    row, chunks shorter than a warp step, both cache layouts."""
    rng = random.Random(7)
    out = []
    for i, (shape, pad, dead, layout) in enumerate(
        (
            ((1, 32, 32, 1, 2048, 128), 0, None, "contig"),
            ((1, 25, 25, 1, 2048, 64), 3, None, "hf"),
            ((2, 32, 8, 1, 1000, 128), 17, 1, "contig"),
            ((3, 8, 2, 2, 333, 64), 5, 2, "hf"),
            ((1, 4, 1, 4, 4097, 128), 0, None, "hf"),
            ((4, 8, 2, 1, 37, 128), 1, 3, "contig"),  # GQA: one split still runs on tensor cores
            ((2, 16, 16, 3, 5000, 128), 0, 0, "contig"),
            ((16, 32, 8, 1, 2048, 128), 2, 5, "hf"),  # 2 splits of 1024 keys: the shared-memory kernel at d128
            ((16, 8, 8, 1, 700, 64), 2, 5, "contig"),
        )
    ):
        out.append(
            _case(("fp16", "bf16")[i % 2], shape, rng=rng, left_pad=pad, dead_row=dead, tag="mma", layout_kv=layout)
        )
    return out


@pytest.mark.parametrize("case", [pytest.param(c, id=_case_id(c)) for c in quick_sample(_tensor_core_cases(), 4)])
def test_tensor_core_kernels(cuda_ops, case):
    """Both tensor-core kernels on the cases that reach them: right (test_attention_cuda's _check: poisoned output,
    float64 reference, dead rows zero, two runs equal)."""
    assert _expected_kind(case) in ("mma", "mma-regs"), "the case no longer reaches a tensor-core kernel on this GPU"
    _check(cuda_ops, case)


def test_tensor_core_cases_reach_both_kernels():
    """The case list above covers the register-load kernel and the shared-memory kernel at both head dims."""
    kinds = {(c["head_dim"], _expected_kind(c)) for c in _tensor_core_cases()}
    assert {(128, "mma-regs"), (128, "mma"), (64, "mma")} <= kinds, kinds


@pytest.mark.parametrize(
    "shape,want",
    [
        ((1, 16, 4, 1, 1500, 128), "mma-regs"),  # 16 splits of <= 94 keys
        ((16, 32, 8, 1, 2048, 128), "mma"),  # 2 splits of 1024 keys
        ((1, 16, 4, 1, 1500, 64), "mma"),  # head_dim 64: the shared-memory kernel at any split
    ],
    ids=["d128-short-splits", "d128-long-splits", "d64"],
)
def test_launched_tensor_core_kernel_by_chunk(cuda_ops, tmp_path, shape, want):
    """(Profiler trace: "launched".) The register-load kernel where a head_dim-128 split holds <= 512 keys, the
    shared-memory kernel elsewhere; the output within its float64-checked tolerance."""
    splits, _ = decode_plan(*shape)
    assert _mma_kind(shape[5], shape[4], splits) == want, "the shape no longer reaches that kernel on this GPU"
    q, k, v, (ks, ke, qo) = _inputs(*shape, dtype=torch.float16, seed=SEED)
    ks[0] = 9
    cuda_ops.attention(q, k, v, ks, ke, qo, True, 0.125)  # warm-up (occupancy queries)
    outs = []
    names = _traced_kernels(tmp_path, lambda: outs.append(cuda_ops.attention(q, k, v, ks, ke, qo, True, 0.125)))
    assert [_decode_kernel_kind(n) for n in names if _decode_kernel_kind(n)] == [want], names
    ref = _ref64(q, k, v, ks, ke, qo, True, 0.125)
    base_err = rel_err(_torch_baseline(q, k, v, ks, ke, qo, True, 0.125), ref)
    assert rel_err(outs[0], ref) <= 2 * base_err + SLACK[torch.float16], (rel_err(outs[0], ref), base_err)
