"""Numerical parity measurements between engines; every function compares against models["hf-sdpa"].

`models` maps engine name -> model (see evaluation.models.engines): "hf-sdpa" is the plain HF reference,
"hf-eager" the yardstick (what a different but correct attention path does to the numbers), "eet" the
accelerated copy.
"""

from __future__ import annotations

import torch

REFERENCE = "hf-sdpa"


@torch.no_grad()
def padded_logits(models: dict, tokenizer, family: str, texts: list[str], max_len: int, device: str) -> dict:
    """Logits of one padded batch, compared on real (non-pad) positions only.

    GPT-2 batches are left-padded with position ids counted from the first real token (as generate() does);
    BERT batches are right-padded. Returns {engine: {"max_abs_dlogit", "max_rel_dlogit", "all_finite",
    "tokens"}}, where max_rel_dlogit = max|Δ| / max|reference logit| (a scale-free error; element-wise
    relative error is meaningless for logits near 0), and all_finite covers every position, pads included.
    """
    tokenizer.padding_side = "left" if family == "gpt2" else "right"
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt").to(device)
    mask = enc["attention_mask"].bool()
    if bool(mask.all()):
        raise ValueError("padded_logits needs texts of different lengths (the batch has no padding)")
    kwargs = dict(enc)
    if family == "gpt2":
        kwargs["position_ids"] = (enc["attention_mask"].cumsum(-1) - 1).clamp_min(0)
        kwargs["use_cache"] = False
    logits = {name: model(**kwargs).logits.float() for name, model in models.items()}
    ref = logits[REFERENCE][mask]
    scale = ref.abs().max().item()
    result = {}
    for name, out in logits.items():
        delta = (out[mask] - ref).abs().max().item()
        result[name] = {
            "max_abs_dlogit": delta,
            "max_rel_dlogit": delta / scale if scale > 0 else float("inf"),
            "all_finite": bool(torch.isfinite(out).all()),
            "tokens": int(mask.sum()),
        }
    return result


def _continuations(models: dict, tokenizer, prompts: list[str], new_tokens: int, device: str) -> dict:
    """{name: [prompts, new_tokens] greedy continuation of a left-padded batch}; -1 after an early stop."""
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, padding=True, return_tensors="pt").to(device)
    prompt_len = enc["input_ids"].shape[1]
    continuations = {}
    for name, model in models.items():
        seq = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        cont = seq[:, prompt_len:].cpu()
        # generate() stops early once every row has hit EOS; pad with -1 so lengths compare equal.
        pad = torch.full((cont.shape[0], new_tokens - cont.shape[1]), -1, dtype=cont.dtype)
        continuations[name] = torch.cat([cont, pad], dim=1)
    return continuations


@torch.no_grad()
def greedy_generation(models: dict, tokenizer, prompts: list[str], new_tokens: int, device: str) -> dict:
    """Batched greedy generation (left padding) of `new_tokens` per prompt.

    Returns {engine: {"greedy_match_share": share of prompts whose continuation equals the reference's,
    "first_divergence": earliest generated-token index where any prompt differs (= new_tokens if none)}}.
    """
    continuations = _continuations(models, tokenizer, prompts, new_tokens, device)
    ref = continuations[REFERENCE]
    result = {}
    for name, cont in continuations.items():
        differs = cont != ref  # [prompts, new_tokens]
        same_rows = ~differs.any(dim=1)
        first = differs.float().argmax(dim=1)  # first True per row; rows without a difference masked below
        first = torch.where(same_rows, torch.full_like(first, new_tokens), first)
        result[name] = {
            "greedy_match_share": float(same_rows.float().mean()),
            "first_divergence": int(first.min()),
        }
    return result


@torch.no_grad()
def greedy_against_fp32(models: dict, fp32_model, tokenizer, prompts: list[str], new_tokens: int, device: str) -> dict:
    """Every engine's greedy continuations (one low-precision dtype) against the fp32 model's, same prompts.

    The fp32 model is the truth here, not 16-bit sdpa: eet, HF eager and HF sdpa each round differently, so the
    question is which of them stays with the full-precision answer longest. Returns {engine: {"fp32_match_share":
    share of prompts continued exactly as fp32 does, "fp32_prefix_tokens": mean generated tokens before a prompt
    first leaves fp32's continuation}}.
    """
    continuations = _continuations({"fp32": fp32_model, **models}, tokenizer, prompts, new_tokens, device)
    truth = continuations.pop("fp32")
    result = {}
    for name, cont in continuations.items():
        same = cont == truth  # [prompts, new_tokens]
        result[name] = {
            "fp32_match_share": float(same.all(dim=1).float().mean()),
            "fp32_prefix_tokens": float(same.long().cumprod(dim=1).sum(dim=1).float().mean()),
        }
    return result
