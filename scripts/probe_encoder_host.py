"""Where an eet BERT forward spends its wall time beyond its kernels (developer probe, not the benchmark).

    PYTHONPATH=. python scripts/probe_encoder_host.py [--out DIR] [--cases 32x512h,32x128h,8x128,1x128]

For each case (batch x seq, "h": the second half of the batch at half length, as the encoder benchmark's halfpad):
- latency: CUDA-event time of one forward started on an idle GPU (what the encoder benchmark reports), and
  throughput: wall time per forward of 30 back-to-back forwards;
- the GPU's busy time per forward and its idle gaps (torch profiler, CUDA activity), with the host calls that
  wait on the device (cudaStreamSynchronize, cudaMemcpy*) per forward;
- the host's own time per Python function (cProfile over 20 forwards, top entries by own time).
Writes DIR/probe-encoder-host.txt (the same text it prints).
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import pstats
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import BertConfig, BertModel

import eet_hf
from evaluation.bench.timing import median_ms

LINES: list[str] = []


def say(text: str = "") -> None:
    print(text, flush=True)
    LINES.append(text)


def _inputs(batch: int, seq: int, halfpad: bool):
    ids = torch.randint(1000, 30000, (batch, seq), device="cuda")
    mask = torch.ones_like(ids)
    if halfpad:
        mask[batch // 2 :, seq // 2 :] = 0
        if batch == 1:
            mask[:, seq // 2 :] = 0
    return ids, mask


def _throughput_ms(fn, n: int = 30) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e3


def _gpu_profile(fn, n: int = 10) -> None:
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    kernels = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                     if e.device_type == torch.autograd.DeviceType.CUDA)
    busy = sum(b - a for a, b in kernels)
    gaps = [kernels[i + 1][0] - kernels[i][1] for i in range(len(kernels) - 1)]
    big = sorted((g for g in gaps if g > 20), reverse=True)
    waits = {}
    for e in prof.events():
        if e.name in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync", "cudaEventSynchronize",
                      "cudaGraphLaunch", "aten::_local_scalar_dense"):
            count, total = waits.get(e.name, (0, 0.0))
            waits[e.name] = (count + 1, total + (e.time_range.end - e.time_range.start))
    say(f"  kernels/forward {len(kernels) / n:.0f}, GPU busy {busy / n:.0f} us/forward (kernel spans, not de-overlapped)")
    say(f"  GPU idle gaps > 20 us: {len(big) / n:.1f}/forward, {sum(big) / n:.0f} us/forward; largest "
        + ", ".join(f"{g:.0f}" for g in big[:6]))
    for name, (count, total) in sorted(waits.items()):
        say(f"  host {name}: {count / n:.1f}/forward, {total / n:.0f} us/forward")


def _host_profile(fn, n: int = 20) -> None:
    prof = cProfile.Profile()
    torch.cuda.synchronize()
    prof.enable()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    prof.disable()
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.sort_stats("tottime").print_stats(22)
    say(f"  cProfile, top own time (all times for {n} forwards):")
    for line in text.getvalue().splitlines():
        if line.strip() and ("{" in line or "/" in line or "ncalls" in line):
            say("    " + line.strip()[:170])


def probe(label: str, batch: int, seq: int, halfpad: bool, models) -> None:
    ids, mask = _inputs(batch, seq, halfpad)
    say(f"\n== bert-base {label}: {batch}x{seq}{' halfpad' if halfpad else ''}, real tokens {int(mask.sum())}")
    for name, model in models:
        def fn(model=model):
            return model(ids, attention_mask=mask)
        with torch.inference_mode():
            for _ in range(4):
                fn()
            say(f" [{name}] latency {median_ms(fn, 'cuda', 30):.3f} ms, back-to-back {_throughput_ms(fn):.3f} ms/forward")
            if name == "eet":
                _gpu_profile(fn)
                _host_profile(fn)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--cases", default="32x512h,32x128h,8x128,1x128")
    args = parser.parse_args()
    torch.manual_seed(0)
    hf = BertModel(BertConfig()).to("cuda", torch.float16).eval()
    eet = eet_hf.accelerate(copy.deepcopy(hf))
    models = [("hf-sdpa", hf), ("eet", eet)]
    say(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    for case in args.cases.split(","):
        halfpad = case.endswith("h")
        batch, seq = (int(v) for v in case.rstrip("h").split("x"))
        probe(case, batch, seq, halfpad, models)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "probe-encoder-host.txt").write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
