"""Share of the H200's measured ceilings (BASELINES.md) that a measured time reaches.

share = floor / measured, where floor is the time the work needs at the ceiling:
- decode (one token): weight bytes + KV-cache bytes read, at the copy bandwidth (4.16 TB/s);
- prefill / encoder forward: matmul FLOPs (2 per multiply-add: the weight GEMMs on every real token, attention's
  QK^T and PV — half of it for causal masks — and the LM head on the last token only, as generate does) at the
  fp16 matmul rate (722 TFLOP/s). Padded tokens are not counted: they are work a good engine skips.
The ceilings are the H200's; on other devices the shares still compare engines, not hardware.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

COPY_BYTES_PER_S = 4.16e12
MATMUL_FLOPS_PER_S = 722e12


@dataclass(frozen=True)
class ModelNumbers:
    weight_bytes: int  # every parameter once (tied embeddings once)
    matmul_params: int  # parameters of the per-token GEMMs (no embeddings, no LM head)
    head_params: int  # LM head matrix (0 without one)
    layers: int
    hidden: int  # query width: heads * head dim
    kv_dim: int  # KV heads * head dim (GQA: fewer than hidden)
    elem_bytes: int


def numbers(model: torch.nn.Module) -> ModelNumbers:
    config = model.config
    params = {id(p): p for p in model.parameters()}
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_weight = head.weight if head is not None else None
    excluded = embeddings | ({id(head_weight)} if head_weight is not None else set())
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    first = next(iter(params.values()))
    return ModelNumbers(
        weight_bytes=sum(p.numel() * p.element_size() for p in params.values()),
        matmul_params=sum(p.numel() for i, p in params.items() if i not in excluded),
        head_params=head_weight.numel() if head_weight is not None else 0,
        layers=config.num_hidden_layers,
        hidden=heads * head_dim,
        kv_dim=kv_heads * head_dim,
        elem_bytes=first.element_size(),
    )


def kv_bytes(n: ModelNumbers, batch: int, context: float) -> float:
    """K and V of every layer for `context` cached tokens per sequence."""
    return 2 * n.layers * batch * context * n.kv_dim * n.elem_bytes


def decode_floor_ms(n: ModelNumbers, batch: int, context: float) -> float:
    """One decode step reading all weights once and `context` cached tokens per sequence."""
    return (n.weight_bytes + kv_bytes(n, batch, context)) / COPY_BYTES_PER_S * 1e3


def causal_prefill_flops(n: ModelNumbers, batch: int, prompt: int) -> float:
    gemms = 2 * n.matmul_params * batch * prompt
    attention = 2 * n.layers * batch * prompt * prompt * n.hidden  # (QK^T + PV) * 2 flops, halved by causality
    return gemms + attention + 2 * n.head_params * batch


def encoder_flops(n: ModelNumbers, lengths: list[int]) -> float:
    """Bidirectional encoder over the real tokens only (`lengths`: unpadded length of each sequence)."""
    gemms = 2 * n.matmul_params * sum(lengths)
    attention = 4 * n.layers * n.hidden * sum(t * t for t in lengths)
    return gemms + attention


def flops_floor_ms(flops: float) -> float:
    return flops / MATMUL_FLOPS_PER_S * 1e3


def share(floor_ms: float, measured_ms: float) -> float:
    return floor_ms / measured_ms if measured_ms > 0 else float("nan")
