"""Developer probe: eet::small_linear's time per call for every forced K-split count (1..8, one thread block cluster
each) against torch.addmm, on the GPT-2 small / XL decode shapes, to choose the split rule in small_linear_plan.

    python scripts/sweep_small_linear.py [--out DIR]

Same timing as evaluation/bench_kernels_norm.py (weights cycled past L2, launches queued behind a GPU sleep).
Prints one line per (shape, rows) with the ms of each split count, the planner's own pick and torch; writes
DIR/sweep-small-linear.json.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

import eet_hf.ops as ops
from evaluation.bench_kernels_norm import LINEAR_SHAPES, _cycling, _input_sets, _time_ms


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    assert torch.cuda.is_available() and ops.ensure_loaded(), ops.build_info()
    dtype, rows_out = torch.float16, []
    for k, n in LINEAR_SHAPES:
        sets = _input_sets(lambda k=k, n=n: (torch.randn(k, n, dtype=dtype, device="cuda") * k**-0.5,
                                             torch.randn(n, dtype=dtype, device="cuda")), 2 * k * n)
        for rows in (1, 8):
            x = torch.randn(rows, k, dtype=dtype, device="cuda")
            result = {"k": k, "n": n, "rows": rows, "splits_us": {}}
            for splits in range(1, 9):
                os.environ["EET_HF_SMALL_LINEAR_SPLITS"] = str(splits)
                fn = _cycling(lambda w, b, x=x: ops.small_linear(x, w, b, "none"), sets)
                result["splits_us"][splits] = _time_ms(fn, [()]) * 1e3
            os.environ.pop("EET_HF_SMALL_LINEAR_SPLITS")
            result["planned_us"] = _time_ms(_cycling(lambda w, b, x=x: ops.small_linear(x, w, b, "none"), sets), [()]) * 1e3
            result["torch_us"] = _time_ms(_cycling(lambda w, b, x=x: torch.addmm(b, x, w), sets), [()]) * 1e3
            rows_out.append(result)
            cells = " ".join(f"{s}:{v:5.1f}" for s, v in result["splits_us"].items())
            print(f"k{k:5d} n{n:5d} rows{rows}  us by splits {cells}  planned {result['planned_us']:5.1f}"
                  f"  torch {result['torch_us']:5.1f}", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "sweep-small-linear.json").write_text(json.dumps(rows_out, indent=1))


if __name__ == "__main__":
    main()
