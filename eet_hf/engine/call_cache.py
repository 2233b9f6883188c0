"""Per-call host work of `generate` that is the same from one call to the next, done once and re-checked cheaply.

Time to first token is host-bound at batch 1 (opt-1.3b on an H100: 3.7 ms of host time for 2.2 ms of kernels,
evaluation/results/ttft-anatomy-h100.md). Two parts of it repeat identical work on every call:

- HF's `_prepare_generation_config` deep-copies the generation config and merges the model's defaults into it; in
  transformers 5.17 it also rebuilds a default model config with validation to look for legacy generation values in
  `model.config`. That is about half of HF's own preparation of a generate call (2 of 3 ms on a 5.17 CPU host, 0.5 of
  1.9 ms on 5.25). Its result depends only on the model's generation config and config, an explicit generation config
  and the call's keyword arguments, so `PreparedConfigs` keeps it per call form while snapshots of those configs are
  unchanged, and hands each call a fresh copy (HF's generate writes into the one it gets). The same entry keeps
  whether eet's loop can take the call form (the decoding mode HF would pick).
- The walk over every parameter and buffer for the storage signature is kept between calls too (eet_hf/module_walk.py,
  shared with the encoder's graph keys).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

_PLAIN = (int, float, bool, str, type(None))
_MAX_ENTRIES = 256


def _snapshot(obj: Any) -> dict | None:
    """The object's attributes (past HF's __getattribute__), containers copied so an in-place edit shows as a change."""
    if obj is None:
        return None
    return {k: v if isinstance(v, _PLAIN) else copy.deepcopy(v)
            for k, v in object.__getattribute__(obj, "__dict__").items()}


def _same(a: dict | None, b: dict | None) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - a value whose == is not a bool (an array): treat as changed
        return False


def _frozen(value: Any) -> Any:
    """A hashable stand-in for a keyword argument's value, or None when it has none (the call is not cached)."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, torch.Tensor):
        return ("tensor",)  # model inputs: their values do not change the prepared config
    if isinstance(value, (list, tuple)) and all(isinstance(v, _PLAIN) for v in value):
        return (type(value).__name__, *value)
    return None


def _fresh(config: Any) -> Any:
    """A copy of a prepared GenerationConfig as good as HF's deep copy: plain values are shared (immutable), every
    other value is deep-copied (eos id lists, compile / watermarking configs: HF may write into them)."""
    clone = copy.copy(config)
    attributes = object.__getattribute__(clone, "__dict__")
    for key, value in attributes.items():
        if not isinstance(value, _PLAIN):
            attributes[key] = copy.deepcopy(value)
    return clone


class _Prepared:
    """One call form's prepared config: a private template, and where each model kwarg comes from."""

    def __init__(self, config: Any, model_kwargs: dict, kwargs: dict) -> None:
        self.template = _fresh(config)
        # (name, None) for a model kwarg passed through from the call (taken from each call: tensors differ), or
        # (name, (value,)) for one HF set itself to a plain value (output_attentions=True from the config).
        self.sources = [(k, None) if k in kwargs and v is kwargs[k] else (k, (v,)) for k, v in model_kwargs.items()]
        self.cacheable = all(source is None or isinstance(source[0], _PLAIN) for _, source in self.sources)
        self.mode_refusal: tuple | None = None  # (reason or None,) once decided

    def result(self, kwargs: dict) -> tuple[Any, dict]:
        return _fresh(self.template), {k: kwargs[k] if source is None else source[0] for k, source in self.sources}


class PreparedConfigs:
    """HF's `_prepare_generation_config(model, generation_config, **kwargs)` per call form while the configs it reads
    are unchanged. Installed as the model's `_prepare_generation_config` (so HF's generate uses it too) when the
    model's class uses GenerationMixin's own; a class with its own version is always asked."""

    def __init__(self, prepare: Callable[..., tuple[Any, dict]]) -> None:
        self._prepare = prepare  # HF's function (the model's class's)
        self._entries: dict[tuple, _Prepared] = {}
        self._snapshots: tuple | None = None

    def prepare(self, model: nn.Module, config: Any, kwargs: dict) -> tuple[Any, dict]:
        entry = self._entry(model, config, kwargs)
        return entry.result(kwargs) if entry is not None else self._prepare(model, config, **kwargs)

    def mode_refusal(self, model: nn.Module, config: Any, kwargs: dict,
                     decide: Callable[[Any], str | None]) -> str | None:
        """`decide(prepared generation config)` kept with the call form's entry."""
        entry = self._entry(model, config, kwargs)
        if entry is None:
            return decide(self._prepare(model, config, **kwargs)[0])
        if entry.mode_refusal is None:
            entry.mode_refusal = (decide(entry.result(kwargs)[0]),)
        return entry.mode_refusal[0]

    def _entry(self, model: nn.Module, config: Any, kwargs: dict) -> _Prepared | None:
        """The call form's entry (prepared now if new; one HF's answer holds objects a later call must not share is
        returned for this call only), or None for an object argument (asked of HF every time)."""
        frozen = tuple(sorted((k, _frozen(v)) for k, v in kwargs.items()))
        if any(v is None and kwargs[k] is not None for k, v in frozen):
            return None
        snapshots = (_snapshot(model.generation_config), _snapshot(model.config), _snapshot(config))
        if self._snapshots is None or not all(_same(a, b) for a, b in zip(snapshots, self._snapshots)):
            self._entries.clear()
            self._snapshots = snapshots
        key = (id(config), frozen)
        entry = self._entries.get(key)
        if entry is None:
            prepared, model_kwargs = self._prepare(model, config, **kwargs)  # HF's errors reach the caller
            entry = _Prepared(prepared, model_kwargs, kwargs)
            if not entry.cacheable:
                return entry
            if len(self._entries) >= _MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = entry
        return entry
