"""The decode step's linear layers over nn.Linear weights, with their neighbours fused (csrc/decode_linear.cu).

`decode_linear`: epilogue(norm(x) @ W^T + bias) — the o / down projections with the residual add, the packed
gate/up projection with the RMSNorm before it and SiLU(gate) * up after it, OPT's fc1 with the LayerNorm before it
and ReLU after it, the LM head with the final norm. `decode_qkv_rope`: the packed QKV projection with the norm before
it, rotary on q and k (none for OPT, whose q is scaled instead) and the KV-cache write after it. `qkv_rope_append`:
that rotary + KV write alone, after a projection (prompts; Qwen3's per-head q/k norms).

Norms (`norm`, the kind of `norm_weight`): 'rms', HF Llama's RMSNorm; 'layer', HF's nn.LayerNorm (with `norm_bias`).
On CUDA, fp16/bf16, 1-16 rows (decode steps) and a (norm, epilogue) pair in KERNEL_PAIRS, a tensor-core kernel streams
W once and does the rest in its prologue and epilogue. Everything else (CPU, fp32, prompts, other pairs) runs the
reference below: HF's own arithmetic in the storage dtype, in the order HF's modeling code computes it (RMSNorm and
rotary through eet's rms_norm and rotary ops, which reproduce HF's roundings; LayerNorm through torch's layer_norm, as
nn.LayerNorm), so on CUDA prompts run on cuBLAS and on CPU it is what HF computes.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator

import torch
from torch.nn import functional as F

from ._build import ensure_loaded

_LIB = torch.library.Library("eet", "FRAGMENT")
_LIB.define(
    "decode_linear(Tensor x, Tensor weight, Tensor? bias, Tensor? norm_weight, float eps, Tensor? residual, "
    "str epilogue, Tensor? norm_bias=None, str norm='rms', int warps_per_tile=0) -> Tensor"
)
_LIB.define(
    "qkv_rope_append(Tensor qkv, Tensor? q_norm, Tensor? k_norm, float eps, Tensor? cos, Tensor? sin, "
    "Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor write_pos, int heads_q, int heads_kv, float q_scale=1.0) -> Tensor"
)
_LIB.define(
    "decode_qkv_rope(Tensor x, Tensor weight, Tensor? bias, Tensor? norm_weight, float eps, Tensor? cos, Tensor? sin, "
    "Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor write_pos, int heads_q, int heads_kv, Tensor? norm_bias=None, "
    "str norm='rms', float q_scale=1.0, int warps_per_tile=0) -> Tensor"
)

EPILOGUES = ("none", "residual", "silu_mul", "gelu_tanh_mul", "relu", "gelu_new")
GATED = ("silu_mul", "gelu_tanh_mul")
NORMS = ("rms", "layer")
# (norm kind, epilogue) pairs the CUDA kernel is built for: the ones the fused decoder step runs (csrc/decode_linear.cu
# `dispatch` lists the same). 'rotary_kv' is decode_qkv_rope's epilogue. Every other pair runs the reference.
KERNEL_PAIRS = frozenset({
    ("none", "residual"),
    ("rms", "none"), ("rms", "silu_mul"), ("rms", "gelu_tanh_mul"), ("rms", "rotary_kv"),
    ("layer", "none"), ("layer", "relu"), ("layer", "gelu_new"), ("layer", "rotary_kv"),
})
MAX_KERNEL_ROWS = 16  # csrc/decode_linear.h kDecodeLinearMaxRows


def _check_norm(op: str, norm_weight, norm_bias, norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"eet::{op}: norm must be one of {NORMS}, got {norm!r}")
    if norm_bias is not None and (norm_weight is None or norm != "layer"):
        raise ValueError(f"eet::{op}: norm_bias goes with a norm_weight and norm 'layer'")


def norm_reference(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                   norm: str) -> torch.Tensor:
    """The prologue's norm as HF computes it, in x's dtype: 'rms' is LlamaRMSNorm (eet's rms_norm op, which rounds
    where HF rounds), 'layer' is nn.LayerNorm (torch's layer_norm: fp32 inside, one rounding). No weight: x."""
    if weight is None:
        return x
    if norm == "layer":
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    return torch.ops.eet.rms_norm(x, weight, eps)


def decode_linear_reference(x, weight, bias, norm_weight, eps, residual, epilogue, norm_bias=None, norm="rms",
                            warps_per_tile=0):
    """HF's arithmetic: [RMSNorm | LayerNorm ->] linear [-> residual + y | relu(y) | gelu_new(y) | act(gate) * up].
    gelu_new is HF's NewGELUActivation (GPT-2) through eet's bias_gelu 'tanh_staged', which rounds as HF's formula
    does op by op, in one kernel on CUDA (prompts take this path). x: [rows, in];
    weight: [out, in] ([gate; up] for the gated epilogues); residual: [rows, out]. Returns [rows, out] ([rows, out / 2]
    gated)."""
    if epilogue not in EPILOGUES:
        raise ValueError(f"eet::decode_linear: epilogue must be one of {EPILOGUES}, got {epilogue!r}")
    if (epilogue == "residual") != (residual is not None):
        raise ValueError("eet::decode_linear: residual is required by epilogue 'residual' and only by it")
    _check_norm("decode_linear", norm_weight, norm_bias, norm)
    y = F.linear(norm_reference(x, norm_weight, norm_bias, eps, norm), weight, bias)
    if epilogue == "none":
        return y
    if epilogue == "residual":
        return residual + y
    if epilogue == "relu":
        return F.relu(y)
    if epilogue == "gelu_new":
        return torch.ops.eet.bias_gelu(y, None, "tanh_staged")
    gate, up = y.chunk(2, dim=-1)
    act = F.silu(gate) if epilogue == "silu_mul" else F.gelu(gate, approximate="tanh")
    return act * up


def _write_cache(k_cache, v_cache, k, v, write_pos) -> None:
    """k, v [batch, heads_kv, seq, head_dim] into the caches at slots write_pos[b] + s; slots outside are skipped."""
    batch, _, seq, _ = k.shape
    device = k.device
    capacity = k_cache.shape[2]
    # Token s of row b goes to slot write_pos[b] + s; the slots inside the cache are a run of tokens [lo, hi]. Tokens
    # outside it write the value of the run's nearest token to that token's slot (duplicate index, same value: any
    # order gives the same cache), rows without any such token write back what their clamped slot holds. No host
    # sync, so this runs inside a CUDA graph (fp32 decode steps take this path).
    pos = write_pos.long().view(batch, 1)
    steps = torch.arange(seq, device=device).view(1, seq)
    lo, hi = (-pos).clamp(min=0), (capacity - 1 - pos).clamp(max=seq - 1)
    src = torch.maximum(torch.minimum(steps, hi), lo).clamp(0, seq - 1)  # [batch, seq]
    slots = (pos + src).clamp(0, capacity - 1)
    rows = torch.arange(batch, device=device).view(batch, 1).expand(batch, seq)
    for cache, new in ((k_cache, k), (v_cache, v)):
        values = new.transpose(1, 2).to(cache.dtype)  # [batch, seq, heads_kv, head_dim]
        picked = values.gather(1, src[..., None, None].expand(-1, -1, *values.shape[2:]))
        # Advanced indices on dims 0 and 2 put [batch, seq] first: [batch, seq, heads_kv, head_dim].
        cache[rows, :, slots] = torch.where((lo <= hi)[..., None, None], picked, cache[rows, :, slots])


def decode_qkv_rope_reference(x, weight, bias, norm_weight, eps, cos, sin, k_cache, v_cache, write_pos, heads_q,
                              heads_kv, norm_bias=None, norm="rms", q_scale=1.0, warps_per_tile=0):
    """HF's attention prologue on a packed QKV weight [(heads_q + 2 heads_kv) * head_dim, hidden]: [RMSNorm |
    LayerNorm ->] q, k, v projections, apply_rotary_pos_emb on q and k (cos, sin None: none), q * q_scale (OPT's
    `q_proj(x) * scaling`), k and v stored at cache slots write_pos[b] + s (slots outside the cache skipped).
    x: [batch, seq, hidden]; cos, sin: [batch, seq, head_dim]; caches [batch, heads_kv, capacity, head_dim], mutated.
    Returns q [batch, heads_q, seq, head_dim]."""
    _check_norm("decode_qkv_rope", norm_weight, norm_bias, norm)
    h = norm_reference(x, norm_weight, norm_bias, eps, norm)
    return qkv_rope_append(F.linear(h, weight, bias), None, None, 0.0, cos, sin, k_cache, v_cache, write_pos,
                           heads_q, heads_kv, q_scale)


def qkv_rope_append_reference(qkv, q_norm, k_norm, eps, cos, sin, k_cache, v_cache, write_pos, heads_q, heads_kv,
                              q_scale=1.0):
    """HF's attention prologue after the QKV projection: [per-head RMSNorm of q and k (q_norm, k_norm [head_dim]:
    Qwen3) ->] apply_rotary_pos_emb (cos, sin None: none) [-> q * q_scale], k and v stored at slots write_pos[b] + s.
    qkv: [batch, seq, (heads_q + 2 heads_kv) * head_dim]; cos, sin: [batch, seq, head_dim]. Returns q [batch,
    heads_q, seq, head_dim]."""
    if (cos is None) != (sin is None):
        raise ValueError("eet::qkv_rope_append: cos and sin go together (both None: no rotary)")
    batch, seq, width = qkv.shape
    head_dim = width // (heads_q + 2 * heads_kv)
    heads = qkv.view(batch, seq, heads_q + 2 * heads_kv, head_dim).transpose(1, 2)
    q, k, v = heads.split([heads_q, heads_kv, heads_kv], dim=1)
    if q_norm is not None:
        q, k = torch.ops.eet.rms_norm(q, q_norm, eps), torch.ops.eet.rms_norm(k, k_norm, eps)
    if cos is not None:
        q, k = torch.ops.eet.rotary(q, k, cos, sin)
    if q_scale != 1.0:
        q = q * q_scale  # a tensor times a Python float: in x's dtype, rounded once, as HF's `q_proj(x) * scaling`
    _write_cache(k_cache, v_cache, k, v, write_pos)
    return q.contiguous()


_LIB.impl("decode_linear", decode_linear_reference, "CompositeExplicitAutograd")
_LIB.impl("qkv_rope_append", qkv_rope_append_reference, "CompositeExplicitAutograd")
_LIB.impl("decode_qkv_rope", decode_qkv_rope_reference, "CompositeExplicitAutograd")


@torch.library.register_fake("eet::decode_linear")
def _decode_linear_fake(x, weight, bias, norm_weight, eps, residual, epilogue, norm_bias=None, norm="rms",
                        warps_per_tile=0):
    cols = weight.shape[0] // 2 if epilogue in GATED else weight.shape[0]
    return x.new_empty((x.shape[0], cols))


@torch.library.register_fake("eet::qkv_rope_append")
def _qkv_rope_append_fake(qkv, q_norm, k_norm, eps, cos, sin, k_cache, v_cache, write_pos, heads_q, heads_kv,
                          q_scale=1.0):
    batch, seq, width = qkv.shape
    return qkv.new_empty((batch, heads_q, seq, width // (heads_q + 2 * heads_kv)))


@torch.library.register_fake("eet::decode_qkv_rope")
def _decode_qkv_rope_fake(x, weight, bias, norm_weight, eps, cos, sin, k_cache, v_cache, write_pos, heads_q,
                          heads_kv, norm_bias=None, norm="rms", q_scale=1.0, warps_per_tile=0):
    batch, seq, _ = x.shape
    return x.new_empty((batch, heads_q, seq, weight.shape[0] // (heads_q + 2 * heads_kv)))


_REFERENCE_ONLY = contextvars.ContextVar("eet_decode_reference_only", default=False)


@contextlib.contextmanager
def reference_only() -> Iterator[None]:
    """Within the block the decode ops run their references, kernels or not: the fused decoder checks its kernels
    against them on a probe step before it takes a model (eet_hf/engine/fused_decoder.py)."""
    token = _REFERENCE_ONLY.set(True)
    try:
        yield
    finally:
        _REFERENCE_ONLY.reset(token)


def _aligned(t: torch.Tensor) -> bool:
    return t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and (t.dim() == 1 or t.stride(-2) % 8 == 0)


def _kernel_takes(x2d: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor | None,
                  norm_bias: torch.Tensor | None, norm: str, epilogue: str) -> bool:
    """Does the tensor-core kernel take this call? Checked on shapes and addresses only (no device sync)."""
    if _REFERENCE_ONLY.get():
        return False
    if ("none" if norm_weight is None else norm, epilogue) not in KERNEL_PAIRS:
        return False
    if not (x2d.is_cuda and x2d.dtype in (torch.float16, torch.bfloat16) and 1 <= x2d.shape[0] <= MAX_KERNEL_ROWS):
        return False
    # Any number of output rows (a partial last tile); the gated epilogues pair whole 16-row tiles.
    if x2d.shape[-1] % 8 or (epilogue in GATED and weight.shape[0] % 16) or weight.dtype != x2d.dtype:
        return False
    if not all(t is None or _aligned(t) for t in (x2d, weight, norm_weight, norm_bias)):
        return False
    if norm_weight is not None and not _staged_rows_fit(x2d.shape[0], x2d.shape[-1], x2d.device):
        return False
    return ensure_loaded()


# csrc/decode_linear.h (decode_linear_norm_min_smem): a norm kernel stages its m normalized x rows in shared memory,
# beside 17 KB of partial tiles and the two smallest W ring slots of a 16-warp block; hidden sizes past ~5,500
# (16 rows) or ~11,000 (8 rows) on an H100 take the reference path.
_STATIC_SMEM = 16 * 16 * 17 * 4
_NORM_STATS = 2 * 16 * 32 * 4  # the prologue's per-row statistics (kDecodeLinearNormStatsBytes)
_MIN_RING = 2 * 2 * 16 * 16 * 32  # kDecodeLinearMinRing slots of two 16-byte W fragments per thread, 16 warps


def _staged_rows_fit(m: int, k: int, device: torch.device) -> bool:
    staged = m * ((k + 63) // 64 * 64 + 8) * 2 + _NORM_STATS
    return staged + _STATIC_SMEM + _MIN_RING <= _smem_per_block(device.index if device.index is not None else
                                                    torch.cuda.current_device())


@functools.cache
def _smem_per_block(index: int) -> int:
    return torch.cuda.get_device_properties(index).shared_memory_per_block_optin


def decode_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  norm_weight: torch.Tensor | None = None, eps: float = 0.0, residual: torch.Tensor | None = None,
                  epilogue: str = "none", norm_bias: torch.Tensor | None = None, norm: str = "rms",
                  warps_per_tile: int = 0) -> torch.Tensor:
    """epilogue(norm(x) @ weight^T + bias); see decode_linear_reference. x: [rows, in]; weight: [out, in]; norm:
    'rms' or 'layer', the kind of norm_weight (with norm_bias for 'layer'). warps_per_tile: the kernel's work split
    (8 or 16 warps per 16 output rows; 0, the default: the kernel picks by shape); it never changes the result
    beyond the fp32 summation order, and the reference ignores it."""
    if _kernel_takes(x, weight, norm_weight, norm_bias, norm, epilogue):
        return torch.ops.eet.decode_linear(x, weight, bias, norm_weight, eps, residual, epilogue, norm_bias, norm,
                                           warps_per_tile)
    return decode_linear_reference(x, weight, bias, norm_weight, eps, residual, epilogue, norm_bias, norm)


def decode_qkv_rope(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, norm_weight: torch.Tensor | None,
                    eps: float, cos: torch.Tensor | None, sin: torch.Tensor | None, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, write_pos: torch.Tensor, heads_q: int, heads_kv: int,
                    norm_bias: torch.Tensor | None = None, norm: str = "rms", q_scale: float = 1.0,
                    warps_per_tile: int = 0) -> torch.Tensor:
    """q of HF's attention prologue, k/v into the caches; see decode_qkv_rope_reference. x: [batch, seq, hidden];
    cos, sin: [batch, seq, head_dim] or None (no rotary). warps_per_tile: as decode_linear's."""
    head_dim = weight.shape[0] // (heads_q + 2 * heads_kv)
    tables = cos is None or (cos.shape[-1] == head_dim and cos.stride(-1) == 1 and sin.stride() == cos.stride())
    kernel = (x.shape[1] == 1 and head_dim % 16 == 0 and tables
              and _kernel_takes(x[:, 0], weight, norm_weight, norm_bias, norm, "rotary_kv"))
    if kernel:
        return torch.ops.eet.decode_qkv_rope(x, weight, bias, norm_weight, eps, cos, sin, k_cache, v_cache,
                                             write_pos, heads_q, heads_kv, norm_bias, norm, q_scale, warps_per_tile)
    return decode_qkv_rope_reference(x, weight, bias, norm_weight, eps, cos, sin, k_cache, v_cache, write_pos,
                                     heads_q, heads_kv, norm_bias, norm, q_scale)


def qkv_rope_append(qkv: torch.Tensor, q_norm: torch.Tensor | None, k_norm: torch.Tensor | None, eps: float,
                    cos: torch.Tensor | None, sin: torch.Tensor | None, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    write_pos: torch.Tensor, heads_q: int, heads_kv: int, q_scale: float = 1.0) -> torch.Tensor:
    """[Per-head q/k RMSNorm +] [rotary +] KV write; see qkv_rope_append_reference. qkv: [batch, seq, width]."""
    head_dim = qkv.shape[-1] // (heads_q + 2 * heads_kv)
    tables = cos is None or (cos.shape[-1] == head_dim and cos.is_contiguous() and sin.is_contiguous())
    kernel = (not _REFERENCE_ONLY.get() and qkv.is_cuda and qkv.dtype in (torch.float16, torch.bfloat16, torch.float32)
              and qkv.is_contiguous() and head_dim <= 256 and head_dim % 2 == 0 and tables and ensure_loaded())
    op = torch.ops.eet.qkv_rope_append if kernel else qkv_rope_append_reference
    return op(qkv, q_norm, k_norm, eps, cos, sin, k_cache, v_cache, write_pos, heads_q, heads_kv, q_scale)
