"""eet's generate loop for GPT-2 on CPU (reference ops): token equality with HF in fp32, HF's options, sampling
statistics, the fallback routing, restore()."""

from __future__ import annotations

import inspect
import logging

import pytest
import torch
from transformers import GPT2LMHeadModel, LogitsProcessor, LogitsProcessorList, TextStreamer, pipeline

import eet_hf
from eet_hf.engine.generate import ENGINE_ATTR

from .helpers import assert_close, gpt2_config, make_tokenizer, padded_batch, pair


def _engine_calls(model) -> int:
    return model.__dict__[ENGINE_ATTR].engine.stats["calls"]


@pytest.fixture
def models():
    model, ref = pair(GPT2LMHeadModel, gpt2_config())
    eet_hf.accelerate(model)
    return model, ref


def _generate_both(model, ref, ids, mask, **kwargs):
    calls = _engine_calls(model)
    torch.manual_seed(0)
    out = model.generate(ids, attention_mask=mask, **kwargs)
    torch.manual_seed(0)
    expected = ref.generate(ids, attention_mask=mask, **kwargs)
    return out, expected, _engine_calls(model) - calls


@pytest.mark.parametrize(
    "options",
    [
        {"max_new_tokens": 12},
        {"max_new_tokens": 9, "min_new_tokens": 9},
        {"max_length": 20, "repetition_penalty": 1.3},
        {"max_new_tokens": 7, "min_new_tokens": 3, "repetition_penalty": 0.8},
    ],
    ids=["plain", "min_new", "max_length+rep_penalty", "rep_penalty<1"],
)
def test_greedy_left_padded_matches_hf(models, options):
    model, ref = models
    ids, mask = padded_batch(4, 10, [10, 6, 3, 1], "left")
    out, expected, fast_calls = _generate_both(model, ref, ids, mask, do_sample=False, **options)
    assert fast_calls == 1, "eet's loop did not run"
    assert torch.equal(out, expected)


def test_unpadded_single_prompt(models):
    model, ref = models
    ids = torch.randint(7, 100, (1, 5))
    out, expected, fast_calls = _generate_both(model, ref, ids, None, max_new_tokens=16)
    assert fast_calls == 1 and torch.equal(out, expected)


def test_eos_stops_rows_and_pads_like_hf(models):
    model, ref = models
    ids, mask = padded_batch(3, 8, [8, 5, 2], "left")
    free_run = ref.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=None)
    # An eos that row 0 produces at its 4th new token: rows stop at different steps, finished rows get pad.
    eos = int(free_run[0, 8 + 3])
    out, expected, fast_calls = _generate_both(model, ref, ids, mask, max_new_tokens=12, eos_token_id=eos,
                                               pad_token_id=0)
    assert fast_calls == 1
    assert torch.equal(out, expected)
    assert out.shape[1] <= free_run.shape[1]


def test_scores_logits_and_cache_match_hf(models):
    model, ref = models
    ids, mask = padded_batch(2, 6, [6, 4], "left")
    kwargs = dict(max_new_tokens=5, return_dict_in_generate=True, output_scores=True, output_logits=True,
                  repetition_penalty=1.2)
    out, expected, fast_calls = _generate_both(model, ref, ids, mask, **kwargs)
    assert fast_calls == 1
    assert torch.equal(out.sequences, expected.sequences)
    assert len(out.scores) == len(expected.scores) == 5
    for ours, theirs in zip(out.scores + out.logits, expected.scores + expected.logits):
        assert_close(ours, theirs, 1e-4)
    ours_cache = out.cache if hasattr(out, "cache") else out.past_key_values
    theirs_cache = expected.cache if hasattr(expected, "cache") else expected.past_key_values
    assert ours_cache.get_seq_length() == theirs_cache.get_seq_length()
    real = mask.bool()[:, None, :, None]
    for layer in range(2):
        k, v = ours_cache.layers[layer].keys, ours_cache.layers[layer].values
        ek, ev = theirs_cache.layers[layer].keys, theirs_cache.layers[layer].values
        assert_close(k[..., :6, :], ek[..., :6, :], 1e-4, where=real)  # prompt padding slots hold anything
        assert_close(v[..., 6:, :], ev[..., 6:, :], 1e-4)


