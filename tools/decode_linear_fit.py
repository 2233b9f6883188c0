"""What one decode_linear call costs, split into a fixed part and a streaming rate (a measurement, not the benchmark):
for each (norm, epilogue) kind, µs per call at a range of weight sizes (K = 2048, 1024 to 32768 output rows), and a
least-squares fit `us = fixed + MB / rate` over the sizes of 8 MB and more.

    python tools/decode_linear_fit.py [--out DIR]

Each size is timed as tools/decode_linear_splits.py times a projection: a CUDA graph of back-to-back calls over
distinct weights (more bytes than the L2 cache holds, chained by PDL as in a decode step), replayed between CUDA
events. Writes DIR/decode-linear-fit-<gpu>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eet_hf, evaluation/ and tools/ from a checkout

from tools.decode_linear_splits import _time_calls, cuda_ceiling  # noqa: E402 - also registers torch.ops.eet

K = 2048
ROWS = (1024, 2048, 4096, 8192, 16384, 32768)
KINDS = (("rms", "silu_mul"), (None, "residual"), ("rms", "none"))  # Llama's gate/up, o / down, QKV / LM head


def measure(norm: str | None, epilogue: str) -> list[dict]:
    rows = []
    for n in ROWS:
        copies = max(2, min(16, int(600e6 // (n * K * 2))))
        weights = [torch.randn(n, K, device="cuda", dtype=torch.float16) / K**0.5 for _ in range(copies)]
        x = torch.randn(1, K, device="cuda", dtype=torch.float16)
        norm_weight = None if norm is None else torch.ones(K, device="cuda", dtype=torch.float16)
        cols = n // 2 if epilogue == "silu_mul" else n
        residual = torch.randn(1, cols, device="cuda", dtype=torch.float16) if epilogue == "residual" else None
        calls = [functools.partial(torch.ops.eet.decode_linear, x, w, None, norm_weight, 1e-5, residual, epilogue, None,
                                   norm or "rms", 0) for w in weights]
        micros = _time_calls(calls)
        mb = n * K * 2 / 1e6
        rows.append({"norm": norm or "none", "epilogue": epilogue, "rows": n, "k": K, "mb": mb, "us": micros,
                     "gbps": mb / micros * 1e3})
        print(f"{norm or 'none':5s} {epilogue:9s} {n:6d}x{K}: {mb:6.1f} MB {micros:8.2f} us ({mb / micros * 1e3:5.0f} GB/s)",
              flush=True)
        del weights
        torch.cuda.empty_cache()
    return rows


def fit(points: list[dict]) -> tuple[float, float]:
    """(fixed µs, GB/s) of the least-squares line us = fixed + MB / rate over the points of 8 MB and more."""
    pts = [(p["mb"], p["us"]) for p in points if p["mb"] >= 8]
    n = len(pts)
    mean_x, mean_y = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in pts) / sum((x - mean_x) ** 2 for x, _ in pts)
    return mean_y - slope * mean_x, 1e3 / slope


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    ceiling = cuda_ceiling(parser)
    rows, fits = [], []
    for norm, epilogue in KINDS:
        points = measure(norm, epilogue)
        fixed, rate = fit(points)
        print(f"fit {norm or 'none'} {epilogue}: fixed {fixed:.2f} us, streaming {rate:.0f} GB/s", flush=True)
        rows += points
        fits.append({"norm": norm or "none", "epilogue": epilogue, "fixed_us": fixed, "gbps": rate,
                     "share": rate / ceiling})
    gpu = torch.cuda.get_device_name()
    meta = {"gpu": gpu, "torch": torch.__version__, "copy_gbps": ceiling,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "python tools/decode_linear_fit.py"}
    stem = Path(args.out) / f"decode-linear-fit-{gpu.lower().replace(' ', '-')}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "fits": fits, "rows": rows}, indent=1) + "\n")
    lines = [f"# decode_linear: fixed cost and streaming rate on {gpu}", "", *(f"- {k}: `{v}`" for k, v in meta.items()),
             "", "| norm | epilogue | fixed µs | streaming GB/s | share of copy |", "|---|---|---|---|---|",
             *(f"| {f['norm']} | {f['epilogue']} | {f['fixed_us']:.2f} | {f['gbps']:.0f} | {f['share']:.2f} |" for f in fits),
             "", "| norm | epilogue | rows x k | MB | µs | GB/s |", "|---|---|---|---|---|---|",
             *(f"| {r['norm']} | {r['epilogue']} | {r['rows']}x{r['k']} | {r['mb']:.1f} | {r['us']:.2f} | {r['gbps']:.0f} |"
               for r in rows)]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
