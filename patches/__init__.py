"""One adapter per HF model family, picked by config.model_type.

Each adapter module exposes MODEL_TYPES and apply(model, ctx): it rewires module instances through the
PatchContext and records what it leaves to HF, with the reason. encoder.py serves every family with an encoder record
(encoder_records.py).
"""

from __future__ import annotations

from types import ModuleType

from . import encoder, generic, gpt2
from ._rewire import PatchContext

ADAPTERS: dict[str, ModuleType] = {t: adapter for adapter in (gpt2, encoder) for t in adapter.MODEL_TYPES}

__all__ = ["ADAPTERS", "PatchContext", "adapter_for"]


def adapter_for(model_type: str) -> ModuleType:
    """The family's own adapter, or the generic one (patches/generic.py) for any other model_type."""
    return ADAPTERS.get(model_type, generic)
