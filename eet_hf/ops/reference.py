"""Reference implementations: the specification of every eet op.

Readable PyTorch, computed in float32 and cast back to the input dtype. CPU runs use these; the CUDA
kernels in csrc/ must match them within the dtype's tolerance.
"""

from __future__ import annotations

import math

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


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, in HF Llama/Mistral/Qwen2 order: x * rsqrt(mean(x^2) + eps) in fp32, rounded to
    x's dtype, THEN times weight (rounded again). x: [..., hidden]; weight: [hidden], x's dtype."""
    xf = x.float()
    normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return (normed.float() * weight.float()).to(x.dtype)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor | None, approximate: str) -> torch.Tensor:
    """gelu(x + bias). approximate: 'tanh' (gelu_pytorch_tanh, computed in fp32), 'none' (exact erf form), or
    'tanh_staged': HF's gelu_new formula evaluated in x's dtype op by op, as HF's NewGELUActivation does."""
    if approximate not in ("tanh", "none", "tanh_staged"):
        raise ValueError(f"eet::bias_gelu: approximate must be 'tanh', 'tanh_staged' or 'none', got {approximate!r}")
    if approximate == "tanh_staged":
        h = x if bias is None else (x.float() + bias.float()).to(x.dtype)
        return 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * torch.pow(h, 3.0))))
    h = x.float() if bias is None else x.float() + bias.float()
    return F.gelu(h, approximate=approximate).to(x.dtype)


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """torch.argmax(x, dim=-1) of a 2-D x, int64 [rows]: the first index of each row's largest value, a NaN counting
    as the largest."""
    if x.dim() != 2 or x.shape[1] == 0:
        raise ValueError(f"eet::argmax_rows: x must be 2-D [rows, cols] with cols > 0, got shape {tuple(x.shape)}")
    return torch.argmax(x, dim=-1)


def padding_runs(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's run of real keys in a 2-D mask [rows, cols] (nonzero: real). Returns (start, end, flags), int32:
    start[r] / end[r] the first real column and one past the last (0 / 0 for a row without one); flags = (every
    row is one run of real keys or none, no padding anywhere, every row is one run starting at column 0)."""
    if mask.dim() != 2:
        raise ValueError(f"eet::padding_runs: mask must be 2-D [batch, keys], got shape {tuple(mask.shape)}")
    real = mask != 0
    rows, cols = real.shape
    if rows == 0 or cols == 0:
        zeros = torch.zeros(rows, dtype=torch.int32, device=mask.device)
        return zeros, zeros.clone(), torch.ones(3, dtype=torch.int32, device=mask.device)
    idx = torch.arange(cols, device=mask.device, dtype=torch.int32)
    any_real = real.any(-1)
    start = torch.where(any_real, torch.where(real, idx, cols).amin(-1), 0).to(torch.int32)
    end = torch.where(real, idx + 1, 0).amax(-1).to(torch.int32)
    one_run = real.sum(-1, dtype=torch.int32) == end - start
    flags = torch.stack([one_run.all(), real.all(), (one_run & (start == 0)).all()]).to(torch.int32)
    return start, end, flags


def in_place_packing(start: torch.Tensor, end: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's in-place packing plan (eet_hf/encoder/packing.py) for runs [start[b], end[b]) of rows of
    seq_len positions, each run clamped into its row (0 <= s <= e <= seq_len). Returns (cu_seqlens int32
    [3 * batch + 1]: row b's segments [b*seq, +s), [+s, +e), [+e, (b+1)*seq); real bool [batch, seq_len]: s <= p < e)."""
    batch = start.shape[0]
    s = start.to(torch.int64).clamp(0, seq_len)
    e = torch.maximum(end.to(torch.int64).clamp(0, seq_len), s)
    base = torch.arange(batch, dtype=torch.int64, device=start.device) * seq_len
    bounds = torch.stack([base, base + s, base + e], 1).reshape(-1)
    cu_seqlens = torch.cat([bounds, bounds.new_full((1,), batch * seq_len)]).to(torch.int32)
    pos = torch.arange(seq_len, device=start.device).view(1, -1)
    return cu_seqlens, (pos >= s.view(-1, 1)) & (pos < e.view(-1, 1))


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
    # Keys outside [kv_start, kv_end) are never read (a KV cache's unused slots hold anything, NaN included):
    # zeroed here so that 0 * NaN cannot leak through the matmuls.
    in_bounds = visible_keys(kv_start, kv_end, q_offset, False, 1, kv_len)[:, 0].view(batch, 1, kv_len, 1)
    kf = torch.where(in_bounds, k.float(), 0.0).repeat_interleave(groups, dim=1)
    vf = torch.where(in_bounds, v.float(), 0.0).repeat_interleave(groups, dim=1)
    visible = visible_keys(kv_start, kv_end, q_offset, causal, q_len, kv_len).unsqueeze(1)
    scores = torch.matmul(q.float(), kf.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~visible, float("-inf"))
    any_visible = visible.any(-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(~any_visible, 0.0), dim=-1).masked_fill(~visible, 0.0)
    out = torch.matmul(probs, vf)
    return out.transpose(1, 2).contiguous().to(q.dtype)


def attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    causal: bool,
    scale: float,
) -> torch.Tensor:
    """Attention over packed sequences (no padding stored).

    q: [tokens, heads_q, head_dim]; k, v: [tokens, heads_kv, head_dim] (any strides); cu_seqlens: int32
    [batch + 1], prefix sums of the lengths: sequence b is rows [cu_seqlens[b], cu_seqlens[b + 1]) and sees
    only its own keys (and, causal, keys j <= i). cu_seqlens[0] == 0, cu_seqlens[-1] == tokens, every length
    <= max_seqlen (checked here; the CUDA kernel trusts them). Returns [tokens, heads_q, head_dim].
    """
    tokens, heads_q, _ = q.shape
    heads_kv = k.shape[1]
    if heads_kv == 0 or heads_q % heads_kv:
        raise ValueError(f"eet::attention_varlen: query heads ({heads_q}) must be a multiple of kv heads ({heads_kv})")
    bounds = [int(x) for x in cu_seqlens.tolist()]
    lengths = [e - s for s, e in zip(bounds[:-1], bounds[1:])]
    if not bounds or bounds[0] != 0 or bounds[-1] != tokens or min(lengths, default=0) < 0:
        raise ValueError(f"eet::attention_varlen: cu_seqlens must rise from 0 to tokens ({tokens}), got {bounds}")
    if max(lengths, default=0) > max_seqlen:
        raise ValueError(f"eet::attention_varlen: a sequence of {max(lengths)} tokens exceeds max_seqlen {max_seqlen}")
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        # One sequence as a batch of one in the padded op's layout: [1, heads, length, head_dim].
        qs, ks, vs = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        n = end - start
        full = torch.tensor([n], dtype=torch.int32, device=q.device)
        zero = torch.zeros(1, dtype=torch.int32, device=q.device)
        out[start:end] = attention(qs, ks, vs, zero, full, zero, causal, scale)[0]
    return out


