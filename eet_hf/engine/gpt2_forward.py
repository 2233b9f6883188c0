"""The lean GPT-2 forward of the decode engine: fused ops only, one Python loop over layers, no host sync.

It reads the model's own parameters (references, never copies) and writes keys/values straight into the
engine's KV arena, so the same function serves the prompt (many tokens) and each decode step (one token per
sequence), and can be captured in a CUDA graph. Matches HF's GPT2LMHeadModel with eet attention: Conv1D is
`addmm(bias, x, weight)` with weight [in, out], as in HF.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from eet_hf import ops

from .decode_model import StepBounds, tensor_signature


@dataclass(frozen=True)
class LayerWeights:
    ln_1: nn.LayerNorm
    c_attn: nn.Module  # Conv1D, weight [hidden, 3*hidden]
    attn_proj: nn.Module  # Conv1D, weight [hidden, hidden]
    ln_2: nn.LayerNorm
    c_fc: nn.Module  # Conv1D, weight [hidden, inner]
    mlp_proj: nn.Module  # Conv1D, weight [inner, hidden]
    scale: float


@dataclass(frozen=True)
class GPT2Weights:
    wte: torch.Tensor  # [vocab, hidden]
    wpe: torch.Tensor  # [positions, hidden]
    layers: tuple[LayerWeights, ...]
    ln_f: nn.LayerNorm
    lm_head: nn.Linear  # weight [vocab, hidden]
    heads: int
    head_dim: int
    gelu: str  # eet bias_gelu `approximate`

    # DecodeModel (decode_model.py)
    @property
    def max_positions(self) -> int:
        return self.wpe.shape[0]

    @property
    def vocab(self) -> int:
        return self.lm_head.weight.shape[0]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def kv_heads(self) -> int:
        return self.heads

    @property
    def width(self) -> int:
        return self.wte.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.wte.dtype

    @property
    def device(self) -> torch.device:
        return self.wte.device

    def storage_signature(self) -> tuple:
        """Addresses and dtypes of every weight: a captured graph is valid only while none of them moved
        (model.to(), .half(), load_state_dict(assign=True) replace the storage)."""
        modules = [self.ln_f, self.lm_head]
        for layer in self.layers:
            modules += [layer.ln_1, layer.c_attn, layer.attn_proj, layer.ln_2, layer.c_fc, layer.mlp_proj]
        return tensor_signature([self.wte, self.wpe] + [p for m in modules for p in (m.weight, m.bias) if p is not None])

    def forward_last_logits(self, tokens, positions, kv, bounds, padded=True) -> torch.Tensor:
        return forward_last_logits(self, tokens, positions, kv, bounds, padded)


def gpt2_weights(model: nn.Module, gelu: str) -> GPT2Weights:
    """The parameters of a GPT2LMHeadModel, by reference."""
    transformer = model.transformer
    layers = tuple(
        LayerWeights(
            ln_1=block.ln_1, c_attn=block.attn.c_attn, attn_proj=block.attn.c_proj, ln_2=block.ln_2,
            c_fc=block.mlp.c_fc, mlp_proj=block.mlp.c_proj, scale=float(block.attn.scaling),
        )
        for block in transformer.h
    )
    attn = transformer.h[0].attn
    return GPT2Weights(
        wte=transformer.wte.weight, wpe=transformer.wpe.weight, layers=layers, ln_f=transformer.ln_f,
        lm_head=model.lm_head, heads=attn.num_heads, head_dim=attn.head_dim, gelu=gelu,
    )


# Which Conv1Ds of a forward run on eet's small_linear kernel instead of cuBLAS (c_fc with gelu_new fused). Measured
# on the H200 (fp16; evaluation/results/small-linear-splits-h200.md): at one row it beats torch.addmm on weights up
# to ~2.6M elements (GPT-2 small's four, XL's attn_proj: 4.4-6.7 us against 5.2-7.7) and loses on larger ones (XL's
# c_attn, c_fc, mlp_proj: 10-12 us against 8-11), and at 8 rows it is 1.5-3x slower everywhere. Being one
# PDL-launched kernel, it also lets its neighbours (layer norm, KV append, attention) overlap it.
_SMALL_LINEAR_MAX_WEIGHT = 4 * 2**20  # elements: between the measured wins (<= 2.6M) and losses (>= 7.7M)


def _small_linear_applies(x2d: torch.Tensor) -> bool:
    """May this forward's Conv1Ds use small_linear at all (device, dtype, one row)?"""
    return x2d.is_cuda and x2d.dtype in (torch.float16, torch.bfloat16) and x2d.shape[0] <= 1


