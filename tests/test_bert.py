"""BERT accelerated vs an unpatched deep copy, on CPU (reference ops): every head on right-padded batches,
the fill-mask pipeline, restore()."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForNextSentencePrediction,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertLMHeadModel,
    BertModel,
    pipeline,
)

import eet_hf

from .helpers import assert_close, bert_config, make_tokenizer, padded_batch, pair

FP32_ATOL = 1e-4

HEADS = [BertModel, BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification,
         BertForQuestionAnswering, BertForNextSentencePrediction, BertForPreTraining]


def _compare(out, expected, mask):
    for key, value in expected.items():
        if not isinstance(value, torch.Tensor):
            continue
        real = None
        if value.dim() >= 2 and value.shape[:2] == mask.shape:
            real = mask.bool().view(*mask.shape, *([1] * (value.dim() - 2)))
        assert_close(out[key], value, FP32_ATOL, where=real)


@pytest.mark.parametrize("head", HEADS, ids=lambda c: c.__name__)
def test_every_head_matches_hf_on_right_padded_batch(head):
    model, ref = pair(head, bert_config())
    eet_hf.accelerate(model)
    ids, mask = padded_batch(4, 11, [11, 6, 2, 1], "right")
    with torch.no_grad():
        _compare(model(ids, attention_mask=mask), ref(ids, attention_mask=mask), mask)


def test_multiple_choice():
    model, ref = pair(BertForMultipleChoice, bert_config())
    eet_hf.accelerate(model)
    ids = torch.randint(7, 100, (2, 3, 8))
    mask = torch.ones_like(ids)
    mask[0, 1, 5:] = 0
    with torch.no_grad():
        assert_close(model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits, FP32_ATOL)


def test_causal_decoder_bert_generates_like_hf():
    model, ref = pair(BertLMHeadModel, bert_config(is_decoder=True))
    eet_hf.accelerate(model)
    ids, mask = padded_batch(2, 6, [6, 3], "left")
    kwargs = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, **kwargs), ref.generate(ids, **kwargs))


@pytest.mark.parametrize("act", ["gelu", "gelu_new"])
def test_gelu_flavours(act):
    model, ref = pair(BertForMaskedLM, bert_config(hidden_act=act))
    eet_hf.accelerate(model)
    assert not eet_hf.explain(model).fallbacks
    ids, mask = padded_batch(2, 5, [5, 2], "right")
    with torch.no_grad():
        _compare(model(ids, attention_mask=mask), ref(ids, attention_mask=mask), mask)


def test_unsupported_activation_falls_back_and_stays_correct():
    model, ref = pair(BertForMaskedLM, bert_config(hidden_act="relu"))
    eet_hf.accelerate(model)
    fallbacks = eet_hf.explain(model).fallbacks
    assert any("relu" in reason for reason in fallbacks.values()), fallbacks
    ids, mask = padded_batch(2, 5, [5, 2], "right")
    with torch.no_grad():
        _compare(model(ids, attention_mask=mask), ref(ids, attention_mask=mask), mask)


def test_fill_mask_pipeline_identical():
    tok = make_tokenizer("bert")
    model, ref = pair(BertForMaskedLM, bert_config())
    eet_hf.accelerate(model)
    texts = ["w1 [MASK] w3", "w4 w5 w6 w7 [MASK] w9 w10"]
    got = pipeline("fill-mask", model=model, tokenizer=tok)(texts, top_k=5)
    expected = pipeline("fill-mask", model=ref, tokenizer=tok)(texts, top_k=5)
    assert [[d["token"] for d in row] for row in got] == [[d["token"] for d in row] for row in expected]
    for row_got, row_exp in zip(got, expected):
        for a, b in zip(row_got, row_exp):
            assert abs(a["score"] - b["score"]) < 1e-5


def test_restore():
    model, ref = pair(BertForMaskedLM, bert_config())
    eet_hf.accelerate(model)
    eet_hf.restore(model)
    ids, mask = padded_batch(2, 5, [5, 2], "right")
    assert all("forward" not in m.__dict__ for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits)
