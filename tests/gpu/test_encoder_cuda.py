"""The padding-free BERT encoder on the GPU: eet::attention_varlen (eet's kernel and the torch-flash dispatch)
against a float64 reference, the packed encoder against HF sdpa, and CUDA-graph replay.

Tolerance, flash-attention's rule: error against the float64 reference at most twice plain PyTorch's (dense
SDPA in the same dtype with the block-diagonal boolean mask) plus a small slack. Outputs are allocated over
NaN-poisoned memory, so an element a kernel forgets to write fails. Lengths are drawn fresh per run
(EET_TEST_SEED replays one; the seed is in each case id) and always include 1 and 0.
"""

from __future__ import annotations

import copy
import os
import random

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM

import eet_hf
from eet_hf import ops

from ..helpers import padded_batch
from .conftest import poison_next_alloc, rel_err

SEED = int(os.environ.get("EET_TEST_SEED", random.randrange(1 << 31)))
SLACK = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _lengths(rng: random.Random, batch: int, longest: int) -> list[int]:
    lengths = [rng.randint(1, longest) for _ in range(batch)]
    lengths[rng.randrange(batch)] = 1
    lengths[rng.randrange(batch)] = 0
    lengths[rng.randrange(batch)] = longest
    return lengths


def _block_mask(lengths: list[int], causal: bool, device) -> torch.Tensor:
    seq = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))
    pos = torch.arange(seq.shape[0], device=device)
    visible = seq.view(-1, 1) == seq.view(1, -1)
    if causal:
        visible &= pos.view(1, -1) <= pos.view(-1, 1)
    return visible


def _dense(q, k, v, visible, scale, dtype):
    """[tokens, heads, dim] attention as one masked SDPA over all tokens, computed in `dtype`."""
    qd, kd, vd = (t.to(dtype).transpose(0, 1).unsqueeze(0) for t in (q, k, v))
    out = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=visible, scale=scale)
    return out.squeeze(0).transpose(0, 1)


CASES = [(backend, dname, dim, causal)
         for backend in ("eet", "auto")
         for dname in DTYPES
         for dim in (64, 80, 128)
         for causal in (False, True)
         if not (backend == "auto" and dname == "fp32")]


@pytest.mark.parametrize("backend, dname, dim, causal", CASES,
                         ids=[f"{b}-{d}-d{h}-{'causal' if c else 'full'}-seed{SEED}" for b, d, h, c in CASES])
def test_attention_varlen_cuda(cuda_ops, backend, dname, dim, causal):
    dtype = DTYPES[dname]
    rng = random.Random(f"{SEED}-{backend}-{dname}-{dim}-{causal}")
    lengths = _lengths(rng, rng.randint(3, 9), rng.choice([37, 128, 300]))
    tokens, heads = sum(lengths), 12
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    # q, k, v as views into one packed QKV GEMM output [tokens, 3, heads, dim], as the encoder passes them.
    qkv = torch.randn(tokens, 3, heads, dim, device="cuda", dtype=dtype)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    scale = dim**-0.5
    poison_next_alloc(tokens * heads * dim, dtype)
    out = ops.attention_varlen(q, k, v, cu, max(lengths), causal, scale, backend=backend)
    torch.cuda.synchronize()
    assert out.shape == (tokens, heads, dim) and out.dtype == dtype
    assert torch.isfinite(out).all(), f"NaN/Inf (unwritten rows?) for lengths {lengths}"
    visible = _block_mask(lengths, causal, "cuda")
    truth = _dense(q, k, v, visible, scale, torch.float64)
    torch_err = rel_err(_dense(q, k, v, visible, scale, dtype), truth)
    err = rel_err(out, truth)
    assert err <= 2 * torch_err + SLACK[dtype], f"{err=} {torch_err=} lengths={lengths}"
    if backend == "eet":
        again = ops.attention_varlen(q, k, v, cu, max(lengths), causal, scale, backend="eet")
        assert torch.equal(out, again), "two runs differ (a race?)"


def _bert(dtype, layers=2):
    config = BertConfig(vocab_size=1000, max_position_embeddings=512, pad_token_id=0, hidden_size=768,
                        num_hidden_layers=layers, num_attention_heads=12, intermediate_size=3072)
    torch.manual_seed(0)
    model = BertForMaskedLM(config)
    model.set_attn_implementation("sdpa")
    return model.to("cuda", dtype).eval()


