"""eet's decode loop on the generic families (HF's layers driven over the KV arena; eet_hf/engine/decoder_families.py),
on CPU (reference ops): tokens equal HF's in fp32 with left padding and HF's options, scores, the sliding-window and
rope refusals that send a call or a model to HF's loop, and restore()."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf

import eet_hf
from eet_hf.engine import decoder_families
from eet_hf.engine.generate import ENGINE_ATTR

from .helpers import padded_batch

_SPECIAL = dict(vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_DECODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=128, **_SPECIAL)
FAMILIES = {
    "llama": (tf.LlamaForCausalLM, lambda: tf.LlamaConfig(num_key_value_heads=2, **_DECODER)),
    "mistral": (tf.MistralForCausalLM, lambda: tf.MistralConfig(num_key_value_heads=2, **_DECODER)),
    "qwen2": (tf.Qwen2ForCausalLM, lambda: tf.Qwen2Config(num_key_value_heads=1, **_DECODER)),
    "gpt_neox": (tf.GPTNeoXForCausalLM, lambda: tf.GPTNeoXConfig(rotary_pct=0.5, **_DECODER)),
    "gpt_neox_serial": (tf.GPTNeoXForCausalLM, lambda: tf.GPTNeoXConfig(use_parallel_residual=False, **_DECODER)),
    "opt": (tf.OPTForCausalLM, lambda: tf.OPTConfig(
        hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4, max_position_embeddings=128,
        word_embed_proj_dim=64, **_SPECIAL)),
    "opt_projected": (tf.OPTForCausalLM, lambda: tf.OPTConfig(
        hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4, max_position_embeddings=128,
        word_embed_proj_dim=32, do_layer_norm_before=False, **_SPECIAL)),
}


def _pair(name: str, **overrides):
    cls, make_config = FAMILIES[name]
    config = make_config()
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    ref = cls(config).eval()
    return eet_hf.accelerate(copy.deepcopy(ref)), ref


def _calls(model) -> int:
    return model.__dict__[ENGINE_ATTR].engine.stats["calls"]


def _both(model, ref, ids, mask, **kwargs):
    before = _calls(model)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, **kwargs)
        expected = ref.generate(ids, attention_mask=mask, **kwargs)
    return out, expected, _calls(model) - before


@pytest.mark.parametrize("name", list(FAMILIES))
def test_greedy_left_padded_matches_hf(name):
    model, ref = _pair(name)
    assert "generate" not in eet_hf.explain(model).fallbacks
    ids, mask = padded_batch(4, 10, [10, 6, 3, 1], "left")
    out, expected, calls = _both(model, ref, ids, mask, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert calls == 1, "eet's loop did not run"
    assert torch.equal(out, expected)


@pytest.mark.parametrize("name", ["llama", "gpt_neox", "opt"])
def test_options_eos_and_scores_match_hf(name):
    model, ref = _pair(name)
    ids, mask = padded_batch(3, 8, [8, 5, 2], "left")
    free = ref.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=None)
    eos = int(free[0, 8 + 3])  # row 0 ends at its 4th new token; the others run on, then get pad
    kwargs = dict(max_new_tokens=10, do_sample=False, eos_token_id=eos, pad_token_id=0, repetition_penalty=1.3,
                  return_dict_in_generate=True, output_scores=True)
    out, expected, calls = _both(model, ref, ids, mask, **kwargs)
    assert calls == 1
    assert torch.equal(out.sequences, expected.sequences)
    assert len(out.scores) == len(expected.scores)
    for got, want in zip(out.scores, expected.scores):
        finite = torch.isfinite(want)
        assert torch.equal(torch.isfinite(got), finite)
        torch.testing.assert_close(got[finite], want[finite], rtol=1e-4, atol=1e-4)


def test_sliding_window_that_hides_keys_runs_hf_loop():
    model, ref = _pair("mistral", sliding_window=8)
    ids, mask = padded_batch(2, 10, [10, 4], "left")
    out, expected, calls = _both(model, ref, ids, mask, max_new_tokens=6, do_sample=False)
    assert calls == 0, "a window shorter than the context must not run in eet's loop (its bounds have no window)"
    assert torch.equal(out, expected)


def test_sliding_window_longer_than_the_call_runs_engine():
    model, ref = _pair("mistral", sliding_window=100)
    ids, mask = padded_batch(2, 10, [10, 4], "left")
    out, expected, calls = _both(model, ref, ids, mask, max_new_tokens=6, do_sample=False)
    assert calls == 1 and torch.equal(out, expected)


def test_host_rope_type_is_refused_for_the_model():
    ref = FAMILIES["llama"][1]()
    ref.rope_parameters = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    model = tf.LlamaForCausalLM(ref).eval()
    assert "dynamic" in decoder_families.model_refusal(model)
    eet_hf.accelerate(model)
    assert "dynamic" in eet_hf.explain(model).fallbacks["generate"]
    assert ENGINE_ATTR not in model.__dict__


def test_restore_removes_the_engine_and_generate():
    model, ref = _pair("llama")
    assert "generate" in model.__dict__ and ENGINE_ATTR in model.__dict__
    eet_hf.restore(model)
    assert "generate" not in model.__dict__ and ENGINE_ATTR not in model.__dict__
    ids, mask = padded_batch(2, 6, [6, 3], "left")
    assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False),
                       ref.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False))


def test_arena_reused_across_calls_and_cache_returned():
    model, ref = _pair("qwen2")
    ids, mask = padded_batch(2, 7, [7, 5], "left")
    for new in (5, 3):
        out, expected, calls = _both(model, ref, ids, mask, max_new_tokens=new, do_sample=False,
                                     return_dict_in_generate=True)
        assert calls == 1 and torch.equal(out.sequences, expected.sequences)
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    assert cache.get_seq_length() == expected.sequences.shape[1] - 1
    assert model.__dict__[ENGINE_ATTR].engine.memory_report()["kv_arena_bytes"] > 0


@pytest.mark.parametrize("name", ["llama", "gpt_neox"])
def test_rotary_swapped_verified_and_restored(name):
    """HF's layers in the engine (a ReLU MLP keeps Llama off the fused step): eet's rotary op stands in for HF's."""
    import sys

    from eet_hf.engine import rotary_swap

    model, ref = _pair(name, hidden_act="relu")
    assert "decoder step" in eet_hf.explain(model).fallbacks
    attn_module = sys.modules[type(model.base_model.layers[0]).__module__]
    original = attn_module.apply_rotary_pos_emb
    stack = decoder_families.decoder_stack(model)
    assert stack.rotary_modules == (attn_module,)
    ids, mask = padded_batch(2, 6, [6, 3], "left")
    out, expected, calls = _both(model, ref, ids, mask, max_new_tokens=4, do_sample=False)
    assert calls == 1 and torch.equal(out, expected)
    assert rotary_swap._VERIFIED.get((original, torch.float32)) is True
    assert attn_module.apply_rotary_pos_emb is original, "HF's function must be back after the forward"
