"""BERT adapter: the padding-free encoder, over fused post-LN residual + LayerNorm and GEMM + GELU modules.

Rewired: BertEncoder (the packed encoder of eet_hf.encoder: real tokens only, one QKV GEMM over a packed weight,
varlen attention, CUDA graphs for small batches; returns HF's output class, so every head and pipeline works
unchanged), BertSelfOutput and BertOutput (dense, then residual add fused with LayerNorm), BertIntermediate
(GEMM fused with bias + GELU), every remaining plain LayerNorm (embeddings, MLM head transform). HF's embeddings
module stays (token types, positions). nn.Linear stores weights as [out, in]: the GEMM reads `weight.t()`.
The packed encoder hands a call back to HF's layer loop over the fused modules (eet attention, padded) for:
output_attentions / output_hidden_states, left-padded batches, masks eet's mask function could not express,
caches or encoder states; decoder / cross-attention BERT and accelerate(attention=False) never take it.
Refused, left to HF: cross-attention (decoder BERT with add_cross_attention), activations eet does not implement.
The top-level model (BertModel or a head) whose encoder took the packed path also gets whole-model CUDA graphs
(eet_hf/encoder/model_graphs.py: embeddings, mask, encoder and head as one graph).
"""

from __future__ import annotations

import torch
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions
from transformers.models.bert import modeling_bert as hf

from eet_hf import ops
from eet_hf._log import logger, warn_once
from eet_hf.bounds import SeqBounds
from eet_hf.encoder import BertEncoderRuntime, graphs, model_graphs

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


# BertEncoder.forward arguments the packed path accepts when None / False (HF passes position_ids along).
_IGNORED_WHEN_EMPTY = ("encoder_hidden_states", "encoder_attention_mask", "past_key_values", "cache", "use_cache")


def _outputs_requested() -> bool:
    """True while HF collects per-layer outputs (output_hidden_states / output_attentions), which need the
    BertLayer modules' own forwards."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:  # a transformers layout eet does not know: assume they may be wanted
        return True
    return bool(_active_collector.get())


def _packed_refusal(self, hidden_states, attention_mask, args, kwargs) -> str | None:
    """Why this call cannot take the packed encoder, or None."""
    if any(a is not None for a in args):
        return "positional encoder arguments (encoder states or a cache)"
    extra = [k for k, v in kwargs.items() if k != "position_ids" and v is not None and v is not False]
    if extra:
        return f"arguments {sorted(extra)}"
    if _outputs_requested():
        return "output_hidden_states / output_attentions"
    if torch.is_grad_enabled() and (hidden_states.requires_grad or any(p.requires_grad for p in self.parameters())):
        # The packed path reads Q/K/V through detached views of one buffer and may replay a CUDA graph: neither
        # carries gradients. The per-layer path runs eet's ops, which have a backward.
        return "gradients required (grad mode on, parameters or inputs require grad)"
    if attention_mask is not None and not (isinstance(attention_mask, SeqBounds) and not attention_mask.causal):
        return "a mask that is not plain padding"
    if hidden_states.dim() != 3 or hidden_states.dtype != self.layer[0].output.dense.weight.dtype:
        return "hidden states of another dtype than the weights (autocast)"
    return None


@inference_only
def encoder_forward(self, hidden_states: torch.Tensor, attention_mask=None, *args, **kwargs):
    """BertEncoder: the packed encoder; HF's layer loop (over the fused modules) where it refuses."""
    reason = _packed_refusal(self, hidden_states, attention_mask, args, kwargs)
    if reason is None:
        out = self._eet_encoder.forward(hidden_states, attention_mask)
        if out is not None:
            return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=out)
        reason = "left-padded batch"
    warn_once(f"BertEncoder: {reason}: per-layer path (padded, eet attention)")
    return type(self).forward(self, hidden_states, attention_mask, *args, **kwargs)


def _encoder_unsupported(config, ctx: PatchContext) -> str | None:
    if not ctx.options["attention"]:
        return "accelerate(attention=False): the packed encoder needs eet attention"
    if config.is_decoder or getattr(config, "add_cross_attention", False):
        return "decoder BERT (causal, KV cache, cross-attention) keeps the per-layer path"
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        return f"position_embedding_type {config.position_embedding_type!r} (relative positions in attention)"
    return None


def _route_encoders(model: torch.nn.Module, ctx: PatchContext) -> None:
    for encoder in [m for m in model.modules() if isinstance(m, hf.BertEncoder)]:
        reason = _encoder_unsupported(model.config, ctx)
        if reason is None and not all(type(layer.attention.self) is hf.BertSelfAttention for layer in encoder.layer):
            reason = "a self-attention module that is not HF's BertSelfAttention"
        if reason:
            # Not a fallback to HF code: the per-layer eet path (fused modules, eet attention) still runs.
            logger.info("eet_hf: %s: packed encoder not used: %s", ctx.path(encoder), reason)
            continue
        ctx.set_attr(encoder, "_eet_encoder", BertEncoderRuntime(encoder))
        ctx.rewire(encoder, encoder_forward)


# Top-level classes whose forward model_graphs may capture: their outputs are ModelOutputs of tensors for the
# plain call form, and their first three arguments are input_ids, attention_mask, token_type_ids.
MODEL_GRAPH_CLASSES = (hf.BertModel, hf.BertForMaskedLM, hf.BertForSequenceClassification,
                       hf.BertForTokenClassification, hf.BertForQuestionAnswering, hf.BertForMultipleChoice,
                       hf.BertForNextSentencePrediction, hf.BertForPreTraining, hf.BertLMHeadModel)


# Heads whose outputs grow with the vocabulary (tokens x vocab logits, static outputs of a graph): their whole-model
# graphs stop at graphs.MODEL_MAX_TOKENS; the others go up to the encoder graphs' graphs.MAX_TOKENS.
VOCAB_HEAD_CLASSES = (hf.BertForMaskedLM, hf.BertForPreTraining, hf.BertLMHeadModel)


def _route_model_graphs(model: torch.nn.Module, ctx: PatchContext) -> None:
    encoders = [m for m in model.modules() if isinstance(m, hf.BertEncoder)]
    if type(model) not in MODEL_GRAPH_CLASSES or len(encoders) != 1 or "_eet_encoder" not in encoders[0].__dict__:
        return  # decoder BERT, attention=False, custom classes: the packed encoder's own graphs only
    if any("_hf_hook" in m.__dict__ for m in model.modules()):
        logger.info("eet_hf: whole-model CUDA graphs not used: the model is placed or offloaded by accelerate hooks")
        return
    max_tokens = graphs.MODEL_MAX_TOKENS if isinstance(model, VOCAB_HEAD_CLASSES) else graphs.MAX_TOKENS
    ctx.set_attr(model, model_graphs.ATTR, model_graphs.ModelGraphs(max_tokens=max_tokens))
    ctx.rewire(model, model_graphs.graphed_forward, label="<model>: whole-model CUDA graphs",
               reads_children=False)
    ctx.report.cuda_only["<model>: whole-model CUDA graphs"] = "the model's own forward, eet's modules inside"


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
    _route_encoders(model, ctx)
    _route_model_graphs(model, ctx)
