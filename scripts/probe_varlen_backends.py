"""Packed (varlen) BERT attention: torch's flash kernel against torch's cuDNN kernel on ragged sequences
(developer probe for eet_hf.ops.attention_varlen's backend choice; not the benchmark).

    PYTHONPATH=. python scripts/probe_varlen_backends.py [--out DIR]

For BERT base/large head shapes and the encoder's packings (exact: real tokens only; capacity: real tokens, then
one padding segment per sequence, some of them empty, as eet_hf/encoder/packing.py builds inside graphs) it
prints, per backend: whether it runs on q/k/v viewed out of one [tokens, 3, heads, 64] QKV buffer, its largest
error against an fp32 reference, its time (eager calls), the first-call time of batches with new token totals (a
per-shape plan build would show there), and, last, whether it can be captured into a CUDA graph. Writes DIR/probe-varlen.txt.
Not yet run in this form: its first version (graph-timed, logs/2026-12-02b/probe-varlen.log) stopped at cuDNN's
refused capture.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from eet_hf.ops import reference
from evaluation.bench.timing import median_ms

LINES: list[str] = []


def say(text: str = "") -> None:
    print(text, flush=True)
    LINES.append(text)


def flash(q, k, v, cu, max_len, scale):
    return torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, max_len, max_len, 0.0, False, False, scale=scale)[0]


def cudnn(q, k, v, cu, max_len, scale):
    return torch.ops.aten._cudnn_attention_forward(q, k, v, None, cu, cu, max_len, max_len, False, 0.0, False, False,
                                                   scale=scale)[0]


BACKENDS = {"flash": flash, "cudnn": cudnn}


def packing(lengths: list[int], seq: int, capacity: bool) -> tuple[torch.Tensor, int]:
    """cu_seqlens (int32, cuda) and the packed token count."""
    segments = list(lengths)
    if capacity:
        segments += [seq - n for n in lengths]  # one padding segment per sequence (empty when unpadded)
    cu = torch.tensor([0] + segments, dtype=torch.int64).cumsum(0).to(torch.int32)
    return cu.cuda(), int(cu[-1])


def capturable(fn) -> str:
    """Whether fn records into a CUDA graph. Run last: a refused capture can leave the process's CUDA state broken
    (2026-12-02: cuDNN's varlen call failed its capture, and the next allocation raised)."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        graph.replay()
        torch.cuda.synchronize()
        return "captured and replayed"
    except Exception as exc:  # noqa: BLE001 - a refusal is the result
        return f"refused: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def case(name: str, heads: int, lengths: list[int], seq: int, capacity: bool) -> None:
    cu, tokens = packing(lengths, seq, capacity)
    qkv = torch.randn(tokens, 3, heads, 64, device="cuda", dtype=torch.float16)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    scale = 64 ** -0.5
    want = reference.attention_varlen(q.float(), k.float(), v.float(), cu, seq, False, scale)
    say(f"\n== {name}: heads {heads}, {len(lengths)} sequences, {tokens} packed rows"
        f"{' (capacity: + padding segments)' if capacity else ''}")
    for backend, fn in BACKENDS.items():
        try:
            out = fn(q, k, v, cu, seq, scale)
            real = int(cu[len(lengths)])  # rows of real tokens (padding segments after them are discarded)
            err = (out[:real].float() - want[:real]).abs().max().item()
            say(f"  {backend:6s} max|err| {err:.2e}  finite {bool(torch.isfinite(out).all())}")
            ms = median_ms(lambda fn=fn: fn(q, k, v, cu, seq, scale), "cuda", 30, warmup=1)
            say(f"  {backend:6s} {ms * 1e3:8.1f} us (eager, CUDA events)")
        except Exception as exc:  # noqa: BLE001 - a backend refusing the inputs is a result
            say(f"  {backend:6s} refused: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")


def first_calls(heads: int, seq: int) -> None:
    """First-call time of each backend on batches whose token totals it has not seen."""
    say(f"\n== first calls on new token totals (heads {heads}, seq {seq}, batch 32)")
    gen = torch.Generator().manual_seed(1)
    for backend, fn in BACKENDS.items():
        times = []
        try:
            for _ in range(6):
                lengths = torch.randint(1, seq + 1, (32,), generator=gen).tolist()
                cu, tokens = packing(lengths, seq, False)
                qkv = torch.randn(tokens, 3, heads, 64, device="cuda", dtype=torch.float16)
                torch.cuda.synchronize()
                t = time.perf_counter()
                fn(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, seq, 0.125)
                torch.cuda.synchronize()
                times.append((time.perf_counter() - t) * 1e3)
            say(f"  {backend:6s} " + ", ".join(f"{t:.2f}" for t in times) + " ms")
        except Exception as exc:  # noqa: BLE001
            say(f"  {backend:6s} refused: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    torch.manual_seed(0)
    say(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    half = lambda b, s: [s] * (b // 2) + [s // 2] * (b - b // 2)  # noqa: E731
    for heads, model in ((12, "bert-base"), (16, "bert-large")):
        case(f"{model} 32x512 halfpad exact", heads, half(32, 512), 512, False)
        case(f"{model} 32x512 halfpad capacity", heads, half(32, 512), 512, True)
    case("bert-base 32x128 halfpad exact", 12, half(32, 128), 128, False)
    case("bert-base 32x128 halfpad capacity", 12, half(32, 128), 128, True)
    case("bert-base 1x128", 12, [128], 128, False)
    case("bert-base 8x128 lengths 1..128", 12, [1, 7, 128, 64, 100, 2, 128, 33], 128, False)
    first_calls(12, 512)
    say("\n== CUDA-graph capture (bert-base 32x512 halfpad exact)")
    cu, tokens = packing(half(32, 512), 512, False)
    qkv = torch.randn(tokens, 3, 12, 64, device="cuda", dtype=torch.float16)
    for backend, fn in BACKENDS.items():
        say(f"  {backend:6s} " + capturable(lambda fn=fn: fn(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, 512, 0.125)))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "probe-varlen.txt").write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
