"""The parity suite's fp32-reference rule for trained decoders in 16 bits (evaluation/parity.py, issue 27): eet's
greedy tokens must stay with an fp32 model's at least as long as HF eager's and HF sdpa's. Checked on CPU with
fp32 stand-ins for the three engines, one of them perturbed, so the rule is seen to pass and to fail."""

from __future__ import annotations

import copy

import pytest
import torch

from evaluation import parity
from evaluation import texts as T
from evaluation.models import load_model, load_tokenizer, tiny_specs
from evaluation.parity_checks import greedy_against_fp32


@pytest.fixture(scope="module")
def gpt2_tiny():
    spec = next(s for s in tiny_specs() if s.name == "gpt2-tiny")
    model = load_model(spec, "lm", torch.float32, "cpu")
    bad = copy.deepcopy(model)
    with torch.no_grad():
        weight = bad.transformer.h[1].mlp.c_proj.weight
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * 0.5)
    return spec, model, bad, load_tokenizer(spec)


def _rows_by_engine(rows: list[dict], metric: str) -> dict:
    return {r["engine"]: r for r in rows if r["metric"] == metric}


def test_greedy_against_fp32_measures_each_engine(gpt2_tiny):
    spec, model, bad, tok = gpt2_tiny
    models = {"hf-sdpa": copy.deepcopy(model), "hf-eager": model, "eet": bad}
    g = greedy_against_fp32(models, model, tok, T.prompts(4), 12, "cpu")
    for engine in ("hf-sdpa", "hf-eager"):
        assert g[engine] == {"fp32_match_share": 1.0, "fp32_prefix_tokens": 12.0}
    assert g["eet"]["fp32_prefix_tokens"] < 12 and g["eet"]["fp32_match_share"] < 1.0


def test_fp32_rule_fails_when_eet_leaves_fp32_first(gpt2_tiny):
    spec, model, bad, tok = gpt2_tiny
    good = {"hf-sdpa": model, "hf-eager": model, "eet": copy.deepcopy(model)}
    rows = parity._fp32_greedy_rows(spec, good, tok, "gpt2-tiny/bf16", 4, 12, "cpu")
    judged = _rows_by_engine(rows, "fp32_prefix_tokens")
    assert judged["eet"]["case"] == "gpt2-tiny/bf16/greedy-vs-fp32-4x12"
    assert judged["eet"]["pass"] is True and judged["hf-eager"]["pass"] is None and judged["hf-sdpa"]["pass"] is None

    # eet worse than sdpa only (eager no better than eet): still a failure, the rule takes the better HF path.
    rows = parity._fp32_greedy_rows(spec, {"hf-sdpa": model, "hf-eager": bad, "eet": bad}, tok, "x/fp16", 4, 12, "cpu")
    judged = _rows_by_engine(rows, "fp32_prefix_tokens")
    assert judged["hf-sdpa"]["value"] > judged["eet"]["value"] == judged["hf-eager"]["value"]
    assert judged["eet"]["pass"] is False
