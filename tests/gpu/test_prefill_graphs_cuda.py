"""Prompts under CUDA graphs (eet_hf/engine/prefill_graphs.py): the first use of a (batch, length) runs eagerly, the
second captures, later ones replay — and all give the same answer, equal to HF's in fp32."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2LMHeadModel

import eet_hf
from eet_hf.engine import prefill_graphs
from eet_hf.engine.generate import ENGINE_ATTR
from eet_hf.models import default_model_path


def _model(name: str, dtype: torch.dtype):
    if name == "llama":
        return AutoModelForCausalLM.from_pretrained(default_model_path("llama"), dtype=dtype).cuda().eval()
    return GPT2LMHeadModel.from_pretrained(default_model_path("gpt2"), dtype=dtype).cuda().eval()


def _prompts(batch: int, length: int, vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded random prompts of different lengths (row 0 full length)."""
    generator = torch.Generator().manual_seed(batch * 1000 + length + seed)
    ids = torch.randint(5, vocab, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(1, batch):
        mask[row, : row * length // (2 * batch)] = 0
    return ids.masked_fill(mask == 0, 0).cuda(), mask.cuda()


@pytest.mark.parametrize("name", ["llama", "gpt2"])
@pytest.mark.parametrize("batch,length", [(1, 9), (1, 100), (3, 37), (2, 128)])
def test_eager_capture_and_replay_agree(cuda_ops, name, batch, length):
    model = eet_hf.accelerate(_model(name, torch.float16))
    ids, mask = _prompts(batch, length, model.config.vocab_size)
    kwargs = dict(attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0,
                  return_dict_in_generate=True, output_logits=True)
    with torch.inference_mode():
        runs = [model.generate(ids, **kwargs) for _ in range(3)]  # eager, capture + replay, replay
    engine = model.__dict__[ENGINE_ATTR].engine
    captured = [v for v in engine.prefill._graphs.values() if isinstance(v, prefill_graphs._Captured)]
    assert len(captured) == 1, "the second call should have captured the prompt's graph"
    for run in runs[1:]:
        assert torch.equal(run.sequences, runs[0].sequences)
        for ours, first in zip(run.logits, runs[0].logits):
            assert torch.equal(ours, first)  # same shapes, same kernels: bit-identical
        for ours, first in zip(run.past_key_values.layers, runs[0].past_key_values.layers):
            assert torch.equal(ours.keys, first.keys) and torch.equal(ours.values, first.values)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_replayed_prompt_gives_hf_fp32_tokens(cuda_ops, name):
    hf = _model(name, torch.float32)
    model = eet_hf.accelerate(copy.deepcopy(hf))
    ids, mask = _prompts(4, 45, hf.config.vocab_size)
    kwargs = dict(attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        expected = hf.generate(ids, **kwargs)
        for _ in range(3):
            assert torch.equal(model.generate(ids, **kwargs), expected)
        # Another prompt of the same shape replays the same graph with its own tokens and padding.
        other, other_mask = _prompts(4, 45, hf.config.vocab_size, seed=1)
        other_mask = other_mask.roll(1, 0)
        other = other.masked_fill(other_mask == 0, 0)
        kwargs["attention_mask"] = other_mask
        assert torch.equal(model.generate(other, **kwargs), hf.generate(other, **kwargs))


@pytest.mark.parametrize("name", ["llama", "gpt2"])
@pytest.mark.parametrize("length", [9, 45])
def test_single_unpadded_prompt_gives_hf_fp32_tokens(cuda_ops, name, length):
    hf = _model(name, torch.float32)
    model = eet_hf.accelerate(copy.deepcopy(hf))
    ids, _ = _prompts(1, length, hf.config.vocab_size)
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)  # no mask; eos may stop it, as in HF
    with torch.inference_mode():
        expected = hf.generate(ids, **kwargs)
        for _ in range(3):  # eager, capture + replay, replay
            assert torch.equal(model.generate(ids, **kwargs), expected)
