"""The decode-profile suite's bookkeeping (evaluation/bench/decode_profile.py): kernel classes and weight bytes."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from evaluation.bench import decode_profile as P


def test_kernel_names_map_to_their_class():
    name = "void eet::(anonymous namespace)::decode_linear_kernel<__half, 1, true, 4>(eet::DecodeLinearParams)"
    assert P.classify(name) == "qkv+rope+kv"
    assert P.classify(name.replace("true, 4", "false, 1")) == "o|down+residual"
    assert P.classify(name.replace("true, 4", "true, 2")) == "gate_up+act"
    assert P.classify(name.replace("true, 4", "true, 0")) == "lm_head"
    assert P.classify("void eet::attn::(anonymous namespace)::decode_kernel<__half, 64>(eet::AttentionParams)") == (
        "attention")
    assert P.classify("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<c10::Half, ArgMaxOps") == (
        "argmax/sampling")
    assert P.classify("something_else") == "other"


def test_step_bytes_count_tied_head_twice_and_the_kv_cache():
    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    params = sum(p.numel() * 4 for p in model.parameters())
    kv = 2 * 2 * 3 * 10 * 2 * 16 * 4  # k and v, layers, batch, context, kv heads, head dim, fp32
    assert P.step_bytes(model, batch=3, context=10) == params + 100 * 64 * 4 + kv
    weights = P.class_bytes(model)
    assert weights["qkv+rope+kv"] == 2 * (64 * 64 + 2 * 32 * 64) * 4
    assert weights["gate_up+act"] == 2 * 2 * 96 * 64 * 4 and weights["lm_head"] == 100 * 64 * 4
    assert torch.is_tensor(model.lm_head.weight)
