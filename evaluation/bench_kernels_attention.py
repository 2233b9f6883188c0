"""Kernel benchmark: eet attention (mask fusion) vs each torch SDPA backend separately, on CUDA.

`run(rows_out)` appends one dict per (case, engine, metric):
    {"case": "decode/bs1/h25/d64/ctx4096/fp16", "engine": "eet" | "eet-dispatch" | "torch-sdpa-flash" |
     "torch-sdpa-efficient" | "torch-sdpa-cudnn" | "torch-sdpa-math", "metric": "ms" | "gbps" | "tflops" |
     "available", "value": float, "unit": str}
Each torch backend runs alone (torch.nn.attention.sdpa_kernel(SDPBackend.X)) on the same tensors as eet's
kernel, in the same process. A backend that refuses a shape (or the mask) is recorded as
metric "available" = 0 for that case, with the reason printed, and the run goes on.
"eet" is eet's own kernel; "eet-dispatch" (unpadded prefill only) is what eet_hf.ops.attention(padded=False)
runs for the shape once it has repeated, i.e. torch's flash, or cuDNN once the shape has run often enough to repay
cuDNN's plan (eet_hf/ops/prefill_backend.py; it is timed after that many calls).
Prefill: GPT-2 small (causal) in fp16 and bf16, BERT base/large (non-causal) fp16, and a head_dim-128 causal
class (32 heads) in fp16 and bf16, unpadded and with half the batch padded to half length (left for causal,
right for BERT; SDPA gets the boolean mask, eet the bounds). tflops counts the dense work 4*B*H*Lq*Lk*D
(halved when causal), padded or not. Decode: one new token over a KV cache, batch 1 and 8; gbps counts the
K+V cache bytes read, and "copy-same-bytes" is a device copy of the same traffic, the size's own bandwidth
ceiling (_copy_same_bytes). Each timing is the median of >= 20 event-timed replays of a CUDA graph after warm-up
(GPU time without Python launch overhead, which would otherwise dominate decode); decode cycles through
several copies of the cache so that it is read from HBM, not L2. Writes no files.
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

WARMUP = 5
_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
REPS = 30
L2_FLUSH_BYTES = 256 << 20  # decode: cycle through enough cache copies to exceed the 60 MB L2


def _sdpa_backends():
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # older torch
        return []
    out = [("torch-sdpa-flash", SDPBackend.FLASH_ATTENTION), ("torch-sdpa-efficient", SDPBackend.EFFICIENT_ATTENTION)]
    if hasattr(SDPBackend, "CUDNN_ATTENTION"):
        out.append(("torch-sdpa-cudnn", SDPBackend.CUDNN_ATTENTION))
    out.append(("torch-sdpa-math", SDPBackend.MATH))
    return [(name, backend, sdpa_kernel) for name, backend in out]


def _time_ms(fn, n_inputs: int = 1) -> float:
    """Median milliseconds of one fn(i) call. The n_inputs calls fn(0) .. fn(n_inputs - 1) are captured in a
    CUDA graph (so that host-side launch overhead is not timed) and each replay is timed with events; a
    function that cannot be captured is timed eagerly instead."""
    for i in range(max(WARMUP, n_inputs)):
        fn(i % n_inputs)
    torch.cuda.synchronize()
    run = None
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn(0)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(n_inputs):
                fn(i)
        run = graph.replay
    except Exception:  # noqa: BLE001 - not capturable: eager timing
        torch.cuda.synchronize()

        def run():
            for i in range(n_inputs):
                fn(i)

    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(REPS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / n_inputs)
    return statistics.median(times)


def _bounds(batch, kv_len, q_len, padding, device):
    """kv_start, kv_end, q_offset and the boolean SDPA mask ([B, 1, Lq, Lk] or None)."""
    ks = torch.zeros(batch, dtype=torch.int32, device=device)
    ke = torch.full((batch,), kv_len, dtype=torch.int32, device=device)
    if padding == "left":
        ks[batch // 2 :] = kv_len // 2
    elif padding == "right":
        ke[batch // 2 :] = kv_len // 2
    qo = torch.full((batch,), kv_len - q_len, dtype=torch.int32, device=device)
    return ks, ke, qo


def _mask(ks, ke, qo, causal, q_len, kv_len):
    from eet_hf.ops import reference

    visible = reference.visible_keys(ks, ke, qo, causal, q_len, kv_len)
    visible = visible | ~visible.any(-1, keepdim=True)  # no all-masked rows for SDPA
    return visible.unsqueeze(1)


def _record(rows_out, case, engine, ms, metric, value, unit):
    rows_out.append({"case": case, "engine": engine, "metric": "ms", "value": float(ms), "unit": "ms"})
    rows_out.append({"case": case, "engine": engine, "metric": metric, "value": float(value), "unit": unit})


def _bench_case(rows_out, case, q_sets, k_sets, v_sets, ks, ke, qo, causal, padded, metric, work, unit, allow_math):
    import eet_hf.ops as ops
    from eet_hf.ops import prefill_backend

    scale = q_sets[0].shape[-1] ** -0.5
    n = len(q_sets)
    q_len, kv_len = q_sets[0].shape[2], k_sets[0].shape[2]

    def eet(i):
        ops.attention(q_sets[i], k_sets[i], v_sets[i], ks, ke, qo, causal, scale)

    ms = _time_ms(eet, n)
    _record(rows_out, case, "eet", ms, metric, work / (ms * 1e-3), unit)

    if not padded and q_len == kv_len > 1:

        def dispatch(i):
            ops.attention(q_sets[i], k_sets[i], v_sets[i], ks, ke, qo, causal, scale, padded=False)

        # Its steady state: past the calls after which a repeated shape moves from flash to cuDNN (the first
        # calls' costs are in sdpa-first-call-<gpu>.md).
        for _ in range((prefill_backend.calls_before_cudnn(q_sets[0], k_sets[0], causal) or 0) + 1):
            dispatch(0)
        ms = _time_ms(dispatch, n)
        _record(rows_out, case, "eet-dispatch", ms, metric, work / (ms * 1e-3), unit)

    mask = _mask(ks, ke, qo, causal, q_len, kv_len) if padded else None
    is_causal = causal and not padded and q_len > 1
    for name, backend, sdpa_kernel in _sdpa_backends():
        if name == "torch-sdpa-math" and not allow_math:
            continue

        def sdpa(i, backend=backend, sdpa_kernel=sdpa_kernel):
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(
                    q_sets[i], k_sets[i], v_sets[i], attn_mask=mask, is_causal=is_causal, scale=scale
                )

        try:
            ms = _time_ms(sdpa, n)
        except Exception as exc:  # noqa: BLE001 - this backend does not take the shape/mask: recorded as such
            torch.cuda.synchronize()
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"{case:<60} {name:<20} unavailable: {reason[:160]}")
            rows_out.append({"case": case, "engine": name, "metric": "available", "value": 0.0, "unit": "bool"})
            continue
        _record(rows_out, case, name, ms, metric, work / (ms * 1e-3), unit)


def _prefill(rows_out, model, batch, heads, head_dim, seq, causal, padding, dtype=torch.float16):
    dev = "cuda"
    # HF layout: projections produce [B, L, H, D]; attention sees the transposed views.
    q = torch.randn(batch, seq, heads, head_dim, device=dev, dtype=dtype).transpose(1, 2)
    k = torch.randn(batch, seq, heads, head_dim, device=dev, dtype=dtype).transpose(1, 2)
    v = torch.randn(batch, seq, heads, head_dim, device=dev, dtype=dtype).transpose(1, 2)
    ks, ke, qo = _bounds(batch, seq, seq, padding, dev)
    flops = 4.0 * batch * heads * seq * seq * head_dim * (0.5 if causal else 1.0)
    kind = "causal" if causal else "full"
    case = f"prefill/{model}/bs{batch}/h{heads}/d{head_dim}/L{seq}/{padding}/{kind}/{_DTYPE_NAMES[dtype]}"
    _bench_case(
        rows_out,
        case,
        [q],
        [k],
        [v],
        ks,
        ke,
        qo,
        causal,
        padding != "none",
        "tflops",
        flops / 1e12,
        "TFLOP/s",
        allow_math=batch * heads * seq * seq <= (1 << 26),
    )


def _decode(rows_out, batch, heads, head_dim, ctx, dtype=torch.float16):
    dev = "cuda"
    cache_bytes = 2 * batch * heads * ctx * head_dim * torch.finfo(dtype).bits // 8
    n = max(1, min(64, -(-L2_FLUSH_BYTES // cache_bytes)))
    q_sets = [torch.randn(batch, 1, heads, head_dim, device=dev, dtype=dtype).transpose(1, 2) for _ in range(n)]
    k_sets = [torch.randn(batch, heads, ctx, head_dim, device=dev, dtype=dtype) for _ in range(n)]
    v_sets = [torch.randn(batch, heads, ctx, head_dim, device=dev, dtype=dtype) for _ in range(n)]
    ks, ke, qo = _bounds(batch, ctx, 1, "none", dev)
    case = f"decode/bs{batch}/h{heads}/d{head_dim}/ctx{ctx}/fp16"
    _bench_case(
        rows_out,
        case,
        q_sets,
        k_sets,
        v_sets,
        ks,
        ke,
        qo,
        True,
        False,
        "gbps",
        cache_bytes / 1e9,
        "GB/s",
        allow_math=True,
    )
    _copy_same_bytes(rows_out, case, cache_bytes, n)


def _copy_same_bytes(rows_out, case, traffic_bytes, n):
    """Engine "copy-same-bytes": torch's device copy moving the same HBM traffic (reads + writes) as the kernel
    reads, timed the same way (n copies per graph, cycling past L2). It is what the copy ceiling (4.16 TB/s,
    measured on large copies) shrinks to at this size: launch, ramp-up and drain are a fixed cost of any kernel,
    so a decode over a 6-13 MB cache cannot reach the large-copy rate either."""
    numel = max(1, traffic_bytes // 4)  # fp16 elements: numel * 2 bytes read and as many written
    src = [torch.randn(numel, device="cuda", dtype=torch.float16) for _ in range(n)]
    dst = [torch.empty_like(t) for t in src]

    def copy(i):
        dst[i].copy_(src[i])

    ms = _time_ms(copy, n)
    _record(rows_out, case, "copy-same-bytes", ms, "gbps", 4 * numel / 1e9 / (ms * 1e-3), "GB/s")


def run(rows_out: list, only: str | None = None) -> None:
    """Every case (only="prefill" / "decode": that kind alone)."""
    if not torch.cuda.is_available():
        return
    import eet_hf.ops as ops

    if not ops.ensure_loaded():
        raise RuntimeError(f"eet CUDA kernels unavailable: {ops.build_info()}")
    with torch.inference_mode():
        if only != "decode":
            _prefill_cases(rows_out)
        if only != "prefill":
            for batch in (1, 8):
                for heads, head_dim in ((25, 64), (32, 128)):
                    for ctx in (512, 2048, 4096):
                        _decode(rows_out, batch, heads, head_dim, ctx)


def _prefill_cases(rows_out: list) -> None:
    for seq in (128, 512, 1024):
        for padding in ("none", "left"):
            _prefill(rows_out, "gpt2", 8, 12, 64, seq, True, padding)
            if seq >= 512:
                _prefill(rows_out, "gpt2", 8, 12, 64, seq, True, padding, torch.bfloat16)
    # head_dim 128 (Llama-style heads), the other class in the dispatch table.
    for dtype in (torch.float16, torch.bfloat16):
        for seq in (512, 2048):
            for padding in ("none", "left"):
                _prefill(rows_out, "d128", 2, 32, 128, seq, True, padding, dtype)
    for model, heads in (("bert-base", 12), ("bert-large", 16)):
        for seq in (128, 512):
            for padding in ("none", "right"):
                _prefill(rows_out, model, 32, heads, 64, seq, False, padding)

if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="eet attention kernels vs torch SDPA backends (no results files)")
    parser.add_argument("--only", choices=("prefill", "decode"))
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    rows: list = []
    run(rows, args.only)
    for r in rows:
        if r["metric"] != "ms":
            print(f"{r['case']:<60} {r['engine']:<15} {r['value']:10.2f} {r['unit']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
