"""What every suite receives: the run's options, the device, and a time budget that bounds the suite."""

from __future__ import annotations

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

    def wants_model(self, name: str) -> bool:
        return not self.models or name in self.models

    def wants_engine(self, name: str) -> bool:
        return not self.engines or name in self.engines

    def log(self, message: str) -> None:
        """A progress line (flushed: the GPU host returns only what reached stdout before a time-out)."""
        print(f"[bench {time.strftime('%H:%M:%S')} {self.budget.left():6.0f}s left] {message}", flush=True)
