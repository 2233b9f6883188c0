"""An accelerated model through its life as a library object: deep copies, pickles (torch.save / torch.load),
models built from its config, introspected signatures, and what accelerate/restore/explain say to wrong input.

Every test compares with plain HF models built from the same weights (tests/helpers.pair).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from transformers import (
    BertForMaskedLM,
    BertModel,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
)

import eet_hf

from .helpers import assert_close, bert_config, gpt2_config, padded_batch, pair

REPO = Path(__file__).resolve().parents[1]
ATOL = 1e-4  # DESIGN.md: fp32 paths match HF within 1e-4 on logits
GREEDY = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)


def llama_config(**overrides) -> LlamaConfig:
    base = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                vocab_size=100, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaConfig(**{**base, **overrides})


# (model class, config factory): a decoder with eet's own adapter and decode loop, an encoder with the packed encoder
# and whole-model graphs, a decoder on the generic adapter; and the bare base models, whose own forward builds masks.
CASES = {
    "gpt2": (GPT2LMHeadModel, gpt2_config),
    "bert": (BertForMaskedLM, bert_config),
    "llama": (LlamaForCausalLM, llama_config),
    "bert-base": (BertModel, bert_config),
    "llama-base": (LlamaModel, llama_config),
}


def _accelerated_pair(case: str, **config_overrides):
    cls, make_config = CASES[case]
    model, ref = pair(cls, make_config(**config_overrides))
    return eet_hf.accelerate(model), ref


def _main_output(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _assert_matches(model, ref) -> None:
    ids, mask = padded_batch(2, 7, [7, 4], "right")
    with torch.no_grad():
        got, expected = _main_output(model(ids, attention_mask=mask)), _main_output(ref(ids, attention_mask=mask))
    # Real tokens only: eet's encoder leaves padding positions at zero (README: BERT padding positions).
    assert_close(got, expected, ATOL, where=mask[..., None])


def _assert_rewired_onto_itself(model) -> None:
    """Every eet forward and generate the model holds is bound to the model's own modules, and every module config
    under it is its own (none shared with another model)."""
    for name, module in model.named_modules():
        for slot in ("forward", "generate"):
            bound = module.__dict__.get(slot)
            if bound is not None:
                assert bound.__self__ is module, f"{name or '<model>'}.{slot} is bound to another module"


def _assert_plain(model) -> None:
    assert "not accelerated" in str(eet_hf.explain(model))
    for name, module in model.named_modules():
        assert not {"forward", "generate"} & set(module.__dict__), f"{name} still holds an eet method"
        assert not [k for k in module.__dict__ if k.startswith("_eet")], f"{name} still holds eet state"


# ---------------------------------------------------------------------------------------------------------------
# Issue 30 item 7: not a model


@pytest.mark.parametrize("entry", [eet_hf.accelerate, eet_hf.restore, eet_hf.explain])
@pytest.mark.parametrize("value", ["gpt2", None, 3, torch.zeros(2)])
def test_entry_points_name_what_they_expected(entry, value):
    with pytest.raises(TypeError, match=r"PreTrainedModel.*from_pretrained") as info:
        entry(value)
    assert type(value).__name__ in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# Issue 30 item 14: signatures


@pytest.mark.parametrize("case", list(CASES))
def test_rewired_methods_keep_their_signatures(case):
    model, ref = _accelerated_pair(case)
    modules = dict(ref.named_modules())
    rewired = 0
    for name, module in model.named_modules():
        assert inspect.signature(module.forward) == inspect.signature(modules[name].forward), name or "<model>"
        rewired += "forward" in module.__dict__
    assert rewired > 0
    if hasattr(ref, "generate"):
        assert inspect.signature(model.generate) == inspect.signature(ref.generate)