def test_sampling_distribution_matches_hf(models):
    """First sampled token over many identical rows: its frequencies follow HF's processed distribution."""
    model, ref = models
    rows = 3000
    ids = torch.randint(7, 100, (1, 6)).expand(rows, -1).contiguous()
    kwargs = dict(do_sample=True, top_k=8, top_p=0.9, temperature=0.7, max_new_tokens=2)
    torch.manual_seed(1)
    out = model.generate(ids, **kwargs)
    hf = ref.generate(ids[:1], return_dict_in_generate=True, output_scores=True, **kwargs)
    probs = torch.softmax(hf.scores[0][0], dim=-1)
    counts = torch.bincount(out[:, 6], minlength=probs.numel()).double() / rows
    assert counts[probs == 0].sum() == 0, "sampled a token HF's top-k/top-p removed"
    total_variation = 0.5 * (counts - probs.double()).abs().sum().item()
    assert total_variation < 0.05, f"sampled distribution off by TV {total_variation:.3f}"


def test_pipeline_runs_fast_loop_and_matches(models):
    model, ref = models
    tok = make_tokenizer("gpt2")
    prompts = ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9 w10"]
    calls = _engine_calls(model)
    ours = pipeline("text-generation", model=model, tokenizer=tok)(prompts, max_new_tokens=6, do_sample=False)
    theirs = pipeline("text-generation", model=ref, tokenizer=tok)(prompts, max_new_tokens=6, do_sample=False)
    assert ours == theirs
    assert _engine_calls(model) > calls


class _BanToken(LogitsProcessor):
    def __call__(self, input_ids, scores):
        return scores.index_fill(1, torch.tensor([9]), -float("inf"))


@pytest.mark.parametrize(
    "case",
    ["beam", "custom_processor", "right_padding", "streamer", "no_cache"],
)
def test_unsupported_options_give_hf_results(models, case, caplog):
    model, ref = models
    ids, mask = padded_batch(2, 6, [6, 3], "left")
    kwargs = {"max_new_tokens": 5}
    if case == "beam":
        kwargs["num_beams"] = 3
    elif case == "custom_processor":
        kwargs["logits_processor"] = LogitsProcessorList([_BanToken()])
    elif case == "right_padding":
        ids, mask = padded_batch(2, 6, [6, 3], "right")
    elif case == "streamer":
        ids, mask = ids[:1], mask[:1]
        kwargs["streamer"] = TextStreamer(make_tokenizer("gpt2"))
    elif case == "no_cache":
        kwargs["use_cache"] = False
    with caplog.at_level(logging.WARNING, logger="eet_hf"):
        out, expected, fast_calls = _generate_both(model, ref, ids, mask, **kwargs)
    assert fast_calls == 0, "eet's loop ran for an option it does not implement"
    assert torch.equal(out, expected)


def test_position_overflow_is_a_clear_error(models):
    model, _ = models
    ids = torch.randint(7, 100, (1, 120))  # n_positions is 128
    with pytest.raises(ValueError, match="position embeddings"):
        model.generate(ids, max_new_tokens=20)


def test_restore_and_option_off_remove_the_loop():
    model, ref = pair(GPT2LMHeadModel, gpt2_config())
    eet_hf.accelerate(model)
    assert "generate" in model.__dict__ and ENGINE_ATTR in model.__dict__
    eet_hf.restore(model)
    assert "generate" not in model.__dict__ and ENGINE_ATTR not in model.__dict__
    eet_hf.accelerate(model, generate=False)
    # HF's own loop (under the config view eet's attention needs; inspect.unwrap reaches HF's generate).
    assert ENGINE_ATTR not in model.__dict__
    assert inspect.unwrap(model.generate) is inspect.unwrap(GPT2LMHeadModel.generate)
    ids = torch.randint(7, 100, (1, 5))
    assert torch.equal(model.generate(ids, max_new_tokens=4), ref.generate(ids, max_new_tokens=4))


