"""Sliding-window scoring of one long token stream (as in HF's "Perplexity of fixed-length models" guide).

Windows of `max_length` tokens advance by `stride`; only the tokens new to a window (not seen by the previous
one) are scored, so every token is scored once, with up to max_length - stride tokens of left context.
Log-softmax runs in float32 whatever the model dtype, so the scoring itself adds no low-precision error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Score:
    nll_sum: float  # sum of -log p(token) over scored tokens, in nats
    count: int  # scored tokens
    correct: int = 0  # masked LM only: scored tokens whose argmax prediction is the true token

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_sum / max(1, self.count))

    @property
    def accuracy(self) -> float:
        return self.correct / max(1, self.count)


def _windows(n: int, length: int, stride: int):
    """(begin, end, first_new) per window; tokens [first_new, end) are the ones this window scores."""
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + length, n)
        yield begin, end, prev_end
        prev_end = end
        if end == n:
            break


@torch.no_grad()
def causal_score(model, ids: torch.Tensor, max_length: int, stride: int, device: str) -> Score:
    """Causal LM score of `ids` ([n] int64): token t is predicted from the window's tokens before it.
    The very first token of the stream has no prediction and is not scored."""
    total, count = 0.0, 0
    for begin, end, first_new in _windows(len(ids), max_length, stride):
        x = ids[begin:end].to(device)[None]
        logits = model(input_ids=x, use_cache=False).logits[0, :-1].float()  # [len-1, vocab] predicts x[1:]
        nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="none")  # nll[j] scores x[j+1]
        new = nll[max(0, first_new - begin - 1) :]
        total += new.double().sum().item()
        count += new.numel()
    return Score(total, count)


def fixed_mask(n: int, rate: float, seed: int) -> torch.Tensor:
    """[n] bool: the seeded positions to mask (same for every engine and run; a prefix of a longer stream's)."""
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) < rate


@torch.no_grad()
def masked_score(
    model, ids: torch.Tensor, picked: torch.Tensor, tokenizer, max_length: int, stride: int, device: str
) -> Score:
    """Masked LM score: every `picked` position is replaced by [MASK] (no 80/10/10), windows are
    [CLS] + tokens + [SEP], and each picked token is scored once, in the first window where it is new."""
    masked = ids.clone()
    masked[picked] = tokenizer.mask_token_id
    cls = torch.tensor([tokenizer.cls_token_id])
    sep = torch.tensor([tokenizer.sep_token_id])
    total, count, correct = 0.0, 0, 0
    for begin, end, first_new in _windows(len(ids), max_length - 2, stride):
        x = torch.cat([cls, masked[begin:end], sep]).to(device)[None]
        logits = model(input_ids=x, attention_mask=torch.ones_like(x), token_type_ids=torch.zeros_like(x))
        logits = logits.logits[0, 1:-1].float()  # drop CLS/SEP: row j is token begin + j
        sel = picked[begin:end].clone()
        sel[: first_new - begin] = False  # already scored by the previous window
        sel = sel.to(device)
        target = ids[begin:end].to(device)[sel]
        scored = logits[sel]
        total += torch.nn.functional.cross_entropy(scored, target, reduction="sum").double().item()
        count += int(sel.sum())
        correct += int((scored.argmax(-1) == target).sum())
    return Score(total, count, correct)