def attention_varlen_masked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    causal: bool,
    scale: float,
) -> torch.Tensor:
    """attention_varlen (same arguments, same result) as one masked attention over all tokens: a token sees the
    keys of its own sequence, found by segment ids from cu_seqlens without a host read, so this traces under
    torch.compile, at the price of a [heads, tokens, tokens] score matrix. eet::attention_varlen's backward
    differentiates this form (ops/autograd.py); the arguments were checked by the forward."""
    tokens, heads_q, _ = q.shape
    groups = heads_q // k.shape[1]
    idx = torch.arange(tokens, device=q.device, dtype=cu_seqlens.dtype)
    segment = torch.searchsorted(cu_seqlens[1:].contiguous(), idx, right=True)  # [tokens]: its sequence
    visible = segment.view(-1, 1) == segment.view(1, -1)  # [query token, key token]
    if causal:
        visible = visible & (idx.view(1, -1) <= idx.view(-1, 1))
    kf = k.float().repeat_interleave(groups, dim=1)
    vf = v.float().repeat_interleave(groups, dim=1)
    scores = torch.einsum("thd,shd->hts", q.float(), kf) * scale
    probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)  # every token sees itself
    return torch.einsum("hts,shd->thd", probs, vf).to(q.dtype)


def embedding(
    input_ids: torch.Tensor, position_ids: torch.Tensor, wte: torch.Tensor, wpe: torch.Tensor | None
) -> torch.Tensor:
    """Token + position embeddings: wte[id] + wpe[pos], added in fp32 and rounded once to wte's dtype.

    input_ids, position_ids: integer [batch, seq]; wte: [vocab, hidden]; wpe: [positions, hidden] or None
    (no position add). Returns [batch, seq, hidden]. A row whose id is outside [0, vocab) or position outside
    [0, positions) is NaN (the CUDA kernel cannot raise without a host sync, so it writes NaN; this matches).
    """
    valid = (input_ids >= 0) & (input_ids < wte.shape[0])
    out = wte[input_ids.clamp(0, wte.shape[0] - 1)].float()
    if wpe is not None:
        valid = valid & (position_ids >= 0) & (position_ids < wpe.shape[0])
        out = out + wpe[position_ids.clamp(0, wpe.shape[0] - 1)].float()
    return out.masked_fill(~valid.unsqueeze(-1), float("nan")).to(wte.dtype)