def _max_err(a, b, mask):
    return (a.double() - b.double())[mask.bool()].abs().max().item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_encoder_parity_with_hf_sdpa(cuda_ops, dtype, packed_calls, monkeypatch):
    monkeypatch.setattr("eet_hf.encoder.graphs.ENABLED", False)  # the eager packed path; graphs: below
    hf, fp32 = _bert(dtype), _bert(torch.float32)
    model = eet_hf.accelerate(copy.deepcopy(hf))
    rng = random.Random(SEED)
    lengths = [512, 256, 1, rng.randint(2, 511)] * 4
    ids, mask = padded_batch(len(lengths), 512, lengths, "right", vocab=1000)
    ids, mask = ids.cuda(), mask.cuda()
    with torch.no_grad():
        got, base, truth = (m(ids, attention_mask=mask).logits for m in (model, hf, fp32))
    assert packed_calls, "the packed encoder did not run"
    assert torch.isfinite(got).all(), "NaN/Inf in eet logits (padded rows included)"
    assert _max_err(got, truth, mask) <= 2 * _max_err(base, truth, mask) + 1e-3, f"seed {SEED}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_graph_replay_with_new_lengths_in_the_same_bucket(cuda_ops, dtype, packed_calls, monkeypatch):
    # The encoder-level graphs alone: whole-model graphs pad these calls to one 16-token bucket and would serve them.
    monkeypatch.setattr("eet_hf.encoder.model_graphs.ENABLED", False)
    hf, fp32 = _bert(dtype), _bert(torch.float32)
    model = eet_hf.accelerate(copy.deepcopy(hf))
    graphs = model.bert.encoder._eet_encoder.graphs
    # Calls of batch 2 in bucket 32 (64 padded tokens, capacities in steps of 16): eager (first sight), capture +
    # replay, replay -- 27, 30 and 29 real tokens, all at capacity 32 --, then 60 real tokens: capacity 64, a
    # shape of its own, first seen, so eager.
    for seq_len, lengths in ((20, [20, 7]), (27, [3, 27]), (32, [1, 28]), (30, [30, 30])):
        ids, mask = padded_batch(2, seq_len, lengths, "right", vocab=1000)
        ids, mask = ids.cuda(), mask.cuda()
        with torch.no_grad():
            got, base, truth = (m(ids, attention_mask=mask).logits for m in (model, hf, fp32))
        assert torch.isfinite(got).all(), f"NaN/Inf at lengths {lengths}"
        if dtype == torch.float32:
            assert _max_err(got, base, mask) <= 1e-4, lengths
        else:
            assert _max_err(got, truth, mask) <= 2 * _max_err(base, truth, mask) + 1e-3, lengths
    assert (graphs.captures, graphs.replays) == (1, 2), (graphs.captures, graphs.replays)
    # The graph packs 32 rows, not all 64: its GEMMs skip the padding too.
    assert [key[:3] for key in graphs._graphs] == [(2, 32, 32)], list(graphs._graphs)
    # The first and last calls ran eagerly, the capture ran the body twice (warm-up, capture); replays run no
    # Python.
    assert len(packed_calls) == 4, len(packed_calls)


def test_encoder_graphs_stay_within_their_static_bytes(cuda_ops, monkeypatch):
    """The encoder-level graph LRU is bounded by its graphs' static bytes too; the newest graph always stays, and
    every output still matches HF's."""
    monkeypatch.setattr("eet_hf.encoder.model_graphs.ENABLED", False)  # the encoder-level graphs alone
    hf = _bert(torch.float16)
    model = eet_hf.accelerate(copy.deepcopy(hf))
    graphs = model.bert.encoder._eet_encoder.graphs
    graphs.max_bytes = 1  # below any graph: each capture evicts the one before it
    for seq_len in (20, 20, 40, 40, 20):
        ids, mask = padded_batch(2, seq_len, [seq_len, 5], "right", vocab=1000)
        ids, mask = ids.cuda(), mask.cuda()
        with torch.no_grad():
            got, base = model(ids, attention_mask=mask).logits, hf(ids, attention_mask=mask).logits
        assert torch.isfinite(got).all() and _max_err(got, base, mask) <= 5e-2, seq_len
        assert len(graphs) <= 1 and (len(graphs) == 0 or graphs.static_bytes() > 0)
    assert graphs.captures == 3, graphs.captures  # 20, 40, then 20 again (evicted by 40)
