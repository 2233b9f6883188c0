"""Where the time of one small step goes (a profile, not the benchmark): the kernels of one eet GPT-2 decode
step and of one eet BERT forward at batch 1, with their GPU time, against the wall time of the step.

    python tools/profile_steps.py [--out DIR] [--probes gpt2,gpt2-xl,bert-1x128,bert-32x128,...]

For each probe it prints (and writes DIR/profile-steps.json): kernels per step, GPU-busy µs per step (sum of
kernel durations), wall µs per step, and the kernels grouped by name. wall >> busy means the step is bound by
launches and gaps between kernels, not by the GPU's work.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

import eet_hf
from eet_hf.engine.generate import ENGINE_ATTR


def _kernels(prof) -> list[tuple[str, float]]:
    out = []
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            micros = getattr(event, "device_time", None) or getattr(event, "cuda_time", 0.0)
            out.append((event.name, float(micros)))
    return out


def _summary(label: str, kernels: list[tuple[str, float]], steps: int, wall_us: float) -> dict:
    by_name: dict[str, list[float]] = collections.defaultdict(list)
    for name, micros in kernels:
        by_name[name[:90]].append(micros)
    rows = sorted(((n, len(v) / steps, sum(v) / steps) for n, v in by_name.items()), key=lambda r: -r[2])
    result = {
        "probe": label, "kernels_per_step": len(kernels) / steps, "gpu_busy_us_per_step": sum(m for _, m in kernels) / steps,
        "wall_us_per_step": wall_us, "by_kernel": [{"kernel": n, "per_step": c, "us_per_step": t} for n, c, t in rows],
    }
    print(f"\n== {label}: {result['kernels_per_step']:.1f} kernels/step, GPU busy {result['gpu_busy_us_per_step']:.1f} "
          f"µs/step, wall {wall_us:.1f} µs/step")
    for n, c, t in rows[:25]:
        print(f"  {c:6.2f} x {t:8.2f} µs  {n}")
    return result


def _timed(fn, repeats: int) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e6


def gpt2_decode(dims=(768, 12, 12), batch: int = 1) -> dict:
    hidden, layers, heads = dims
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads)).to("cuda", torch.float16).eval()
    eet_hf.accelerate(model)
    ids = torch.randint(0, 50000, (batch, 128), device="cuda")
    kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    model.generate(ids, max_new_tokens=64, min_new_tokens=64, **kwargs)  # capture
    engine = model.__dict__[ENGINE_ATTR].engine
    graph, state, _ = next(iter(engine._graphs.values()))
    # Each replay advances the step state; rewinding it between rounds keeps every slot and index inside the
    # 192-token cache (prompt 128 + 64) the graph was captured for. Timing only: the tokens are not used.
    saved = (state.counters.clone(), state.step.clone())

    def rewind() -> None:
        state.counters.copy_(saved[0])
        state.step.copy_(saved[1])

    walls = []
    for _ in range(4):
        rewind()
        walls.append(_timed(graph.replay, 50))
    rewind()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            graph.replay()
        torch.cuda.synchronize()
    wall = sorted(walls)[len(walls) // 2]
    return _summary(f"gpt2 {hidden}x{layers} decode step bs{batch} (graph replay)", _kernels(prof), 20, wall)


def bert_forward(batch: int = 1, seq: int = 128, halfpad: bool = False) -> dict:
    """One BertModel forward; halfpad: the second half of the batch at half length (the benchmark's case)."""
    torch.manual_seed(0)
    hf = BertModel(BertConfig()).to("cuda", torch.float16).eval()
    model = eet_hf.accelerate(copy.deepcopy(hf))
    ids = torch.randint(1000, 30000, (batch, seq), device="cuda")
    mask = torch.ones_like(ids)
    if halfpad:
        mask[batch // 2 :, seq // 2 :] = 0
    with torch.inference_mode():
        for _ in range(3):
            model(ids, attention_mask=mask)
        wall = _timed(lambda: model(ids, attention_mask=mask), 50)
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(10):
                model(ids, attention_mask=mask)
            torch.cuda.synchronize()
    syncs = sum(1 for e in prof.events() if e.name in ("cudaStreamSynchronize", "cudaDeviceSynchronize",
                                                        "cudaMemcpyAsync", "aten::item", "aten::_local_scalar_dense"))
    label = f"bert-base forward {batch}x{seq}" + (" halfpad" if halfpad else "")
    result = _summary(label, _kernels(prof), 10, wall)
    result["host_sync_like_calls_per_forward"] = syncs / 10
    print(f"  host sync-like calls per forward: {syncs / 10:.1f}")
    return result


PROBES = {
    "gpt2": gpt2_decode,
    "gpt2-xl": lambda: gpt2_decode((1600, 48, 25)),
    "bert-1x128": bert_forward,
    "bert-32x128": lambda: bert_forward(32, 128),
    "bert-32x128-halfpad": lambda: bert_forward(32, 128, halfpad=True),
    "bert-32x512-halfpad": lambda: bert_forward(32, 512, halfpad=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=".", help="directory for profile-steps.json")
    parser.add_argument("--probes", default="gpt2,gpt2-xl,bert-1x128",
                        help=f"comma-separated, of: {','.join(PROBES)}")
    args = parser.parse_args()
    unknown = sorted(set(args.probes.split(",")) - set(PROBES))
    if unknown:
        parser.error(f"unknown probes {','.join(unknown)}; expected some of {','.join(PROBES)}")
    if not torch.cuda.is_available():
        parser.error("the probes profile CUDA kernels: run on a machine with a CUDA GPU")
    results = [PROBES[name]() for name in args.probes.split(",")]
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / "profile-steps.json"
    path.write_text(json.dumps({"meta": meta, "probes": results}, indent=1) + "\n")
    print("\nwritten", path)


if __name__ == "__main__":
    main()
