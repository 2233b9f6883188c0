"""eet's decode loop on the generic families, on the GPU: HF's layers (with eet attention and the verified eet norms)
captured in CUDA graphs over the KV arena. fp32 tokens equal HF's, also with the arena poisoned with NaN between
calls; fp16/bf16 greedy agreement per the parity rule (eet agrees with HF sdpa at least as often as HF eager)."""

from __future__ import annotations

import copy

import pytest
import torch

import eet_hf
from eet_hf.engine.generate import ENGINE_ATTR

from ..helpers import padded_batch
from .test_generic_cuda import FAMILIES, VOCAB

ENGINE_FAMILIES = ["llama", "mistral", "qwen2", "gpt_neox", "opt"]


def _model(name: str, dtype: torch.dtype, attn: str = "sdpa") -> torch.nn.Module:
    cls, make_config, _ = FAMILIES[name]
    torch.manual_seed(0)
    model = cls(make_config())
    model.set_attn_implementation(attn)
    return model.to("cuda", dtype).eval()


def _engine(model):
    return model.__dict__[ENGINE_ATTR].engine


def _batch(lengths: list[int], width: int):
    ids, mask = padded_batch(len(lengths), width, lengths, "left", vocab=VOCAB)
    return ids.cuda(), mask.cuda()


@pytest.mark.parametrize("name", ENGINE_FAMILIES)
def test_fp32_tokens_equal_hf_with_graphs_and_poisoned_arena(cuda_ops, name):
    hf = _model(name, torch.float32)
    model = eet_hf.accelerate(copy.deepcopy(hf))
    assert "generate" not in eet_hf.explain(model).fallbacks
    kwargs = dict(max_new_tokens=40, min_new_tokens=40, do_sample=False)
    ids, mask = _batch([30, 17, 4, 1], 30)
    with torch.no_grad():
        assert torch.equal(model.generate(ids, attention_mask=mask, **kwargs),
                           hf.generate(ids, attention_mask=mask, **kwargs))
        engine = _engine(model)
        assert engine.stats["graphs_captured"] == 1 and engine.stats["graph_replays"] >= 35, engine.stats
        # Same shapes, new prompts: the graph is replayed; NaN in every slot the prompt does not overwrite
        # (spare capacity, the previous call's tokens) must never reach the tokens.
        engine.arena._flat.fill_(float("nan"))
        ids, mask = _batch([30, 3, 22, 9], 30)
        out = model.generate(ids, attention_mask=mask, **kwargs)
        expected = hf.generate(ids, attention_mask=mask, **kwargs)
    assert engine.stats["graphs_captured"] == 1, "the second call should replay the first call's graph"
    assert torch.equal(out, expected)


@pytest.mark.parametrize("name", ENGINE_FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_greedy_agreement_through_the_engine(cuda_ops, name, dtype):
    """32 left-padded prompts x 32 tokens: eet agrees with HF sdpa at least as often as HF eager does."""
    sdpa, eager = _model(name, dtype), _model(name, dtype, "eager")
    model = eet_hf.accelerate(copy.deepcopy(sdpa))
    ids, mask = _batch([24 - (i % 20) for i in range(32)], 24)
    kwargs = dict(attention_mask=mask, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        outs = {engine: m.generate(ids, **kwargs) for engine, m in (("eet", model), ("sdpa", sdpa), ("eager", eager))}
    assert _engine(model).stats["graph_replays"] > 0, "eet's loop with graphs did not run"
    assert torch.isin(outs["eet"], torch.arange(VOCAB, device="cuda")).all()
    agree = {engine: (outs[engine] == outs["sdpa"]).all(-1).float().mean().item() for engine in ("eet", "eager")}
    assert agree["eet"] >= agree["eager"], agree
