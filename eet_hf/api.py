"""accelerate / restore / explain: the public entry points."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import attention, copies, distributed, ops, sentence_pipeline, wrappers
from ._log import warn_once
from .errors import EetUnsupportedError
from .patches import PatchContext, adapter_for
from .report import Report

# accelerate()'s options and their defaults.
DEFAULT_OPTIONS: dict[str, Any] = {
    "attention": True,  # eet attention through HF's attention interface
    "mlp": True,  # fused GEMM + bias + GELU in the MLP
    "strict": False,  # raise EetUnsupportedError instead of leaving a part to HF
    "generate": True,  # eet's decode loop behind model.generate (GPT-2 LM heads; KV arena, CUDA graphs)
    "tensor_parallel": None,  # True (default process group) or a ProcessGroup: split GPT-2 over its ranks
}
STATE_ATTR = "_eet_hf_state"  # the model's _State, in its instance dict


@dataclass
class _State:
    ctx: PatchContext
    options: dict[str, Any]


def _device_type(model: torch.nn.Module) -> str:
    param = next(model.parameters(), None)
    return param.device.type if param is not None else "cpu"


def _check_model(model: Any, entry: str) -> None:
    """TypeError naming what `entry` got when `model` is not a torch module (a model name, None, a tensor, ...)."""
    if isinstance(model, torch.nn.Module):
        return
    path = repr(model[:200]) if isinstance(model, str) else "path"
    got = f"str {path} (a name or path, not a model)" if isinstance(model, str) else type(model).__name__
    raise TypeError(
        f"eet_hf.{entry} expects a loaded transformers model (a PreTrainedModel), got {got}; load it first, e.g. "
        f"model = AutoModelForCausalLM.from_pretrained({path}) (or AutoModel / AutoModelForSequenceClassification "
        f"...), then eet_hf.{entry}(model)"
    )


def _kernels(model: torch.nn.Module) -> str:
    return "cuda" if _device_type(model) == "cuda" and ops.ensure_loaded() else "reference"


def accelerate(model: torch.nn.Module, **options: Any) -> torch.nn.Module:
    """Rewire a transformers model in place to run on eet's fused ops; returns the same object.

    `model` may also hold transformers models without being one (a sentence-transformers SentenceTransformer or
    CrossEncoder, your own wrapper module): each outermost transformers model inside is accelerated with these
    options, and the wrapper itself (its forward, tokenizer, pooling) stays as it is (eet_hf/wrappers.py), but for a
    SentenceTransformer's encode(), which tokenizes ahead of the forward on threads (eet_hf/sentence_pipeline.py).
    Options: attention (bool), mlp (bool), generate (bool: eet's decode loop behind model.generate),
    strict (bool: raise instead of falling back to HF code), tensor_parallel (None, True for the default
    torch.distributed group, or a ProcessGroup: GPT-2's heads and MLP columns split over the group's ranks,
    permanently; call it on every rank with the same inputs, see eet_hf/distributed.py).
    Calling it again with the same options does nothing; with other options it re-applies them.
    """
    _check_model(model, "accelerate")
    held = wrappers.held_models(model)
    if held:
        return _accelerate_held(model, [inner for _, inner in held], options)
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise TypeError(f"eet_hf.accelerate: unknown option(s) {unknown}; known options: {sorted(DEFAULT_OPTIONS)}")
    opts = {**DEFAULT_OPTIONS, **options}
    group = distributed.resolve(opts["tensor_parallel"])
    state = model.__dict__.get(STATE_ATTR)
    if state is not None:
        if state.options == opts:
            return model
        distributed.check(model, group)
        model.__dict__.pop(STATE_ATTR).ctx.undo()  # eet's rewiring only: a tensor-parallel split stays
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "model_type"):
        raise EetUnsupportedError(
            f"eet_hf.accelerate expects a transformers PreTrainedModel with a config, got {type(model).__name__}"
        )
    distributed.check(model, group)
    ctx = PatchContext(model, opts, _kernels(model))
    adapter = adapter_for(config.model_type)
    try:
        if getattr(adapter, "SELECTS_ATTENTION", False):
            adapter.apply(model, ctx)  # generic path: picks attention itself, warns when nothing applies
        else:
            _apply(model, ctx, adapter)
        if group is not None:  # after the adapter, so a strict refusal comes before any weight is split
            ctx.report.accelerated.append(distributed.shard(model, group).describe())
        ctx.finish()
        copies.install(model, ctx)
    except BaseException:
        ctx.undo()
        raise
    model.__dict__[STATE_ATTR] = _State(ctx, opts)
    return model


def _accelerate_held(wrapper: torch.nn.Module, models: list[torch.nn.Module], options: dict[str, Any]) -> torch.nn.Module:
    """accelerate() of each transformers model a wrapper holds, and of a SentenceTransformer's encode loop; a refusal
    undoes the models this call accelerated."""
    newly = [m for m in models if STATE_ATTR not in m.__dict__]
    try:
        for inner in models:
            accelerate(inner, **options)
        sentence_pipeline.install(wrapper)
    except BaseException:
        for inner in newly:
            restore(inner)
        raise
    return wrapper


def _apply(model: torch.nn.Module, ctx: PatchContext, adapter) -> None:
    if model.training:
        warn_once("model is in training mode: HF's forwards run until model.eval()")
    adapter.apply(model, ctx)
    if not ctx.options["attention"]:
        return
    if getattr(model.config, "add_cross_attention", False):
        ctx.fallback("attention", "cross-attention models keep HF attention (eet attention is self-attention only)")
        return
    attention.register()
    ctx.use_attention(attention.ATTN_NAME)
    ctx.report.accelerated.append("attention (HF AttentionInterface 'eet')")


def restore(model: torch.nn.Module) -> torch.nn.Module:
    """Undo accelerate(): HF's own forwards, attention and config again (on a wrapper: of each transformers model it
    holds). Harmless on a plain model. Raises EetUnsupportedError, changing nothing, on a model split by
    accelerate(tensor_parallel=...)."""
    _check_model(model, "restore")
    held = wrappers.held_models(model)
    if held:
        for _, inner in held:
            restore(inner)
        sentence_pipeline.remove(model)
        return model
    distributed.refuse_restore(model)
    state = model.__dict__.pop(STATE_ATTR, None)
    if state is not None:
        state.ctx.undo()
    return model


def explain(model: torch.nn.Module) -> Report:
    """What accelerate() rewired (`.accelerated`) and what it left to HF (`.fallbacks`, path -> reason). On a wrapper
    (a SentenceTransformer, ...): the report of the transformers model inside (of several: entries prefixed with
    their paths)."""
    _check_model(model, "explain")
    held = wrappers.held_models(model)
    if held:
        return wrappers.merged_report([(path, explain(inner)) for path, inner in held])
    state = model.__dict__.get(STATE_ATTR)
    if state is None:
        return Report(model_type=getattr(getattr(model, "config", None), "model_type", type(model).__name__),
                      kernels="none", fallbacks={"<model>": "not accelerated (call eet_hf.accelerate(model))"})
    report = state.ctx.report
    report.kernels = _kernels(model)
    return report.on_device(_device_type(model))  # a copy: CUDA-only parts (graphs) count only on CUDA
