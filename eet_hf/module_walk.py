"""A model's parameter and buffer dicts, walked again only when the module tree may have changed.

Walking a module tree costs ~0.1-0.3 ms for a 1B model (nn.Module.modules() and its dicts); the encoder's graph keys
and every `generate` call need the tree's tensors. A process-wide counter, bumped by torch's registration hooks
whenever any module, parameter or buffer is registered (setattr of a submodule or Parameter,
load_state_dict(assign=True)), says when a cached walk is stale; the tensors themselves are read live from the
cached dicts, so `.to()`, `.half()` and `p.data = ...` show without a walk.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

_GENERATION = [0]
_WATCHING = [False]


def _bump(*_: Any) -> None:
    # Not while dynamo traces: HF's forwards register modules (Llama slices its ModuleList of layers), and a counter
    # bumped inside a compiled region becomes a guard that fails on the next call, so every model compiled in this
    # process (accelerated or not) would recompile at every step. A registration inside a compiled forward creates
    # temporary containers, never a model's parameter.
    if not torch.compiler.is_compiling():
        _GENERATION[0] += 1


def _watch_registrations() -> None:
    if _WATCHING[0]:
        return
    from torch.nn.modules import module as nn_module

    nn_module.register_module_module_registration_hook(_bump)
    nn_module.register_module_parameter_registration_hook(_bump)
    nn_module.register_module_buffer_registration_hook(_bump)
    _WATCHING[0] = True


def registrations() -> int:
    """A counter that changes whenever a module, parameter or buffer is registered anywhere in the process (counted
    from the first call on): what was read from a module tree is stale when it changed."""
    _watch_registrations()
    return _GENERATION[0]


class TensorDicts:
    """The non-empty `_parameters` / `_buffers` dicts of a model's modules (each module once per place it is held),
    in module order, walked again only after a registration anywhere or for another model."""

    def __init__(self) -> None:
        _watch_registrations()
        self._dicts: list[dict] = []
        self._key: tuple[int, int] | None = None

    def dicts(self, model: nn.Module) -> list[dict]:
        key = (id(model), _GENERATION[0])
        if key != self._key:
            self._dicts = [d for m in model.modules(remove_duplicate=False) for d in (m._parameters, m._buffers)
                           if d]
            self._key = key
        return self._dicts

    def tensors(self, model: nn.Module) -> list[torch.Tensor]:
        """Every parameter and buffer (None entries left out), read now."""
        return [t for t in itertools.chain.from_iterable(map(dict.values, self.dicts(model))) if t is not None]
