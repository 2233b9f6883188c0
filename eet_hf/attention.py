"""eet attention in HF's attention interface: one name, "eet", for both the attention function and the
mask function (without a mask function HF would hand the attention `None` and ignore padding).

The mask function returns SeqBounds for plain causal and bidirectional masks with left/right padding; any
other mask (sliding window, packed sequences, custom overlays, padding with holes) is materialized as HF's
boolean sdpa mask. Whatever eet's kernels cannot do — a mask tensor, options such as softcapping, dropout in
training, attention weights — runs HF's attention for that call, logged once: the implementation the model was
loaded with (PatchContext.use_attention records it on the model's modules), HF's sdpa when that was sdpa, else the
model's own eager attention (HF's reference, which accepts every option the model passes and returns the weights).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS,
    AttentionMaskInterface,
    bidirectional_mask_function,
    causal_mask_function,
    sdpa_mask,
    sliding_window_causal_mask_function,
)

from . import ops
from ._log import warn_once
from .bounds import DenseMask, SeqBounds, from_padding_mask, inspect_padding
from .errors import EetUnsupportedError

ATTN_NAME = "eet"
# The attribute on a model's modules that holds config._attn_implementation from before accelerate() (set by
# PatchContext.use_attention, removed by restore): where eet's fallbacks go. On modules, not on the config, so
# copies and pickles of the model keep it and save_pretrained never writes it.
LOADED_ATTN_ATTR = "_eet_loaded_attn_implementation"
logger = logging.getLogger("eet_hf")

# kwargs HF models may pass that change the attention function itself; eet's kernels implement none.
# (sliding_window is checked apart: a window at least as long as the keys hides nothing.)
_UNSUPPORTED_KWARGS = ("softcap", "s_aux", "sinks", "position_bias")
# HF's sliding-window causal mask function, as sliding_window_causal_mask_function builds it:
# and_masks(sliding_window_overlay(window), causal_mask_function). Recognised by its code objects.
_SLIDING_TEMPLATE = sliding_window_causal_mask_function(1)
_OVERLAY_CODE = _SLIDING_TEMPLATE.__closure__[0].cell_contents[0].__code__


def _sliding_causal_window(mask_function) -> int | None:
    """The window of an HF sliding-window causal mask function, None for any other function."""
    if getattr(mask_function, "__code__", None) is not _SLIDING_TEMPLATE.__code__ or not mask_function.__closure__:
        return None
    parts = mask_function.__closure__[0].cell_contents
    if not (isinstance(parts, tuple) and len(parts) == 2 and parts[1] is causal_mask_function):
        return None
    overlay = parts[0]
    if getattr(overlay, "__code__", None) is not _OVERLAY_CODE or not overlay.__closure__:
        return None
    window = overlay.__closure__[0].cell_contents
    return window if isinstance(window, int) else None


def _window_hides_nothing(window: int, q_length: int, q_offset: int | torch.Tensor, kv_offset: int) -> bool:
    """True when no causally visible key is `window` or more positions behind its query, so the sliding-window
    mask equals the causal one for this forward (HF keeps key kv for query q iff kv > q - window)."""
    if isinstance(q_offset, torch.Tensor):
        if _is_compiling():
            return False
        q_offset = int(q_offset.max())  # one read-back; static caches pass the offset as a tensor
    return q_offset + q_length - 1 - kv_offset < window


def config_sliding_window(config) -> int | None:
    """The sliding window some of the model's attention layers apply (config.sliding_window, when layer_types
    does not say that no layer slides), or None."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    return window if window is not None and (layer_types is None or "sliding_attention" in layer_types) else None


