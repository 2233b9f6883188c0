"""eet attention in HF's attention interface: one name, "eet", for both the attention function and the
mask function (without a mask function HF would hand the attention `None` and ignore padding).

The mask function returns SeqBounds for plain causal and bidirectional masks with left/right padding; any
other mask (sliding window, packed sequences, custom overlays, padding with holes) is materialized as HF's
sdpa mask, and the attention function then runs HF's sdpa path on it — correct, logged once.
"""

from __future__ import annotations

import logging
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
from .bounds import SeqBounds, from_padding_mask, inspect_padding

ATTN_NAME = "eet"
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
) -> SeqBounds | torch.Tensor | None:
    """HF mask interface: SeqBounds when the mask is expressible by bounds, else HF's sdpa mask."""
    if isinstance(attention_mask, SeqBounds):  # made by this function already: generate() prepares static caches'
        if (attention_mask.q_len, attention_mask.kv_len) != (q_length, kv_length):
            raise ValueError(f"eet_hf: a prepared eet mask for {attention_mask.q_len} queries and "
                             f"{attention_mask.kv_len} keys was passed to a forward with {q_length} and {kv_length}")
        return attention_mask
    window = _sliding_causal_window(mask_function)
    if window is not None and _window_hides_nothing(window, q_length, q_offset, kv_offset):
        mask_function = causal_mask_function  # e.g. Mistral's 4096-token window on shorter sequences
    if mask_function is causal_mask_function or mask_function is bidirectional_mask_function:
        # Padding with holes ([1, 0, 1, ...]) is not a run of keys; checking costs one read-back, skipped
        # while compiling or capturing, where eet assumes left/right padding (documented in the README).
        contiguous, full = True, attention_mask is None
        if attention_mask is not None and not _is_compiling():
            contiguous, full = inspect_padding(attention_mask[:, kv_offset : kv_offset + kv_length])
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
            )
        warn_once("padding mask with holes (not left/right padding): attention uses HF's sdpa path")
    else:
        warn_once("mask other than plain causal/bidirectional (sliding window, packing, overlay): HF's sdpa path")
    return sdpa_mask(
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
    )


def _attentions_requested() -> bool:
    """True while HF collects attention weights (output_attentions=True), which eet's kernels don't produce."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:  # a transformers layout eet does not know: assume weights may be wanted
        return True
    collected = _active_collector.get()
    return bool(collected) and "attentions" in collected


def _eager_with_weights(module, query, key, value, bounds: SeqBounds, scaling: float):
    """output_attentions=True: HF-style eager attention that returns the weights, in fp32 softmax."""
    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1)
    v = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, k.transpose(-1, -2)).float() * scaling
    scores = scores.masked_fill(~bounds.dense_mask(), torch.finfo(torch.float32).min)
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    return torch.matmul(weights, v).transpose(1, 2).contiguous(), weights


def _bounds_without_mask(query: torch.Tensor, key: torch.Tensor, causal: bool) -> SeqBounds:
    # No mask from HF (a module called outside the model's forward): all keys valid, queries are the last rows.
    batch, q_len, kv_len = query.shape[0], query.shape[2], key.shape[2]
    return from_padding_mask(None, batch, q_len, kv_len, kv_len - q_len, 0, causal and q_len > 1, query.device)


def eet_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: SeqBounds | torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """HF attention interface. query: [batch, heads, q_len, head_dim]; key/value: [batch, kv_heads, kv_len,
    head_dim]. Returns ([batch, q_len, heads, head_dim], weights or None)."""
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    unsupported = [name for name in _UNSUPPORTED_KWARGS if kwargs.get(name) is not None]
    window = kwargs.get("sliding_window")
    if window is not None and window < key.shape[2]:
        unsupported.append("sliding_window")
    if isinstance(attention_mask, SeqBounds):
        bounds = attention_mask
    elif attention_mask is None:
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        bounds = _bounds_without_mask(query, key, causal)
    else:
        warn_once("attention received a prepared mask tensor (custom 4D mask): HF's sdpa path")
        return _sdpa(module, query, key, value, attention_mask, dropout, scaling, is_causal, kwargs)
    if unsupported or (dropout > 0.0 and module.training):
        reason = f"attention options {unsupported}" if unsupported else "dropout in training mode"
        warn_once(f"{reason}: HF's sdpa path")
        return _sdpa(module, query, key, value, bounds.dense_mask(), dropout, scaling, is_causal, kwargs)
    if _attentions_requested():
        warn_once("output_attentions=True: eager attention (eet kernels return no weights)")
        return _eager_with_weights(module, query, key, value, bounds, scaling)
    out = ops.attention(
        query, key, value, bounds.kv_start, bounds.kv_end, bounds.q_offset, bounds.causal, float(scaling),
        padded=bounds.padded,
    )
    return out, None


def _sdpa(module, query, key, value, mask, dropout, scaling, is_causal, kwargs):
    if is_causal is not None:
        kwargs = {**kwargs, "is_causal": is_causal}
    out, weights = sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
        # Rows that see no key (padding) are zero, as in eet's kernels, rather than whatever sdpa returns.
        any_visible = mask.any(-1).transpose(1, 2).unsqueeze(-1)  # [batch, q_len, 1, 1]
        out = torch.where(any_visible, out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out, weights


def register() -> None:
    """Register "eet" in HF's attention and mask interfaces (idempotent, process-wide)."""
    AttentionInterface.register(ATTN_NAME, eet_attention)
    AttentionMaskInterface.register(ATTN_NAME, eet_mask)
    assert ATTN_NAME in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping
