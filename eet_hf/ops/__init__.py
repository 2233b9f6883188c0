"""eet ops: one function per op, a CUDA kernel when built and on GPU, the PyTorch reference otherwise.

Every op is a torch custom op (`torch.ops.eet.*`) with a fake implementation, so accelerated models work
under torch.compile and CUDA graph capture. Shapes are given in each docstring.
"""

from __future__ import annotations

import functools

import torch

# _library declares the torch.ops.eet schemas, autograd registers their backward.
from . import _library, autograd, prefill_backend, reference  # noqa: F401
from ._build import build_info, ensure_loaded
from .decode import decode_linear, decode_qkv_rope, qkv_rope_append

__all__ = [
    "add_layer_norm",
    "argmax_rows",
    "attention",
    "attention_varlen",
    "bias_gelu",
    "build_info",
    "decode_linear",
    "decode_qkv_rope",
    "embedding",
    "ensure_loaded",
    "in_place_packing",
    "kv_append",
    "layer_norm",
    "linear_gelu",
    "padding_runs",
    "qkv_rope_append",
    "reference",
    "rms_norm",
    "rotary",
    "small_linear",
]

_ops = torch.ops.eet


def _prepare(t: torch.Tensor) -> None:
    # First CUDA use builds the extension; afterwards this is one dict lookup.
    if t.is_cuda:
        ensure_loaded()


def _run(op, *args):
    """op(*args). With grad mode off, past the op's Autograd kernel (autograd.py): it is Python, about 3 us a
    call, and has nothing to record then. Under torch.compile the plain call, which dynamo traces."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def _grad_needed(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """LayerNorm over the last dim. x: [..., hidden] -> [..., hidden]."""
    _prepare(x)
    return _run(_ops.layer_norm, x, weight, bias, eps)


def add_layer_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(LayerNorm(x + residual), x + residual), one pass. x, residual: [..., hidden]."""
    _prepare(x)
    return _run(_ops.add_layer_norm, x, residual, weight, bias, eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, HF Llama order (normalize, round, then * weight). x: [..., hidden] -> same."""
    _prepare(x)
    return _run(_ops.rms_norm, x, weight, eps)


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HF's apply_rotary_pos_emb for q [batch, heads_q, seq, head_dim] and k [batch, heads_k, seq, head_dim] with
    cos, sin [batch or 1, seq, rot] (rot <= head_dim, even; dims past rot pass through), in one kernel, with HF's
    roundings. Returns (q_embed, k_embed) shaped as q and k."""
    _prepare(q)
    return _run(_ops.rotary, q, k, cos, sin)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor | None, approximate: str) -> torch.Tensor:
    """gelu(x + bias). x: [..., cols]; bias: [cols]; approximate 'tanh' (gelu_new) or 'none' (erf)."""
    _prepare(x)
    return _run(_ops.bias_gelu, x, bias, approximate)


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """torch.argmax(x, dim=-1) for x [rows, cols] (a greedy step's logits), int64 [rows]: one block per row on CUDA."""
    _prepare(x)
    return _run(_ops.argmax_rows, x)


def padding_runs(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's run of real keys of a 2-D mask [batch, keys] (bool or integer, nonzero: real; see
    reference.padding_runs): (start, end, flags) int32, flags = (one run per row, no padding, right padding).
    One kernel on CUDA, where torch's formulation is ~13 launches."""
    _prepare(mask)
    return _run(_ops.padding_runs, mask)


def in_place_packing(start: torch.Tensor, end: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cu_seqlens int32 [3 * batch + 1], real bool [batch, seq_len]) of the encoder's in-place packing of runs
    [start, end) (int32 [batch]; see reference.in_place_packing). One kernel on CUDA."""
    _prepare(start)
    return _run(_ops.in_place_packing, start, end, seq_len)


def small_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str) -> torch.Tensor:
    """act(x @ weight + bias) for decode-step batches, one kernel streaming the weight once (small_linear.cu).
    x: [rows <= 8, in], last dim contiguous; weight: [in, out] (Conv1D layout); bias: [out] or None; activation
    'none' or 'tanh_staged' (HF gelu_new with its roundings, as linear_gelu's). Returns [rows, out] in x's dtype."""
    _prepare(x)
    return _run(_ops.small_linear, x, weight, bias, activation)


def linear_gelu(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor, approximate: str) -> torch.Tensor:
    """gelu(x @ weight_t + bias). x: [..., in]; weight_t: [in, out] (a view is fine); bias: [out]."""
    x2d = x.reshape(-1, x.shape[-1])
    if approximate == "tanh_staged":
        # HF's gelu_new rounds the GEMM + bias output to the storage dtype first (Conv1D / Linear is addmm).
        out = bias_gelu(torch.addmm(bias, x2d, weight_t), None, approximate)
    elif x.is_cuda and approximate == "tanh" and x.dtype != torch.float32 and not _grad_needed(x, weight_t, bias):
        # cuBLASLt fuses bias + tanh-GELU into the GEMM epilogue: one pass over the activations fewer (it has
        # no derivative in torch, so calls that need gradients take bias_gelu's).
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
    unpadded prefill then runs torch's SDPA, faster there than eet's kernel (kernels-h200.md), with flash tried
    first until the shape has repeated enough to repay a cuDNN plan (prefill_backend); padded and decode shapes,
    where mask fusion pays, run eet's kernel.
    """
    _prepare(q)
    if not padded and q.is_cuda and q.shape[2] == k.shape[2] > 1:
        with _sdpa_priority(prefill_backend.first_backend(q, k, causal)):
            dense = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=causal, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
            )
        return dense.transpose(1, 2)
    return _run(_ops.attention, q, k, v, kv_start, kv_end, q_offset, causal, scale)


