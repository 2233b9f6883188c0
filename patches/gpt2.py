"""GPT-2 adapter: fused pre-LN blocks, fused MLP, eet attention.

Rewired per block: ln_1 -> eet layer_norm; the residual add after attention fused with ln_2
(add_layer_norm); the MLP's c_fc GEMM fused with bias + GELU. Conv1D stores weights as [in, out], so
`x @ c_fc.weight + c_fc.bias` is the GEMM with no transpose. Attention keeps HF's module (c_attn, cache
update, c_proj) and runs eet's attention through HF's attention interface.
Refused, left to HF: cross-attention blocks, activations eet does not implement.
"""

from __future__ import annotations

import functools

import torch
from transformers.models.gpt2 import modeling_gpt2 as hf

from eet_hf import ops
from eet_hf.engine import fused_decoder, fused_decoder_refusal
from eet_hf.engine import generate as generate_engine
from eet_hf.engine.gpt2_forward import gpt2_weights

from ._rewire import (
    GELU_APPROXIMATE,
    PatchContext,
    inference_only,
    layer_norm_unfusable,
)

MODEL_TYPES = ("gpt2",)


@inference_only
def block_forward(self: hf.GPT2Block, hidden_states, cache=None, attention_mask=None, encoder_hidden_states=None,
                  **kwargs):
    kwargs.pop("encoder_attention_mask", None)  # only cross-attention reads it; such blocks are not rewired
    residual = hidden_states
    hidden_states = ops.layer_norm(hidden_states, self.ln_1.weight, self.ln_1.bias, self.ln_1.eps)
    # Positional cache: transformers 5.24 calls it `cache`, 5.17 `past_key_values` (and ignores `cache=`).
    attn_output, _ = self.attn(hidden_states, cache, attention_mask, **kwargs)
    normed, hidden_states = ops.add_layer_norm(attn_output, residual, self.ln_2.weight, self.ln_2.bias, self.ln_2.eps)
    return hidden_states + self.mlp(normed)


@inference_only
def mlp_forward(self: hf.GPT2MLP, hidden_states: torch.Tensor) -> torch.Tensor:
    hidden_states = ops.linear_gelu(hidden_states, self.c_fc.weight, self.c_fc.bias, self._eet_gelu)
    return self.c_proj(hidden_states)


def apply(model: torch.nn.Module, ctx: PatchContext) -> None:
    config = model.config
    approximate = GELU_APPROXIMATE.get(config.activation_function)
    blocks = [m for m in model.modules() if isinstance(m, hf.GPT2Block)]
    if not blocks:
        raise RuntimeError("eet_hf gpt2 adapter: no GPT2Block found in the model; nothing would be accelerated")
    for block in blocks:
        if hasattr(block, "crossattention"):
            ctx.fallback(block, "cross-attention (add_cross_attention=True) is not supported")
            continue
        for ln in (block.ln_1, block.ln_2):
            if layer_norm_unfusable(ln):
                ctx.fallback(block, layer_norm_unfusable(ln))
                break
        else:
            ctx.rewire(block, block_forward)
        if ctx.options["mlp"] and approximate is not None:
            ctx.set_attr(block.mlp, "_eet_gelu", approximate)
            ctx.rewire(block.mlp, mlp_forward)
        elif ctx.options["mlp"]:
            ctx.fallback(block.mlp, f"activation {config.activation_function!r} has no eet kernel")
    for module in model.modules():
        if isinstance(module, hf.GPT2Model):
            ctx.layer_norm(module.ln_f)
    _install_generate(model, ctx, approximate, len(blocks))


def _install_generate(model: torch.nn.Module, ctx: PatchContext, approximate: str | None, blocks: int) -> None:
    """eet's decode loop runs the whole model through fused ops, so it needs every block fused."""
    if not ctx.options["generate"] or not isinstance(model, hf.GPT2LMHeadModel):
        return
    missing = [name for name, ok in (("attention", ctx.options["attention"]), ("mlp", ctx.options["mlp"])) if not ok]
    if ctx.options.get("tensor_parallel") not in (None, False):
        ctx.fallback("generate", "tensor parallel: eet's decode loop runs on one device (HF's loop on eet's forward)")
    elif missing:
        ctx.fallback("generate", f"eet's decode loop needs the {' and '.join(missing)} option(s) on")
    elif approximate is None or ctx.report.fallbacks:
        ctx.fallback("generate", "eet's decode loop needs every block fused (see the other fallbacks)")
    elif any(getattr(b.attn, "reorder_and_upcast_attn", False) for b in model.transformer.h[:blocks]):
        ctx.fallback("generate", "reorder_and_upcast_attn=True (fp32 attention scores) is not in eet's loop")
    else:
        lean = functools.partial(gpt2_weights, gelu=approximate)
        fused = fused_decoder_refusal.refusal(model)
        if fused is None:
            fused_decoder.pack(model)  # Conv1D weights become transposed views of [out, in] matrices: no extra memory
            generate_engine.install(model, ctx, functools.partial(fused_decoder.build, fallback=lean))
            ctx.report.accelerated.append(fused_decoder.describe(model))
        else:
            ctx.fallback("decoder step", f"eet's GPT-2 forward runs inside eet's decode loop: {fused}")
            generate_engine.install(model, ctx, lean)
