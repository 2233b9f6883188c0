"""eet ops: one function per op, a CUDA kernel when built and on GPU, the PyTorch reference otherwise.

Every op is a torch custom op (`torch.ops.eet.*`) with a fake implementation, so accelerated models work
under torch.compile and CUDA graph capture. Shapes are given in each docstring.
"""

from __future__ import annotations

import torch

from . import _library, reference  # noqa: F401  (_library declares the torch.ops.eet schemas)
from ._build import build_info, ensure_loaded

__all__ = [
    "add_layer_norm",
    "attention",
    "bias_gelu",
    "build_info",
    "ensure_loaded",
    "layer_norm",
    "linear_gelu",
    "reference",
]

_ops = torch.ops.eet


def _prepare(t: torch.Tensor) -> None:
    # First CUDA use builds the extension; afterwards this is one dict lookup.
    if t.is_cuda:
        ensure_loaded()


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """LayerNorm over the last dim. x: [..., hidden] -> [..., hidden]."""
    _prepare(x)
    return _ops.layer_norm(x, weight, bias, eps)


def add_layer_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(LayerNorm(x + residual), x + residual), one pass. x, residual: [..., hidden]."""
    _prepare(x)
    return _ops.add_layer_norm(x, residual, weight, bias, eps)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor | None, approximate: str) -> torch.Tensor:
    """gelu(x + bias). x: [..., cols]; bias: [cols]; approximate 'tanh' (gelu_new) or 'none' (erf)."""
    _prepare(x)
    return _ops.bias_gelu(x, bias, approximate)


def linear_gelu(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor, approximate: str) -> torch.Tensor:
    """gelu(x @ weight_t + bias). x: [..., in]; weight_t: [in, out] (a view is fine); bias: [out]."""
    x2d = x.reshape(-1, x.shape[-1])
    if x.is_cuda and approximate == "tanh" and x.dtype != torch.float32:
        # cuBLASLt fuses bias + tanh-GELU into the GEMM epilogue: one pass over the activations fewer.
        out = torch._addmm_activation(bias, x2d, weight_t, use_gelu=True)
    else:
        out = bias_gelu(torch.mm(x2d, weight_t), bias, approximate)
    return out.view(*x.shape[:-1], weight_t.shape[-1])


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_start: torch.Tensor,
    kv_end: torch.Tensor,
    q_offset: torch.Tensor,
    causal: bool,
    scale: float,
    padded: bool = True,
) -> torch.Tensor:
    """Attention, mask computed from per-sequence bounds (see reference.attention).

    q: [batch, heads_q, q_len, head_dim]; k, v: [batch, heads_kv, kv_len, head_dim];
    kv_start, kv_end, q_offset: int32 [batch]. Returns [batch, q_len, heads_q, head_dim].
    padded=False promises the bounds cover every key (no padding; q_offset = kv_len - q_len): square
    unpadded prefill then runs torch's flash SDPA, faster there than eet's kernel (kernels-h200.md); padded
    and decode shapes, where mask fusion pays, run eet's kernel.
    """
    _prepare(q)
    if not padded and q.is_cuda and q.shape[2] == k.shape[2] > 1:
        dense = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=causal, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
        )
        return dense.transpose(1, 2)
    return _ops.attention(q, k, v, kv_start, kv_end, q_offset, causal, scale)
