"""CUDA attention kernels (csrc/attention*.cu) against a float64 reference, on fresh random shapes.

Every run draws new cases (set EET_TEST_SEED to replay one; the seed is in each case's id): batch 1-9,
GQA ratios 1/2/4/8, decode (q_len <= 8, split-K kernel) and prefill (flash kernel) lengths, every dtype
and supported head dim, causal or not, and the padding patterns the models produce (none, left, right),
random and extreme int32 bounds, a fully padded sequence and length-1 sequences; q, k, v as transposed
views of [B, L, H, D] (the HF layout), contiguous, or misaligned (the kernels' scalar load path).

Tolerance, flash-attention's rule: the kernel's error against the float64 reference must be at most twice
the error of plain PyTorch (SDPA in the same dtype with the boolean mask) plus a small slack. Rows that see
no key must be exactly zero, nothing may be NaN/Inf (outputs are allocated over NaN-poisoned memory, so an
unwritten element fails), and two runs on the same inputs must agree bitwise (a race would not).
"""

from __future__ import annotations

import math
import os
import random

import pytest
import torch
import torch.nn.functional as F

from eet_hf.ops import reference

from .conftest import QUICK, poison_next_alloc, quick_sample, rel_err

SEED = int(os.environ.get("EET_TEST_SEED", random.randrange(1 << 31)))
_rng = random.Random(SEED)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
HEAD_DIMS = [32, 64, 80, 96, 128, 256]
MAIN_HEAD_DIMS = [64, 64, 128]  # GPT-2 / BERT, and the common 128
GQA_RATIOS = [1, 2, 4, 8]
PADDINGS = ["none", "left", "right", "random", "empty"]
LAYOUTS = ["hf", "contig"]
# Slack on top of 2x torch's own error (norm-wise relative).
SLACK = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}
# batch * heads_q * q_len * kv_len: keeps the float64 reference at ~100 MB (quick: small shapes for the sanitizer)
MAX_SCORES = 1 << (18 if QUICK else 24)
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


# ------------------------------------------------------------------------------------------------
# Case generation


def _bounds(rng: random.Random, padding: str, batch: int, q_len: int, kv_len: int):
    """(kv_start, kv_end, q_offset) lists for one padding pattern."""
    full_off = kv_len - q_len
    ks, ke, qo = [], [], []
    for _ in range(batch):
        if padding == "none":
            ks.append(0), ke.append(kv_len), qo.append(full_off)
        elif padding == "left":  # GPT-2 generation: pad tokens first; sometimes a single real token
            pad = rng.choice([0, kv_len - 1, rng.randrange(kv_len)])
            ks.append(pad), ke.append(kv_len), qo.append(full_off)
        elif padding == "right":  # BERT: real tokens first; sometimes a length-1 sequence
            ks.append(0), ke.append(rng.choice([1, kv_len, rng.randint(1, kv_len)])), qo.append(full_off)
        elif padding == "random":
            if rng.random() < 0.15:  # extremes: the kernels must clamp and not overflow
                ks.append(rng.choice([INT32_MIN, -1, 0]))
                ke.append(rng.choice([INT32_MAX, kv_len + 1, kv_len]))
                qo.append(rng.choice([INT32_MAX, INT32_MIN, INT32_MAX - q_len]))
            else:
                ks.append(rng.randint(-5, kv_len + 5))
                ke.append(rng.randint(-5, kv_len + 5))
                qo.append(rng.randint(-q_len - 5, kv_len + 5))
        else:  # "empty": left padding, and one sequence with no key at all
            pad = rng.randrange(kv_len)
            ks.append(pad), ke.append(kv_len), qo.append(full_off)
    if padding == "empty":
        b = rng.randrange(batch)
        s = rng.randint(0, kv_len)
        ks[b], ke[b] = s, rng.choice([s, max(0, s - 3)])
    return ks, ke, qo


