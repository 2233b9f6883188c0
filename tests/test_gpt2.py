"""GPT-2 accelerated vs an unpatched deep copy, on CPU (reference ops): every head, padding, generate,
a manual cache loop, the text-generation pipeline, restore()."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GPT2DoubleHeadsModel,
    GPT2ForQuestionAnswering,
    GPT2ForSequenceClassification,
    GPT2ForTokenClassification,
    GPT2LMHeadModel,
    GPT2Model,
    pipeline,
)
from transformers.models.gpt2 import modeling_gpt2

import eet_hf

from .helpers import assert_close, gpt2_config, make_tokenizer, padded_batch, pair

FP32_ATOL = 1e-4  # DESIGN.md: fp32 paths match HF within 1e-4 on logits


def _cache_of(output):
    # transformers 5.24 names the field `cache`, 5.17 `past_key_values`.
    return output.cache if hasattr(output, "cache") else output.past_key_values


HEADS = [GPT2Model, GPT2LMHeadModel, GPT2ForSequenceClassification, GPT2ForTokenClassification,
         GPT2ForQuestionAnswering]


@pytest.mark.parametrize("head", HEADS, ids=lambda c: c.__name__)
def test_every_head_matches_hf_on_left_padded_batch(head):
    model, ref = pair(head, gpt2_config())
    eet_hf.accelerate(model)
    ids, mask = padded_batch(4, 12, [12, 7, 3, 1], "left")
    with torch.no_grad():
        out, expected = model(ids, attention_mask=mask), ref(ids, attention_mask=mask)
    for key, value in expected.items():
        if not isinstance(value, torch.Tensor):
            continue
        real = mask.bool() if value.dim() >= 2 and value.shape[:2] == mask.shape else None
        if real is not None:
            real = real.view(*real.shape, *([1] * (value.dim() - 2)))
        assert_close(out[key], value, FP32_ATOL, where=real)
    assert eet_hf.explain(model).accelerated, "nothing was accelerated"


def test_double_heads_model():
    model, ref = pair(GPT2DoubleHeadsModel, gpt2_config())
    eet_hf.accelerate(model)
    ids = torch.randint(7, 100, (2, 3, 10))
    mc_token_ids = torch.tensor([[9, 9, 9], [9, 9, 9]])
    with torch.no_grad():
        out, expected = model(ids, mc_token_ids=mc_token_ids), ref(ids, mc_token_ids=mc_token_ids)
    assert_close(out.logits, expected.logits, FP32_ATOL)
    assert_close(out.mc_logits, expected.mc_logits, FP32_ATOL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits_close_to_hf(dtype):
    model, ref = pair(GPT2LMHeadModel, gpt2_config(), dtype)
    fp32 = pair(GPT2LMHeadModel, gpt2_config())[1]
    fp32.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    eet_hf.accelerate(model)
    ids, mask = padded_batch(3, 10, [10, 6, 2], "left")
    with torch.no_grad():
        truth = fp32(ids, attention_mask=mask).logits.double()
        eet_err = (model(ids, attention_mask=mask).logits.double() - truth)[mask.bool()].abs().max()
        hf_err = (ref(ids, attention_mask=mask).logits.double() - truth)[mask.bool()].abs().max()
    # eet computes softmax, LayerNorm and GELU in fp32, so it is at least about as close to fp32 as HF is.
    assert eet_err <= 2 * hf_err + 1e-3, (eet_err, hf_err)


def test_greedy_generate_identical():
    model, ref = pair(GPT2LMHeadModel, gpt2_config())
    eet_hf.accelerate(model)
    ids, mask = padded_batch(4, 9, [9, 5, 2, 1], "left")
    kwargs = dict(attention_mask=mask, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, **kwargs), ref.generate(ids, **kwargs))


def test_manual_cache_loop_identical():
    model, ref = pair(GPT2LMHeadModel, gpt2_config())
    eet_hf.accelerate(model)
    ids, mask = padded_batch(2, 7, [7, 4], "left")
    results = []
    for m in (model, ref):
        with torch.no_grad():
            out = m(ids, attention_mask=mask, use_cache=True)
            steps, cache, step_mask = [out.logits[:, -1]], _cache_of(out), mask
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            for _ in range(5):
                step_mask = torch.cat([step_mask, torch.ones_like(token)], dim=1)
                out = m(token, cache, attention_mask=step_mask, use_cache=True)  # cache positional: 5.17 and 5.24
                cache = _cache_of(out)
                steps.append(out.logits[:, -1])
                token = out.logits[:, -1].argmax(-1, keepdim=True)
        results.append(torch.stack(steps))
    assert_close(results[0], results[1], FP32_ATOL)


def test_text_generation_pipeline_identical():
    tok = make_tokenizer("gpt2")
    model, ref = pair(GPT2LMHeadModel, gpt2_config())
    eet_hf.accelerate(model)
    prompts = ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9"]
    args = dict(max_new_tokens=12, do_sample=False)
    got = pipeline("text-generation", model=model, tokenizer=tok)(prompts, **args)
    expected = pipeline("text-generation", model=ref, tokenizer=tok)(prompts, **args)
    assert got == expected


def test_restore_gives_hf_back_and_leaves_others_untouched():
    config = gpt2_config()
    model, ref = pair(GPT2LMHeadModel, config)
    bystander = GPT2LMHeadModel(config).eval()  # shares the config object with `model`
    eet_hf.accelerate(model)
    assert bystander.config._attn_implementation != "eet"
    assert "forward" not in bystander.transformer.h[0].__dict__
    assert modeling_gpt2.GPT2Block.forward.__module__ == modeling_gpt2.__name__, "HF's class was modified"
    ids, mask = padded_batch(2, 6, [6, 3], "left")
    eet_hf.restore(model)
    assert model.config._attn_implementation == ref.config._attn_implementation
    assert all("forward" not in m.__dict__ for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits)
