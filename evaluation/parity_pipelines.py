"""transformers pipelines run on each engine, outputs compared with the plain HF (sdpa) model's.

Each check returns {engine: {"pipeline_equal": share of inputs whose output matches the reference,
"max_abs_delta": largest score/feature difference seen}}. Outputs "match" when the discrete parts (text,
tokens, labels) are identical and the floats are within `tol` (scores: absolute; features: relative to the
largest reference feature, when that exceeds 1).
"""

from __future__ import annotations

import warnings

import torch
from transformers import pipeline

from . import texts as T
from .parity_checks import REFERENCE


def _run(task: str, model, tokenizer, device: str, inputs: list[str], **kwargs) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pipelines warn about generation flags and device moves; not our subject
        pipe = pipeline(task, model=model, tokenizer=tokenizer, device=torch.device(device))
        return [pipe(text, **kwargs) for text in inputs]


def _compare(outputs: dict, match) -> dict:
    """Apply `match(out, ref) -> (equal: bool, delta: float | None)` per input against the reference engine."""
    ref = outputs[REFERENCE]
    result = {}
    for name, outs in outputs.items():
        pairs = [match(o, r) for o, r in zip(outs, ref, strict=True)]
        result[name] = {
            "pipeline_equal": sum(eq for eq, _ in pairs) / len(pairs),
            "max_abs_delta": max((d for _, d in pairs if d is not None), default=None),
        }
    return result


def text_generation(models: dict, tokenizer, device: str, n: int, new_tokens: int) -> dict:
    prompts = T.prompts(n)
    outputs = {
        name: _run("text-generation", m, tokenizer, device, prompts, max_new_tokens=new_tokens, do_sample=False)
        for name, m in models.items()
    }
    return _compare(outputs, lambda o, r: (o[0]["generated_text"] == r[0]["generated_text"], None))


def fill_mask(models: dict, tokenizer, device: str, n: int, tol: float) -> dict:
    inputs = T.masked_texts(n, tokenizer.mask_token)
    outputs = {name: _run("fill-mask", m, tokenizer, device, inputs, top_k=5) for name, m in models.items()}

    def match(out: list[dict], ref: list[dict]) -> tuple[bool, float]:
        delta = max(abs(a["score"] - b["score"]) for a, b in zip(out, ref, strict=True))
        same = [a["token"] for a in out] == [b["token"] for b in ref]
        return same and delta <= tol, delta

    return _compare(outputs, match)


def feature_extraction(models: dict, tokenizer, device: str, n: int, tol: float) -> dict:
    inputs = T.varied_texts(n)
    outputs = {
        name: _run("feature-extraction", m, tokenizer, device, inputs, truncation=True, max_length=128)
        for name, m in models.items()
    }

    def match(out, ref) -> tuple[bool, float]:
        a, b = torch.tensor(out, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64)
        if a.shape != b.shape:
            return False, float("inf")
        delta = (a - b).abs().max().item() if torch.isfinite(a).all() else float("inf")
        # Hidden states are not probabilities: GPT-2's final ones reach |x| ~ 10-100, so scale the tolerance.
        return delta <= tol * max(1.0, b.abs().max().item()), delta

    return _compare(outputs, match)


def text_classification(models: dict, tokenizer, device: str, n: int, tol: float) -> dict:
    inputs = T.varied_texts(n)
    outputs = {
        name: _run("text-classification", m, tokenizer, device, inputs, top_k=None, truncation=True, max_length=128)
        for name, m in models.items()
    }

    def match(out: list[dict], ref: list[dict]) -> tuple[bool, float]:
        scores_out = {d["label"]: d["score"] for d in out}
        scores_ref = {d["label"]: d["score"] for d in ref}
        delta = max(abs(scores_out[k] - scores_ref[k]) for k in scores_ref)
        return out[0]["label"] == ref[0]["label"] and delta <= tol, delta

    return _compare(outputs, match)