def test_graph_key_reuse_across_calls(models):
    """Second call with the same shapes reuses the engine state (CPU: eager steps, same results)."""
    model, ref = models
    ids, mask = padded_batch(2, 7, [7, 4], "left")
    for _ in range(2):
        out, expected, _ = _generate_both(model, ref, ids, mask, max_new_tokens=6)
        assert torch.equal(out, expected)
    engine = model.__dict__[ENGINE_ATTR].engine
    assert engine.memory_report()["kv_arena_bytes"] > 0


def test_reference_attention_never_reads_outside_bounds():
    """The KV arena's unused slots hold garbage; NaN there must not reach the output."""
    from eet_hf.ops import reference

    q = torch.randn(2, 4, 1, 16)
    k, v = torch.randn(2, 4, 10, 16), torch.randn(2, 4, 10, 16)
    start, end = torch.tensor([0, 3], dtype=torch.int32), torch.tensor([6, 6], dtype=torch.int32)
    offset = torch.tensor([5, 5], dtype=torch.int32)
    clean = reference.attention(q, k, v, start, end, offset, False, 0.25)
    k[:, :, 6:], v[:, :, 6:] = float("nan"), float("nan")
    k[1, :, :3], v[1, :, :3] = float("inf"), float("nan")
    assert torch.equal(reference.attention(q, k, v, start, end, offset, False, 0.25), clean)


def test_call_form_cache_follows_config_changes(models):
    """The prepared generation config and decoding-mode decision are kept per call form (call_cache.PreparedConfigs): a changed generation config (here
    beam search set on the model after greedy calls) is seen on the next call, which then runs HF's generate."""
    model, ref = models
    ids, mask = padded_batch(2, 6, [6, 3], "left")
    for _ in range(2):
        out, expected, fast_calls = _generate_both(model, ref, ids, mask, max_new_tokens=5)
        assert fast_calls == 1 and torch.equal(out, expected)
    model.generation_config.num_beams = ref.generation_config.num_beams = 2
    out, expected, fast_calls = _generate_both(model, ref, ids, mask, max_new_tokens=5)
    assert fast_calls == 0 and torch.equal(out, expected)
    model.generation_config.num_beams = ref.generation_config.num_beams = 1
    out, expected, fast_calls = _generate_both(model, ref, ids, mask, max_new_tokens=5)
    assert fast_calls == 1 and torch.equal(out, expected)


def test_replaced_parameter_is_seen_by_the_next_call(models):
    """The tensor walk is kept between calls (call_cache.TensorDicts) until a registration: a Parameter set on a
    module after a call is what the next call reads."""
    model, ref = models
    ids, mask = padded_batch(2, 6, [6, 3], "left")
    _generate_both(model, ref, ids, mask, max_new_tokens=4)
    new = torch.nn.Parameter(model.transformer.ln_f.weight.detach() * -1.5)
    model.transformer.ln_f.weight = new
    ref.transformer.ln_f.weight = torch.nn.Parameter(new.detach().clone())
    out, expected, fast_calls = _generate_both(model, ref, ids, mask, max_new_tokens=6)
    assert fast_calls == 1 and torch.equal(out, expected)


def test_tensor_walk_is_cached_until_a_registration():
    """module_walk.TensorDicts: the same dicts while nothing is registered, a new walk after a registration."""
    from eet_hf.module_walk import TensorDicts

    model = GPT2LMHeadModel(gpt2_config())
    walk = TensorDicts()
    first = walk.dicts(model)
    assert walk.dicts(model) is first and len(walk.tensors(model)) >= len(list(model.parameters()))
    model.transformer.ln_f.weight = torch.nn.Parameter(torch.ones_like(model.transformer.ln_f.weight))
    assert walk.dicts(model) is not first
    assert any(t is model.transformer.ln_f.weight for t in walk.tensors(model))
