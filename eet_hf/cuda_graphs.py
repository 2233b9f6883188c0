"""How every eet CUDA graph is captured: one eager warm-up run, then the capture, both on one side stream per device
that eet keeps for the life of the process.

Why one stream: cuBLAS keeps a workspace (32 MiB on Hopper) for each (handle, stream) it has run on, and torch holds
it until the process ends. A fresh `torch.cuda.Stream()` per capture draws the next of torch's pooled streams, so each
capture could add a workspace: the dozens of shapes a sentence-transformers `encode()` captures could pin up to 32 of
them (1 GiB), and a generate() call that captured its prompt's graph on its second use added 32-64 MiB to that call's
peak (GPT-2 at batch 1: 0.30 GiB against HF's 0.24). Warming up and capturing on the same stream also lets the
capture reuse the workspace the warm-up made, instead of allocating one inside the graph's private pool; running
the eager first use of what a later call captures on it too (`on_side_stream`) makes that workspace in the first
call, so the capturing call adds nothing to its peak.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

Result = TypeVar("Result")

_side_streams: dict[int, torch.cuda.Stream] = {}


def side_stream(device: torch.device | str | int | None = None) -> torch.cuda.Stream:
    """eet's capture stream for `device` (the current CUDA device if None): the same stream on every call."""
    device = torch.device("cuda") if device is None else torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = _side_streams.get(index)
    if stream is None:
        stream = _side_streams[index] = torch.cuda.Stream(index)
    return stream


def on_side_stream(fn: Callable[[], Result], device: torch.device | str | int | None = None) -> Result:
    """Run `fn` eagerly on eet's side stream, ordered after the current stream's work and before what it queues next:
    for the eager first use of something the next use captures, so that both allocate from (and leave their cuBLAS
    workspace on) one stream, and the capture adds nothing to the call that makes it."""
    side = side_stream(device)
    current = torch.cuda.current_stream(side.device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        result = fn()
    current.wait_stream(side)
    return result


def warm_up_and_capture(graph: torch.cuda.CUDAGraph, fn: Callable[[], Result], pool,
                        device: torch.device | str | int | None = None) -> Result:
    """Run `fn` once eagerly (lazy initialisation, such as cuBLAS workspaces and kernel attributes, must not happen
    inside a capture), then capture it into `graph` with memory from `pool`; returns what the captured call returned,
    the graph's static outputs. The current stream waits for the warm-up, so its inputs and outputs are ordered."""
    on_side_stream(fn, device)
    side = side_stream(device)
    with torch.cuda.graph(graph, pool=pool, stream=side):
        return fn()
