"""A decoder model seen through its record (patches/decoder_records.py): its parts by role, and the arithmetic the
record names (norm kind, MLP activation). Shared by the fused step (fused_decoder.py) and the checks that decide
whether it may serve a model (fused_decoder_refusal.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from eet_hf.ops import decode as decode_ops
from eet_hf.ops import reference

from .packing import pack_rows, transposed

if TYPE_CHECKING:  # importing eet_hf.patches here would run the adapters' imports, which import this module
    from eet_hf.patches.decoder_records import DecoderRecord


@dataclass(frozen=True)
class Activation:
    epilogue: str  # decode_linear's epilogue
    fn: Callable[[torch.Tensor], torch.Tensor]  # HF's activation (the probe's reference)
    gated: bool  # down(act(gate(x)) * up(x)) rather than down(act(up(x)))


ACTIVATIONS = {
    "silu": Activation("silu_mul", F.silu, True),
    "gelu_tanh": Activation("gelu_tanh_mul", lambda t: F.gelu(t, approximate="tanh"), True),
    "relu": Activation("relu", F.relu, False),
    # HF's NewGELUActivation: its formula op by op in the storage dtype (eet's reference is that same expression)
    "gelu_new": Activation("gelu_new", lambda t: reference.bias_gelu(t, None, "tanh_staged"), False),
}
NORM_NAMES = {"rms": "HF Llama's RMSNorm", "layer": "nn.LayerNorm"}


def norm_eps(norm: nn.Module) -> float | None:
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    return float(eps) if isinstance(eps, (int, float)) else None


def norm_bias(norm: nn.Module, record: DecoderRecord) -> torch.Tensor | None:
    return getattr(norm, "bias", None) if record.norm == "layer" else None


def record_norm(norm: nn.Module, record: DecoderRecord, x: torch.Tensor) -> torch.Tensor:
    """The record's norm with `norm`'s parameters, computed as HF's reference module computes it."""
    if record.norm == "layer":
        return decode_ops.norm_reference(x, norm.weight, norm_bias(norm, record), norm_eps(norm), "layer")
    return reference.rms_norm(x, norm.weight, norm_eps(norm))


def model_parts(model: nn.Module, record: DecoderRecord) -> dict:
    base = model.get_submodule(record.base)
    layers = list(getattr(base, record.layers))[: model.config.num_hidden_layers]
    rotary = getattr(base, record.rotary) if record.rotary else None
    return dict(base=base, layers=layers, rotary=rotary, final_norm=getattr(base, record.final_norm),
                lm_head=model.get_output_embeddings())


def layer_modules(layer: nn.Module, record: DecoderRecord) -> dict:
    """The layer's modules by role; "qkv" and "up" are lists of the Linear modules packed in that order ("up": gate
    and up for a gated MLP)."""
    attn = getattr(layer, record.attention)
    mlp = getattr(layer, record.mlp) if record.mlp else layer
    qkv = [getattr(attn, record.qkv)] if record.qkv else [getattr(attn, n) for n in (record.q, record.k, record.v)]
    if record.gate_up:
        up = [getattr(mlp, record.gate_up)]
    else:
        up = [getattr(mlp, n) for n in (record.gate, record.up) if n]
    return {
        "qkv": qkv, "o": getattr(attn, record.o), "up": up, "down": getattr(mlp, record.down),
        "input_norm": getattr(layer, record.input_norm), "post_norm": getattr(layer, record.post_attention_norm),
        "q_norm": getattr(attn, record.q_norm) if record.q_norm else None,
        "k_norm": getattr(attn, record.k_norm) if record.k_norm else None, "attn": attn, "mlp": mlp,
        "act": getattr(layer, record.act) if record.act else None,
    }


def projection_weights(modules: list[nn.Module], record: DecoderRecord) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The [out, in] weight (and bias) the fused step reads for these projections, backing HF's own parameters: one
    nn.Linear's, several packed as row blocks (q/k/v, gate/up), or a Conv1D's transposed once (GPT-2)."""
    if record.projection == "conv1d":
        (conv1d,) = modules
        return transposed(conv1d)
    return pack_rows(modules)


def out_features(projection: nn.Module) -> int:
    """Output width of an nn.Linear ([out, in] weight) or a Conv1D ([in, out] weight)."""
    return projection.out_features if isinstance(projection, nn.Linear) else projection.weight.shape[1]


def head_dim_of(model: nn.Module, attn: nn.Module) -> int:
    config = model.config
    return getattr(attn, "head_dim", None) or config.hidden_size // config.num_attention_heads


def heads_of(model: nn.Module, attn: nn.Module) -> tuple[int, int, int]:
    """(query heads, key/value heads, head_dim)."""
    heads = model.config.num_attention_heads
    return heads, getattr(model.config, "num_key_value_heads", None) or heads, head_dim_of(model, attn)