_SDPA_ENABLED = {
    "FLASH_ATTENTION": torch.backends.cuda.flash_sdp_enabled,
    "EFFICIENT_ATTENTION": torch.backends.cuda.mem_efficient_sdp_enabled,
    "CUDNN_ATTENTION": torch.backends.cuda.cudnn_sdp_enabled,
    "MATH": torch.backends.cuda.math_sdp_enabled,
}


def _sdpa_priority(first: str):
    """A context running SDPA with `first` tried first, then the others in flash, efficient, cuDNN, math order.
    Backends the user disabled (torch.backends.cuda.enable_*_sdp(False)) stay off; the rest stay enabled, so
    a shape the first refuses (GQA, a stride cuDNN does not take) runs on the next. (Under torch.compile the
    enabled flags cannot be read without a graph break; there all four are listed.)"""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    compiling = torch.compiler.is_compiling()
    names = [first] + [n for n in prefill_backend.USUAL_ORDER if n != first]
    backends = [
        getattr(SDPBackend, n) for n in names if hasattr(SDPBackend, n) and (compiling or _SDPA_ENABLED[n]())
    ]
    return sdpa_kernel(backends or [SDPBackend.MATH], set_priority=True)


def _torch_flash_varlen_ok(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """torch's varlen flash kernel takes these inputs (fp16/bf16 on sm80+, head_dim % 8 == 0, <= 256)."""
    return (
        q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and q.shape[-1] % 8 == 0
        and q.shape[-1] <= 256
        and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
        and torch.backends.cuda.flash_sdp_enabled()
        and _flash_available(q.device.index or 0)
    )


@functools.cache
def _flash_available(device_index: int) -> bool:
    return torch.backends.cuda.is_flash_attention_available() and torch.cuda.get_device_capability(device_index) >= (8, 0)


def attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    causal: bool,
    scale: float,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention over packed sequences (see reference.attention_varlen).

    q: [tokens, heads_q, head_dim]; k, v: [tokens, heads_kv, head_dim], last dim contiguous, other strides free
    (views into a packed QKV GEMM output); cu_seqlens: int32 [batch + 1]. Returns [tokens, heads_q, head_dim].
    backend "auto" runs torch's varlen flash kernel where it applies (fp16/bf16, CUDA): on the H200 torch's
    flash beat eet's mma.sync kernel by about 1.5x on dense BERT prefill (kernels-h200.md), and varlen removes
    exactly the padding that eet's bounds kernel exists to skip. "eet" always runs eet's own kernel (fp32,
    other head dims, and the reference on CPU).
    """
    if backend not in ("auto", "eet"):
        raise ValueError(f"eet_hf.ops.attention_varlen: backend must be 'auto' or 'eet', got {backend!r}")
    _prepare(q)
    if backend == "auto" and q.shape[0] > 0 and _torch_flash_varlen_ok(q, k, v):
        out = torch.ops.aten._flash_attention_forward(
            q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, 0.0, causal, False, scale=scale
        )[0]
        return out
    return _run(_ops.attention_varlen, q, k, v, cu_seqlens, max_seqlen, causal, scale)


def embedding(
    input_ids: torch.Tensor, position_ids: torch.Tensor, wte: torch.Tensor, wpe: torch.Tensor | None
) -> torch.Tensor:
    """wte[input_ids] + wpe[position_ids] (fp32 add, one rounding). ids, positions: int64/int32 [batch, seq];
    wte: [vocab, hidden]; wpe: [positions, hidden] or None. Returns [batch, seq, hidden]; out-of-range rows NaN."""
    _prepare(wte)
    return _run(_ops.embedding, input_ids, position_ids, wte, wpe)


def kv_append(
    qkv: torch.Tensor,
    bias: torch.Tensor | None,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    write_pos: torch.Tensor,
    heads_q: int,
    heads_kv: int,
) -> torch.Tensor:
    """Writes k, v of qkv (+ bias) into the caches at slot write_pos[b] + s (slots outside the cache are
    skipped) and returns q. qkv: [batch, seq, (heads_q + 2 * heads_kv) * head_dim]; k_cache, v_cache:
    [batch, heads_kv, cache_len, head_dim], mutated; write_pos: int32 [batch]. Returns [batch, heads_q, seq, head_dim]."""
    _prepare(qkv)
    return _run(_ops.kv_append, qkv, bias, k_cache, v_cache, write_pos, heads_q, heads_kv)
