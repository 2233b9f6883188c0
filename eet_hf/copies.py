"""copy.deepcopy, copy.copy and pickling (torch.save) of an accelerated model.

What eet sets on a model is per instance and partly unpicklable: bound methods of local functions, closures over
the model's modules, engines holding CUDA graphs. So an accelerated model copies and pickles as what it stands
for: the plain HF model (PatchContext.plain_twin: the same tensors, configs and hooks, without eet's attributes)
and accelerate()'s options, accelerated again on the other side. A deep copy is then an accelerated model of its
own (its forwards bound to its own modules, its own config); a pickle loads to an accelerated model in any process
that has eet_hf, or to the plain HF model, with a warning, when accelerate() refuses it there.

accelerate() binds `__deepcopy__` and `__reduce_ex__` on the model instance (copy and pickle look them up on the
instance), so restore() removes them with everything else.
"""

from __future__ import annotations

import copy
import types
from typing import Any

import torch

from ._log import logger
from .distributed import sharding
from .errors import EetUnsupportedError


def install(model: torch.nn.Module, ctx: Any) -> None:
    """Make deepcopy and pickling of `model` go through its plain HF form (ctx: the model's PatchContext)."""
    ctx.bind(model, "__deepcopy__", types.MethodType(_deepcopy, model))
    ctx.bind(model, "__reduce_ex__", types.MethodType(_reduce_ex, model))


def _plain(model: torch.nn.Module, what: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(the model's plain twin, accelerate()'s options), or EetUnsupportedError for a tensor-parallel model."""
    split = sharding(model)
    if split is not None:
        raise EetUnsupportedError(
            f"eet_hf: {what} of a model split by accelerate(tensor_parallel=...) is not supported (its other "
            f"{split.world - 1} rank(s) hold the rest of the weights): load the model again on each rank, or save "
            "each rank's state_dict"
        )
    from . import api

    state = model.__dict__[api.STATE_ATTR]
    twin = state.ctx.plain_twin()
    del twin.__dict__[api.STATE_ATTR]
    return twin, dict(state.options)


def _deepcopy(model: torch.nn.Module, memo: dict[int, Any]) -> torch.nn.Module:
    from . import api

    twin, options = _plain(model, "copy.deepcopy")
    return api.accelerate(copy.deepcopy(twin, memo), **options)


def _reduce_ex(model: torch.nn.Module, protocol: int) -> tuple:
    twin, options = _plain(model, "pickling (torch.save, copy.copy)")
    return reaccelerate, (twin, options)


def reaccelerate(model: torch.nn.Module, options: dict[str, Any]) -> torch.nn.Module:
    """Unpickling: accelerate the plain model again with the options it was accelerated with; where accelerate()
    refuses (strict=True on another device or version, for example), the plain HF model, with a warning."""
    from . import api

    try:
        return api.accelerate(model, **options)
    except (EetUnsupportedError, RuntimeError) as error:
        logger.warning("eet_hf: a pickled accelerated %s loads as the plain HF model: accelerate(**%s) refused it "
                       "here: %s", type(model).__name__, options, error)
        return model
