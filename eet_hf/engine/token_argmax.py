"""The decode engine's argmax over logits: eet's argmax_rows kernel, once it agreed with torch.argmax on the device.

Greedy decoding and the exponential-race sampler (policy.py) take one argmax over the vocabulary per step. torch's
reduction runs a 128K-wide row on a handful of blocks (26 µs of a 1.4 ms llama-1b step on an H100); eet's kernel
(csrc/argmax.cu) reads it with one block per row. As the fused decoder's kernels are checked on a probe step before
they serve a model, this kernel is compared with torch.argmax once per device, on rows with ties, NaN and -inf in the
dtypes the engine passes (fp16 / bf16 logits, fp32 scores); if any answer differs, torch.argmax serves that device
(logged).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from eet_hf import ops
from eet_hf._log import warn_once

Argmax = Callable[[torch.Tensor], torch.Tensor]
_CHOSEN: dict[torch.device, Argmax] = {}


def _torch_argmax(scores: torch.Tensor) -> torch.Tensor:
    return torch.argmax(scores, dim=-1)


def _eet_argmax(scores: torch.Tensor) -> torch.Tensor:
    return ops.argmax_rows(scores)


def for_device(device: torch.device) -> Argmax:
    """The argmax the engine runs on `device` (call outside a CUDA-graph capture: the first call probes)."""
    chosen = _CHOSEN.get(device)
    if chosen is None:
        reason = probe_refusal(device)
        if reason is not None:
            warn_once(f"argmax_rows on {device}: {reason}; torch.argmax chooses the tokens")
        chosen = _CHOSEN[device] = _eet_argmax if reason is None else _torch_argmax
    return chosen


def probe_refusal(device: torch.device) -> str | None:
    """Why eet's argmax may not serve `device` (its answers differ from torch.argmax on a probe), or None."""
    if device.type != "cuda":
        return None  # the op's reference is torch.argmax itself
    return disagreement(device)


def disagreement(device: torch.device) -> str | None:
    """How ops.argmax_rows and torch.argmax differ on the probe rows on `device`, or None."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    probe = torch.randn(5, 50257, generator=generator) * 4
    probe[1, 777] = probe[1, 40000] = probe[1].max() + 1  # a tie: the first index
    probe[2, 123] = probe[2, 30000] = float("nan")  # NaN counts as the largest: the first NaN
    probe[3] = float("-inf")  # all -inf: index 0
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        x = probe.to(device, dtype)
        got, want = ops.argmax_rows(x), torch.argmax(x, dim=-1)
        if not torch.equal(got, want):
            return f"it chose {got.tolist()} where torch.argmax chose {want.tolist()} on a {dtype} probe"
    return None
