"""Timing and memory helpers: CUDA-event medians on GPU, perf_counter on CPU, peak allocated memory."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def wall_s(fn: Callable[[], object], device: str) -> float:
    """Seconds for one call, host-visible (first calls: compilation, kernel builds, graph capture)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median_ms(fn: Callable[[], object], device: str, repeats: int, warmup: int = 0) -> float:
    """Median milliseconds of `repeats` calls after `warmup` untimed ones (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    sync(device)
    samples = []
    for _ in range(max(1, repeats)):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(samples)


_baseline = {"bytes": 0}


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        _baseline["bytes"] = torch.cuda.memory_allocated()


def peak_gib(device: str, model: torch.nn.Module | None = None) -> float | None:
    """Peak GPU memory of one call since the last reset_peak, in GiB; None off CUDA (not measured).

    With `model`: what the call itself allocated at its peak plus that model's own weights, so memory still
    held by an earlier engine in the process (torch.compile's caches keep compiled models alive) is not
    charged to this one. Without: torch.cuda.max_memory_allocated as it is."""
    if device != "cuda":
        return None
    if model is None:
        return torch.cuda.max_memory_allocated() / 2**30
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()] if t.is_cuda)
    return (torch.cuda.max_memory_allocated() - _baseline["bytes"] + weights) / 2**30


def free_memory(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        torch._dynamo.reset()  # compiled models stay referenced by dynamo's caches until reset
        gc.collect()
        torch.cuda.empty_cache()
