"""HF's static-cache generate on the GPU, where HF compiles the decode step by itself (inductor, CUDA graphs through
mode="reduce-overhead"), on accelerated models: it runs eet's kernels inside the compiled step and gives the plain
model's greedy tokens. The CPU test (tests/test_static_cache.py) traces the same step with aot_eager."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import eet_hf

from ..helpers import gpt2_config

SPECIALS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, vocab_size=100, max_position_embeddings=128)
# head_dim 64: a size eet's attention kernels take (others run its SDPA fallback).
MODELS = {
    "gpt2": lambda: GPT2LMHeadModel(gpt2_config(n_embd=128, n_head=2)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                                  num_attention_heads=2, num_key_value_heads=1, **SPECIALS)),
}


@pytest.mark.parametrize("family", sorted(MODELS))
def test_static_cache_generate_compiled_by_hf_gives_hf_tokens(cuda_ops, family):
    plain = MODELS[family]().cuda().eval()
    accelerated = eet_hf.accelerate(copy.deepcopy(plain))
    ids = torch.randint(7, 100, (2, 6), device="cuda")
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    greedy = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    expected = plain.generate(ids, attention_mask=mask, **greedy)  # dynamic cache, eager: no compile on this side
    torch._dynamo.reset()
    try:
        got = accelerated.generate(ids, attention_mask=mask, cache_implementation="static", **greedy)
        assert getattr(accelerated, "_compiled_call", None) is not None, "HF did not compile the decode step"
    finally:
        torch._dynamo.reset()
    assert torch.equal(got, expected)
