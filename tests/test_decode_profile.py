"""The decode-profile suite's bookkeeping (evaluation/bench/decode_profile.py): kernel classes and weight bytes."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

from evaluation.bench import decode_profile as P


def test_kernel_names_map_to_their_class():
    # decode_linear_kernel<T, kNT, kNorm (0 none, 1 RMSNorm, 2 LayerNorm), kEpi (DecodeEpilogue)>
    name = "void eet::(anonymous namespace)::decode_linear_kernel<__half, 1, 1, 4>(eet::DecodeLinearParams)"
    assert P.classify(name) == "qkv+rope+kv"
    assert P.classify(name.replace("1, 4>", "0, 1>")) == "o|down+residual"
    assert P.classify(name.replace("1, 4>", "1, 2>")) == "gate_up+act"
    assert P.classify(name.replace("1, 4>", "1, 0>")) == "lm_head"
    assert P.classify(name.replace("1, 4>", "2, 5>")) == "gate_up+act"  # OPT: LayerNorm + fc1 + ReLU
    assert P.classify(name.replace("1, 4>", "2, 4>")) == "qkv+rope+kv"  # OPT: LayerNorm + QKV + q scale + KV write
    assert P.classify(name.replace("1, 4>", "2, 6>")) == "gate_up+act"  # GPT-2: LayerNorm + c_fc + gelu_new
    assert P.classify(name.replace("1, 1, 4>", "2, true, 4>")) == "qkv+rope+kv"  # profiles from before kNorm was int
    # with the work split after the epilogue (kWarps, kSplit): its parameters are not the epilogue
    assert P.classify(name.replace("1, 4>", "0, 1, 16, 16>")) == "o|down+residual"
    assert P.classify(name.replace("1, 4>", "1, 2, 8, 2>")) == "gate_up+act"
    assert P.classify("void eet::attn::(anonymous namespace)::decode_kernel<__half, 64>(eet::AttentionParams)") == (
        "attention")
    assert P.classify("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<c10::Half, ArgMaxOps") == (
        "argmax/sampling")
    assert P.classify("something_else") == "other"


@pytest.mark.parametrize("tied", [True, False])
def test_step_bytes_count_every_weight_read_once_and_the_kv_cache(tied):
    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100, tie_word_embeddings=tied)
    model = LlamaForCausalLM(config)
    params = {p.data_ptr(): p.numel() * 4 for p in model.parameters()}
    read = sum(params.values()) - (0 if tied else 100 * 64 * 4)  # an untied input table: one row per step
    kv = 2 * 2 * 3 * 10 * 2 * 16 * 4  # k and v, layers, batch, context, kv heads, head dim, fp32
    assert P.step_bytes(model, batch=3, context=10) == read + kv
    weights = P.class_bytes(model)
    assert weights["qkv+rope+kv"] == 2 * (64 * 64 + 2 * 32 * 64) * 4
    assert weights["gate_up+act"] == 2 * 2 * 96 * 64 * 4 and weights["lm_head"] == 100 * 64 * 4
    assert torch.is_tensor(model.lm_head.weight)


def test_opt_weights_map_to_the_projection_classes():
    config = OPTConfig(hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
                       word_embed_proj_dim=64)
    weights = P.class_bytes(OPTForCausalLM(config))
    assert weights["qkv+rope+kv"] == 2 * 3 * 64 * 64 * 4
    assert weights["gate_up+act"] == 2 * 96 * 64 * 4 and weights["o|down+residual"] == 2 * (64 * 64 + 64 * 96) * 4


def test_gpt2_weights_map_to_the_projection_classes():
    weights = P.class_bytes(GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100)))
    assert weights["qkv+rope+kv"] == 2 * 3 * 64 * 64 * 4 and weights["gate_up+act"] == 2 * 4 * 64 * 64 * 4
    assert weights["o|down+residual"] == 2 * (64 * 64 + 4 * 64 * 64) * 4 and weights["lm_head"] == 100 * 64 * 4


def test_critical_path_adds_up_to_the_span_and_finds_idle_time():
    k = "void eet::(anonymous namespace)::decode_linear_kernel<__half, 1, 1, 4>(eet::DecodeLinearParams)"
    # (name, µs, start, end): the second kernel overlaps the first (PDL), the third starts 2 µs after the second ends.
    kernels = [(k, 10.0, 0.0, 10.0), ("attention_decode", 9.0, 5.0, 14.0), ("other_kernel", 3.0, 16.0, 19.0)]
    crit = P.critical_path(kernels)
    assert crit == {"attention": 4.0, "other": 5.0, "idle": 2.0}
    assert crit["attention"] + crit["other"] == 19.0 - 10.0  # the span after the first kernel's end
