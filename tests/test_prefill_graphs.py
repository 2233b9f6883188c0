"""Bucketed prompts (eet_hf/engine/prefill_graphs.py) on CPU: the bucket arithmetic, and generate through the
bucketed layout (the prompt left-padded to its bucket, filling cache slots [shift, bucket)) giving HF's tokens,
scores and cache. CUDA graphs themselves: tests/gpu/test_prefill_graphs_cuda.py."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import eet_hf
from eet_hf.engine import prefill_graphs
from eet_hf.engine.generate import ENGINE_ATTR

from .helpers import assert_close, gpt2_config, padded_batch

VOCAB = 97


def test_bucket_covers_the_prompt_with_little_padding():
    previous = 0
    for n in range(1, 5000):
        b = prefill_graphs.bucket(n)
        assert b >= n and b >= previous  # monotone, never shorter than the prompt
        assert b - n < (16 if n <= 256 else n / 8), (n, b)  # at most 15 rows, or under 1/8 beyond 256
        previous = b
    assert {prefill_graphs.bucket(n) for n in range(113, 129)} == {128}  # one graph for a range of lengths


def test_graph_length_only_buckets_cuda_prompts_within_the_token_bound():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert prefill_graphs.graph_length(1, 100, cpu) == 100
    assert prefill_graphs.graph_length(1, 100, cuda) == 112
    assert prefill_graphs.graph_length(1, 1, cuda) == 1  # a one-token prompt is not padded
    too_many = prefill_graphs.MAX_GRAPH_TOKENS // 112 + 1
    assert prefill_graphs.graph_length(too_many, 100, cuda) == 100


def _llama():
    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


def _gpt2():
    return GPT2LMHeadModel(gpt2_config()).eval()


@pytest.fixture
def bucketed(monkeypatch):
    """Every prompt runs at its bucket's length, also on the CPU (where graphs are never captured)."""
    monkeypatch.setattr(prefill_graphs, "graph_length", lambda batch, n, device: prefill_graphs.bucket(n))


@pytest.mark.parametrize("make", [_llama, _gpt2], ids=["llama-fused", "gpt2"])
def test_bucketed_prompt_gives_hf_tokens_scores_and_cache(bucketed, make):
    hf = make()
    model = eet_hf.accelerate(copy.deepcopy(hf))
    ids, mask = padded_batch(3, 9, [9, 5, 2], "left", vocab=VOCAB)  # bucket 16: 7 extra pad slots
    kwargs = dict(attention_mask=mask, max_new_tokens=6, eos_token_id=None, do_sample=False, pad_token_id=0,
                  return_dict_in_generate=True, output_scores=True, repetition_penalty=1.3)
    with torch.no_grad():
        out, expected = model.generate(ids, **kwargs), hf.generate(ids, **kwargs)
    assert model.__dict__[ENGINE_ATTR].engine.stats["calls"] == 1, "eet's loop did not run"
    assert torch.equal(out.sequences, expected.sequences)
    for ours, theirs in zip(out.scores, expected.scores):  # the repetition penalty saw the prompt's ids only
        assert_close(ours, theirs, 1e-4)
    ours_cache, theirs_cache = out.past_key_values, expected.past_key_values
    assert ours_cache.get_seq_length() == theirs_cache.get_seq_length() == 9 + 5
    real = torch.cat([mask, torch.ones(3, 5, dtype=mask.dtype)], 1).bool()[:, None, :, None]
    for ours, theirs in zip(ours_cache.layers, theirs_cache.layers):
        assert_close(ours.keys, theirs.keys, 1e-4, where=real)  # the extra bucket padding is not in the cache
        assert_close(ours.values, theirs.values, 1e-4, where=real)
