"""Tensor parallelism for `accelerate(model, tensor_parallel=group)`: resolve the group, check, shard.

Where transformers ships a tensor-parallel plan for a family (`config.base_model_tp_plan`: Llama, Mistral,
Qwen2, ...), that plan is the way: load with `from_pretrained(..., distributed_config=DistributedConfig(
tp_plan="auto"))` under torchrun, then call `eet_hf.accelerate(model)` as usual (eet's norms and attention take
the local heads from the tensors; generate runs HF's loop). GPT-2 has no such plan, so eet splits it itself
(patches/gpt2_tp.py). The split is permanent: the other ranks' weights are gone from this process, so restore()
refuses rather than hand back a model that is not the original.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
import torch.distributed as dist

from .errors import EetUnsupportedError
from .patches import gpt2_tp

TP_ATTR = "_eet_hf_tensor_parallel"
ADAPTERS: dict[str, ModuleType] = {t: gpt2_tp for t in gpt2_tp.MODEL_TYPES}


@dataclass(frozen=True)
class TensorParallel:
    """How a model was split: this process is `rank` of `world` in `group`."""

    group: Any  # torch.distributed.ProcessGroup
    rank: int
    world: int

    def describe(self) -> str:
        return f"tensor parallel: rank {self.rank} of {self.world} (heads and MLP columns split, all-reduce)"


def resolve(option: Any) -> Any | None:
    """accelerate's `tensor_parallel` option -> a ProcessGroup, or None when off.

    None / False: off. True: the default group (all ranks torchrun started). A ProcessGroup: that group.
    """
    if option is None or option is False:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        raise EetUnsupportedError(
            "eet_hf.accelerate(tensor_parallel=...) needs torch.distributed initialised: launch with torchrun and "
            "call torch.distributed.init_process_group() (backend 'nccl' on GPUs, 'gloo' on CPUs) first"
        )
    if option is True:
        return dist.group.WORLD
    if isinstance(option, dist.ProcessGroup):
        return option
    raise TypeError(
        f"eet_hf.accelerate: tensor_parallel must be None, True (the default process group) or a "
        f"torch.distributed.ProcessGroup, got {type(option).__name__}"
    )


def sharding(model: torch.nn.Module) -> TensorParallel | None:
    """How eet split this model, or None when it did not."""
    return model.__dict__.get(TP_ATTR)


def check(model: torch.nn.Module, group: Any | None) -> None:
    """Raise EetUnsupportedError, before anything changes, when `model` cannot run with this group."""
    done = sharding(model)
    if done is not None:
        if group is not done.group:
            raise EetUnsupportedError(
                f"eet_hf.accelerate: this model is split across {done.world} ranks (tensor_parallel); pass the same "
                "tensor_parallel group again (the split cannot be undone or changed in place)"
            )
        return
    if group is None:
        return
    model_type = model.config.model_type
    adapter = ADAPTERS.get(model_type)
    if adapter is None:
        raise EetUnsupportedError(_no_adapter(model, model_type))
    adapter.check(model, dist.get_world_size(group))


def split_by_transformers(model: torch.nn.Module) -> bool:
    """True for a model split by transformers' tensor-parallel plan (its weights are DTensors)."""
    if not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _no_adapter(model: torch.nn.Module, model_type: str) -> str:
    if split_by_transformers(model):
        return (f"eet_hf.accelerate: this {model_type} model is already split by transformers' tensor-parallel "
                "plan; call eet_hf.accelerate(model) without tensor_parallel")
    if getattr(model.config, "base_model_tp_plan", None):
        return (f"eet_hf.accelerate(tensor_parallel=...): transformers has a tensor-parallel plan for "
                f"{model_type}: load the model with from_pretrained(..., distributed_config=DistributedConfig("
                f"tp_plan='auto')) under torchrun, then call "
                "eet_hf.accelerate(model) without tensor_parallel")
    return (f"eet_hf.accelerate(tensor_parallel=...): no tensor-parallel split for model type {model_type!r} "
            f"(eet splits {sorted(ADAPTERS)}; transformers has no plan for it)")


def shard(model: torch.nn.Module, group: Any) -> TensorParallel:
    """Split `model` over `group` in place (check() first); idempotent for the same group."""
    done = sharding(model)
    if done is not None:
        return done
    tp = TensorParallel(group, dist.get_rank(group), dist.get_world_size(group))
    ADAPTERS[model.config.model_type].shard(model, group, tp.rank, tp.world)
    model.__dict__[TP_ATTR] = tp
    return tp


def refuse_restore(model: torch.nn.Module) -> None:
    """restore() on a split model: raise, naming why and what to do instead."""
    tp = sharding(model)
    if tp is not None:
        raise EetUnsupportedError(
            f"eet_hf.restore: this model was split across {tp.world} ranks by accelerate(tensor_parallel=...); "
            "the other ranks' weights are not in this process, so it cannot be given back as the plain HF model. "
            "Load the model again for plain HF; nothing was changed"
        )
