"""Where the time to first token goes (a profile, not the benchmark): `generate(max_new_tokens=1)` of a prompt through
eet, its wall time against the host time until `generate` returns and the GPU time of its kernels.

    python tools/ttft_anatomy.py [--model llama-1b] [--batch 1] [--prompt 128] [--out FILE.json]

Prints the three times (ms per call, after warm-up calls, so the prompt's CUDA graph replays), the kernels per call,
the kernels by GPU time, and the host functions by cumulative time (cProfile: its overhead inflates host times about
2x, so compare them with each other). host-return close to wall means the call is host-bound.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # evaluation/ from a checkout

import eet_hf  # noqa: E402
from evaluation.bench import shapes as S  # noqa: E402


def anatomy(name: str, batch: int, prompt: int, calls: int = 20) -> dict:
    shape = next(m for m in S.OTHER_DECODERS + S.GPT2_SIZES if m.name == name)
    torch.manual_seed(0)
    model = eet_hf.accelerate(shape.build("cuda", torch.float16))
    ids = torch.randint(1, 1000, (batch, prompt), device="cuda")
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=1, min_new_tokens=1, do_sample=False,
                  pad_token_id=0, eos_token_id=None)
    with torch.inference_mode():
        for _ in range(4):  # the prompt's graph is captured on its second call
            model.generate(ids, **kwargs)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            model.generate(ids, **kwargs)
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / calls * 1e3
        start = time.perf_counter()
        model.generate(ids, **kwargs)  # returns before its kernels finish: the host's share of the call
        host = (time.perf_counter() - start) * 1e3
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                model.generate(ids, **kwargs)
            torch.cuda.synchronize()
        host_profile = cProfile.Profile()
        host_profile.enable()
        for _ in range(10):
            model.generate(ids, **kwargs)
        torch.cuda.synchronize()
        host_profile.disable()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_name: dict[str, float] = collections.defaultdict(float)
    for event in kernels:
        by_name[event.name[:100]] += event.device_time / 5
    text = io.StringIO()
    pstats.Stats(host_profile, stream=text).sort_stats("cumulative").print_stats(25)
    return {"model": name, "batch": batch, "prompt": prompt, "wall_ms": wall, "host_return_ms": host,
            "kernel_ms": sum(e.device_time for e in kernels) / 5 / 1e3, "kernels_per_call": len(kernels) / 5,
            "kernels_us": dict(sorted(by_name.items(), key=lambda kv: -kv[1])[:15]), "host_profile": text.getvalue()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama-1b")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("ttft_anatomy: needs a CUDA GPU")
    result = anatomy(args.model, args.batch, args.prompt)
    print(f"TTFT {result['model']} bs{result['batch']} prompt {result['prompt']}: wall {result['wall_ms']:.2f} ms, "
          f"host-return {result['host_return_ms']:.2f} ms, kernel-sum {result['kernel_ms']:.2f} ms, "
          f"kernels/call {result['kernels_per_call']:.0f}")
    for kernel, micros in result["kernels_us"].items():
        print(f"  {micros:9.1f} us  {kernel}")
    print(result["host_profile"])
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
