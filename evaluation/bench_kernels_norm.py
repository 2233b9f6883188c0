"""Kernel benchmark: eet layer_norm, add_layer_norm, bias_gelu and small_linear against the torch ops they replace.

run(rows_out) appends one row per (case, engine, metric):
    {"case": "layer_norm/rows8192/hidden1600/fp16", "engine": "eet" | "torch", "metric": "ms" | "gbps",
     "value": float, "unit": "ms" | "GB/s"}
gbps counts the bytes the fused op must move (inputs read once, outputs written once) for both engines, so
it is the effective bandwidth of each, comparable with the device's copy bandwidth.

Timing: CUDA events around a batch of calls, each call on the next of several input sets whose total is
over twice the 60 MB L2 (so inputs come from HBM, as in a model), after a GPU sleep that lets the CPU queue
the batch before the first event fires (so launch overhead is not timed). Median over the repetitions.
"""

from __future__ import annotations

import functools
import itertools
import statistics

import torch
import torch.nn.functional as F

import eet_hf.ops as ops

L2_BYTES = 60 * 2**20
EPS = 1e-5
WARMUP, REPS, CALLS_PER_REP = 3, 25, 10
# (rows, hidden): BERT base / large (768, 1024), GPT-2 small / XL (768, 1600), large models (4096, 12288).
LN_SHAPES = [(8192, 768), (8192, 1024), (8192, 1600), (8192, 4096), (4096, 12288)]
# bias_gelu runs on the MLP's 4 * hidden activations.
_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
GELU_SHAPES = [(8192, 3072), (8192, 4096), (4096, 6400), (4096, 16384)]
# small_linear (decode-step Conv1Ds, weight [K, N]): GPT-2 small and XL c_attn, attn_proj, c_fc, mlp_proj; gbps
# counts the weight bytes (what a decode-step GEMV must stream), for eet and torch's addmm alike.
LINEAR_SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768), (1600, 4800), (1600, 1600), (1600, 6400), (6400, 1600)]
LINEAR_ROWS = [1, 8]


def _time_ms(fn, input_sets) -> float:
    """Median milliseconds of one fn(*inputs) call."""
    for i in range(WARMUP):
        fn(*input_sets[i % len(input_sets)])
    torch.cuda.synchronize()
    samples = []
    for _ in range(REPS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(2_000_000)  # ~1 ms of GPU time while the batch is queued
        start.record()
        for i in range(CALLS_PER_REP):
            fn(*input_sets[i % len(input_sets)])
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / CALLS_PER_REP)
    return statistics.median(samples)


