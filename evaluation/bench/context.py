"""What every suite receives: the run's options, the device, and a time budget that bounds the suite."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch


class Budget:
    """A wall-clock allowance for one suite: suites check `spent()` before starting each case."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)

    def spent(self) -> bool:
        return self.left() <= 0


@dataclass
class RunContext:
    """Options shared by the suites. `models` / `engines` empty means all of them."""

    quick: bool
    device: str
    dtype: torch.dtype
    repeats: int
    budget: Budget
    models: frozenset[str] = frozenset()
    engines: frozenset[str] = frozenset()
    notes: list[str] = field(default_factory=list)  # lines for the suite's markdown
    # --hf-sdpa-without-cudnn: torch's cuDNN SDPA backend off while HF's sdpa engine runs (decoder-layer suite).
    hf_sdpa_without_cudnn: bool = False

    def wants_model(self, name: str) -> bool:
        return not self.models or name in self.models

    def wants_engine(self, name: str) -> bool:
        return not self.engines or name in self.engines

    @contextlib.contextmanager
    def engine_backends(self, engine: str):
        """Around an engine's calls: with hf_sdpa_without_cudnn, hf-sdpa runs with torch's cuDNN SDPA backend off
        (flash / efficient / math remain; restored after). Why: cuDNN builds an execution plan per new key length
        (~37 ms each on the H200), so HF sdpa's first pass over thousands of decode lengths costs minutes."""
        toggle = getattr(torch.backends.cuda, "enable_cudnn_sdp", None)
        if not (self.hf_sdpa_without_cudnn and engine == "hf-sdpa" and toggle is not None):
            yield
            return
        was = torch.backends.cuda.cudnn_sdp_enabled()
        toggle(False)
        try:
            yield
        finally:
            toggle(was)

    def log(self, message: str) -> None:
        """A progress line (flushed: the GPU host returns only what reached stdout before a time-out)."""
        print(f"[bench {time.strftime('%H:%M:%S')} {self.budget.left():6.0f}s left] {message}", flush=True)