def _case(kind: str, rng: random.Random) -> dict:
    dtype = rng.choice(list(DTYPES))
    head_dim = rng.choice(MAIN_HEAD_DIMS if rng.random() < 0.6 else HEAD_DIMS)
    ratio = rng.choice(GQA_RATIOS)
    heads_kv = rng.choice([1, 2, 3]) if ratio > 1 else rng.choice([1, 2, 5, 12])
    heads_q = heads_kv * ratio
    batch = rng.randint(1, 9)
    causal = rng.random() < 0.6
    if kind == "decode":
        q_len = rng.choice([1, 1, 2, 3, 7, 8])
        kv_len = rng.choice([1, q_len, 17, 129, rng.randint(1, 4096), rng.randint(1, 4096)])
        kv_len = max(kv_len, 1)
    else:
        q_len = rng.choice([9, 64, 129, rng.randint(9, 1024), rng.randint(9, 1024)])
        kv_len = rng.choice([q_len, q_len, q_len + rng.randint(0, 3000), rng.randint(1, 4096)])
    while batch * heads_q * q_len * kv_len > MAX_SCORES and batch > 1:
        batch -= 1
    while batch * heads_q * q_len * kv_len > MAX_SCORES:
        kv_len = max(1, kv_len // 2)
    padding = rng.choice(PADDINGS)
    layout_q = rng.choice(LAYOUTS + (["misaligned"] if rng.random() < 0.1 else []))
    layout_kv = rng.choice(LAYOUTS + (["misaligned"] if rng.random() < 0.1 else []))
    scale = rng.choice([1.0 / math.sqrt(head_dim), 1.0 / math.sqrt(head_dim), 0.5, 1.0])
    ks, ke, qo = _bounds(rng, padding, batch, q_len, kv_len)
    return dict(
        dtype=dtype,
        batch=batch,
        heads_q=heads_q,
        heads_kv=heads_kv,
        q_len=q_len,
        kv_len=kv_len,
        head_dim=head_dim,
        causal=causal,
        padding=padding,
        layout_q=layout_q,
        layout_kv=layout_kv,
        scale=scale,
        kv_start=ks,
        kv_end=ke,
        q_offset=qo,
        seed=rng.randrange(1 << 31),
    )


def _case_id(c: dict) -> str:
    return (
        f"{c['dtype']}-b{c['batch']}-h{c['heads_q']}x{c['heads_kv']}-q{c['q_len']}-kv{c['kv_len']}-d{c['head_dim']}"
        f"-{'causal' if c['causal'] else 'full'}-{c['padding']}-{c['layout_q']}/{c['layout_kv']}-s{c['seed']}"
    )


def _params(kind: str, n: int):
    return [pytest.param(c, id=_case_id(c)) for c in (_case(kind, _rng) for _ in range(n))]


# Fixed edge cases on top of the random ones.
def _edge_cases():
    cases = []
    for dtype in DTYPES:
        for q_len, kv_len in ((1, 16384), (3, 16384), (1, 1), (8, 9), (9, 9), (1, 4096)):
            batch = 2
            causal = True
            cases.append(
                dict(
                    dtype=dtype,
                    batch=batch,
                    heads_q=8,
                    heads_kv=2,
                    q_len=q_len,
                    kv_len=kv_len,
                    head_dim=128,
                    causal=causal,
                    padding="left",
                    layout_q="hf",
                    layout_kv="contig",
                    scale=1 / math.sqrt(128),
                    kv_start=[0, kv_len - 1],
                    kv_end=[kv_len, kv_len],
                    q_offset=[kv_len - q_len] * batch,
                    seed=_rng.randrange(1 << 31),
                )
            )
        # BERT: right padding, one fully padded sequence, one length-1 sequence.
        for length in (128, 77):
            cases.append(
                dict(
                    dtype=dtype,
                    batch=4,
                    heads_q=12,
                    heads_kv=12,
                    q_len=length,
                    kv_len=length,
                    head_dim=64,
                    causal=False,
                    padding="right",
                    layout_q="hf",
                    layout_kv="hf",
                    scale=0.125,
                    kv_start=[0, 0, 0, 0],
                    kv_end=[length, 0, 1, length // 2],
                    q_offset=[0, 0, 0, 0],
                    seed=_rng.randrange(1 << 31),
                )
            )
        # GPT-2 prefill with left padding and a fully padded row block.
        cases.append(
            dict(
                dtype=dtype,
                batch=3,
                heads_q=12,
                heads_kv=12,
                q_len=200,
                kv_len=200,
                head_dim=64,
                causal=True,
                padding="left",
                layout_q="hf",
                layout_kv="hf",
                scale=0.125,
                kv_start=[0, 150, 200],
                kv_end=[200, 200, 200],
                q_offset=[0, 0, 0],
                seed=_rng.randrange(1 << 31),
            )
        )
        # head_dim 128 takes 64-row tiles when its 128-row grid fits in one wave of 2 blocks per SM and 128-row
        # tiles otherwise (launch_mma_d128): a short grid (16 blocks of 128 rows) and one of 288 (> 2 x 132 SMs),
        # each causal left-padded and bidirectional right-padded, odd lengths so that the last tiles are partial.
        for batch, heads_q, heads_kv, length in ((2, 4, 4, 300), (4, 24, 8, 257)):
            for causal in (True, False):
                pad = length // 3
                cases.append(
                    dict(
                        dtype=dtype,
                        batch=batch,
                        heads_q=heads_q,
                        heads_kv=heads_kv,
                        q_len=length,
                        kv_len=length,
                        head_dim=128,
                        causal=causal,
                        padding="left" if causal else "right",
                        layout_q="hf",
                        layout_kv="hf",
                        scale=1 / math.sqrt(128),
                        kv_start=[pad * (i % 2) if causal else 0 for i in range(batch)],
                        kv_end=[length if causal else length - pad * (i % 2) for i in range(batch)],
                        q_offset=[0] * batch,
                        seed=_rng.randrange(1 << 31),
                    )
                )
    return [pytest.param(c, id="edge-" + _case_id(c)) for c in cases]


# ------------------------------------------------------------------------------------------------
# Tensors and references


def _make(shape_bhld, layout: str, dtype, gen, device="cuda"):
    """A [B, H, L, D] tensor in the given memory layout with N(0, 1) values."""
    b, h, seq, d = shape_bhld
    if layout == "hf":  # [B, L, H, D] storage, viewed as [B, H, L, D]
        return torch.randn(b, seq, h, d, generator=gen, device=device).to(dtype).transpose(1, 2)
    if layout == "misaligned":  # storage offset of one element and odd strides: the scalar load path
        wide = torch.randn(b, seq, h, d + 1, generator=gen, device=device).to(dtype)
        return wide[..., 1:].transpose(1, 2)
    return torch.randn(b, h, seq, d, generator=gen, device=device).to(dtype)


def _ref64(q, k, v, ks, ke, qo, causal, scale):
    """The reference in float64 (reference.attention itself computes in float32)."""
    _, heads_q, q_len, _ = q.shape
    heads_kv, kv_len = k.shape[1], k.shape[2]
    groups = heads_q // heads_kv
    kf = k.double().repeat_interleave(groups, dim=1)
    vf = v.double().repeat_interleave(groups, dim=1)
    visible = reference.visible_keys(ks, ke, qo, causal, q_len, kv_len).unsqueeze(1)
    scores = torch.matmul(q.double(), kf.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~visible, float("-inf"))
    any_visible = visible.any(-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(~any_visible, 0.0), dim=-1).masked_fill(~visible, 0.0)
    return torch.matmul(probs, vf).transpose(1, 2).contiguous()


def _torch_baseline(q, k, v, ks, ke, qo, causal, scale):
    """Plain PyTorch in the inputs' dtype: SDPA with the boolean mask, fully masked rows zeroed."""
    _, heads_q, q_len, _ = q.shape
    heads_kv, kv_len = k.shape[1], k.shape[2]
    groups = heads_q // heads_kv
    visible = reference.visible_keys(ks, ke, qo, causal, q_len, kv_len).unsqueeze(1)
    any_visible = visible.any(-1, keepdim=True)
    mask = visible | ~any_visible  # SDPA gives NaN for an all-False row; those rows are zeroed below
    # Contiguous copies: SDPA's kernels reject some of the misaligned views (the values are the same).
    out = F.scaled_dot_product_attention(
        q.contiguous(),
        k.repeat_interleave(groups, 1).contiguous(),
        v.repeat_interleave(groups, 1).contiguous(),
        attn_mask=mask,
        scale=scale,
    )
    out = out.masked_fill(~any_visible, 0.0)
    return out.transpose(1, 2).contiguous()


def _check(cuda_ops, c: dict) -> None:
    dtype = DTYPES[c["dtype"]]
    gen = torch.Generator(device="cuda").manual_seed(c["seed"])
    b, hq, hkv, lq, lk, d = c["batch"], c["heads_q"], c["heads_kv"], c["q_len"], c["kv_len"], c["head_dim"]
    q = _make((b, hq, lq, d), c["layout_q"], dtype, gen)
    k = _make((b, hkv, lk, d), c["layout_kv"], dtype, gen)
    v = _make((b, hkv, lk, d), c["layout_kv"], dtype, gen)
    i32 = dict(dtype=torch.int32, device="cuda")
    ks, ke, qo = (torch.tensor(c[n], **i32) for n in ("kv_start", "kv_end", "q_offset"))
    causal, scale = c["causal"], c["scale"]

    poison_next_alloc(b * lq * hq * d, dtype)
    out = cuda_ops.attention(q, k, v, ks, ke, qo, causal, scale)
    poison_next_alloc(b * lq * hq * d, dtype)
    out2 = cuda_ops.attention(q, k, v, ks, ke, qo, causal, scale)
    torch.cuda.synchronize()

    assert out.shape == (b, lq, hq, d) and out.dtype == dtype and out.is_contiguous()
    assert torch.isfinite(out).all(), "NaN/Inf in the output (an unwritten element, or a 0/0)"
    assert torch.equal(out, out2), "two runs on the same inputs differ: a race or an unwritten element"

    visible = reference.visible_keys(ks, ke, qo, causal, lq, lk)  # [B, Lq, Lk]
    dead = ~visible.any(-1)  # [B, Lq]: rows that see no key
    if dead.any():
        assert (out[dead] == 0).all(), "a row that sees no key must be exactly zero"

    ref = _ref64(q, k, v, ks, ke, qo, causal, scale)
    base = _torch_baseline(q, k, v, ks, ke, qo, causal, scale)
    err, base_err = rel_err(out, ref), rel_err(base, ref)
    assert err <= 2 * base_err + SLACK[dtype], f"rel err {err:.3g} vs torch {base_err:.3g}"


# ------------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("case", _params("decode", 8 if QUICK else 95))
def test_decode_random(cuda_ops, case):
    _check(cuda_ops, case)


@pytest.mark.parametrize("case", _params("prefill", 8 if QUICK else 95))
def test_prefill_random(cuda_ops, case):
    _check(cuda_ops, case)


@pytest.mark.parametrize("case", quick_sample(_edge_cases(), 4))
def test_edge_cases(cuda_ops, case):
    _check(cuda_ops, case)
