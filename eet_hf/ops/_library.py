"""The eet op schemas, declared once for every machine.

Each op is registered with its reference implementation for all devices (CompositeExplicitAutograd) and a
fake implementation for torch.compile. When the CUDA extension is built, csrc/bindings.cpp adds a CUDA
kernel for the same schema, which the dispatcher prefers for CUDA tensors. autograd.py registers each op's
backward (the reference's gradient) at the Autograd key.
"""

from __future__ import annotations

import torch

from . import reference

_LIB = torch.library.Library("eet", "DEF")

SCHEMAS = {
    "layer_norm": "layer_norm(Tensor x, Tensor weight, Tensor? bias, float eps) -> Tensor",
    "add_layer_norm": (
        "add_layer_norm(Tensor x, Tensor residual, Tensor weight, Tensor? bias, float eps) -> (Tensor, Tensor)"
    ),
    "bias_gelu": "bias_gelu(Tensor x, Tensor? bias, str approximate) -> Tensor",
    "rms_norm": "rms_norm(Tensor x, Tensor weight, float eps) -> Tensor",
    "attention": (
        "attention(Tensor q, Tensor k, Tensor v, Tensor kv_start, Tensor kv_end, Tensor q_offset, "
        "bool causal, float scale) -> Tensor"
    ),
    "attention_varlen": (
        "attention_varlen(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, int max_seqlen, bool causal, "
        "float scale) -> Tensor"
    ),
    "embedding": "embedding(Tensor input_ids, Tensor position_ids, Tensor wte, Tensor? wpe) -> Tensor",
    "rotary": "rotary(Tensor q, Tensor k, Tensor cos, Tensor sin) -> (Tensor, Tensor)",
    "kv_append": (
        "kv_append(Tensor qkv, Tensor? bias, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor write_pos, "
        "int heads_q, int heads_kv) -> Tensor"
    ),
    "small_linear": "small_linear(Tensor x, Tensor weight, Tensor? bias, str activation) -> Tensor",
    "argmax_rows": "argmax_rows(Tensor x) -> Tensor",
    "padding_runs": "padding_runs(Tensor mask) -> (Tensor, Tensor, Tensor)",
    "in_place_packing": "in_place_packing(Tensor start, Tensor end, int seq_len) -> (Tensor, Tensor)",
}

for _name, _schema in SCHEMAS.items():
    _LIB.define(_schema)
    _LIB.impl(_name, getattr(reference, _name), "CompositeExplicitAutograd")


@torch.library.register_fake("eet::argmax_rows")
def _argmax_rows_fake(x):
    return x.new_empty((x.shape[0],), dtype=torch.long)


@torch.library.register_fake("eet::padding_runs")
def _padding_runs_fake(mask):
    rows = mask.shape[0]
    return (mask.new_empty((rows,), dtype=torch.int32), mask.new_empty((rows,), dtype=torch.int32),
            mask.new_empty((3,), dtype=torch.int32))


@torch.library.register_fake("eet::in_place_packing")
def _in_place_packing_fake(start, end, seq_len):
    batch = start.shape[0]
    return start.new_empty((3 * batch + 1,), dtype=torch.int32), start.new_empty((batch, seq_len), dtype=torch.bool)


@torch.library.register_fake("eet::layer_norm")
def _layer_norm_fake(x, weight, bias, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("eet::add_layer_norm")
def _add_layer_norm_fake(x, residual, weight, bias, eps):
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    return out, torch.empty_like(out)


@torch.library.register_fake("eet::rms_norm")
def _rms_norm_fake(x, weight, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("eet::bias_gelu")
def _bias_gelu_fake(x, bias, approximate):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("eet::attention")
def _attention_fake(q, k, v, kv_start, kv_end, q_offset, causal, scale):
    batch, heads, q_len, head_dim = q.shape
    return q.new_empty((batch, q_len, heads, head_dim))


@torch.library.register_fake("eet::attention_varlen")
def _attention_varlen_fake(q, k, v, cu_seqlens, max_seqlen, causal, scale):
    return q.new_empty(q.shape)


@torch.library.register_fake("eet::embedding")
def _embedding_fake(input_ids, position_ids, wte, wpe):
    return wte.new_empty((*input_ids.shape, wte.shape[1]))


@torch.library.register_fake("eet::kv_append")
def _kv_append_fake(qkv, bias, k_cache, v_cache, write_pos, heads_q, heads_kv):
    # The caches are mutated in place (declared Tensor(a!) / Tensor(b!)); only q is a new tensor.
    batch, seq, width = qkv.shape
    return qkv.new_empty((batch, heads_q, seq, width // (heads_q + 2 * heads_kv)))


@torch.library.register_fake("eet::rotary")
def _rotary_fake(q, k, cos, sin):
    return q.new_empty(q.shape), k.new_empty(k.shape)


@torch.library.register_fake("eet::small_linear")
def _small_linear_fake(x, weight, bias, activation):
    return x.new_empty((x.shape[0], weight.shape[1]))