def _input_sets(make, bytes_per_set: int):
    # Enough sets that consecutive calls never find their inputs in L2.
    count = max(2, -(-2 * L2_BYTES // bytes_per_set) + 1)
    return [make() for _ in range(count)]


def _record(rows_out, case, engine, ms, nbytes):
    rows_out.append({"case": case, "engine": engine, "metric": "ms", "value": ms, "unit": "ms"})
    rows_out.append(
        {"case": case, "engine": engine, "metric": "gbps", "value": nbytes / (ms * 1e-3) / 1e9, "unit": "GB/s"}
    )


def _torch_add_layer_norm(x, r, w, b):
    s = x + r
    return F.layer_norm(s, (x.shape[-1],), w, b, EPS), s


def _torch_bias_gelu(x, b, approximate):
    return F.gelu(x + b, approximate=approximate)


def _bench_layer_norm(rows_out: list, rows: int, hidden: int, dtype: torch.dtype) -> None:
    dev, size, n = "cuda", torch.finfo(dtype).bits // 8, rows * hidden
    w = torch.randn(hidden, dtype=dtype, device=dev)
    b = torch.randn(hidden, dtype=dtype, device=dev)
    tag = f"rows{rows}/hidden{hidden}/{_NAMES[dtype]}"

    sets = _input_sets(lambda: (torch.randn(rows, hidden, dtype=dtype, device=dev),), n * size)
    ms = _time_ms(lambda x: ops.layer_norm(x, w, b, EPS), sets)
    _record(rows_out, f"layer_norm/{tag}", "eet", ms, 2 * n * size)
    ms = _time_ms(lambda x: F.layer_norm(x, (hidden,), w, b, EPS), sets)
    _record(rows_out, f"layer_norm/{tag}", "torch", ms, 2 * n * size)
    del sets

    def make_pair():
        return torch.randn(rows, hidden, dtype=dtype, device=dev), torch.randn(rows, hidden, dtype=dtype, device=dev)

    sets = _input_sets(make_pair, 2 * n * size)
    ms = _time_ms(lambda x, r: ops.add_layer_norm(x, r, w, b, EPS), sets)
    _record(rows_out, f"add_layer_norm/{tag}", "eet", ms, 4 * n * size)
    ms = _time_ms(lambda x, r: _torch_add_layer_norm(x, r, w, b), sets)
    _record(rows_out, f"add_layer_norm/{tag}", "torch", ms, 4 * n * size)


def _bench_bias_gelu(rows_out: list, rows: int, cols: int, dtype: torch.dtype) -> None:
    dev, size, n = "cuda", torch.finfo(dtype).bits // 8, rows * cols
    b = torch.randn(cols, dtype=dtype, device=dev)
    sets = _input_sets(lambda: (torch.randn(rows, cols, dtype=dtype, device=dev),), n * size)
    for approximate in ("tanh", "none"):
        case = f"bias_gelu_{approximate}/rows{rows}/cols{cols}/{_NAMES[dtype]}"
        ms = _time_ms(functools.partial(ops.bias_gelu, bias=b, approximate=approximate), sets)
        _record(rows_out, case, "eet", ms, 2 * n * size)
        ms = _time_ms(functools.partial(_torch_bias_gelu, b=b, approximate=approximate), sets)
        _record(rows_out, case, "torch", ms, 2 * n * size)


def _cycling(fn, input_sets):
    """A no-argument call running fn on every set in turn, across repetitions too: _time_ms restarts at the first
    set each repetition, so 10 calls on ~1 MB weights would read them from L2 after the first repetition."""
    sets = itertools.cycle(input_sets)
    return lambda: fn(*next(sets))


def _bench_small_linear(rows_out: list, k: int, n: int, dtype: torch.dtype) -> None:
    dev, size = "cuda", torch.finfo(dtype).bits // 8
    sets = _input_sets(
        lambda: (torch.randn(k, n, dtype=dtype, device=dev) * k**-0.5, torch.randn(n, dtype=dtype, device=dev)),
        k * n * size,
    )
    for rows in LINEAR_ROWS:
        x = torch.randn(rows, k, dtype=dtype, device=dev)
        for act in ("none", "tanh_staged"):
            case = f"small_linear_{act}/rows{rows}/k{k}/n{n}/{_NAMES[dtype]}"
            ms = _time_ms(_cycling(lambda w, b, x=x, act=act: ops.small_linear(x, w, b, act), sets), [()])
            _record(rows_out, case, "eet", ms, k * n * size)
            # torch: HF's Conv1D (addmm); with gelu, today's GPT-2 path (addmm, then eet's bias_gelu tanh_staged).
            if act == "none":
                ms = _time_ms(_cycling(lambda w, b, x=x: torch.addmm(b, x, w), sets), [()])
            else:
                ms = _time_ms(_cycling(lambda w, b, x=x: ops.linear_gelu(x, w, b, "tanh_staged"), sets), [()])
            _record(rows_out, case, "torch", ms, k * n * size)


def run(rows_out: list) -> None:
    if not torch.cuda.is_available() or not ops.ensure_loaded():
        raise RuntimeError(f"bench_kernels_norm needs a CUDA GPU and the built extension: {ops.build_info()}")
    for rows, hidden in LN_SHAPES:
        _bench_layer_norm(rows_out, rows, hidden, torch.float16)
    for rows, cols in GELU_SHAPES:
        _bench_bias_gelu(rows_out, rows, cols, torch.float16)
    for k, n in LINEAR_SHAPES:
        _bench_small_linear(rows_out, k, n, torch.float16)
    torch.cuda.empty_cache()


if __name__ == "__main__":
    results: list = []
    run(results)
    for row in results:
        print(f"{row['case']:45s} {row['engine']:6s} {row['value']:10.3f} {row['unit']}")
