"""Generic adapter: any HF model whose model_type has no adapter of its own (patches.adapter_for falls back here).

It accelerates what it recognises and reports the rest, module by module:
- attention: eet's attention and mask function through HF's AttentionInterface, for models that dispatch through
  it (`_supports_attention_backend`) and have self-attention only. Causal and bidirectional, grouped-query, left
  and right padding run eet's kernels; a sliding window shorter than the sequence, softcapping and other mask
  shapes take HF's sdpa path for that forward (attention.py), and the report says which of these the config has;
- norms and GELU MLPs recognised by structure (generic_modules.py), each switched to eet's op only after its first
  call reproduced the module's own output (generic_check.py);
- left to HF and reported: rotary embeddings, activations without an eet kernel (SiLU-gated MLPs, ReLU, ...),
  attention of models that bypass the interface, cross-attention.
A model with nothing to accelerate is left unchanged with one warning.
Generation: decoder families listed in eet_hf/engine/decoder_families.py (Llama, Mistral, Qwen2, GPT-NeoX, OPT) get
eet's decode loop (KV arena, CUDA graphs) driving HF's own layers with eet attention; other models run HF's
generate loop over these forwards, reported.
"""

from __future__ import annotations

from torch import nn

from eet_hf import attention, distributed
from eet_hf._log import logger, warn_once
from eet_hf.engine import decoder_families, fused_decoder, fused_decoder_refusal
from eet_hf.engine import generate as generate_engine

from . import generic_modules as M
from ._rewire import PatchContext
from .generic_check import Check, checked

MODEL_TYPES: tuple[str, ...] = ()  # every model_type without its own adapter
SELECTS_ATTENTION = True  # api.accelerate leaves the attention choice (and the nothing-to-do warning) to apply()
ATTENTION_REPORT = "attention (HF AttentionInterface 'eet')"


def apply(model: nn.Module, ctx: PatchContext) -> None:
    if model.training:
        warn_once("model is in training mode: HF's forwards run until model.eval()")
    swap_modules(model, ctx)
    if ctx.options["attention"]:
        _attention(model, ctx)
    if ctx.report.accelerated:
        _generate(model, ctx)
    if not ctx.report.accelerated:
        ctx.undo()
        ctx.fallback("<model>", "nothing eet recognises in this model (details in the other entries)")
        logger.warning("eet_hf: %s (model_type %r) is left unchanged: nothing eet can accelerate; "
                       "eet_hf.explain(model) lists why", type(model).__name__, model.config.model_type)


def swap_modules(model: nn.Module, ctx: PatchContext) -> None:
    """The norms and GELU MLPs recognised by structure, each checked on its first call; what stays HF's, reported.
    (Also what patches/encoder.py falls back to for a model its family's record does not describe.)"""
    fused_activations: set[nn.Module] = set()
    for module in list(model.modules()):
        _norm(module, ctx)
        if ctx.options["mlp"]:
            _gelu_mlp(module, ctx, fused_activations)
    for module in model.modules():
        _report_left_to_hf(module, ctx, fused_activations)


def _checked_rewire(module: nn.Module, ctx: PatchContext, fused, eligible, what: str) -> None:
    ctx.set_attr(module, "_eet_check", Check(ctx.path(module), what, type(module).__name__, ctx.report,
                                             bool(ctx.options["strict"])))
    ctx.rewire(module, checked(fused, eligible))


def _norm(module: nn.Module, ctx: PatchContext) -> None:
    match = M.match_norm(module)
    if isinstance(match, str):
        ctx.fallback(module, match)
    elif match is not None:
        ctx.set_attr(module, "_eet_eps", match.eps)
        _checked_rewire(module, ctx, M.NORM_FORWARDS[match.op], M.norm_eligible, match.op)


def _gelu_mlp(module: nn.Module, ctx: PatchContext, fused_activations: set[nn.Module]) -> None:
    match = M.match_gelu_mlp(module)
    if match is None:
        return
    ctx.set_attr(module, "_eet_mlp", match)
    _checked_rewire(module, ctx, M.gelu_mlp_forward, M.mlp_eligible, f"linear_gelu ({match.approximate})")
    fused_activations.update(c for c in module.children() if M.gelu_kind(c) is not None)


