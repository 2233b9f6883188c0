"""Deep copies, pickles and models built from the config of models accelerated on the GPU, after they ran: engines,
whole-model and decode CUDA graphs exist when they are copied. tests/test_lifecycle.py covers the same on CPU."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertForMaskedLM, GPT2LMHeadModel

import eet_hf

from ..helpers import assert_close, bert_config, gpt2_config, padded_batch

ATOL = 1e-4  # fp32: DESIGN.md's logits tolerance
GREEDY = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)


def _ran(cls, config):
    """(accelerated model that already ran forward twice and generated on CUDA, plain reference)."""
    torch.manual_seed(0)
    ref = cls(config).to("cuda").eval()
    model = eet_hf.accelerate(copy.deepcopy(ref))
    ids, mask = padded_batch(2, 9, [9, 5], "right")
    with torch.no_grad():
        for _ in range(2):
            model(ids.cuda(), attention_mask=mask.cuda())
    if cls is GPT2LMHeadModel:
        model.generate(ids.cuda()[:1], **GREEDY)
    return model, ref


def _check(model, ref, cls) -> None:
    ids, mask = padded_batch(2, 9, [9, 5], "right")
    ids, mask = ids.cuda(), mask.cuda()
    with torch.no_grad():
        for _ in range(2):  # the second call replays the copy's own graphs, where it captured any
            assert_close(model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits, ATOL,
                         where=mask[..., None])
    if cls is GPT2LMHeadModel:
        assert torch.equal(model.generate(ids[:1], **GREEDY), ref.generate(ids[:1], **GREEDY))


@pytest.mark.parametrize("cls,make_config", [(GPT2LMHeadModel, gpt2_config), (BertForMaskedLM, bert_config)],
                         ids=["gpt2", "bert"])
def test_copies_and_pickles_after_running_on_the_gpu(cls, make_config, tmp_path, cuda_ops):
    model, ref = _ran(cls, make_config())
    clone = copy.deepcopy(model)
    assert eet_hf.explain(clone).kernels == "cuda"
    assert eet_hf.explain(clone).accelerated == eet_hf.explain(model).accelerated
    _check(clone, ref, cls)
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert next(loaded.parameters()).is_cuda and eet_hf.explain(loaded).kernels == "cuda"
    _check(loaded, ref, cls)
    _check(model, ref, cls)  # the original keeps working on its own graphs
    built = cls(model.config).to("cuda").eval()
    assert built.config._attn_implementation == ref.config._attn_implementation