def _is_compiling() -> bool:
    return torch.compiler.is_compiling() or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def eet_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int | torch.Tensor = 0,
    kv_offset: int = 0,
    mask_function=causal_mask_function,
    attention_mask: torch.Tensor | None = None,
    local_size: int | None = None,
    device: torch.device | str = "cpu",
    **kwargs: Any,
) -> SeqBounds | DenseMask:
    """HF mask interface: SeqBounds when the mask is expressible by bounds, else HF's boolean sdpa mask, wrapped."""
    if isinstance(attention_mask, (SeqBounds, DenseMask)):  # made here already: generate() prepares static caches'
        if tuple(attention_mask.shape[-2:]) != (q_length, kv_length):
            raise ValueError(f"eet_hf: a prepared eet mask for {attention_mask.shape[-2]} queries and "
                             f"{attention_mask.shape[-1]} keys was passed to a forward with {q_length} and {kv_length}")
        return attention_mask
    # dynamo cannot read a closure built inside the compiled region: while compiling, a sliding-window mask is
    # HF's mask (correct; only the window-hides-nothing shortcut to eet's kernels is lost).
    window = None if _is_compiling() else _sliding_causal_window(mask_function)
    if window is not None and _window_hides_nothing(window, q_length, q_offset, kv_offset):
        mask_function = causal_mask_function  # e.g. Mistral's 4096-token window on shorter sequences
    if mask_function is causal_mask_function or mask_function is bidirectional_mask_function:
        # Padding with holes ([1, 0, 1, ...]) is not a run of keys; checking costs one read-back, skipped
        # while compiling or capturing, where eet assumes left/right padding (documented in the README).
        contiguous, full, runs = True, attention_mask is None, None
        if attention_mask is not None and not _is_compiling():
            contiguous, full, runs = inspect_padding(attention_mask[:, kv_offset : kv_offset + kv_length])
        if contiguous:
            return from_padding_mask(
                attention_mask,
                batch_size,
                q_length,
                kv_length,
                q_offset,
                kv_offset,
                causal=mask_function is causal_mask_function,
                device=torch.device(device),
                padded=not full,
                runs=runs,
            )
        warn_once("padding mask with holes (not left/right padding): HF's mask and attention")
    else:
        warn_once("mask other than plain causal/bidirectional (sliding window, packing, overlay): HF's mask and "
                  "attention")
    return DenseMask(sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        mask_function=mask_function,
        attention_mask=attention_mask,
        local_size=local_size,
        allow_is_causal_skip=False,
        device=device,
    ))


