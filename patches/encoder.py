"""Encoder adapter: every family with an encoder record (encoder_records.py: BERT, RoBERTa, XLM-RoBERTa, CamemBERT,
ELECTRA, DistilBERT) gets the padding-free packed encoder, from the record alone.

Rewired, once the record matched the module tree (encoder_match.py):
- the encoder module (BertEncoder, RobertaEncoder, ..., DistilBERT's Transformer): the packed encoder of
  eet_hf.encoder (real tokens only, one QKV GEMM over a packed weight, varlen attention, fused residual + LayerNorm and
  GEMM + GELU, CUDA graphs for small batches). It returns HF's output class, so every head and pipeline works
  unchanged. It hands a call back to HF's layer loop (over the fused modules below, eet attention, padded) for:
  output_attentions / output_hidden_states, left-padded batches, masks eet's mask function could not express, caches
  or encoder states, gradients, hidden states of another dtype than the weights (autocast), a part replaced since
  accelerate() that no longer matches the record; decoder / cross-attention configs and accelerate(attention=False)
  never take it.
- for HF's layer loop: the residual blocks (BertSelfOutput, BertOutput, ...: dense, then residual add fused with
  LayerNorm), the MLP block (BertIntermediate, DistilBERT's FFN: GEMM fused with bias + GELU), every remaining plain
  LayerNorm (embeddings, DistilBERT's layer norms, heads). HF's embeddings stay (token types, RoBERTa's position ids
  from input_ids, ELECTRA's projection).
- the top-level model, when it is one of the record's heads: whole-model CUDA graphs (eet_hf/encoder/model_graphs.py:
  embeddings, mask, encoder and head as one graph).
Refused, left to HF: activations eet does not implement (their module runs inside the packed layers too).
A model whose tree does not match its record (a user's layer class, quantized Linears, ...) gets the generic adapter's
per-module swaps instead, and explain() says which part did not match.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn
from transformers import modeling_outputs

from eet_hf import ops
from eet_hf._log import logger, warn_once
from eet_hf.bounds import SeqBounds
from eet_hf.encoder import EncoderRuntime, graphs, model_graphs
from eet_hf.encoder.model_graph_keys import sequence_fields

from . import encoder_match, generic
from ._rewire import PatchContext, inference_only
from .encoder_records import RECORDS, EncoderRecord
from .generic_modules import MlpMatch, gelu_mlp_forward

MODEL_TYPES = tuple(RECORDS)


@inference_only
def residual_norm_forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
    """BertSelfOutput / BertOutput and their copies: norm(dense(hidden_states) + input_tensor)."""
    dense, norm = (getattr(self, name) for name in self._eet_residual)
    normed, _ = ops.add_layer_norm(dense(hidden_states), input_tensor, norm.weight, norm.bias, norm.eps)
    return normed


# BertIntermediate (activation(dense(x))) and DistilBERT's FFN (lin2(activation(lin1(x)))): the generic adapter's GELU
# MLP forward, without its first-call check (the record matched HF's own classes).
mlp_forward = inference_only(gelu_mlp_forward)


def _outputs_requested() -> bool:
    """True while HF collects per-layer outputs (output_hidden_states / output_attentions), which need the layer
    modules' own forwards."""
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
    runtime = self._eet_encoder
    replaced = runtime.refusal()
    if replaced:
        return f"its layers no longer match the family's record ({replaced})"
    if hidden_states.dim() != 3 or hidden_states.dtype != runtime.dtype:
        return "hidden states of another dtype than the weights (autocast)"
    return None


@inference_only
def encoder_forward(self, hidden_states: torch.Tensor, attention_mask=None, *args, **kwargs):
    """The encoder module: the packed encoder; HF's layer loop (over the fused modules) where it refuses."""
    reason = _packed_refusal(self, hidden_states, attention_mask, args, kwargs)
    if reason is None:
        runtime = self._eet_encoder
        out = runtime.forward(hidden_states, attention_mask)
        if out is not None:
            return runtime.output(last_hidden_state=out)
        reason = "left-padded batch"
    warn_once(f"{type(self).__name__}: {reason}: per-layer path (padded, eet attention)")
    return type(self).forward(self, hidden_states, attention_mask, *args, **kwargs)


def _encoder_unsupported(config, ctx: PatchContext) -> str | None:
    if not ctx.options["attention"]:
        return "accelerate(attention=False): the packed encoder needs eet attention"
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "decoder configs (causal, KV cache, cross-attention) keep the per-layer path"
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        return f"position_embedding_type {config.position_embedding_type!r} (relative positions in attention)"
    return None


