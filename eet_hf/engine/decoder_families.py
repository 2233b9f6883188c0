"""Which decoder families the decode engine drives through HF's own layers (hf_layers_forward.py), and how.

Each entry reproduces the model-level part of that family's HF forward — what runs before the first layer and
after the last — for the transformers versions eet supports (5.17 through the newest). A family is listed only
once tests show the engine's tokens equal HF's (tests/test_engine_families.py). Anything else a model has that
changes the arithmetic (sliding windows that hide keys, rope scalings that re-read positions on the host) is
refused with a reason, and HF's loop runs on eet's forward instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from eet_hf import ops
from eet_hf.attention import config_sliding_window

from . import rotary_swap
from .hf_layers_forward import HFDecoderStack

_CACHE_KWARGS = ("cache", "past_key_values", "layer_past")
# Rope types whose HF forward reads the positions on the host (dynamic_rope_update): no graph capture.
_HOST_ROPE_TYPES = ("dynamic", "longrope")


def _cache_kwarg(layer: nn.Module) -> str | None:
    params = inspect.signature(type(layer).forward).parameters
    return next((name for name in _CACHE_KWARGS if name in params), None)


def _llama_like(model: nn.Module) -> dict:
    """Llama, Mistral, Qwen2, Qwen3, Phi-3: embed_tokens -> layers(rotary) -> norm -> lm_head."""
    base = model.model
    return dict(embed=lambda tokens, positions: base.embed_tokens(tokens), rotary=base.rotary_emb,
                layers=tuple(base.layers[: model.config.num_hidden_layers]), final=base.norm, max_positions=None)


def _gpt_neox(model: nn.Module) -> dict:
    """GPT-NeoX: embed_in -> emb_dropout -> layers(rotary) -> final_layer_norm -> embed_out."""
    base = model.gpt_neox
    return dict(embed=lambda tokens, positions: base.emb_dropout(base.embed_in(tokens)), rotary=base.rotary_emb,
                layers=tuple(base.layers), final=base.final_layer_norm, max_positions=None)


def _opt(model: nn.Module) -> dict:
    """OPT: embed_tokens [-> project_in] + learned positions -> layers -> [final_layer_norm] [-> project_out]."""
    decoder = model.model.decoder

    def embed(tokens, positions):
        inputs = decoder.embed_tokens(tokens)
        if decoder.project_in is not None:
            inputs = decoder.project_in(inputs)
        return inputs + decoder.embed_positions(None, 0, position_ids=positions)

    def final(hidden):
        if decoder.final_layer_norm is not None:
            hidden = decoder.final_layer_norm(hidden)
        return decoder.project_out(hidden) if decoder.project_out is not None else hidden

    positions = decoder.embed_positions.num_embeddings - decoder.embed_positions.offset
    return dict(embed=embed, rotary=None, layers=tuple(decoder.layers), final=final, max_positions=positions)


def _gpt2(model: nn.Module) -> dict:
    """GPT-2: wte + wpe (eet's embedding op: one rounding of the sum, as HF's) -> h -> ln_f -> lm_head (the engine
    runs in eval mode: no dropout). Only the fused step uses this entry: GPT-2 models it refuses run eet's lean GPT-2
    forward (gpt2_forward.py), not HF's layers."""
    base = model.transformer

    def embed(tokens, positions):
        return ops.embedding(tokens, positions, base.wte.weight, base.wpe.weight)

    return dict(embed=embed, rotary=None, layers=tuple(base.h), final=base.ln_f, max_positions=base.wpe.num_embeddings)


FAMILIES: dict[str, Callable[[nn.Module], dict]] = {
    "llama": _llama_like,
    "mistral": _llama_like,
    "qwen2": _llama_like,
    "qwen3": _llama_like,
    "phi3": _llama_like,
    "gpt_neox": _gpt_neox,
    "opt": _opt,
    "gpt2": _gpt2,
}


def model_refusal(model: nn.Module) -> str | None:
    """Why the engine cannot drive this model through HF's layers, or None."""
    if model.config.model_type not in FAMILIES:
        return f"model_type {model.config.model_type!r} has no decode-engine entry (decoder_families.py)"
    return config_refusal(model)


def config_refusal(model: nn.Module) -> str | None:
    """What in the model's config no engine forward (HF's layers or the fused step) can run, or None."""
    config = model.config
    if model.get_output_embeddings() is None:
        return f"{type(model).__name__} has no LM head"
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if layer_types - {"full_attention", "sliding_attention"}:
        return f"layer types {sorted(layer_types)}"
    rope = (getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) in _HOST_ROPE_TYPES:
        return f"rope_type {rope.get('rope_type', rope.get('type'))!r} reads positions on the host"
    for name in ("attn_logit_softcapping", "attention_chunk_size"):
        if getattr(config, name, None) is not None:
            return f"config.{name}"
    return None


def call_refusal(model: nn.Module, capacity: int) -> str | None:
    """Why this call (cache capacity `capacity` tokens) cannot run in the engine, or None: eet's bounds express
    causal attention over the whole cache, so a sliding window must not hide any key of the call."""
    window = config_sliding_window(model.config)
    if window is not None and window < capacity:
        return f"a {window}-token sliding window shorter than the call's {capacity}-token cache"
    return None


def decoder_stack(model: nn.Module) -> HFDecoderStack:
    """The engine's view of `model` (by reference: HF's modules and parameters). model_refusal must be None."""
    parts = FAMILIES[model.config.model_type](model)
    layers = parts["layers"]
    attn = _attention_module(layers[0])
    kwarg = _cache_kwarg(layers[0])
    if kwarg is None:
        raise TypeError(f"{type(layers[0]).__name__}.forward takes none of {_CACHE_KWARGS}")
    config = model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(attn, "head_dim", None) or getattr(attn, "head_size", None) or config.hidden_size // heads
    rotary = () if parts["rotary"] is None else rotary_swap.modules_using_rotary([_attention_module(x) for x in layers])
    return HFDecoderStack(model=model, lm_head=model.get_output_embeddings(), cache_kwarg=kwarg, kv_heads=kv_heads,
                          head_dim=head_dim, width=config.hidden_size, rotary_modules=rotary, **parts)


def _attention_module(layer: nn.Module) -> nn.Module:
    for name in ("self_attn", "attention"):
        if hasattr(layer, name):
            return getattr(layer, name)
    raise TypeError(f"{type(layer).__name__} has no self_attn/attention module")
