"""Developer probe: what the first SDPA call at a new sequence length costs per backend (cuDNN builds an execution
plan per shape; flash has none), against the steady-state time of the same call, for the unpadded square prefill
classes of eet_hf.ops.attention's dispatch (_prefill_sdpa_first). It answers how many calls at one length
cuDNN needs before its faster kernel pays for its plan.

    PYTHONPATH=. python scripts/probe_sdpa_first_call.py [--out DIR] [--results-dir evaluation/results]

First call: host wall time of one synchronized call at a length the process has not run before (median of three
such lengths; the backend was warmed on another length first). Steady state: median of event-timed eager calls
after warm-up. Writes DIR/probe-sdpa-first-call.json and, with --results-dir, sdpa-first-call-<gpu>.{json,md} in
the results format (DESIGN.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from evaluation.bench.timing import median_ms

CLASSES = [  # (label, batch, heads, head_dim, dtype, causal)
    ("gpt2-bs1-d64-fp16", 1, 12, 64, torch.float16, True),
    ("gpt2-bs8-d64-fp16", 8, 12, 64, torch.float16, True),
    ("bert-bs32-d64-fp16", 32, 12, 64, torch.float16, False),
    ("gpt2-bs8-d64-bf16", 8, 12, 64, torch.bfloat16, True),
    ("h32-bs1-d128-fp16", 1, 32, 128, torch.float16, True),
    ("h32-bs1-d128-bf16", 1, 32, 128, torch.bfloat16, True),
]
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}


def _call(backend, q, k, v, causal):
    with sdpa_kernel(BACKENDS[backend]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def _inputs(batch, heads, d, dtype, length):
    return [torch.randn(batch, heads, length, d, device="cuda", dtype=dtype) for _ in range(3)]


def _first_call_ms(backend, batch, heads, d, dtype, causal, length):
    q, k, v = _inputs(batch, heads, d, dtype, length)
    torch.cuda.synchronize()
    t = time.perf_counter()
    _call(backend, q, k, v, causal)
    torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3


def _steady_ms(backend, batch, heads, d, dtype, causal, length, reps=30):
    q, k, v = _inputs(batch, heads, d, dtype, length)
    return median_ms(lambda: _call(backend, q, k, v, causal), "cuda", repeats=reps, warmup=5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    rows, fresh = [], iter(range(3001, 100000, 2))  # odd lengths above every measured one: never repeated
    for label, batch, heads, d, dtype, causal in CLASSES:
        for length in (128, 512, 2048):
            row = {"class": label, "length": length}
            for backend in BACKENDS:
                try:
                    # Warm the backend itself (library load, first kernel) on a length of its own first.
                    _first_call_ms(backend, batch, heads, d, dtype, causal, next(fresh))
                    firsts = [_first_call_ms(backend, batch, heads, d, dtype, causal, length + 2 * i + 1)
                              for i in range(3)]
                    row[f"{backend}_first_ms"] = statistics.median(firsts)
                    row[f"{backend}_steady_ms"] = _steady_ms(backend, batch, heads, d, dtype, causal, length)
                except RuntimeError as exc:
                    torch.cuda.synchronize()
                    row[f"{backend}_error"] = str(exc).splitlines()[0][:160]
            if "cudnn_steady_ms" in row and "flash_steady_ms" in row:
                saving = row["flash_steady_ms"] - row["cudnn_steady_ms"]
                extra = row["cudnn_first_ms"] - row["flash_first_ms"]
                row["calls_to_pay_off"] = extra / saving if saving > 0 else None
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "probe-sdpa-first-call.json").write_text(json.dumps(rows, indent=1))
    if args.results_dir:
        _write_results(rows, Path(args.results_dir))


def _write_results(rows: list[dict], out_dir: Path) -> None:
    from evaluation.results_io import write_results

    out = []
    for row in rows:
        case = f"{row['class']}/L{row['length']}"
        for backend in BACKENDS:
            if f"{backend}_first_ms" not in row:
                continue
            engine = f"torch-sdpa-{backend}"
            out.append({"case": case, "engine": engine, "metric": "first_call_ms", "value": row[f"{backend}_first_ms"],
                        "unit": "ms"})
            out.append({"case": case, "engine": engine, "metric": "steady_ms", "value": row[f"{backend}_steady_ms"],
                        "unit": "ms"})
        if row.get("calls_to_pay_off") is not None:
            out.append({"case": case, "engine": "torch-sdpa-cudnn", "metric": "calls_to_pay_off",
                        "value": row["calls_to_pay_off"], "unit": "calls"})
    path = write_results("sdpa-first-call", out, "PYTHONPATH=. python scripts/probe_sdpa_first_call.py "
                         f"--results-dir {out_dir}", out_dir)
    md = path.with_suffix(".md")
    md.write_text(md.read_text() + (
        "\nUnpadded square prefill, torch SDPA with one backend forced. first_call_ms: wall time of one synchronized "
        "call at a sequence length the process had not run (median of three lengths); steady_ms: median event-timed "
        "call at one length after warm-up; calls_to_pay_off: (cuDNN first - flash first) / (flash steady - cuDNN "
        "steady), only where cuDNN is faster at steady state. eet_hf.ops.attention tries flash first for this "
        "reason (eet_hf/ops/__init__.py, _PREFILL_SDPA_FIRST; EET_HF_PREFILL_SDPA_FIRST=CUDNN_ATTENTION opts in).\n"))


if __name__ == "__main__":
    main()
