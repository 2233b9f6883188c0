"""BERT adapter: fused post-LN residual + LayerNorm, fused intermediate GEMM + GELU, eet attention.

Rewired: BertSelfOutput and BertOutput (dense, then residual add fused with LayerNorm), BertIntermediate
(GEMM fused with bias + GELU), every remaining plain LayerNorm (embeddings, MLM head transform).
nn.Linear stores weights as [out, in]: the GEMM reads `weight.t()`, a view.
Refused, left to HF: cross-attention (decoder BERT with add_cross_attention), activations eet does not implement.
"""

from __future__ import annotations

import torch
from transformers.models.bert import modeling_bert as hf

from eet_hf import ops

from ._rewire import GELU_APPROXIMATE, PatchContext, inference_only, layer_norm_unfusable

MODEL_TYPES = ("bert",)


@inference_only
def residual_layer_norm_forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
    """BertSelfOutput / BertOutput: LayerNorm(dense(hidden_states) + input_tensor)."""
    ln = self.LayerNorm
    normed, _ = ops.add_layer_norm(self.dense(hidden_states), input_tensor, ln.weight, ln.bias, ln.eps)
    return normed


@inference_only
def intermediate_forward(self: hf.BertIntermediate, hidden_states: torch.Tensor) -> torch.Tensor:
    return ops.linear_gelu(hidden_states, self.dense.weight.t(), self.dense.bias, self._eet_gelu)


def apply(model: torch.nn.Module, ctx: PatchContext) -> None:
    config = model.config
    act = config.hidden_act if isinstance(config.hidden_act, str) else None
    approximate = GELU_APPROXIMATE.get(act) if act else None
    outputs = [m for m in model.modules() if isinstance(m, (hf.BertSelfOutput, hf.BertOutput))]
    if not outputs:
        raise RuntimeError("eet_hf bert adapter: no BertSelfOutput/BertOutput found; nothing would be accelerated")
    fused_norms = set()
    for module in outputs:
        reason = layer_norm_unfusable(module.LayerNorm)
        if reason:
            ctx.fallback(module, reason)
            continue
        ctx.rewire(module, residual_layer_norm_forward)
        fused_norms.add(module.LayerNorm)
    for module in model.modules():
        if not isinstance(module, hf.BertIntermediate) or not ctx.options["mlp"]:
            continue
        if approximate is None:
            ctx.fallback(module, f"activation {config.hidden_act!r} has no eet kernel")
        else:
            ctx.set_attr(module, "_eet_gelu", approximate)
            ctx.rewire(module, intermediate_forward)
    # Embedding and MLM-head LayerNorms: plain LayerNorm modules, swapped one for one.
    for module in list(model.modules()):
        if isinstance(module, torch.nn.LayerNorm) and module not in fused_norms:
            ctx.layer_norm(module)
