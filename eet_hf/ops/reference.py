"""Reference implementations: the specification of every eet op.

Readable PyTorch, computed in float32 and cast back to the input dtype. CPU runs use these; the CUDA
kernels in csrc/ must match them within the dtype's tolerance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """LayerNorm over the last dim. x: [..., hidden]; weight, bias: [hidden]."""
    b = None if bias is None else bias.float()
    return F.layer_norm(x.float(), (x.shape[-1],), weight.float(), b, eps).to(x.dtype)


def add_layer_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(LayerNorm(x + residual), x + residual). The sum is rounded to x's dtype first, as HF's `a + b` is."""
    summed = x + residual
    return layer_norm(summed, weight, bias, eps), summed


def bias_gelu(x: torch.Tensor, bias: torch.Tensor | None, approximate: str) -> torch.Tensor:
    """gelu(x + bias); approximate 'tanh' is HF's gelu_new, 'none' the exact erf form."""
    if approximate not in ("tanh", "none"):
        raise ValueError(f"eet::bias_gelu: approximate must be 'tanh' or 'none', got {approximate!r}")
    h = x.float() if bias is None else x.float() + bias.float()
    return F.gelu(h, approximate=approximate).to(x.dtype)


def visible_keys(
    kv_start: torch.Tensor, kv_end: torch.Tensor, q_offset: torch.Tensor, causal: bool, q_len: int, kv_len: int
) -> torch.Tensor:
    """Boolean [batch, q_len, kv_len]: key j is visible to query i of sequence b iff
    kv_start[b] <= j < kv_end[b] and (not causal or j <= q_offset[b] + i)."""
    j = torch.arange(kv_len, device=kv_start.device).view(1, 1, kv_len)
    i = torch.arange(q_len, device=kv_start.device).view(1, q_len, 1)
    visible = (j >= kv_start.view(-1, 1, 1)) & (j < kv_end.view(-1, 1, 1))
    if causal:
        visible = visible & (j <= q_offset.view(-1, 1, 1) + i)
    return visible.expand(kv_start.shape[0], q_len, kv_len)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_start: torch.Tensor,
    kv_end: torch.Tensor,
    q_offset: torch.Tensor,
    causal: bool,
    scale: float,
) -> torch.Tensor:
    """Attention with the mask given by per-sequence bounds.

    q: [batch, heads_q, q_len, head_dim]; k, v: [batch, heads_kv, kv_len, head_dim] (heads_q a multiple of
    heads_kv); kv_start, kv_end, q_offset: int32 [batch]. Returns [batch, q_len, heads_q, head_dim].
    A query row that sees no key returns zeros.
    """
    batch, heads_q, q_len, _ = q.shape
    heads_kv, kv_len = k.shape[1], k.shape[2]
    if heads_kv == 0 or heads_q % heads_kv:
        raise ValueError(f"eet::attention: query heads ({heads_q}) must be a multiple of key/value heads ({heads_kv})")
    groups = heads_q // heads_kv
    kf = k.float().repeat_interleave(groups, dim=1)
    vf = v.float().repeat_interleave(groups, dim=1)
    visible = visible_keys(kv_start, kv_end, q_offset, causal, q_len, kv_len).unsqueeze(1)
    scores = torch.matmul(q.float(), kf.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~visible, float("-inf"))
    any_visible = visible.any(-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(~any_visible, 0.0), dim=-1).masked_fill(~visible, 0.0)
    out = torch.matmul(probs, vf)
    return out.transpose(1, 2).contiguous().to(q.dtype)
