"""Checks the fused decoder step's GPU tests share (test_fused_opt_cuda.py, test_fused_gpt2_cuda.py): not tests."""

from __future__ import annotations

import copy

import torch

import eet_hf
from eet_hf.engine import fused_decoder
from eet_hf.engine.generate import ENGINE_ATTR


def _assert_fused_with_graphs(model) -> None:
    handle = model.__dict__[ENGINE_ATTR]
    assert isinstance(handle.view, fused_decoder.FusedDecoder), "the build's kernel check sent the model elsewhere"
    assert handle.engine.stats["graph_replays"] > 0, "eet's loop with graphs did not run"


def assert_fp32_generate_equals_hf(hf: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> None:
    """fp32: an accelerated copy's greedy tokens equal HF's and its scores are within 1e-4, 24 new tokens."""
    model = eet_hf.accelerate(copy.deepcopy(hf))
    kwargs = dict(attention_mask=mask, max_new_tokens=24, min_new_tokens=24, do_sample=False, pad_token_id=0,
                  return_dict_in_generate=True, output_scores=True)
    with torch.no_grad():
        out, expected = model.generate(ids, **kwargs), hf.generate(ids, **kwargs)
    _assert_fused_with_graphs(model)
    assert torch.equal(out.sequences, expected.sequences)
    for got, want in zip(out.scores, expected.scores):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def assert_half_logits_track_fp32(sdpa: torch.nn.Module, fp32: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                                  new: int = 16, positions: bool = False) -> None:
    """An accelerated copy of `sdpa` (fp16/bf16) generates `new` tokens; its logits against `fp32`'s forward on the
    same sequences are off by at most twice what `sdpa`'s own forward's are. positions: pass the forwards generate's
    position ids (counted from each row's first real token), for models whose plain forward counts from the padding
    (GPT-2)."""
    model = eet_hf.accelerate(copy.deepcopy(sdpa))
    kwargs = dict(attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0,
                  return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        out = model.generate(ids, **kwargs)
        _assert_fused_with_graphs(model)
        ours = torch.stack(out.logits, 1).float()  # [batch, new, vocab]: the prompt's, then each decode step's
        full_mask = torch.cat([mask, torch.ones(mask.shape[0], new, dtype=mask.dtype, device=mask.device)], 1)
        extra = {"position_ids": (full_mask.cumsum(-1) - 1).clamp_min(0)} if positions else {}
        window = slice(ids.shape[1] - 1, ids.shape[1] - 1 + new)  # the positions that predicted the new tokens
        ref = fp32(out.sequences, attention_mask=full_mask, **extra).logits[:, window].float()
        base = sdpa(out.sequences, attention_mask=full_mask, **extra).logits[:, window].float()
    err = ((ours - ref).norm() / ref.norm()).item()
    base_err = ((base - ref).norm() / ref.norm()).item()
    assert err <= 2 * base_err, (err, base_err)