def _fuse_layers(config, found: encoder_match.EncoderMatch, record: EncoderRecord, ctx: PatchContext) -> set:
    """HF's own layer loop (the per-layer path) runs the record's blocks fused; returns the LayerNorms fused there."""
    fused_norms = set()
    residuals = ((record.attn_out, record.attn_norm), (record.ffn_out, record.ffn_norm)) if record.residual_blocks else ()
    first, second = encoder_match.block_children(record.mlp_block, record.ffn_in, record.ffn_out)
    for layer, parts in zip(found.layers, found.parts):
        for dense, norm in residuals:
            path = dense.rsplit(".", 1)[0]
            block = layer.get_submodule(path)
            ctx.set_attr(block, "_eet_residual", tuple(encoder_match.block_children(path, dense, norm)))
            ctx.rewire(block, residual_norm_forward)
        if residuals:
            fused_norms.update((parts.attn_norm, parts.ffn_norm))
        if not ctx.options["mlp"]:
            continue
        block = layer.get_submodule(record.mlp_block)
        if parts.gelu is None:
            act = getattr(config, "hidden_act", getattr(config, "activation", type(parts.activation).__name__))
            ctx.fallback(block, f"activation {act!r} has no eet kernel")
            continue
        ctx.set_attr(block, "_eet_mlp", MlpMatch(first, second, parts.gelu))
        ctx.rewire(block, mlp_forward)
    return fused_norms


def _route_encoder(model: nn.Module, found: encoder_match.EncoderMatch, record: EncoderRecord,
                   ctx: PatchContext) -> None:
    reason = _encoder_unsupported(model.config, ctx)
    if reason:
        # Not a fallback to HF code: the per-layer eet path (fused modules, eet attention) still runs.
        logger.info("eet_hf: %s: packed encoder not used: %s", ctx.path(found.encoder), reason)
        return
    resolve = functools.partial(encoder_match.layer_parts, found.layers, record, bool(ctx.options["mlp"]))
    runtime = EncoderRuntime(found.layers, resolve, getattr(modeling_outputs, record.encoder_output))
    ctx.set_attr(found.encoder, "_eet_encoder", runtime)
    ctx.rewire(found.encoder, encoder_forward)


def _route_model_graphs(model: nn.Module, found: encoder_match.EncoderMatch, record: EncoderRecord,
                        ctx: PatchContext) -> None:
    heads = {encoder_match.family_class(record, name) for name in record.heads}
    if type(model) not in heads or "_eet_encoder" not in found.encoder.__dict__:
        return  # decoder configs, attention=False, custom classes: the packed encoder's own graphs only
    if any("_hf_hook" in m.__dict__ for m in model.modules()):
        logger.info("eet_hf: whole-model CUDA graphs not used: the model is placed or offloaded by accelerate hooks")
        return
    # The inputs a plain call passes, in the forward's own positional order (RoBERTa's multiple choice head takes
    # token_type_ids before attention_mask).
    order = tuple(inspect.signature(type(model).forward).parameters)[1 : 1 + len(record.inputs)]
    if sorted(order) != sorted(record.inputs):
        logger.info("eet_hf: whole-model CUDA graphs not used: %s.forward starts with %s, not %s",
                    type(model).__name__, order, record.inputs)
        return
    max_tokens = graphs.MODEL_MAX_TOKENS if type(model).__name__ in record.vocab_heads else graphs.MAX_TOKENS
    # Calls are padded up to a graph length (model_graphs.ModelGraphs) where the head's sequence-shaped outputs are
    # known and the positions allow it.
    config = model.config
    graphed = model_graphs.ModelGraphs(
        max_tokens=max_tokens, input_names=order, seq_fields=sequence_fields(type(model).__name__),
        pad_id=getattr(config, "pad_token_id", None) or 0,
        max_positions=getattr(config, "max_position_embeddings", None) or 0)
    ctx.set_attr(model, model_graphs.ATTR, graphed)
    ctx.rewire(model, model_graphs.graphed_forward, label="<model>: whole-model CUDA graphs",
               reads_children=False)
    ctx.report.cuda_only["<model>: whole-model CUDA graphs"] = "the model's own forward, eet's modules inside"


def apply(model: nn.Module, ctx: PatchContext) -> None:
    config = model.config
    record = RECORDS[config.model_type]
    found = encoder_match.match(model, record, fuse_gelu=bool(ctx.options["mlp"]))
    if isinstance(found, str):
        reason = (f"the {config.model_type} encoder record does not match this model ({found}): the generic adapter's "
                  "per-module swaps run instead")
        ctx.fallback("packed encoder", reason)
        warn_once(f"{type(model).__name__}: no packed encoder: {reason} (eet_hf.explain(model) lists them)")
        generic.swap_modules(model, ctx)
        return
    fused_norms = _fuse_layers(config, found, record, ctx)
    # Embedding, DistilBERT-layer and head LayerNorms: plain LayerNorm modules, swapped one for one.
    for module in list(model.modules()):
        if isinstance(module, nn.LayerNorm) and module not in fused_norms:
            ctx.layer_norm(module)
    _route_encoder(model, found, record, ctx)
    _route_model_graphs(model, found, record, ctx)
