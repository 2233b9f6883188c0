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


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    """torch.cuda.max_memory_allocated since the last reset_peak, in GiB; None off CUDA (not measured)."""
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def free_memory(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
