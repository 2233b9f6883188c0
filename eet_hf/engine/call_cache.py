"""Per-call host work of `generate` that is the same from one call to the next, done once and re-checked cheaply.

Time to first token is host-bound at batch 1 (llama-1b on an H100: 3.2 ms of host time for 1.8 ms of kernels,
evaluation/results/ttft-anatomy-h100.md). Two parts of it repeat identical work on every call:

- Deciding whether HF's generate would pick a decoding mode eet runs took a full `_prepare_generation_config` (a deep
  copy of the generation config, and in transformers 5.17 a model config rebuilt with validation): ~1 ms. The answer
  depends only on the model's generation config and config, an explicit generation config and the call's keyword
  arguments, so `ModeCache` keeps it per call form while shallow snapshots of those configs are unchanged.
- The walk over every parameter and buffer for the storage signature is kept between calls too (eet_hf/module_walk.py,
  shared with the encoder's graph keys).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

_PLAIN = (int, float, bool, str, type(None))


def _snapshot(obj: Any) -> dict | None:
    return None if obj is None else dict(object.__getattribute__(obj, "__dict__"))  # past HF's __getattribute__


def _same(a: dict | None, b: dict | None) -> bool:
    try:
        return a == b
    except Exception:  # noqa: BLE001 - a value whose == is not a bool (an array): treat as changed
        return False


def _frozen(value: Any) -> Any:
    """A hashable stand-in for a keyword argument's value, or None when it has none (the call is not cached)."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, torch.Tensor):
        return ("tensor",)  # model inputs: their values do not choose the mode
    if isinstance(value, (list, tuple)) and all(isinstance(v, _PLAIN) for v in value):
        return tuple(value)
    return None


class ModeCache:
    """`decide(model, config, kwargs)`'s answer per call form while the configs it read are unchanged."""

    def __init__(self) -> None:
        self._answers: dict[tuple, Any] = {}
        self._snapshots: tuple | None = None

    def get(self, model: nn.Module, config: Any, kwargs: dict, decide: Callable[[], Any]) -> Any:
        frozen = tuple(sorted((k, _frozen(v)) for k, v in kwargs.items()))
        if any(v is None and kwargs[k] is not None for k, v in frozen):
            return decide()  # an object argument (a processor list, a streamer): not cached
        snapshots = (_snapshot(model.generation_config), _snapshot(model.config), _snapshot(config))
        if self._snapshots is None or not all(_same(a, b) for a, b in zip(snapshots, self._snapshots)):
            self._answers.clear()
            self._snapshots = snapshots
        key = (id(config), frozen)
        if key not in self._answers:
            if len(self._answers) > 256:
                self._answers.clear()
            self._answers[key] = decide()
        return self._answers[key]
