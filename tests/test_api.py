"""accelerate / explain / restore contracts and the fallbacks: never a silently different answer."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from transformers import BertForMaskedLM, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import eet_hf

from .helpers import assert_close, bert_config, gpt2_config, padded_batch, pair


def test_returns_same_object_and_unknown_option_raises():
    model = GPT2LMHeadModel(gpt2_config()).eval()
    assert eet_hf.accelerate(model) is model
    with pytest.raises(TypeError, match="turbo"):
        eet_hf.accelerate(model, turbo=True)


def test_accelerate_twice_is_harmless_and_options_reapply():
    model, ref = pair(GPT2LMHeadModel, gpt2_config())
    eet_hf.accelerate(model)
    first = list(eet_hf.explain(model).accelerated)
    eet_hf.accelerate(model)
    assert eet_hf.explain(model).accelerated == first
    eet_hf.accelerate(model, mlp=False)
    assert not any(path.endswith(".mlp") for path in eet_hf.explain(model).accelerated)
    ids, mask = padded_batch(2, 6, [6, 2], "left")
    with torch.no_grad():
        assert_close(model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits, 1e-4,
                     where=mask.bool().unsqueeze(-1))
    eet_hf.restore(model)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_explain_report_is_readable():
    model = GPT2LMHeadModel(gpt2_config()).eval()
    assert "not accelerated" in str(eet_hf.explain(model))
    eet_hf.accelerate(model)
    report = eet_hf.explain(model)
    assert "transformer.h.0" in report.accelerated and report.fallbacks == {}
    text = str(report)
    assert "transformer.h.1.mlp" in text and "eet" in text and report.kernels == "reference"


def test_family_without_adapter_takes_the_generic_path(caplog):
    # Issue #7: no family adapter -> patches/generic.py (tests/test_generic.py covers it, including the model
    # with nothing to accelerate that warns and stays unchanged).
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=50)
    model = LlamaForCausalLM(config).eval()
    with caplog.at_level(logging.WARNING, logger="eet_hf"):
        eet_hf.accelerate(model)
    assert "left unchanged" not in caplog.text
    # The modules read eet's attention through a view of the config; model.config still says what it said.
    assert model.model.layers[0].self_attn.config._attn_implementation == "eet"
    assert model.config._attn_implementation == "sdpa"
    assert "rotary" in eet_hf.explain(model).fallbacks["model.rotary_emb"]
    with pytest.raises(eet_hf.EetUnsupportedError, match="strict"):  # SiLU MLP, rotary: left to HF
        eet_hf.accelerate(LlamaForCausalLM(config), strict=True)


def test_cross_attention_falls_back_or_raises_in_strict_mode():
    model, ref = pair(GPT2LMHeadModel, gpt2_config(add_cross_attention=True))
    eet_hf.accelerate(model)
    fallbacks = eet_hf.explain(model).fallbacks
    assert "attention" in fallbacks and "transformer.h.0" in fallbacks
    ids = torch.randint(7, 100, (2, 5))
    enc = torch.randn(2, 4, 64)
    with torch.no_grad():
        assert_close(model(ids, encoder_hidden_states=enc).logits, ref(ids, encoder_hidden_states=enc).logits, 1e-4)
    with pytest.raises(eet_hf.EetUnsupportedError, match="cross-attention"):
        eet_hf.accelerate(GPT2LMHeadModel(gpt2_config(add_cross_attention=True)), strict=True)


def test_training_mode_runs_hf_forwards():
    config = gpt2_config(resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3)
    model, ref = pair(GPT2LMHeadModel, config)
    eet_hf.accelerate(model)
    model.train()
    ref.train()
    ids = torch.randint(7, 100, (2, 8))
    torch.manual_seed(5)
    out = model(ids, labels=ids)
    torch.manual_seed(5)
    expected = ref(ids, labels=ids)
    assert torch.allclose(out.loss, expected.loss, atol=1e-5)
    out.loss.backward()  # gradients flow: HF's own modules ran


def test_output_attentions_returns_hf_eager_weights():
    model, ref = pair(BertForMaskedLM, bert_config())
    ref.set_attn_implementation("eager")
    eet_hf.accelerate(model)
    ids, mask = padded_batch(2, 7, [7, 3], "right")
    with torch.no_grad():
        out = model(ids, attention_mask=mask, output_attentions=True)
        expected = ref(ids, attention_mask=mask, output_attentions=True)
    assert out.attentions is not None and len(out.attentions) == len(expected.attentions)
    for a, b in zip(out.attentions, expected.attentions):
        assert_close(a, b, 1e-5)


def test_padding_with_holes_uses_hf_path_and_matches():
    model, ref = pair(BertForMaskedLM, bert_config())
    eet_hf.accelerate(model)
    ids = torch.randint(7, 100, (2, 6))
    mask = torch.tensor([[1, 0, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        got, expected = model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits
    assert_close(got, expected, 1e-4, where=mask.bool().unsqueeze(-1))


def test_custom_4d_mask_uses_hf_path_and_matches():
    model, ref = pair(GPT2LMHeadModel, gpt2_config())
    eet_hf.accelerate(model)
    ids = torch.randint(7, 100, (1, 5))
    mask4d = torch.tril(torch.ones(5, 5, dtype=torch.bool)).view(1, 1, 5, 5)
    mask4d[0, 0, 4, 1] = False  # not expressible by bounds
    with torch.no_grad():
        got, expected = model(ids, attention_mask=mask4d).logits, ref(ids, attention_mask=mask4d).logits
    assert_close(got, expected, 1e-4)


def test_deepcopy_of_accelerated_model_is_independent():
    model, ref = pair(GPT2LMHeadModel, gpt2_config())
    eet_hf.accelerate(model)
    clone = copy.deepcopy(model)
    eet_hf.restore(model)
    assert eet_hf.explain(clone).accelerated
    ids = torch.randint(7, 100, (1, 6))
    with torch.no_grad():
        assert_close(clone(ids).logits, ref(ids).logits, 1e-4)