def _report_left_to_hf(module: nn.Module, ctx: PatchContext, fused_activations: set[nn.Module]) -> None:
    if type(module).__name__.endswith("RotaryEmbedding"):
        ctx.fallback(module, "rotary embedding stays HF's (no fused eet op verified equal)")
    elif isinstance(module, M.ACTIVATION_TYPES) and module not in fused_activations:
        if not ctx.options["mlp"]:
            ctx.fallback(module, "accelerate(mlp=False)")
        elif M.gelu_kind(module) is not None:
            ctx.fallback(module, "GELU outside a Linear -> GELU [-> Linear] module eet recognises: HF's")
        elif M.is_silu(module):
            ctx.fallback(module, "SiLU (gated MLP): no fused eet op; HF's")
        else:
            ctx.fallback(module, f"{type(module).__name__}: no eet kernel; HF's")


def attention_blocker(model: nn.Module) -> str | None:
    """Why eet attention cannot serve this model, or None."""
    config = model.config
    if not getattr(type(model), "_supports_attention_backend", False):
        return (f"{type(model).__name__} does not dispatch attention through HF's AttentionInterface "
                "(_supports_attention_backend is False): HF's attention")
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "add_cross_attention", False):
        return "cross-attention models keep HF attention (eet attention is self-attention only)"
    if getattr(config, "sub_configs", None):
        return f"composite model (sub-configs {sorted(config.sub_configs)}): HF's attention"
    return None


def partial_attention_fallbacks(config) -> dict[str, str]:
    """Attention features in the config that eet's kernels lack: those forwards take HF's sdpa path."""
    found = {}
    layer_types = getattr(config, "layer_types", None)
    window = attention.config_sliding_window(config)
    if window is not None:
        found["attention (sliding window)"] = (
            f"forwards where the {window}-token sliding window hides keys (longer sequences) use HF's sdpa attention"
        )
    other = sorted(set(layer_types or ()) - {"full_attention", "sliding_attention"})
    if other:
        found["attention (layer types)"] = f"layers of type {other}: masks eet does not express, HF's sdpa attention"
    for name in ("attn_logit_softcapping", "attention_chunk_size"):
        if getattr(config, name, None) is not None:
            found[f"attention ({name})"] = f"config.{name} is set: those forwards use HF's sdpa attention"
    return found


def _attention(model: nn.Module, ctx: PatchContext) -> None:
    blocker = attention_blocker(model)
    if blocker is not None:
        ctx.fallback("attention", blocker)
        return
    attention.register()
    ctx.use_attention(attention.ATTN_NAME)
    ctx.report.accelerated.append(ATTENTION_REPORT)
    for where, reason in partial_attention_fallbacks(model.config).items():
        ctx.fallback(where, reason)


def _generate(model: nn.Module, ctx: PatchContext) -> None:
    """eet's decode loop behind `generate` for the families it drives; HF's loop (on eet's forwards) otherwise."""
    if not ctx.options["generate"] or not model.can_generate():
        return
    if ATTENTION_REPORT not in ctx.report.accelerated:
        ctx.fallback("generate", "eet's decode loop needs eet attention: HF's generate loop runs")
        return
    if distributed.split_by_transformers(model):
        ctx.fallback("generate", "HF's generate loop runs (on eet's forwards): tensor parallel (transformers' "
                     "tp_plan): eet's decode loop runs on one device")
        return
    fused = fused_decoder_refusal.refusal(model)
    if fused is None:
        fused_decoder.pack(model)  # q/k/v and gate/up packed now (HF's parameters become views: no extra memory)
        generate_engine.install(model, ctx, fused_decoder.build, decoder_families.call_refusal)
        ctx.report.accelerated.append(fused_decoder.describe(model))
    else:
        reason = decoder_families.model_refusal(model)
        if reason is not None:
            ctx.fallback("generate", f"HF's generate loop runs (on eet's forwards): {reason}")
            return
        ctx.fallback("decoder step", f"HF's decoder layers run inside eet's decode loop: {fused}")
        generate_engine.install(model, ctx, decoder_families.decoder_stack, decoder_families.call_refusal)
