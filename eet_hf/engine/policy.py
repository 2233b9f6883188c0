"""HF's logits processors and stopping criteria, translated into device-side steps a CUDA graph can hold.

The fast loop never reimplements what HF does with a pure function of the scores: temperature, top-k and
top-p are HF's own processor objects, called as they are. What HF computes from the growing `input_ids`
(its length, its tokens) is kept on the device instead: a step counter for min-length and min-new-tokens,
a [batch, vocab] "seen" mask for the repetition penalty. Anything else is not translated: `translate`
returns the reason, and the caller runs HF's own loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers.generation import logits_process as lp
from transformers.generation import stopping_criteria as sc

from . import token_argmax

# Pure functions of the scores: safe to call inside a CUDA graph, same object, same result as in HF's loop.
_PURE_WARPERS = (lp.TemperatureLogitsWarper, lp.TopKLogitsWarper, lp.TopPLogitsWarper)


@dataclass
class DecodePolicy:
    """How one step turns raw logits into the next token, and when a sequence stops."""

    steps: list = field(default_factory=list)  # ("pure", processor) | ("repetition", penalty) | ("eos_floor", None)
    do_sample: bool = False
    eos: torch.Tensor | None = None  # int64 [n] ids that finish a sequence (EosTokenCriteria)
    pad: int | None = None  # written after a sequence finished (HF does so when eos stops sequences)
    eos_suppress: torch.Tensor | None = None  # int64 ids masked to -inf while step < eos_allowed_from
    eos_allowed_from: int = 0  # new-token index from which eos_suppress ids are allowed
    max_new_tokens: int = 0
    uses_seen: bool = False  # repetition penalty needs the [batch, vocab] mask of tokens seen so far
    seen_from: torch.Tensor | None = None  # int64 [1 or batch]: prompt positions before it are not "seen"

    def signature(self) -> tuple:
        """What a captured graph bakes in; graphs are reused across calls with the same signature."""
        steps = tuple(
            (kind, type(arg).__name__, _primitive_state(arg)) if kind == "pure" else (kind, arg)
            for kind, arg in self.steps
        )
        return (steps, self.do_sample, _ids(self.eos), self.pad, _ids(self.eos_suppress), self.eos_allowed_from,
                self.uses_seen)


def _ids(t: torch.Tensor | None) -> tuple | None:
    return None if t is None else tuple(t.tolist())


def _primitive_state(proc) -> tuple:
    return tuple(sorted((k, v) for k, v in vars(proc).items() if isinstance(v, (bool, int, float, str))))


def translate(logits_processor, stopping_criteria, generation_config, prompt_len: int) -> DecodePolicy | str:
    """A DecodePolicy equivalent to HF's processors and criteria for this call, or why there is none."""
    policy = DecodePolicy(do_sample=bool(generation_config.do_sample))
    suppress = []
    for proc in logits_processor:
        if isinstance(proc, _PURE_WARPERS):
            policy.steps.append(("pure", proc))
        elif type(proc) is lp.RepetitionPenaltyLogitsProcessor:
            # transformers >= 5.24 skips each row's prompt padding (or a fixed prompt prefix): the seen-mask starts
            # from the same positions.
            ignore = getattr(proc, "prompt_ignore_length", None)
            policy.seen_from = None if ignore is None else torch.as_tensor(ignore).long().reshape(-1).cpu()
            policy.steps.append(("repetition", float(proc.penalty)))
            policy.uses_seen = True
        elif type(proc) is lp.MinNewTokensLengthLogitsProcessor:
            # HF: eos is masked while len(input_ids) - prompt_length_to_skip < min_new_tokens.
            suppress.append((proc.eos_token_id, proc.min_new_tokens + proc.prompt_length_to_skip - prompt_len))
            policy.steps.append(("eos_floor", None))
        elif type(proc) is lp.MinLengthLogitsProcessor:
            suppress.append((proc.eos_token_id, proc.min_length - prompt_len))
            policy.steps.append(("eos_floor", None))
        else:
            return f"logits processor {type(proc).__name__}"
    if suppress:
        ids = {tuple(torch.as_tensor(e).reshape(-1).tolist()) for e, _ in suppress}
        if len(ids) > 1:
            return "min-length processors with different eos ids"
        policy.eos_suppress = torch.tensor(sorted(next(iter(ids))), dtype=torch.long)
        policy.eos_allowed_from = max(threshold for _, threshold in suppress)
        # Several floors collapse into one step at the first floor's place (masks with the same ids commute).
        first = policy.steps.index(("eos_floor", None))
        policy.steps = [s for i, s in enumerate(policy.steps) if s != ("eos_floor", None) or i == first]
    max_length = None
    for crit in stopping_criteria:
        if type(crit) is sc.MaxLengthCriteria:
            max_length = crit.max_length if max_length is None else min(max_length, crit.max_length)
        elif type(crit) is sc.EosTokenCriteria:
            policy.eos = torch.as_tensor(crit.eos_token_id).reshape(-1).long().cpu()
        else:
            return f"stopping criterion {type(crit).__name__}"
    if max_length is None:
        return "no max_length stopping criterion"
    policy.max_new_tokens = max_length - prompt_len
    if policy.max_new_tokens < 1:
        return f"max_length {max_length} leaves no new token after a {prompt_len}-token prompt"
    if policy.eos is not None:
        pad = generation_config._pad_token_tensor
        if pad is None:
            return "eos stopping without a pad token"
        policy.pad = int(pad.reshape(-1)[0])
    return policy


class PolicyRunner:
    """The device-side tensors of a policy on one device; `apply` and `choose` run inside a graph."""

    def __init__(self, policy: DecodePolicy, vocab: int, device: torch.device) -> None:
        self.policy = policy
        self.argmax = token_argmax.for_device(device)
        self.eos = None if policy.eos is None else policy.eos.to(device)
        self.eos_mask = None
        if policy.eos_suppress is not None:
            self.eos_mask = torch.zeros(vocab, dtype=torch.bool, device=device)
            self.eos_mask[policy.eos_suppress[policy.eos_suppress < vocab].to(device)] = True

    def apply(self, scores: torch.Tensor, step: torch.Tensor, seen: torch.Tensor | None) -> torch.Tensor:
        """scores: fp32 [batch, vocab]; step: int64 [1] (new tokens so far); seen: bool [batch, vocab]."""
        for kind, arg in self.policy.steps:
            if kind == "pure":
                scores = arg(None, scores)
            elif kind == "repetition":
                penalty = arg
                penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
                scores = torch.where(seen, penalized, scores)
            elif kind == "eos_floor":
                blocked = self.eos_mask & (step < self.policy.eos_allowed_from)
                scores = scores.masked_fill(blocked, -math.inf)
        return scores

    def choose(self, scores: torch.Tensor) -> torch.Tensor:
        """Next token per sequence, int64 [batch]: argmax, or a sample from softmax(scores).

        Sampling draws argmax(p / E) with E ~ Exponential(1), which is distributed exactly as
        multinomial(p) and needs no host sync (HF's torch.multinomial cannot be captured in a graph)."""
        if not self.policy.do_sample:
            return self.argmax(scores)  # torch.argmax's answer (token_argmax.py)
        probs = torch.softmax(scores, dim=-1)
        noise = torch.empty_like(probs).exponential_()
        return self.argmax(probs / noise)
