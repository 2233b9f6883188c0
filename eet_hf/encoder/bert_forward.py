"""The packed BERT encoder: every BertLayer on the real tokens only (no padding in any GEMM or fused op).

Per layer, on packed rows x [tokens, hidden]:
    qkv = x @ Wqkv^T + bqkv               one GEMM over the packed [3*hidden, hidden] weight
    ctx = attention_varlen(q, k, v)       q, k, v are views of qkv; sequence bounds from cu_seqlens (mask fusion)
    x1  = attention.output(ctx, x)        dense, then residual + LayerNorm fused (patches/bert.py)
    x   = output(intermediate(x1), x1)    GEMM + bias + GELU fused; dense, then residual + LayerNorm fused
The layer's own (rewired) submodules run on the packed 2-D rows, so their fusions and fallbacks apply unchanged.
Q, K and V stay three nn.Linear modules whose weight and bias are slices of one buffer (pack_qkv): the same
Parameter objects, the same state_dict keys, no second copy of the weights.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from eet_hf import ops
from eet_hf.attention import _is_compiling
from eet_hf.bounds import SeqBounds

from . import packing as pk
from .graphs import GraphCache
from .model_graph_keys import WeightSignature


def pack_qkv(attn: nn.Module) -> None:
    """Point attn.query/key/value .weight and .bias (same Parameter objects) at slices of one packed buffer
    ([3*out, in] and [3*out]); the separate tensors are freed. A no-op when already packed."""
    if packed_qkv(attn) is not None:
        return
    linears = (attn.query, attn.key, attn.value)
    with torch.no_grad():
        weight = torch.cat([lin.weight.data for lin in linears], 0)
        bias = torch.cat([lin.bias.data for lin in linears], 0)
        rows = attn.query.weight.shape[0]
        for i, lin in enumerate(linears):
            lin.weight.data = weight[i * rows : (i + 1) * rows]
            lin.bias.data = bias[i * rows : (i + 1) * rows]


def _adjacent(parts: list[torch.Tensor]) -> torch.Tensor | None:
    """The tensors as one [n * rows, ...] view when they lie back to back in one storage, else None."""
    first = parts[0]
    if not all(p.is_contiguous() and p.shape == first.shape and p.dtype == first.dtype for p in parts):
        return None
    step = first.numel() * first.element_size()
    if any(p.untyped_storage().data_ptr() != first.untyped_storage().data_ptr() for p in parts):
        return None
    if any(p.data_ptr() != first.data_ptr() + i * step for i, p in enumerate(parts)):
        return None
    shape = (first.shape[0] * len(parts), *first.shape[1:])
    return first.detach().as_strided(shape, first.stride(), first.storage_offset())


def packed_qkv(attn: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(weight [3*out, in], bias [3*out]) views over query/key/value when they are packed, else None
    (never packed, or separated again, e.g. by model.to(dtype))."""
    linears = (attn.query, attn.key, attn.value)
    if any(lin.bias is None for lin in linears):
        return None
    weight = _adjacent([lin.weight for lin in linears])
    bias = _adjacent([lin.bias for lin in linears])
    return None if weight is None or bias is None else (weight, bias)


def _qkv(attn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    found = packed_qkv(attn)
    if found is None:  # parameters were replaced since accelerate() (a dtype or device move): pack again
        pack_qkv(attn)
        found = packed_qkv(attn)
    return found


def layer_forward(layer: nn.Module, x: torch.Tensor, packing: pk.Packing) -> torch.Tensor:
    """One BertLayer on packed rows. x: [tokens, hidden] -> [tokens, hidden]."""
    attn = layer.attention.self
    weight, bias = _qkv(attn)
    tokens = x.shape[0]
    qkv = torch.addmm(bias, x, weight.t()).view(tokens, 3, attn.num_attention_heads, attn.attention_head_size)
    ctx = ops.attention_varlen(
        qkv[:, 0], qkv[:, 1], qkv[:, 2], packing.cu_seqlens, packing.max_seqlen, False, float(attn.scaling)
    )
    x1 = layer.attention.output(ctx.reshape(tokens, attn.all_head_size), x)
    return layer.output(layer.intermediate(x1), x1)


def packed_forward(layers: nn.ModuleList, hidden: torch.Tensor, packing: pk.Packing) -> torch.Tensor:
    """All layers on the packed real tokens. hidden: [batch, seq_len, hidden] -> same shape, padding zero."""
    x = pk.pack(hidden, packing)
    for layer in layers:
        x = layer_forward(layer, x, packing)
    return pk.unpack(x, packing)


def token_bounds(mask: SeqBounds | None, batch: int, seq_len: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end) int32 [batch]: the real-token run of each row, from eet's mask descriptor."""
    if mask is None:
        return (torch.zeros(batch, dtype=torch.int32, device=device),
                torch.full((batch,), seq_len, dtype=torch.int32, device=device))
    return mask.kv_start, mask.kv_end


class BertEncoderRuntime:
    """Runs one BertEncoder's layers on packed tokens, with CUDA graphs for small batches."""

    def __init__(self, encoder: nn.Module) -> None:
        self.layers = encoder.layer
        self.graphs = GraphCache()
        for layer in self.layers:
            pack_qkv(layer.attention.self)
        # Graphs hold weight addresses: a replaced parameter (load_state_dict(assign=True), a device move)
        # must not replay an old graph, so the addresses are part of the graph key.
        self._weights_signature = functools.partial(WeightSignature(), self.layers)

    def _capacity_forward(self, hidden: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                          capacity: int | None = None) -> torch.Tensor:
        return packed_forward(self.layers, hidden, pk.plan(start, end, hidden.shape[1], capacity=capacity))

    def forward(self, hidden: torch.Tensor, mask: SeqBounds | None) -> torch.Tensor | None:
        """hidden: [batch, seq_len, hidden] -> [batch, seq_len, hidden] (zeros at padding), or None when
        the batch is left-padded (pad rows then come first and BertPooler would read one: HF's path keeps
        its values)."""
        batch, seq_len = hidden.shape[:2]
        start, end = token_bounds(mask, batch, seq_len, hidden.device)
        if _is_compiling():
            # No host read under torch.compile / an outer CUDA-graph capture: fixed-shape capacity packing,
            # and right padding assumed (as eet's mask function does there; README).
            return self._capacity_forward(hidden, start, end)
        total, longest, left_padded = pk.host_summary(start, end, seq_len)
        if left_padded:
            return None
        if self.graphs.eligible(hidden):
            out = self.graphs.run(self._capacity_forward, hidden, start, end, self._weights_signature(), total)
            if out is not None:
                return out
        return packed_forward(self.layers, hidden, pk.plan(start, end, seq_len, total, longest))