def _use_small(module: nn.Module, small: bool) -> bool:
    # small_linear reads the Conv1D layout [in, out]; a weight the fused step transposed (packing.transposed) is not
    # (this forward serves it only when the fused step's kernel check failed) and takes torch's GEMM.
    return small and module.weight.numel() <= _SMALL_LINEAR_MAX_WEIGHT and module.weight.is_contiguous()


def _conv1d(module: nn.Module, x2d: torch.Tensor, small: bool = False) -> torch.Tensor:
    if _use_small(module, small):
        return ops.small_linear(x2d, module.weight, module.bias, "none")
    return torch.addmm(module.bias, x2d, module.weight)


def _mlp_up(layer: LayerWeights, normed: torch.Tensor, gelu: str, small: bool) -> torch.Tensor:
    if _use_small(layer.c_fc, small) and gelu == "tanh_staged":
        return ops.small_linear(normed, layer.c_fc.weight, layer.c_fc.bias, "tanh_staged")
    return ops.linear_gelu(normed, layer.c_fc.weight, layer.c_fc.bias, gelu)


def forward_last_logits(
    w: GPT2Weights,
    tokens: torch.Tensor,  # [batch, seq] int64
    positions: torch.Tensor,  # [batch, seq] int64
    kv: torch.Tensor,  # [layers, 2, batch, heads, capacity, head_dim]
    bounds: StepBounds,
    padded: bool = True,
) -> torch.Tensor:
    """Logits of the last position of every sequence, [batch, vocab] in the model's dtype.

    seq > 1 is a prompt (causal attention over the first `seq` slots; `padded=False` promises no padding, so
    the op may take a dense kernel); seq == 1 is a decode step over the whole cache capacity, bounded by kv_end.
    """
    batch, seq = tokens.shape
    hidden = ops.embedding(tokens, positions, w.wte, w.wpe).view(batch * seq, -1)
    width = hidden.shape[-1]
    small = _small_linear_applies(hidden)
    mlp_out = None
    for index, layer in enumerate(w.layers):
        if mlp_out is None:
            normed = ops.layer_norm(hidden, layer.ln_1.weight, layer.ln_1.bias, layer.ln_1.eps)
        else:
            # The previous block's residual add, fused with this block's ln_1.
            normed, hidden = ops.add_layer_norm(mlp_out, hidden, layer.ln_1.weight, layer.ln_1.bias, layer.ln_1.eps)
        qkv = _conv1d(layer.c_attn, normed, small).view(batch, seq, 3 * width)
        k_cache, v_cache = kv[index, 0], kv[index, 1]
        q = ops.kv_append(qkv, None, k_cache, v_cache, bounds.write_pos, w.heads, w.heads)
        if seq > 1:
            k_cache, v_cache = k_cache[:, :, :seq], v_cache[:, :, :seq]
        attn = ops.attention(
            q, k_cache, v_cache, bounds.kv_start, bounds.kv_end, bounds.q_offset, seq > 1, layer.scale,
            padded=padded or seq == 1,
        )
        attn_out = _conv1d(layer.attn_proj, attn.reshape(batch * seq, width), small)
        normed, hidden = ops.add_layer_norm(attn_out, hidden, layer.ln_2.weight, layer.ln_2.bias, layer.ln_2.eps)
        inner = _mlp_up(layer, normed, w.gelu, small)
        mlp_out = _conv1d(layer.mlp_proj, inner, small)
    # Only the last position of each sequence feeds the LM head (HF's logits_to_keep=1 in generate).
    last_mlp = mlp_out.view(batch, seq, width)[:, -1]
    last_hidden = hidden.view(batch, seq, width)[:, -1]
    final, _ = ops.add_layer_norm(last_mlp, last_hidden, w.ln_f.weight, w.ln_f.bias, w.ln_f.eps)
    return nn.functional.linear(final, w.lm_head.weight, w.lm_head.bias)
