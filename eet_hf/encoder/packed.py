"""The packed encoder: every post-LN encoder layer on the real tokens only (no padding in any GEMM or fused op).

Per layer, on packed rows x [tokens, hidden], reading the layer's own modules (LayerParts, found through the family's
record in patches/encoder_records.py):
    qkv = x @ Wqkv^T + bqkv                         one GEMM over the packed [3*hidden, hidden] weight
    ctx = attention_varlen(q, k, v)                 q, k, v are views of qkv; sequence bounds from cu_seqlens
    x1  = attn_norm(attn_out(ctx) + x)              dense, then residual + LayerNorm fused
    x   = ffn_norm(ffn_out(gelu(ffn_in(x1))) + x1)  GEMM + bias + GELU fused; dense, then residual + LayerNorm fused
An activation without an eet kernel runs as its own module. Q, K and V stay three nn.Linear modules whose weight and
bias are slices of one buffer (pack_qkv): the same Parameter objects, the same state_dict keys, no second copy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from eet_hf import ops
from eet_hf.attention import _is_compiling
from eet_hf.bounds import SeqBounds
from eet_hf.module_walk import registrations

from . import packing as pk
from .graphs import GraphCache
from .model_graph_keys import WeightSignature

Linears = tuple[nn.Linear, nn.Linear, nn.Linear]


@dataclass(frozen=True)
class LayerParts:
    """One post-LN encoder layer's modules, as the packed step reads them."""

    qkv: Linears  # query, key, value: [all_heads, hidden] each
    heads: int
    head_size: int
    scaling: float  # the attention module's own softmax scale
    attn_out: nn.Linear  # [hidden, all_heads]
    attn_norm: nn.LayerNorm
    ffn_in: nn.Linear  # [intermediate, hidden]
    activation: nn.Module
    gelu: str | None  # eet linear_gelu's `approximate` for the activation; None: the activation module runs
    ffn_out: nn.Linear  # [hidden, intermediate]
    ffn_norm: nn.LayerNorm


def pack_qkv(linears: Linears) -> None:
    """Point the three Linears' .weight and .bias (same Parameter objects) at slices of one packed buffer
    ([3*out, in] and [3*out]); the separate tensors are freed. A no-op when already packed."""
    if packed_qkv(linears) is not None:
        return
    with torch.no_grad():
        weight = torch.cat([lin.weight.data for lin in linears], 0)
        bias = torch.cat([lin.bias.data for lin in linears], 0)
        rows = linears[0].weight.shape[0]
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


def packed_qkv(linears: Linears) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(weight [3*out, in], bias [3*out]) views over the three Linears when they are packed, else None
    (never packed, or separated again, e.g. by model.to(dtype))."""
    if any(lin.bias is None for lin in linears):
        return None
    weight = _adjacent([lin.weight for lin in linears])
    bias = _adjacent([lin.bias for lin in linears])
    return None if weight is None or bias is None else (weight, bias)


def _qkv(linears: Linears) -> tuple[torch.Tensor, torch.Tensor]:
    found = packed_qkv(linears)
    if found is None:  # parameters were replaced since accelerate() (a dtype or device move): pack again
        pack_qkv(linears)
        found = packed_qkv(linears)
    return found


def _residual_norm(dense: nn.Linear, norm: nn.LayerNorm, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    normed, _ = ops.add_layer_norm(dense(h), residual, norm.weight, norm.bias, norm.eps)
    return normed


def layer_forward(parts: LayerParts, x: torch.Tensor, packing: pk.Packing) -> torch.Tensor:
    """One encoder layer on packed rows. x: [tokens, hidden] -> [tokens, hidden]."""
    weight, bias = _qkv(parts.qkv)
    tokens = x.shape[0]
    qkv = torch.addmm(bias, x, weight.t()).view(tokens, 3, parts.heads, parts.head_size)
    ctx = ops.attention_varlen(qkv[:, 0], qkv[:, 1], qkv[:, 2], packing.cu_seqlens, packing.max_seqlen, False,
                               parts.scaling)
    x1 = _residual_norm(parts.attn_out, parts.attn_norm, ctx.reshape(tokens, parts.heads * parts.head_size), x)
    ffn_in = parts.ffn_in
    if parts.gelu is None:
        h = parts.activation(ffn_in(x1))
    else:
        h = ops.linear_gelu(x1, ffn_in.weight.t(), ffn_in.bias, parts.gelu)
    return _residual_norm(parts.ffn_out, parts.ffn_norm, h, x1)


def packed_forward(layers: tuple[LayerParts, ...], hidden: torch.Tensor, packing: pk.Packing) -> torch.Tensor:
    """All layers on the packed real tokens. hidden: [batch, seq_len, hidden] -> same shape, padding zero."""
    x = pk.pack(hidden, packing)
    for parts in layers:
        x = layer_forward(parts, x, packing)
    return pk.unpack(x, packing)


def token_bounds(mask: SeqBounds | None, batch: int, seq_len: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end) int32 [batch]: the real-token run of each row, from eet's mask descriptor."""
    if mask is None:
        return (torch.zeros(batch, dtype=torch.int32, device=device),
                torch.full((batch,), seq_len, dtype=torch.int32, device=device))
    return mask.kv_start, mask.kv_end


class EncoderRuntime:
    """Runs one encoder's layers on packed tokens, with CUDA graphs for small batches.

    layers: the encoder's ModuleList; resolve(): the layers' parts, or why they no longer match the family's record
    (read again whenever a module or parameter was registered anywhere since: a replaced submodule is seen, never a
    stale one run); output: the encoder's HF output class, built from last_hidden_state.
    """

    def __init__(self, layers: nn.ModuleList, resolve: Callable[[], tuple[LayerParts, ...] | str],
                 output: type) -> None:
        self.layers = layers
        self.output = output
        self.graphs = GraphCache()
        self._resolve = resolve
        self._generation = registrations()
        self.parts = resolve()
        if isinstance(self.parts, str):
            raise ValueError(f"eet_hf: encoder layers do not match their record: {self.parts}")
        for parts in self.parts:
            pack_qkv(parts.qkv)
        # Graphs hold weight addresses: a replaced parameter (load_state_dict(assign=True), a device move)
        # must not replay an old graph, so the addresses are part of the graph key.
        self._weights_signature = functools.partial(WeightSignature(), self.layers)

    def refusal(self) -> str | None:
        """Why the layers cannot run packed now (a part replaced since accelerate() that the record does not
        describe), or None."""
        generation = registrations()
        if generation != self._generation:
            self._generation = generation
            self.parts = self._resolve()
        return self.parts if isinstance(self.parts, str) else None

    @property
    def dtype(self) -> torch.dtype:
        return self.parts[0].ffn_out.weight.dtype

    def _capacity_forward(self, hidden: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                          capacity: int | None = None) -> torch.Tensor:
        return packed_forward(self.parts, hidden, pk.plan(start, end, hidden.shape[1], capacity=capacity))

    def forward(self, hidden: torch.Tensor, mask: SeqBounds | None) -> torch.Tensor | None:
        """hidden: [batch, seq_len, hidden] -> [batch, seq_len, hidden] (zeros at padding), or None when
        the batch is left-padded (pad rows then come first and a pooler or head reading position 0 would read one:
        HF's path keeps its values)."""
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
        return packed_forward(self.parts, hidden, pk.plan(start, end, seq_len, total, longest))
