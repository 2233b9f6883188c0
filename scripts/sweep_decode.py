"""Developer probe: eet's decode attention time for every forced split count (EET_HF_DECODE_SPLITS=1..16, one
thread block cluster each) against the planner's own pick and a device copy of the same bytes, at batch 1 over
GPT-2 XL (25 heads, d64) and a 32-head d128 class, to check the split rule in decode_plan.

    PYTHONPATH=. python scripts/sweep_decode.py [--out DIR] [--max-splits 16] [--combine-splits 32]

--combine-splits N also times 2..N splits on the combine path (EET_HF_DECODE_SPLITS=c<s>: partials to a workspace,
then the combine kernel; no cluster, so no limit from how many clusters the GPU holds at once).

Timing and inputs as evaluation/bench_kernels_attention.py's decode rows (CUDA graph of n kernels cycling through
cache copies past L2, median of event-timed replays). Prints one line per shape with the us of each split count
and the share of the 4.16 TB/s copy ceiling on the K+V bytes; writes DIR/sweep-decode.json.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

import eet_hf.ops as ops
from evaluation.bench_kernels_attention import L2_FLUSH_BYTES, _bounds, _copy_same_bytes, _time_ms

CEILING_GBPS = 4160.0
SHAPES = [  # (batch, heads, head_dim, ctx)
    (1, 25, 64, 2048),
    (1, 25, 64, 4096),
    (1, 32, 128, 2048),
    (1, 32, 128, 4096),
    (1, 12, 64, 1024),
    (8, 25, 64, 2048),
]


def _copy_us(cache_bytes: int, n: int) -> float:
    """The bench's copy-same-bytes reference (same traffic, same timing), in us."""
    rows: list = []
    _copy_same_bytes(rows, "copy", cache_bytes, n)
    return next(r["value"] for r in rows if r["metric"] == "ms") * 1e3


def _sweep_shape(batch: int, heads: int, d: int, ctx: int, max_splits: int, combine_splits: int) -> dict:
    dtype = torch.float16
    cache_bytes = 2 * batch * heads * ctx * d * 2
    n = max(1, min(64, -(-L2_FLUSH_BYTES // cache_bytes)))
    qs = [torch.randn(batch, 1, heads, d, device="cuda", dtype=dtype).transpose(1, 2) for _ in range(n)]
    k_sets = [torch.randn(batch, heads, ctx, d, device="cuda", dtype=dtype) for _ in range(n)]
    v_sets = [torch.randn(batch, heads, ctx, d, device="cuda", dtype=dtype) for _ in range(n)]
    ks, ke, qo = _bounds(batch, ctx, 1, "none", "cuda")

    def fn(i):
        ops.attention(qs[i], k_sets[i], v_sets[i], ks, ke, qo, True, d**-0.5)

    result = {"batch": batch, "heads": heads, "head_dim": d, "ctx": ctx, "cache_bytes": cache_bytes, "splits_us": {},
              "combine_us": {}}
    forced = [(str(s), "splits_us", s) for s in range(1, max_splits + 1)]
    forced += [(f"c{s}", "combine_us", s) for s in range(2, combine_splits + 1)]
    for value, key, splits in forced:
        os.environ["EET_HF_DECODE_SPLITS"] = value
        try:
            result[key][splits] = _time_ms(fn, n) * 1e3
        except RuntimeError as exc:  # a cluster width the device refuses
            torch.cuda.synchronize()
            result[key][splits] = None
            print(f"  splits {value}: {str(exc).splitlines()[0][:120]}", flush=True)
    os.environ.pop("EET_HF_DECODE_SPLITS", None)
    result["planned_us"] = _time_ms(fn, n) * 1e3
    result["copy_us"] = _copy_us(cache_bytes, n)
    return result


def _pct(us: float, cache_bytes: int) -> float:
    return 100.0 * cache_bytes / 1e3 / us / CEILING_GBPS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--max-splits", type=int, default=16, help="0: the planner's pick and the copy only")
    parser.add_argument("--combine-splits", type=int, default=0,
                        help="also time 2..N splits on the combine path (workspace + combine kernel, no cluster)")
    parser.add_argument("--tag", default="", help="suffix of the output file name")
    args = parser.parse_args()
    assert torch.cuda.is_available() and ops.ensure_loaded(), ops.build_info()
    rows_out = []
    with torch.inference_mode():
        for batch, heads, d, ctx in SHAPES:
            result = _sweep_shape(batch, heads, d, ctx, args.max_splits, args.combine_splits)
            rows_out.append(result)
            cb, timed = result["cache_bytes"], [v for v in result["splits_us"].values() if v is not None]
            cells = " ".join(f"{s}:{v:5.1f}" for s, v in result["splits_us"].items() if v is not None)
            print(f"bs{batch} h{heads} d{d} ctx{ctx}  us by splits {cells}", flush=True)
            if result["combine_us"]:
                combined = " ".join(f"{s}:{v:5.1f}" for s, v in result["combine_us"].items() if v is not None)
                print(f"    combine path by splits {combined}", flush=True)
            print(f"    planned {result['planned_us']:5.1f} us ({_pct(result['planned_us'], cb):.0f}%)  best "
                  f"{min(timed) if timed else float('nan'):5.1f}  copy {result['copy_us']:5.1f} us "
                  f"({_pct(result['copy_us'], cb):.0f}%)", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"sweep-decode{args.tag}.json").write_text(json.dumps(rows_out, indent=1))


if __name__ == "__main__":
    main()