def kv_append(
    qkv: torch.Tensor,
    bias: torch.Tensor | None,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    write_pos: torch.Tensor,
    heads_q: int,
    heads_kv: int,
) -> torch.Tensor:
    """Split a fused QKV projection into q and the KV cache, adding the bias (fp32, one rounding).

    qkv: [batch, seq, (heads_q + 2 * heads_kv) * head_dim], q|k|v blocks, each [heads, head_dim] head-major;
    bias: [that width] or None; k_cache, v_cache: [batch, heads_kv, cache_len, head_dim], written in place:
    token s of sequence b goes to slot write_pos[b] + s (int32 [batch]); slots outside [0, cache_len) are
    skipped. Returns q: [batch, heads_q, seq, head_dim], contiguous.
    """
    batch, seq, width = qkv.shape
    blocks = heads_q + 2 * heads_kv
    if heads_q <= 0 or heads_kv <= 0 or width % blocks:
        raise ValueError(
            f"eet::kv_append: qkv's last dim ({width}) must be (heads_q + 2 * heads_kv) * head_dim with "
            f"heads_q={heads_q}, heads_kv={heads_kv} positive"
        )
    head_dim = width // blocks
    cache_len = k_cache.shape[2]
    if k_cache.shape != (batch, heads_kv, cache_len, head_dim) or v_cache.shape != k_cache.shape:
        raise ValueError(
            f"eet::kv_append: caches must be [{batch}, {heads_kv}, cache_len, {head_dim}], "
            f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    x = qkv.float() if bias is None else qkv.float() + bias.float()
    x = x.to(qkv.dtype).reshape(batch, seq, blocks, head_dim)
    q, k, v = x.split([heads_q, heads_kv, heads_kv], dim=2)  # each [batch, seq, heads, head_dim]
    slots = write_pos.long().view(batch, 1) + torch.arange(seq, device=qkv.device)  # [batch, seq]
    keep = (slots >= 0) & (slots < cache_len)
    rows = torch.arange(batch, device=qkv.device).view(batch, 1).expand(batch, seq)[keep]
    # Advanced indices on dims 0 and 2 around a slice: the selection is [kept tokens, heads_kv, head_dim].
    k_cache[rows, :, slots[keep]] = k[keep]
    v_cache[rows, :, slots[keep]] = v[keep]
    return q.transpose(1, 2).contiguous()


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HF's apply_rotary_pos_emb (unsqueeze_dim=1), partial rotary included: the first cos.shape[-1] dims of each
    head rotate, the rest pass through. q: [batch, heads_q, seq, head_dim]; k: [batch, heads_k, seq, head_dim];
    cos, sin: [batch or 1, seq, rot]. Same torch ops as HF, so the same roundings in every dtype."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    rot = cos.shape[-1]

    def apply(x: torch.Tensor) -> torch.Tensor:
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        rotated = torch.cat((-x_rot[..., rot // 2 :], x_rot[..., : rot // 2]), dim=-1)
        # cat: contiguous [batch, heads, seq, head_dim] whatever x's layout (the CUDA op's and the fake's layout).
        return torch.cat([(x_rot * cos) + (rotated * sin), x_pass], dim=-1)

    return apply(q), apply(k)


SMALL_LINEAR_MAX_ROWS = 8  # csrc/kernels.h kSmallLinearMaxRows


def small_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str) -> torch.Tensor:
    """act(x @ weight + bias) for a decode step. x: [rows <= 8, in]; weight: [in, out] (GPT-2's Conv1D layout);
    bias: [out] or None. The product and bias are accumulated in fp32 and rounded once to x's dtype (what addmm
    returns, up to summation order); activation 'tanh_staged' then applies HF's gelu_new in that dtype op by op
    (bias_gelu's 'tanh_staged'), 'none' nothing. Returns [rows, out]. The argument rules match the CUDA kernel's."""
    if activation not in ("none", "tanh_staged"):
        raise ValueError(f"eet::small_linear: activation must be 'none' or 'tanh_staged', got {activation!r}")
    if x.dim() != 2 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(
            f"eet::small_linear: x must be [rows, in] and weight [in, out], got {tuple(x.shape)} and {tuple(weight.shape)}"
        )
    if x.shape[0] > SMALL_LINEAR_MAX_ROWS:
        raise ValueError(
            f"eet::small_linear: x has {x.shape[0]} rows, at most {SMALL_LINEAR_MAX_ROWS} are supported; use torch.addmm"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[1],):
        raise ValueError(f"eet::small_linear: bias must have shape [{weight.shape[1]}], got {tuple(bias.shape)}")
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise ValueError("eet::small_linear: x, weight and bias must share one dtype")
    xf, wf = x.float(), weight.float()
    out = (xf @ wf if bias is None else torch.addmm(bias.float(), xf, wf)).to(x.dtype)
    return bias_gelu(out, None, "tanh_staged") if activation == "tanh_staged" else out