def _attentions_requested() -> bool:
    """True while HF collects attention weights (output_attentions=True), which eet's kernels don't produce."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:  # a transformers layout eet does not know: assume weights may be wanted
        return True
    collected = _active_collector.get()
    return bool(collected) and "attentions" in collected


def _bounds_without_mask(query: torch.Tensor, key: torch.Tensor, causal: bool) -> SeqBounds:
    # No mask from HF (a module called outside the model's forward): all keys valid, queries are the last rows.
    batch, q_len, kv_len = query.shape[0], query.shape[2], key.shape[2]
    return from_padding_mask(None, batch, q_len, kv_len, kv_len - q_len, 0, causal and q_len > 1, query.device)


def eet_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: SeqBounds | DenseMask | torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """HF attention interface. query: [batch, heads, q_len, head_dim]; key/value: [batch, kv_heads, kv_len,
    head_dim]; attention_mask: eet's mask function's output, None, or a 4D mask the caller prepared. Returns
    ([batch, q_len, heads, head_dim], weights or None)."""
    weights = _attentions_requested()
    reason = _hf_reason(module, key, attention_mask, dropout, weights, kwargs)
    if reason is not None:
        if isinstance(attention_mask, SeqBounds):
            attention_mask = DenseMask(attention_mask.dense_mask())
        return _hf_attention(module, query, key, value, attention_mask, dropout, scaling, is_causal, kwargs,
                             reason, weights)
    if attention_mask is None:
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        bounds = _bounds_without_mask(query, key, causal)
    else:
        bounds = attention_mask
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    out = ops.attention(
        query, key, value, bounds.kv_start, bounds.kv_end, bounds.q_offset, bounds.causal, float(scale),
        padded=bounds.padded,
    )
    if bounds.padded and query.shape[2] > 1 and _loaded_with(module) == "eager":
        out = _eager_rows_without_keys(out, value, bounds)
    return out, None


def _hf_reason(module, key, attention_mask, dropout, weights, kwargs) -> str | None:
    """Why this call needs HF's attention instead of eet's kernel, or None."""
    if weights:
        return "output_attentions=True (eet's kernels return no weights)"
    if isinstance(attention_mask, DenseMask):
        return "a mask eet's kernels do not express (sliding window, padding with holes, packing, overlay)"
    if isinstance(attention_mask, torch.Tensor):
        return "a prepared 4D mask"
    unsupported = [name for name in _UNSUPPORTED_KWARGS if kwargs.get(name) is not None]
    window = kwargs.get("sliding_window")
    if window is not None and window < key.shape[2]:
        unsupported.append("sliding_window")
    if unsupported:
        return f"attention options {unsupported}"
    if dropout > 0.0 and module.training:
        return "attention dropout in training mode"
    return None


def _loaded_with(module: torch.nn.Module) -> str | None:
    """The attention implementation the model was loaded with; None for a module accelerate() did not see (one
    built later from an accelerated model's config)."""
    return getattr(module, LOADED_ATTN_ATTR, None)


def _hf_attention(module, query, key, value, mask, dropout, scaling, is_causal, kwargs, reason, weights):
    """HF's attention for one call: sdpa when the model was loaded with sdpa and no weights are wanted, else the
    model's own eager attention. Other implementations (flash, flex, paged) take masks in their own formats, which
    eet does not build; HF's eager attention computes the same attention from the 4D mask. A mask eet built is
    handed over in the format HF would have built for that implementation; a prepared one as it came."""
    loaded = _loaded_with(module)
    if is_causal is not None:
        kwargs = {**kwargs, "is_causal": is_causal}
    if loaded == "sdpa" and not weights:
        warn_once(f"{reason}: HF's sdpa attention (the model's)")
        mask = mask.mask if isinstance(mask, DenseMask) else mask
        return _sdpa(module, query, key, value, mask, dropout, scaling, kwargs)
    warn_once(f"{reason}: HF's eager attention (the model was loaded with {loaded or 'an unrecorded one'})")
    if isinstance(mask, DenseMask):
        # HF's eager mask (masking_utils.eager_mask): 0 where visible, the dtype's minimum elsewhere, added to scores.
        zero = torch.zeros((), dtype=query.dtype, device=mask.mask.device)
        mask = torch.where(mask.mask, zero, torch.finfo(query.dtype).min)
    return _model_eager_attention(module)(module, query, key, value, mask, dropout=dropout, scaling=scaling,
                                          **kwargs)


def _model_eager_attention(module: torch.nn.Module) -> Callable:
    """The `eager_attention_forward` of the module's own modeling file: what HF's attention modules call for
    attn_implementation="eager" (the default they pass to ALL_ATTENTION_FUNCTIONS.get_interface). Looked up per
    call, so a patched function is the one that runs, as it would be in HF."""
    for cls in type(module).__mro__:
        eager = getattr(sys.modules.get(cls.__module__), "eager_attention_forward", None)
        if eager is not None:
            return eager
    return _eager_attention


def _eager_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """HF's eager attention (Llama's formula) for modules whose modeling file has none; only the options every HF
    eager attention takes."""
    unknown = [name for name in _UNSUPPORTED_KWARGS if kwargs.get(name) is not None]
    if unknown:
        raise EetUnsupportedError(f"eet_hf: {type(module).__name__} passes attention options {unknown} and its "
                                  "modeling file has no eager_attention_forward to run them")
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _eager_rows_without_keys(out: torch.Tensor, value: torch.Tensor, bounds: SeqBounds) -> torch.Tensor:
    """A query that sees no key (left padding) gets, in HF's eager attention, the dtype's minimum on every score,
    a uniform softmax, so the mean of V over all keys; eet's kernels write 0 there. The mean is one read of V, small
    next to the attention itself, so eager-loaded models get HF's values at padding positions and so HF's loss when
    labels there are not -100. out: [batch, q_len, heads, head_dim]; value: [batch, kv_heads, kv_len, head_dim]."""
    groups = out.shape[2] // value.shape[1]
    mean = value.mean(dim=2).repeat_interleave(groups, dim=1).unsqueeze(1)  # [batch, 1, heads, head_dim]
    empty = bounds.rows_without_keys()[:, :, None, None]  # [batch, q_len, 1, 1]
    return torch.where(empty, mean.to(out.dtype), out)


def _sdpa(module, query, key, value, mask, dropout, scaling, kwargs):
    out, weights = sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
        # Rows that see no key (padding) are zero, as in eet's kernels (torch's sdpa gives 0 there too, as of 2.5).
        any_visible = mask.any(-1).transpose(1, 2).unsqueeze(-1)  # [batch, q_len, 1, 1]
        out = torch.where(any_visible, out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out, weights


def register() -> None:
    """Register "eet" in HF's attention and mask interfaces (idempotent, process-wide)."""
    AttentionInterface.register(ATTN_NAME, eet_attention)
    AttentionMaskInterface.register(ATTN_NAME, eet_mask)
    assert ATTN_NAME in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping
