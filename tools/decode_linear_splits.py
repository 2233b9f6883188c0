"""decode_linear's work splits on the projections of real decode steps (a measurement, not the benchmark): for each
projection of a model (QKV, o, gate/up or fc, down or proj, LM head) and each split (8 or 16 warps per 16-row tile,
and 0: the kernel's own choice), µs per call and GB/s of weight streamed.

    python tools/decode_linear_splits.py [--models llama-1b,gpt2-xl] [--batch 1] [--out DIR]

Each measurement is a CUDA graph of `layers` back-to-back calls over distinct weights (as a step runs them, so the L2
cache never holds the next weight; PDL chains them as in the step), replayed 20 times between CUDA events. The
copy ceiling of the same run (decode-profile's: a device-to-device copy of 512 MiB) is printed for scale. Writes
DIR/decode-linear-splits-<gpu>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # evaluation/ from a checkout

from eet_hf.ops import ensure_loaded  # noqa: E402 - also registers torch.ops.eet
from evaluation.bench.decode_profile import copy_gbps, replay_us  # noqa: E402

SPLITS = (0, 8, 16)
# (name, rows, k, norm, epilogue, residual) per projection; rows of the gated epilogue are [gate; up].
_PROJECTIONS = {
    "llama-1b": lambda: [("qkv", 3072, 2048, "rms", "none"), ("o", 2048, 2048, None, "residual"),
                         ("gate_up", 16384, 2048, "rms", "silu_mul"), ("down", 2048, 8192, None, "residual"),
                         ("lm_head", 128256, 2048, "rms", "none")],
    "qwen3-1.7b": lambda: [("qkv", 4096, 2048, "rms", "none"), ("o", 2048, 2048, None, "residual"),
                           ("gate_up", 12288, 2048, "rms", "silu_mul"), ("down", 2048, 6144, None, "residual"),
                           ("lm_head", 151936, 2048, "rms", "none")],
    "gpt2-xl": lambda: [("qkv", 4800, 1600, "layer", "none"), ("o", 1600, 1600, None, "residual"),
                        ("fc", 6400, 1600, "layer", "gelu_new"), ("proj", 1600, 6400, None, "residual"),
                        ("lm_head", 50257, 1600, "layer", "none")],
    "gpt2": lambda: [("qkv", 2304, 768, "layer", "none"), ("o", 768, 768, None, "residual"),
                     ("fc", 3072, 768, "layer", "gelu_new"), ("proj", 768, 3072, None, "residual"),
                     ("lm_head", 50257, 768, "layer", "none")],
}
_LAYERS = {"llama-1b": 16, "qwen3-1.7b": 28, "gpt2-xl": 48, "gpt2": 12}


def _time_calls(calls, repeats: int = 20) -> float:
    """µs per call of a graph replaying `calls` in order."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:  # warm-up outside the capture
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    return replay_us(graph, rewind=lambda: None, repeats=repeats) / len(calls)


def measure(model: str, batch: int) -> list[dict]:
    rows = []
    layers = _LAYERS[model]
    for name, n, k, norm, epilogue in _PROJECTIONS[model]():
        copies = 2 if name == "lm_head" else layers  # two LM heads already pass the L2 cache
        gen = torch.Generator(device="cuda").manual_seed(0)
        weights = [torch.randn(n, k, device="cuda", dtype=torch.float16, generator=gen) / k**0.5 for _ in range(copies)]
        x = torch.randn(batch, k, device="cuda", dtype=torch.float16)
        norm_weight = None if norm is None else torch.ones(k, device="cuda", dtype=torch.float16)
        norm_bias = torch.zeros(k, device="cuda", dtype=torch.float16) if norm == "layer" else None
        residual = torch.randn(batch, n, device="cuda", dtype=torch.float16) if epilogue == "residual" else None
        for split in SPLITS:
            calls = [functools.partial(torch.ops.eet.decode_linear, x, w, None, norm_weight, 1e-5, residual, epilogue,
                                       norm_bias, norm or "rms", split) for w in weights]
            micros = _time_calls(calls)
            gbps = n * k * 2 / micros / 1e3
            rows.append({"model": model, "projection": name, "rows": n, "k": k, "batch": batch, "split": split,
                         "us": micros, "gbps": gbps})
            print(f"{model:10s} {name:8s} {n:6d}x{k:<5d} bs{batch} split {split:2d}: {micros:8.2f} µs {gbps:7.0f} GB/s",
                  flush=True)
        del weights
        torch.cuda.empty_cache()
    return rows


def cuda_ceiling(parser: argparse.ArgumentParser) -> float:
    """The copy ceiling of this GPU (GB/s), printed; a parser error without a GPU and the built extension."""
    if not torch.cuda.is_available() or not ensure_loaded():
        parser.error("needs a CUDA GPU and the built extension")
    ceiling = copy_gbps("cuda")
    print(f"copy ceiling {ceiling:.0f} GB/s", flush=True)
    return ceiling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="llama-1b,gpt2-xl")
    parser.add_argument("--batch", default="1", help="comma-separated decode batch sizes (rows of x, 1-16)")
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    ceiling = cuda_ceiling(parser)
    rows = [r for m in args.models.split(",") for b in args.batch.split(",") for r in measure(m, int(b))]
    gpu = torch.cuda.get_device_name()
    meta = {"gpu": gpu, "torch": torch.__version__, "copy_gbps": ceiling,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "python tools/decode_linear_splits.py --models " + args.models + " --batch " + args.batch}
    stem = Path(args.out) / f"decode-linear-splits-{gpu.lower().replace(' ', '-')}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [f"# decode_linear splits on {gpu}", "", *(f"- {k}: `{v}`" for k, v in meta.items()), "",
             "| model | projection | rows x k | batch | " + " | ".join(f"split {s} µs (GB/s)" for s in SPLITS) + " |",
             "|---|---|---|---|" + "---|" * len(SPLITS)]
    for key in dict.fromkeys((r["model"], r["projection"], r["batch"]) for r in rows):
        cells = {r["split"]: r for r in rows if (r["model"], r["projection"], r["batch"]) == key}
        first = next(iter(cells.values()))
        lines.append(f"| {key[0]} | {key[1]} | {first['rows']}x{first['k']} | {key[2]} | "
                     + " | ".join(f"{cells[s]['us']:.2f} ({cells[s]['gbps']:.0f})" for s in SPLITS) + " |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
